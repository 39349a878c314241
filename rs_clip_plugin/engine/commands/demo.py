"""`rsclip demo`: the main job on the embedded default bundle (see engine/demo.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..progress import ConsoleProgress
from .common import add_bundle_args, add_provider_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="label and search the sample Sentinel-2 scene; writes GeoTIFFs, a GeoPackage and a PNG")
    p.add_argument("--out", default="demo-output", help="output folder (default: ./demo-output; replaced on re-run)")
    add_bundle_args(p)
    add_provider_args(p, batch_size=False, precision=False)
    p.add_argument("--query", default=None, help="text query for the search part (default: the demo's)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..cli import emit
    from ..demo import DEMO_QUERY, run_demo

    res = run_demo(
        Path(args.out),
        bundle_path=Path(args.bundle) if args.bundle else None,
        provider=args.provider,
        query=args.query or DEMO_QUERY,
        progress=ConsoleProgress("demo"),
    )
    s = res.summary
    lines = [f"RS-CLIP demo: {s['scene']}", f"  bundle: {s['bundle']} ({s['bundle_path']})"]
    if s.get("bundle_description"):
        lines.append(f"  what it is: {s['bundle_description']}")
    lines.append(f"  ran on: {s.get('device_description') or s['provider']}   time: {s['seconds']} s")
    lines.append("  labels (area):")
    for c in s.get("classes") or []:
        lines.append(f"    {c['name']:28s} {c.get('area_ha', 0):10.1f} ha")
    lines.append(f"  search \u201c{s['query']}\u201d: " + ", ".join(f"#{h['rank']} {h['score']:.3f}" for h in s["hits"]))
    lines.append(f"  wrote to {res.out_dir}/:")
    for name in sorted(res.files):
        lines.append(f"    {name}")
    emit(args, {**s, "files": res.files}, "\n".join(lines))
    return 0
