"""`rsclip archive create|add|search|info DIR`: search many scenes through one ANN index (engine/archive.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..bands import MODALITIES
from ..progress import ConsoleProgress
from .common import add_bundle_args, add_provider_args, parse_bands, parse_extent, parse_point


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("archive", help="an archive of many scenes (files, COG URLs, STAC) searched through one ANN index")
    a = p.add_subparsers(dest="archive_command", required=True)

    c = a.add_parser("create", help="a new, empty archive folder for a bundle")
    c.add_argument("dir", type=Path)
    add_bundle_args(c)
    c.add_argument("--modality", choices=MODALITIES, help="encoder for every scene (default: each scene's own)")
    c.add_argument("--tile-size-m", type=float, help="tile size on the ground in metres (default: the bundle's)")
    c.add_argument("--overlap", type=float, default=0.0, help="tile overlap fraction in [0, 1) (default 0)")
    c.add_argument("--index", choices=("flat", "hnsw", "ivfpq"), help="ANN index kind (default: chosen by size)")
    c.add_argument("--overwrite", action="store_true", help="start the archive afresh (its shards and index are removed)")
    c.add_argument("--json", action="store_true", help="print the result as JSON")
    c.set_defaults(func=run_create)

    d = a.add_parser("add", help="embed scenes into the archive (scenes already there are skipped)")
    d.add_argument("dir", type=Path)
    d.add_argument("sources", nargs="*", help="rasters, folders of rasters, COG URLs, STAC Item/ItemCollection JSON files or URLs")
    d.add_argument("--stac-api", help="a STAC API to search (with --collections, --bbox, --datetime, --max-items)")
    d.add_argument("--collections", type=parse_bands, help="STAC collections, comma-separated")
    d.add_argument("--bbox", type=parse_extent, help="lon/lat box of the STAC search: xmin,ymin,xmax,ymax")
    d.add_argument("--datetime", help="STAC search time range, e.g. 2023-01-01/2023-12-31")
    d.add_argument("--max-items", type=int, default=10, help="at most this many items from the STAC search (default 10)")
    d.add_argument("--dask", help="local:N (N worker processes here) or a Dask scheduler address (tcp://host:8786)")
    d.add_argument("--retries", type=int, default=2, help="times a scene whose worker fails is retried (Dask)")
    # No --precision: every scene of one archive must embed alike (auto, the bundle's one rule), Dask workers too.
    add_provider_args(d, batch_size=False, precision=False)
    d.add_argument("--json", action="store_true", help="print the result as JSON")
    d.set_defaults(func=run_add)

    s = a.add_parser("search", help="the best distinct places in the archive for a text or an example image")
    s.add_argument("dir", type=Path)
    q = s.add_mutually_exclusive_group(required=True)
    q.add_argument("--query", help='text query; "-term" subtracts a term')
    q.add_argument("--image-file", type=Path, help="example image (JPEG/PNG or any GDAL raster)")
    q.add_argument("--point", type=parse_point, help="x,y: example tile centred here in --query-raster (its CRS)")
    s.add_argument("--query-raster", help="raster the --point refers to (any sensor the bundle has an encoder for)")
    s.add_argument("--negative", action="append", default=[], help="a term to push away from (repeatable)")
    s.add_argument("--lang", default="en", help="language of the text query")
    s.add_argument("--bbox", type=parse_extent, help="only tiles meeting this lon/lat box: xmin,ymin,xmax,ymax")
    s.add_argument("--datetime", help="only scenes acquired in this range: 2020-01-01/2020-12-31, or one day")
    s.add_argument("--top-k", type=int, default=10, help="number of distinct places (default 10)")
    s.add_argument("--nms-iou", type=float, default=0.3, help="overlap (IoU) above which a lower-scored tile is dropped")
    s.add_argument("--out", type=Path, help="also write hits.gpkg here")
    s.add_argument("--overwrite", action="store_true", help="replace hits.gpkg in --out")
    add_provider_args(s, batch_size=False, precision=False)  # the query encoder's device, as every command's
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    s.set_defaults(func=run_search)

    i = a.add_parser("info", help="scenes, vectors, index kind and its measured recall@10")
    i.add_argument("dir", type=Path)
    i.add_argument("--json", action="store_true", help="print the result as JSON")
    i.set_defaults(func=run_info)


def run_create(args: argparse.Namespace) -> int:
    from ..archive import create_archive
    from ..cli import emit

    arc = create_archive(args.dir, args.bundle, modality=args.modality, tile_size_m=args.tile_size_m,
                         overlap=args.overlap, index_kind=args.index, overwrite=args.overwrite)
    emit(args, arc.config, f"archive {arc.root} for bundle {arc.config['bundle_name']} ({arc.config['embed_dim']}-d)")
    return 0


def run_add(args: argparse.Namespace) -> int:
    from ..archive import Archive
    from ..cli import UserError, emit
    from ..stac import search_items

    arc = Archive.open(args.dir)
    items = []
    if args.stac_api:
        items = search_items(args.stac_api, collections=args.collections, bbox=args.bbox, datetime=args.datetime,
                             max_items=args.max_items)
    elif args.collections or args.bbox or args.datetime:
        raise UserError("--collections, --bbox and --datetime refine a --stac-api search; give --stac-api URL")
    if not args.sources and not items:
        raise UserError("nothing to add: give rasters, folders, STAC items, or a --stac-api search")
    provider = "cpu" if args.provider == "auto" and args.dask else args.provider
    rep = arc.add(args.sources, stac_items=items, provider=provider, dask=args.dask,
                  progress=ConsoleProgress("archive add"), retries=args.retries)
    ix = rep.index
    lines = [f"{len(rep.added)} scene(s) added, {len(rep.skipped)} already in the archive, {len(rep.failed)} failed; "
             f"{rep.n_vectors} vectors, {ix.get('kind')} index, recall@10 {ix.get('recall_at_10')}"]
    lines += [f"  failed: {s}: {e}" for s, e in rep.failed]
    emit(args, rep.as_dict(), "\n".join(lines))
    return 0 if not rep.failed or rep.added or rep.skipped else 2


def run_search(args: argparse.Namespace) -> int:
    from ..archive import Archive, write_hits
    from ..cli import UserError, emit
    from ..default_bundle import as_bundle
    from ..search import image_query_vector, text_query_vector

    arc = Archive.open(args.dir)
    bundle = as_bundle(arc.config.get("bundle") or None)
    if args.negative and args.query is None:
        raise UserError("--negative applies to a text --query only")
    if args.query is not None:
        vec = text_query_vector(bundle, args.query, negative=args.negative, lang=args.lang, provider=args.provider)
    else:
        if args.point and not args.query_raster:
            raise UserError("--point needs --query-raster: the raster the point lies in")
        vec = image_query_vector(bundle, raster=args.query_raster if args.point else None, point=args.point,
                                 image_file=args.image_file, provider=args.provider)
    hits = arc.search(vec, top_k=args.top_k, bbox=args.bbox, datetime_range=args.datetime, nms_iou=args.nms_iou)
    out = None
    if args.out:
        out = write_hits(hits, args.out, overwrite=args.overwrite, description=args.query or "archive search hits")
    lines = [f"{len(hits)} distinct places from {len({h.scene for h in hits})} scene(s)" + (f" -> {out}" if out else "")]
    for h in hits:
        lines.append(f"  #{h.rank:<3d} {h.score:+.4f}  {h.scene}  {h.datetime or '-'}  "
                     f"({', '.join(f'{v:.4f}' for v in h.lonlat)})")
    emit(args, {"hits": [h.as_dict() for h in hits], "gpkg": str(out) if out else None}, "\n".join(lines))
    return 0


def run_info(args: argparse.Namespace) -> int:
    from ..archive import Archive
    from ..cli import emit

    info = Archive.open(args.dir).info()
    emit(args, info, "\n".join(f"{k}: {v}" for k, v in info.items()))
    return 0
