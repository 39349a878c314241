"""`rsclip classify RASTER --classes "a;b;c" --out DIR`: zero-shot label map of a raster (see engine/classify.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..progress import ConsoleProgress


def _extent(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        values = []
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"{text!r}: give the extent as xmin,ymin,xmax,ymax in the raster's CRS")
    return values


def _bands(text: str) -> list[str]:
    return [b.strip() for b in text.split(",") if b.strip()]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", help="label a raster by class prompts; writes labels.tif, confidence.tif, a .qml and a summary")
    p.add_argument("raster", help="GeoTIFF/COG/VRT, Sentinel-2 .SAFE folder or .zip, or a folder of per-band files")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--classes", help='classes separated by ";", synonyms by "|", e.g. "forest|woodland;river;annual crop"')
    g.add_argument("--classes-file", type=Path, help="text file with one class per line (# comments allowed)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--bundle", help="bundle directory or .zip (default: the embedded default bundle)")
    p.add_argument("--sensor", choices=["s2-l1c", "s2-l2a", "s1-grd", "rgb"], help="what the raster holds, when detection is wrong")
    p.add_argument("--bands", type=_bands, help="band names of a multi-band raster in band order, e.g. B04,B03,B02")
    p.add_argument("--lang", default="en", help="language of the class names (one the bundle supports; default en)")
    p.add_argument("--threshold", type=float, help="pixels whose confidence is below this (0-1) become 'unknown'")
    p.add_argument("--tile-size-m", type=float, help="tile size on the ground in metres (default: the bundle's)")
    p.add_argument("--overlap", type=float, default=0.0, help="tile overlap fraction in [0, 1) (default 0)")
    p.add_argument("--extent", type=_extent, help="xmin,ymin,xmax,ymax in the raster's CRS (default: whole raster)")
    p.add_argument("--provider", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--batch-size", type=int, help="tiles per inference call (default: chosen for the device)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs in --out")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
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
        sensor=args.sensor,
        bands=args.bands,
        lang=args.lang,
        threshold=args.threshold,
        tile_size_m=args.tile_size_m,
        overlap=args.overlap,
        extent=args.extent,
        provider=args.provider,
        batch_size=args.batch_size,
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
             f"({s['modality']} encoder) on {s['provider']}"]
    if s.get("provider_fallback"):
        lines.append(f"  note: {s['provider_fallback']}")
    for c in s["classes"]:
        area = f"{c['area_ha']:.1f} ha" if c["area_ha"] is not None else f"{c['pixels']} px"
        lines.append(f"  {c['value']:3d} {c['name']:30s} {area:>14s}  {100 * c['fraction']:5.1f}%")
    if s["unknown"]["pixels"]:
        lines.append(f"    0 {'unknown (below threshold)':30s} {s['unknown']['pixels']:>11d} px")
    t = s["tiling"]
    lines.append(f"  tiles: {t['tiles']} ({t['skipped_nodata']} skipped, no data); {s['timings']['total_s']:.1f} s")
    lines.append(f"  wrote {res.labels_path}, {res.confidence_path.name}, {res.qml_path.name}, {res.summary_path.name}")
    emit(args, result, "\n".join(lines))
    return 0
