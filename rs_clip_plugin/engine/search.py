"""Search rasters by text, by example image, or across sensors, over cached embedding indexes.

Queries are L2-normalised vectors in the bundle's shared embedding space:

- ``text_query_vector``: the query prompt-ensembled over the bundle's templates (like a zero-shot class).
  Negative terms (``"harbour -ships"`` or ``negative=["ships"]``) are subtracted:
  ``q = normalise(p - w * normalise(mean(n_i)))`` with ``w = NEGATIVE_WEIGHT`` (0.5). CLIP embeddings of
  related phrases are strongly correlated, so a full subtraction (w = 1) would swamp the positive term;
  a half weight pushes away from the negative concept while keeping the query's meaning.
- ``image_query_vector``: a tile around a point, a box, or a whole image file, embedded with the encoder
  matching that raster (Sentinel-1 -> ``s1-grd``, Sentinel-2 -> ``s2-*``, RGB/JPEG -> ``rgb``). Because
  the bundle's encoders share one space, an S1 query vector searches S2 indexes and back (cross-modal).

``search`` ranks the tiles of every source (each indexed with its own encoder, built on demand and
cached, see :mod:`.index`) by cosine similarity, keeps distinct places by non-maximum suppression over
all sources together (one ranked list), and writes ``hits.gpkg`` (and heat maps when asked).

GeoPackage layout: one layer ``hits`` in the CRS of the first source. Hits from sources in another CRS
are reprojected (tile outlines densified, so they stay exact polygons); their native CRS is kept in the
``crs`` field. Fields: rank, score (cosine), source (raster path), tile (row in that raster's index), crs.
Heat maps: one float32 Cloud-Optimised GeoTIFF per source on that source's grid, the mean cosine similarity of the
tiles covering each pixel (NaN = no tile), or, for an index built with ``dense_heatmap`` (patch embeddings
stored, see index.py), each tile's patch scores (p - 0.3 c).q upsampled bilinearly to its pixels and averaged
over overlaps (patch resolution, tagged RSCLIP_HEATMAP=patch): ``heatmap.tif`` for one source, ``heatmap_<n>_<name>.tif``
for several.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from .atomic import Final, final_path, open_outputs
from .bundle import Bundle
from .default_bundle import as_bundle
from .errors import InputError
from .index import Index, build_index, check_one_precision
from .nms import nms
from .options import JobOptions, RasterOptions, RunOptions, TilingOptions, split_options
from .progress import Progress

NEGATIVE_WEIGHT = 0.5
HITS_FILE = "hits.gpkg"
HITS_LAYER = "hits"
HEATMAP_FILE = "heatmap.tif"
# Patch embeddings scored at once for a patch-resolution heat map, as float32 bytes: a number of tiles would not
# bound it (4096 tiles are 64 MiB with the tiny bundle's 8x8 x 64 patches but 1.6 GiB with ViT-B/16's 14x14 x 512).
PATCH_CHUNK_BYTES = 64 << 20
# The files a search writes (and, with overwrite, replaces) in its output folder; other files stay.
OUTPUT_FILES = (HITS_FILE, HEATMAP_FILE, "heatmap_*.tif")
# Candidates per source before NMS: generous so that K distinct places survive suppression.
_CANDIDATE_FACTOR = 20
_MIN_CANDIDATES = 64
_DENSIFY = 8  # points per tile edge when reprojecting outlines
_NEGATIVE_SPLIT = re.compile(r"(?:^|\s)-(?=\S)")
IMAGE_FILE_MAX_PX = 4096


@dataclass
class Hit:
    rank: int
    score: float
    source: str
    tile: int
    bounds: tuple[float, float, float, float]  # in the source's CRS
    crs_wkt: str


@dataclass
class SearchResult:
    hits: list[Hit]
    gpkg_path: Path
    heatmap_path: Optional[Path]
    provider: str
    timings: dict[str, float]
    query: dict
    heatmap_paths: list[Path] = field(default_factory=list)
    indexes: list[dict] = field(default_factory=list)
    precision: str = "fp32"

    def to_dict(self) -> dict:
        return {
            "gpkg": str(self.gpkg_path),
            "heatmap": str(self.heatmap_path) if self.heatmap_path else None,
            "heatmaps": [str(p) for p in self.heatmap_paths],
            "provider": self.provider,
            "precision": self.precision,
            "timings": self.timings,
            "query": self.query,
            "hits": [
                {"rank": h.rank, "score": round(h.score, 6), "source": h.source, "tile": h.tile, "bounds": list(h.bounds)}
                for h in self.hits
            ],
            "indexes": self.indexes,
        }


def _normalise(v: np.ndarray, what: str) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32).reshape(-1)
    n = float(np.linalg.norm(v))
    if not np.isfinite(n) or n < 1e-12:
        raise ValueError(f"the {what} query vector is zero or not finite; give a query with content")
    return v / np.float32(n)


# --- query vectors ---------------------------------------------------------------------------------
def split_negatives(text: str) -> tuple[str, list[str]]:
    """'harbour -ships -oil tanks' -> ('harbour', ['ships', 'oil tanks']); hyphenated words stay whole."""
    parts = _NEGATIVE_SPLIT.split(text)
    positive = parts[0].strip()
    return positive, [p.strip() for p in parts[1:] if p.strip()]


def text_query_vector(
    bundle: Union[Bundle, str, os.PathLike, None],
    text: str,
    negative: Optional[Sequence[str]] = None,
    lang: str = "en",
    negative_weight: float = NEGATIVE_WEIGHT,
    provider: str = "auto",
) -> np.ndarray:
    """Prompt-ensembled, L2-normalised text query [D]; '-term' in ``text`` and ``negative`` are subtracted."""
    from .classes import ClassSpec
    from .text import spec_embeddings

    b = as_bundle(bundle)
    positive, inline_neg = split_negatives(text or "")
    negatives = [*inline_neg, *(n.strip() for n in (negative or []) if n and n.strip())]
    if not positive:
        raise ValueError(f"the text query {text!r} has no positive term; e.g. 'harbour -ships'")
    # Each phrase is one "class": mean over the bundle's templates, renormalised (CLIP's zero-shot head).
    emb = spec_embeddings(b, [ClassSpec(p) for p in (positive, *negatives)], lang=lang, provider=provider)
    q = emb[0]
    if negatives:
        q = q - np.float32(negative_weight) * _normalise(emb[1:].mean(axis=0), "negative")
    return _normalise(q, "text")


def _window_around(source, x: float, y: float, tile_px: int):
    """Tile-sized window centred on map point (x, y), shifted inward to lie inside the raster when it fits."""
    from rasterio.windows import Window

    col, row = ~source.transform * (x, y)
    if not (0 <= col < source.width and 0 <= row < source.height):
        b = source.bounds
        raise ValueError(
            f"point ({x}, {y}) lies outside the raster {source.path} (bounds {tuple(round(v, 3) for v in b)} "
            f"in {source.crs}); give the point in the raster's CRS"
        )
    c0 = int(np.floor(col - tile_px / 2))
    r0 = int(np.floor(row - tile_px / 2))
    c0 = min(max(c0, 0), max(source.width - tile_px, 0))
    r0 = min(max(r0, 0), max(source.height - tile_px, 0))
    return Window(c0, r0, tile_px, tile_px)


def image_query_vector(
    bundle: Union[Bundle, str, os.PathLike, None],
    *,
    raster: Union[str, os.PathLike, None] = None,
    point: Optional[tuple[float, float]] = None,
    box: Optional[tuple[float, float, float, float]] = None,
    image_file: Union[str, os.PathLike, None] = None,
    reading: Optional[RasterOptions] = None,
    tiling: Optional[TilingOptions] = None,
    run: Optional[RunOptions] = None,
    **options: Any,
) -> np.ndarray:
    """L2-normalised embedding [D] of an example: a tile around ``point`` or the ``box`` of ``raster``
    (map coordinates in the raster's CRS), or a whole ``image_file`` (JPEG/PNG or any GDAL raster).

    The encoder is the one matching the example's sensor (or ``tiling.modality``): a Sentinel-1 example is
    embedded by the ``s1-grd`` encoder and can then search Sentinel-2 indexes (cross-modal). ``reading``
    holds the raster options (``raster`` is the example raster's path here).
    """
    from rasterio.errors import RasterioError

    from .errors import read_failure
    from .pipeline import choose_encoder, preprocess_tile
    from .runtime import EncoderSession
    from .tiling import extent_window, tile_size_px_for

    opts = split_options(reading, tiling, run, options, where="image_query_vector")
    b = as_bundle(bundle)
    chosen = [k for k, v in (("point", point), ("box", box), ("image_file", image_file)) if v is not None]
    if len(chosen) != 1:
        raise ValueError(
            f"give exactly one of point (with raster), box (with raster) or image_file for an image query, got {chosen or 'none'}"
        )
    if image_file is not None:
        path = Path(image_file)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such image file; give a JPEG/PNG or a GDAL raster")
        src = opts.raster.open(path)
    else:
        if raster is None:
            raise ValueError("a point or box query needs the raster it refers to (--query-raster)")
        src = opts.raster.open(raster)
    with src:
        spec = choose_encoder(b, src, opts.tiling.modality)
        if image_file is not None:
            from rasterio.windows import Window

            if max(src.width, src.height) > IMAGE_FILE_MAX_PX:
                raise ValueError(
                    f"{image_file}: {src.width}x{src.height} px is too large for one example image; "
                    "crop it, or pass the raster with --box"
                )
            window = Window(0, 0, src.width, src.height)
        elif point is not None:
            window = _window_around(src, float(point[0]), float(point[1]),
                                    tile_size_px_for(spec, src, opts.tiling.tile_size_m))
        else:
            window = extent_window(src, box)  # type: ignore[arg-type]
        try:
            raw = src.read_for(spec, window)
        except RasterioError as exc:
            raise read_failure(src.path, exc) from exc
        if np.isnan(raw).all():
            raise ValueError(f"the query area of {src.path} holds no data (all no-data); choose another place")
        x = preprocess_tile(raw, spec)[None]
    sess = EncoderSession(b, spec.modality, provider=opts.run.provider, precision=opts.run.precision)
    return _normalise(sess.embed(x)[0], "image")


# --- search ----------------------------------------------------------------------------------------
def _reproject_ring(ring: np.ndarray, src_wkt: str, dst_wkt: str) -> np.ndarray:
    from rasterio.crs import CRS
    from rasterio.warp import transform

    xs, ys = transform(CRS.from_wkt(src_wkt), CRS.from_wkt(dst_wkt), ring[:, 0].tolist(), ring[:, 1].tolist())
    return np.stack([np.asarray(xs), np.asarray(ys)], 1)


def _densified_ring(bounds: Sequence[float], n: int = _DENSIFY) -> np.ndarray:
    xmin, ymin, xmax, ymax = bounds
    t = np.linspace(0.0, 1.0, n, endpoint=False)
    bottom = np.stack([xmin + (xmax - xmin) * t, np.full(n, ymin)], 1)
    right = np.stack([np.full(n, xmax), ymin + (ymax - ymin) * t], 1)
    top = np.stack([xmax - (xmax - xmin) * t, np.full(n, ymax)], 1)
    left = np.stack([np.full(n, xmin), ymax - (ymax - ymin) * t], 1)
    ring = np.concatenate([bottom, right, top, left])
    return np.vstack([ring, ring[:1]])


def _same_crs(a: str, b: str) -> bool:
    if a == b:
        return True
    from rasterio.crs import CRS

    try:
        return CRS.from_wkt(a) == CRS.from_wkt(b)
    except Exception:  # unparsable WKT: treat as different, reprojection will then explain
        return False


def _candidates(indexes: list[Index], scores: list[np.ndarray], per_source: int, out_wkt: str):
    """(source no., row, score, bbox in output CRS, ring in output CRS) of each source's best tiles."""
    from .index import top_k

    out = []
    for s, (idx, sc) in enumerate(zip(indexes, scores)):
        rows, vals = top_k(sc, per_source)
        bounds = idx.all_bounds(rows)
        same = _same_crs(idx.crs_wkt, out_wkt)
        for r, v, bb in zip(rows, vals, bounds):
            if same:
                ring = np.asarray(idx.tile_polygon(int(r)))
            else:
                ring = _reproject_ring(_densified_ring(bb), idx.crs_wkt, out_wkt)
            box = (ring[:, 0].min(), ring[:, 1].min(), ring[:, 0].max(), ring[:, 1].max())
            out.append((s, int(r), float(v), box, ring))
    return out


def rank_distinct(indexes: list[Index], query: np.ndarray, top_k: int, nms_iou: float, out_wkt: str,
                  scores: Optional[list[np.ndarray]] = None):
    """Best ``top_k`` distinct places over all indexes: list of (source no., row, score, ring in out CRS).
    ``scores`` (each index's scores for ``query``) when the caller has them already."""
    scores = scores if scores is not None else [idx.scores(query) for idx in indexes]
    total = sum(len(i) for i in indexes)
    per_source = max(_MIN_CANDIDATES, _CANDIDATE_FACTOR * top_k)
    while True:
        cands = _candidates(indexes, scores, per_source, out_wkt)
        if not cands:
            return []
        keep = nms(np.asarray([c[3] for c in cands]), np.asarray([c[2] for c in cands]), nms_iou, limit=top_k)
        exhausted = all(per_source >= len(i) for i in indexes)
        if len(keep) >= top_k or exhausted or per_source >= total:
            return [(cands[i][0], cands[i][1], cands[i][2], cands[i][4]) for i in keep]
        per_source *= 4  # suppression ate too many candidates: look deeper


def _heatmap(idx: Index, scores: np.ndarray, path: Path, query: Optional[np.ndarray] = None) -> Path:
    """The heat map of one index: per tile its score, or, when the index holds patch embeddings and ``query``
    is given, per patch (upsampled bilinearly to the tile's pixels); overlaps averaged."""
    from rasterio.windows import Window

    from .pipeline import resize_hw
    from .tiling import LogitAccumulator
    from .writers import geotiff_profile, make_cog, open_geotiff

    grid = idx.grid
    h, w = grid.out_shape
    acc = LogitAccumulator(grid, 1)
    patch_grid = idx.patch_grid if query is not None else None
    try:
        if patch_grid is None:
            for (c, r, tw, th), s in zip(idx.tiles.tolist(), scores.tolist()):
                acc.add(Window(c, r, tw, th), np.asarray([s], np.float32))
        else:
            gh, gw = patch_grid
            per_tile = 4 * int(np.prod(idx.patches.shape[1:]))  # float32 bytes of one tile's patches
            chunk = max(1, PATCH_CHUNK_BYTES // per_tile)
            for start in range(0, len(idx), chunk):  # chunks of the memory-mapped patches: bounded RAM
                stop = min(start + chunk, len(idx))
                ps = idx.patch_scores(query, slice(start, stop))
                for j, (c, r, tw, th) in enumerate(idx.tiles[start:stop].tolist()):
                    acc.add(Window(c, r, tw, th), resize_hw(ps[j].reshape(1, gh, gw), th, tw))
        profile = geotiff_profile(w, h, grid.out_transform, grid.crs, "float32", float("nan"))
        with open_geotiff(path, profile) as dst:
            what = ("patch score (p - 0.3 c).q of the search query" if patch_grid is not None
                    else "cosine similarity of the search query")
            dst.update_tags(RSCLIP_LAYER=what, SOURCE=idx.source_path,
                            RSCLIP_HEATMAP="patch" if patch_grid is not None else "tile")
            for win in acc.strips():
                dst.write(acc.averaged(win)[0], 1, window=win)
    finally:
        acc.close()
    # A Cloud-Optimised GeoTIFF with averaged overviews, like the class map: a scene-wide heat map opens fast.
    return make_cog(path, "average")


def heatmap_name(n: int, count: int, source: str) -> str:
    if count == 1:
        return HEATMAP_FILE
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(source).name)[:60]
    return f"heatmap_{n + 1}_{stem}.tif"


@dataclass(frozen=True)
class SearchJob:
    """What one search needs besides the sources, the query and the output folder (built by ``search``)."""

    bundle: Bundle
    top_k: int = 10
    nms_iou: float = 0.3
    heatmap: bool = False
    query_info: dict = field(default_factory=dict)
    options: JobOptions = field(default_factory=JobOptions)
    # Index rasters with patch embeddings (index.build_index dense_heatmap): heat maps at patch resolution.
    dense_heatmap: bool = False


def search(
    sources: Sequence[Union[str, os.PathLike, Index]],
    query_vector: np.ndarray,
    out_dir: Union[str, os.PathLike, Mapping[str, Path]],
    *,
    bundle: Union[Bundle, str, os.PathLike, None],
    top_k: int = 10,
    nms_iou: float = 0.3,
    heatmap: bool = False,
    raster: Optional[RasterOptions] = None,
    tiling: Optional[TilingOptions] = None,
    run: Optional[RunOptions] = None,
    progress: Optional[Progress] = None,
    overwrite: bool = False,
    query_info: Optional[dict] = None,
    dense_heatmap: bool = False,
    **options: Any,
) -> SearchResult:
    """Rank the tiles of all ``sources`` (indexed on demand) against ``query_vector``; write hits.gpkg.

    ``top_k`` distinct places (NMS at ``nms_iou``) across all sources, best first; ``heatmap`` also
    writes per-source similarity GeoTIFFs. ``out_dir`` is the final folder (or, for QGIS Processing, a
    mapping of file names, e.g. ``hits.gpkg``, to paths of their own; unmapped files are not kept): the
    files are staged on its file system and published as one unit (engine/atomic.py); on any error nothing
    of the run is left there. ``raster``/``tiling``/``run`` (engine/options.py; the earlier individual keywords are accepted
    too) apply to every source given as a path; ``tiling.modality=None`` lets each source use its own encoder.
    ``dense_heatmap``: sources given as paths are indexed with patch embeddings, and heat maps score patches.
    """
    progress = progress or Progress()
    opts = split_options(raster, tiling, run, options, where="search")
    if int(top_k) < 1:
        raise InputError(f"{{top_k}} must be at least 1, got {top_k}")
    if not sources:
        raise ValueError("no raster to search; give one or more rasters")
    b = as_bundle(bundle)
    q = _normalise(query_vector, "search")
    if q.shape[0] != b.manifest.embed_dim:
        raise ValueError(f"the query vector has {q.shape[0]} dimensions but bundle {b.manifest.name!r} embeds in {b.manifest.embed_dim}")
    job = SearchJob(b, int(top_k), nms_iou, heatmap, dict(query_info or {}), opts, bool(dense_heatmap))
    with open_outputs(out_dir, OUTPUT_FILES, overwrite=overwrite) as out:  # refuses a conflict before any work
        res = search_into(sources, q, job, out.path, out.destination, progress)
        progress.check()
        out.publish()
    progress.update(1.0, f"{len(res.hits)} hits")
    return res


def search_into(sources: Sequence[Union[str, os.PathLike, Index]], q: np.ndarray, job: SearchJob, write_dir: Path,
                final_dir: Final, progress: Progress) -> SearchResult:
    """Index, rank and write the outputs of ``job`` into ``write_dir`` (a staging folder); the result's paths
    are the final ones (atomic.final_path: in the folder ``final_dir``, or each at its own path when it maps
    names to paths), where the caller publishes them."""
    from .gpkg import Feature, Layer, write_gpkg

    t0 = time.perf_counter()
    b = job.bundle
    indexes: list[Index] = []
    n = len(sources)
    for i, s in enumerate(sources):
        progress.check()
        sub = progress.sub(0.9 * i / n, 0.9 * (i + 1) / n)
        if isinstance(s, Index):
            indexes.append(s)
        else:
            o = job.options
            indexes.append(build_index(s, b, raster=o.raster, tiling=o.tiling, run=o.run, progress=sub,
                                       dense_heatmap=job.dense_heatmap))
        if indexes[-1].dim != b.manifest.embed_dim:
            raise ValueError(f"index {indexes[-1].root} was built with another bundle ({indexes[-1].dim}-d); rebuild it")
    precision_used = check_one_precision(indexes)
    t_index = time.perf_counter()
    progress.update(0.9, "ranking")

    out_wkt = indexes[0].crs_wkt
    # One pass over each (memory-mapped) index: the ranking and the heat maps share the scores.
    scores = [idx.scores(q) for idx in indexes]
    ranked = rank_distinct(indexes, q, job.top_k, job.nms_iou, out_wkt, scores)
    hits = []
    features = []
    for rank, (s, row, score, ring) in enumerate(ranked, start=1):
        idx = indexes[s]
        bounds = idx.tile_bounds(row)
        hits.append(Hit(rank, score, idx.source_path, row, bounds, idx.crs_wkt))
        features.append(Feature([[(float(x), float(y)) for x, y in ring]],
                                {"rank": rank, "score": score, "source": idx.source_path, "tile": row,
                                 "crs": _crs_label(idx.crs_wkt)}))
    t_rank = time.perf_counter()

    write_gpkg(
        write_dir / HITS_FILE,
        [Layer(HITS_LAYER, out_wkt, {"rank": int, "score": float, "source": str, "tile": int, "crs": str}, features,
               description=str(job.query_info.get("text", "search hits")))],
    )
    heat_paths: list[Path] = []
    if job.heatmap:
        for i, idx in enumerate(indexes):
            progress.check()
            name = heatmap_name(i, len(indexes), idx.source_path)
            final = final_path(final_dir, name)
            if final is not None:  # a caller keeping only some heat maps (Processing: one) gets only those
                _heatmap(idx, scores[i], write_dir / name, q)
                heat_paths.append(final)
    t_write = time.perf_counter()
    providers = sorted({str(i.meta.get("provider")) for i in indexes})
    return SearchResult(
        hits=hits,
        gpkg_path=final_path(final_dir, HITS_FILE),
        heatmap_path=heat_paths[0] if heat_paths else None,
        heatmap_paths=heat_paths,
        provider=", ".join(providers),
        timings={
            "index_s": round(t_index - t0, 4),
            "rank_s": round(t_rank - t_index, 4),
            "write_s": round(t_write - t_rank, 4),
            "total_s": round(t_write - t0, 4),
        },
        query=dict(job.query_info),
        indexes=[i.summary() for i in indexes],
        precision=precision_used,
    )


def _crs_label(wkt: str) -> str:
    if not wkt:
        return ""
    from rasterio.crs import CRS

    try:
        crs = CRS.from_wkt(wkt)
        epsg = crs.to_epsg()
        return f"EPSG:{epsg}" if epsg else crs.to_string()[:200]
    except Exception:
        return wkt[:200]
