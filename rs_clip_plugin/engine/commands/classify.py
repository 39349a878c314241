"""`rsclip classify RASTER --classes "a;b;c" --out DIR`: zero-shot label map of a raster (see engine/classify.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..options import LABEL_MODES, SYNONYM_MERGES
from ..progress import ConsoleProgress
from ..refine import REFINE_METHODS
from .common import (
    RASTER_HELP,
    add_bundle_args,
    add_output_args,
    add_provider_args,
    add_raster_args,
    job_options,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", help="label a raster by class prompts; writes labels.tif, confidence.tif, a .qml and a summary")
    p.add_argument("raster", help=RASTER_HELP)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--classes", help='classes separated by ";", synonyms by "|", e.g. "forest|woodland;river;annual crop"')
    g.add_argument("--classes-file", type=Path, help="text file with one class per line (# comments allowed)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--lang", default="en", help="language of the class names (one the bundle supports; default en)")
    p.add_argument("--threshold", type=float, help="pixels whose confidence is below this (0-1) become 'unknown'")
    p.add_argument("--background", metavar="TEXT[;TEXT]",
                   help='background prompts, e.g. "cloud;shadow": extra columns of the softmax; a pixel one of them '
                   "wins becomes 'background / unknown' (the value after the last class), as below --threshold")
    p.add_argument("--synonyms", choices=["auto", *SYNONYM_MERGES], default="auto",
                   help='how the synonyms of a class ("forest|woodland") are merged: mean (one averaged prompt '
                   "vector) or max (the best-matching synonym per pixel or tile, SegEarth-OV); auto (default): max, "
                   "measured better in both modes")
    p.add_argument("--mode", choices=["auto", *LABEL_MODES], default="auto",
                   help="dense: a label per pixel from the encoder's patch outputs (SegEarth-OV); tile: one label "
                   "per tile, averaged over overlaps; auto (default): dense when the bundle's encoder has dense outputs")
    p.add_argument("--refine", choices=["none", *REFINE_METHODS], default="none",
                   help="pamr: refine the dense labels along the image's edges (pixel-adaptive mask refinement, as "
                   "NACLIP: 10 iterations, dilations 1 and 2, per tile on its normalised bands); dense mode only")
    p.add_argument("--polygons", action="store_true",
                   help="also write classes.gpkg: the label map as polygons per class, with area_ha and mean_confidence")
    p.add_argument("--mmu-ha", type=float, default=0.0,
                   help="with --polygons: merge regions smaller than this many hectares into their largest "
                   "neighbour (minimum mapping unit; default 0 = off)")
    add_bundle_args(p)
    add_raster_args(p, modality=False)
    add_provider_args(p)
    add_output_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..classify import classify_raster
    from ..cli import emit

    classes = args.classes_file if args.classes_file is not None else args.classes
    res = classify_raster(
        args.raster,
        classes,
        args.out,
        bundle=args.bundle,
        lang=args.lang,
        threshold=args.threshold,
        polygons=args.polygons,
        mmu_ha=args.mmu_ha,
        background=args.background,
        synonyms=args.synonyms,
        refine=args.refine,
        **job_options(args).kwargs(),
        progress=ConsoleProgress("classify"),
        overwrite=args.overwrite,
    )
    s = res.summary
    result = {
        "labels": str(res.labels_path),
        "confidence": str(res.confidence_path),
        "qml": str(res.qml_path),
        "summary": str(res.summary_path),
        **s,
    }
    lines = [f"labelled {s['grid']['width']}x{s['grid']['height']} px of {s['source']} with {s['bundle']['name']} "
             f"({s['modality']} encoder) on {s.get('device_description') or s['provider']}, {s['precision']}, "
             f"{s['mode']} mode{', refined by ' + s['refine']['method'] if s.get('refine') else ''}, "
             f"synonyms merged by {s['synonyms']}"]
    if s.get("provider_fallback"):
        lines.append(f"  note: {s['provider_fallback']}")
    for c in s["classes"]:
        area = f"{c['area_ha']:.1f} ha" if c["area_ha"] is not None else f"{c['pixels']} px"
        lines.append(f"  {c['value']:3d} {c['name']:30s} {area:>14s}  {100 * c['fraction']:5.1f}%")
    if s["background"]:
        lines.append(f"  background prompts: {'; '.join(s['background'])}")
    u = s["unknown"]
    if u["pixels"]:
        area = f"{u['area_ha']:.1f} ha" if u["area_ha"] is not None else f"{u['pixels']} px"
        lines.append(f"  {u['value']:3d} {u['name']:30s} {area:>14s}")
    t = s["tiling"]
    lines.append(f"  tiles: {t['tiles']} ({t['skipped_nodata']} skipped, no data); {s['timings']['total_s']:.1f} s")
    lines += [f"  warning: {w}" for w in s.get("warnings", [])]
    if s.get("polygons"):
        pg = s["polygons"]
        lines.append(f"  polygons: {pg['polygons']} in {s['files']['polygons']} (minimum mapping unit {pg['mmu_ha']} ha = "
                     f"{pg['mmu_pixels']} px, {pg['sieved_pixels']} px merged)")
    lines.append(f"  wrote {res.labels_path}, {res.confidence_path.name}, {res.qml_path.name}, {res.summary_path.name}")
    emit(args, result, "\n".join(lines))
    return 0
