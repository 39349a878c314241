"""`rsclip index RASTER`: build (or reuse) the cached embedding index of a raster (see engine/index.py)."""

from __future__ import annotations

import argparse

from ..progress import ConsoleProgress
from .common import (
    RASTER_HELP,
    add_bundle_args,
    add_output_args,
    add_provider_args,
    add_raster_args,
    job_options,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="embed a raster's tiles into the cache, for fast searches")
    p.add_argument("raster", help=RASTER_HELP)
    add_bundle_args(p)
    add_raster_args(p)
    add_provider_args(p)
    p.add_argument("--force", action="store_true", help="rebuild even when a valid cached index exists")
    p.add_argument("--dense-heatmap", action="store_true",
                   help="also store patch embeddings (encoders with dense outputs; about P x D x 2 bytes per tile) "
                   "so search heat maps score patches, not whole tiles")
    add_output_args(p, overwrite=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..cli import emit
    from ..index import build_index

    idx = build_index(
        args.raster,
        args.bundle,
        **job_options(args).kwargs(),
        progress=ConsoleProgress("index"),
        force=args.force,
        dense_heatmap=args.dense_heatmap,
    )
    s = idx.summary()
    how = "reused" if idx.reused else f"built in {s['seconds']:.1f} s on {s.get('device_description') or s['provider']}, {s['precision']}"
    text = (
        f"index of {s['source']}: {s['tiles']} tiles ({s['grid_tiles'] - s['tiles']} skipped as no data), "
        f"{s['modality']} encoder, {s['tile_px']} px tiles every {s['stride_px']} px, {s['dim']}-d {s['dtype']}; {how}\n"
        f"  {s['index']}"
    )
    if s["patches"]:
        text += f"\n  patch embeddings {s['patches']['grid'][0]}x{s['patches']['grid'][1]} per tile, {s['patches']['bytes']} bytes"
    emit(args, s, text)
    return 0
