"""`rsclip search RASTER... --query TEXT | --image-file F | --point x,y | --box ...`: ranked places, hits.gpkg."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..progress import ConsoleProgress
from .common import (
    add_bundle_args,
    add_output_args,
    add_provider_args,
    add_raster_args,
    job_options,
    parse_extent,
    parse_point,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="find the places in rasters that best match a text or an example image")
    p.add_argument("rasters", nargs="+", help="rasters to search together (indexed on demand, cached)")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--query", help='text query; "-term" subtracts a term, e.g. "harbour -ships"')
    q.add_argument("--image-file", type=Path, help="example image (JPEG/PNG or any GDAL raster)")
    q.add_argument("--point", type=parse_point, help="x,y: example tile centred here in --query-raster (default: the first raster)")
    q.add_argument("--box", type=parse_extent, help="xmin,ymin,xmax,ymax: example area in --query-raster (default: the first raster)")
    p.add_argument("--query-raster", help="raster the --point/--box refers to (e.g. a Sentinel-1 scene for a cross-modal query)")
    p.add_argument("--negative", action="append", default=[], help="a term to push away from (repeatable)")
    p.add_argument("--lang", default="en", help="language of the text query (one the bundle supports)")
    p.add_argument("--top-k", type=int, default=10, help="number of distinct places to return (default 10)")
    p.add_argument("--nms-iou", type=float, default=0.3, help="overlap (IoU) above which a lower-scored tile is dropped")
    p.add_argument("--out", required=True, type=Path, help="output folder (hits.gpkg, heatmap*.tif)")
    p.add_argument("--heatmap", action="store_true", help="also write per-raster similarity heat maps (float32 GeoTIFF)")
    p.add_argument("--dense-heatmap", action="store_true",
                   help="heat maps that score patches, not whole tiles (implies --heatmap): the rasters are indexed "
                   "with patch embeddings (encoders with dense outputs; about P x D x 2 bytes per tile)")
    add_bundle_args(p)
    add_raster_args(p, what="the searched rasters", extent=False)
    add_provider_args(p, batch_size=False)
    add_output_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..cli import UserError, emit
    from ..default_bundle import as_bundle
    from ..options import TilingOptions
    from ..search import image_query_vector, search, text_query_vector

    if args.top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {args.top_k}")
    if args.negative and args.query is None:
        raise UserError("--negative applies to a text --query only")
    bundle = as_bundle(args.bundle)
    opts = job_options(args)
    if args.query is not None:
        vec = text_query_vector(bundle, args.query, negative=args.negative, lang=args.lang, provider=opts.run.provider)
        info = {"kind": "text", "text": args.query, "negative": args.negative, "lang": args.lang}
    else:
        ref = args.query_raster or args.rasters[0]
        vec = image_query_vector(
            bundle,
            raster=None if args.image_file else ref,
            point=args.point,
            box=args.box,
            image_file=args.image_file,
            tiling=TilingOptions(tile_size_m=opts.tiling.tile_size_m),  # the example raster has its own sensor
            run=opts.run,
        )
        if args.image_file:
            info = {"kind": "image_file", "image_file": str(args.image_file)}
        else:
            info = {"kind": "point" if args.point else "box", "raster": str(ref), "at": list(args.point or args.box)}
    res = search(
        args.rasters,
        vec,
        args.out,
        bundle=bundle,
        top_k=args.top_k,
        nms_iou=args.nms_iou,
        # --dense-heatmap alone asks for patch heat maps: without them its patch index would be paid for nothing.
        heatmap=args.heatmap or args.dense_heatmap,
        **opts.kwargs(),
        progress=ConsoleProgress("search"),
        overwrite=args.overwrite,
        query_info=info,
        dense_heatmap=args.dense_heatmap,
    )
    # The device each index was built on, in words (an index reused from an earlier run keeps its own).
    devices = sorted({i.get("device_description") or str(i.get("provider")) for i in res.indexes}) or [res.provider]
    lines = [f"{len(res.hits)} distinct places in {len(args.rasters)} raster(s) on {', '.join(devices)}, {res.precision} "
             f"-> {res.gpkg_path}"]
    for h in res.hits:
        lines.append(f"  #{h.rank:<3d} {h.score:+.4f}  {Path(h.source).name}  ({', '.join(f'{v:.1f}' for v in h.bounds)})")
    if res.heatmap_paths:
        lines.append("  heat map(s): " + ", ".join(str(p) for p in res.heatmap_paths))
    emit(args, res.to_dict(), "\n".join(lines))
    return 0
