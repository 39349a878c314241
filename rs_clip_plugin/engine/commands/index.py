"""`rsclip index RASTER`: build (or reuse) the cached embedding index of a raster (see engine/index.py)."""

from __future__ import annotations

import argparse

from ..progress import ConsoleProgress
from .classify import _bands, _extent


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="embed a raster's tiles into the cache, for fast searches")
    p.add_argument("raster", help="GeoTIFF/COG/VRT, Sentinel-2 .SAFE folder or .zip, or a folder of per-band files")
    p.add_argument("--bundle", help="bundle directory or .zip (default: the embedded default bundle)")
    p.add_argument("--modality", choices=["rgb", "s2-l1c", "s2-l2a", "s1-grd"], help="encoder to use (default: the raster's own)")
    p.add_argument("--sensor", choices=["s2-l1c", "s2-l2a", "s1-grd", "rgb"], help="what the raster holds, when detection is wrong")
    p.add_argument("--bands", type=_bands, help="band names of a multi-band raster in band order, e.g. B04,B03,B02")
    p.add_argument("--tile-size-m", type=float, help="tile size on the ground in metres (default: the bundle's)")
    p.add_argument("--overlap", type=float, default=0.0, help="tile overlap fraction in [0, 1) (default 0)")
    p.add_argument("--extent", type=_extent, help="xmin,ymin,xmax,ymax in the raster's CRS (default: whole raster)")
    p.add_argument("--provider", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--batch-size", type=int, help="tiles per inference call (default: chosen for the device)")
    p.add_argument("--force", action="store_true", help="rebuild even when a valid cached index exists")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def bundle_arg(value):
    """--bundle, else the embedded default bundle (built once on first use)."""
    if value:
        return value
    from ..default_bundle import default_bundle_path

    return default_bundle_path()


def run(args: argparse.Namespace) -> int:
    from ..cli import emit
    from ..index import build_index

    idx = build_index(
        args.raster,
        bundle_arg(args.bundle),
        modality=args.modality,
        tile_size_m=args.tile_size_m,
        overlap=args.overlap,
        extent=args.extent,
        sensor=args.sensor,
        bands=args.bands,
        provider=args.provider,
        batch_size=args.batch_size,
        progress=ConsoleProgress("index"),
        force=args.force,
    )
    s = idx.summary()
    how = "reused" if idx.reused else f"built in {s['seconds']:.1f} s on {s['provider']}"
    text = (
        f"index of {s['source']}: {s['tiles']} tiles ({s['grid_tiles'] - s['tiles']} skipped as no data), "
        f"{s['modality']} encoder, {s['tile_px']} px tiles every {s['stride_px']} px, {s['dim']}-d {s['dtype']}; {how}\n"
        f"  {s['index']}"
    )
    emit(args, s, text)
    return 0
