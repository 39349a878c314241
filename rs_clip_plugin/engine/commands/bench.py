"""`rsclip bench`: encoder vs pipeline throughput, ORT vs torch, query latency, peak RSS (engine/bench.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..progress import ConsoleProgress
from .common import add_bundle_args, add_provider_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure encoder and pipeline throughput, query latency and memory")
    add_bundle_args(p)
    p.add_argument("--raster", type=Path, help="raster for the pipeline figure (default: the Major-TOM sample)")
    add_provider_args(p)
    p.add_argument("--seconds", type=float, default=3.0, help="minimum seconds per throughput figure (default 3)")
    p.add_argument("--query-sizes", default="10000,100000,1000000", help="N stored embeddings for query latency")
    p.add_argument("--no-torch", action="store_true", help="skip the open_clip torch comparison")
    p.add_argument("--no-dense", action="store_true", help="skip the dense vs tile labelling comparison")
    p.add_argument("--large-scene", action="store_true", help="also embed a 10980x10980 12-band VRT scene (slow)")
    p.add_argument("--large-scene-rows", type=int, help="only this many tile rows of the large scene")
    p.add_argument("--archive", type=int, metavar="N",
                   help="instead: the archive's ANN index vs exact search at N random (clustered) vectors")
    p.add_argument("--archive-kind", choices=("flat", "hnsw", "ivfpq"), help="with --archive: this kind (default: by size)")
    p.add_argument("--json", action="store_true", help="print all figures as JSON")
    p.set_defaults(func=run)


def run_archive(args: argparse.Namespace) -> int:
    from ..ann import bench
    from ..cli import UserError, emit

    if args.archive < 100:
        raise UserError(f"--archive {args.archive}: give at least 100 vectors")
    r = bench(args.archive, kind=args.archive_kind)
    emit(args, r, (f"{r['n']} x {r['dim']}-d, {r['kind']}: built in {r['build_s']} s, index {r['index_mb']} MB "
                   f"(vectors {r['vectors_mb']} MB), recall@10 {r['recall_at_10']}, {r['ann_ms']} ms/query vs exact "
                   f"{r['exact_ms']} ms ({r['speedup']}x)"))
    return 0


def run(args: argparse.Namespace) -> int:
    from ..bench import run_bench
    from ..cli import UserError, emit

    if args.archive is not None:
        return run_archive(args)
    try:
        sizes = [int(v) for v in args.query_sizes.split(",") if v.strip()]
    except ValueError as exc:
        raise UserError(f"--query-sizes {args.query_sizes!r}: give whole numbers separated by commas") from exc
    r = run_bench(
        args.bundle,
        args.raster,
        batch_size=args.batch_size,
        provider=args.provider,
        precision=args.precision,
        min_seconds=args.seconds,
        query_sizes=sizes,
        torch_compare=not args.no_torch,
        large_scene=args.large_scene,
        large_scene_rows=args.large_scene_rows,
        dense_compare=not args.no_dense,
        workers=args.threads,
        progress=ConsoleProgress("bench"),
    )
    lines = [
        f"{r['bundle']} ({r['modality']} encoder, batch {r['batch_size']}) on {r['device_description']}, "
        f"{r['precision']}",
        f"  bare encoder   {r['bare_images_per_s']:9.1f} images/s",
        f"  pipeline       {r['pipeline_tiles_per_s']:9.1f} tiles/s   pipeline/bare = {r['pipeline_over_bare']:.3f}",
        f"  bare ORT peer  {r['bare_peer_tiles_per_s']:9.1f} tiles/s   (rasterio over pre-cut tiles; pipeline/peer = "
        f"{r['pipeline_over_peer']:.3f})",
        "  reader alone   " + ", ".join(f"{w} worker(s): {v:.1f}" for w, v in r["tiles_per_s_by_workers"].items())
        + f" tiles/s (the pipeline used {r['reader_workers']})",
    ]
    if r["int8_over_fp32"]:
        agree = r["int8_label_agreement"]
        lines.append(f"  int8 {r['ort_int8_images_per_s']:.1f} vs fp32 {r['ort_fp32_images_per_s']:.1f} images/s: "
                     f"int8/fp32 = {r['int8_over_fp32']:.2f} (each at its best: {r['ort_int8_threads']} / "
                     f"{r['ort_fp32_threads']} threads); labels agree on "
                     + (f"{100 * agree:.1f}% of {r['int8_tiles']} real tiles, min cosine {r['int8_min_cosine']}"
                        if agree is not None else "(not recorded at export)"))
    else:
        lines.append(f"  int8 vs fp32: skipped ({r['int8_skipped']})")
    if r["torch_images_per_s"]:
        lines.append(f"  rgb ORT fp32 {r['ort_images_per_s']:.1f} ({r['ort_threads']} threads) vs torch {r['torch_images_per_s']:.1f} "
                     f"({r['torch_threads']} threads) images/s, each at its best thread count: ORT/torch = {r['ort_over_torch']:.3f}")
        lines.append(f"  one image per call: ORT {r['ort_ms_batch1']:.1f} ms vs torch {r['torch_ms_batch1']:.1f} ms: "
                     f"ORT/torch = {r['ort_over_torch_batch1']:.3f}")
    else:
        lines.append(f"  ORT vs torch: skipped ({r['torch_skipped']})")
    lines.append("  query latency (" + f"{r['query_dim']}-d): " + ", ".join(f"{n}: {ms:.1f} ms" for n, ms in r["query_ms"].items()))
    dvt = r["dense_vs_tile"]
    if dvt and not dvt["skipped"]:
        t, d = dvt["tile"], dvt["dense"]
        lines.append(f"  classify dense {d['seconds']:.2f} s vs tile {t['seconds']:.2f} s ({dvt['modality']}, fp32): "
                     f"dense/tile = {dvt['dense_over_tile']:.2f}; tile-sized blocks with more than one label: "
                     f"dense {d['nonuniform_blocks']}/{d['blocks']}, tile {t['nonuniform_blocks']}/{t['blocks']}")
    elif dvt:
        lines.append(f"  dense vs tile: skipped ({dvt['skipped']})")
    if r["large_scene"]:
        s = r["large_scene"]
        lines.append(f"  large scene {s['width']}x{s['height']}x{s['bands']}: {s['tiles']} tiles in {s['seconds']} s, "
                     f"peak RSS {s['peak_rss_mb']} MB (target <= {s['target_rss_mb']})")
    lines.append(f"  peak RSS {r['pipeline_peak_rss_mb']} MB after the pipeline, {r['peak_rss_mb']} MB in all")
    emit(args, r, "\n".join(lines))
    return 0
