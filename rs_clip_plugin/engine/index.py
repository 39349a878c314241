"""Embedding index: tile embeddings of one raster, cached on disk with their provenance.

One index per (raster, bundle content, encoder modality, tiling, radiometry options) lives in
``cache_dir()/index/<key>/``::

    embeddings.npy   [N, D] float32 (default) or float16, L2-normalised, one row per encoded tile
    tiles.npy        [N, 4] int32: window col, row, width, height on the raster's working grid
    patches.npy      only with ``dense_heatmap``: [N, P, D] float16, per tile and patch p - 0.3 c (p the
                     normalised patch embedding, c the dense class token: SegEarth-OV's bias alleviation,
                     classify.GLOBAL_BIAS_LAMBDA), so a query's patch scores are one product (patches @ q)
    meta.json        provenance (below), written last

``key`` hashes the identity items (resolved source path, bundle digest, modality, tile/stride pixels,
extent window, sensor, bands, Sentinel-2 DN offset, SAR units, storage dtype, encoder precision), so a
different bundle, tiling or precision gets its own index and switching back reuses the old one. Embeddings of
one precision (fp32, fp16, int8 graph) are never mixed: one index holds one, and ``check_one_precision``
refuses a search over indexes of several. The *freshness* items (size and
modification time of every file behind the raster) are checked on every open: a raster changed since
the index was built is re-indexed in place. Freshness follows the pixels, not metadata: a VRT counts by
its band definitions (its XML without <Metadata>, statistics, histograms and GDAL's cached source
properties) and the files behind it, never by its own mtime, because QGIS writes statistics into a VRT
(changing its mtime) in every session. Tiles that are mostly no-data are not encoded and have no row.

Never trusted: ``meta.json`` records the byte size and sha256 of both arrays; an index whose files are
missing, truncated or altered (or whose meta does not parse) is rebuilt. The hash is computed once per
file version per process, so repeated queries pay only for a stat. Builds go to a hidden staging folder
beside the index (engine/atomic.py: staged_dir) that is renamed into place when complete: a cancelled or
failed build leaves nothing behind, and the folder of a killed build is removed by the next build.
A cache that cannot be written (read-only, full) is an OutputError naming it and RSCLIP_CACHE.
Patch embeddings cost P x D x 2 bytes per tile (tiny test bundle 8x8 patches x 64: 8 KiB, 32x its pooled
row; ViT-B/32 at 224 px 7x7 x 512: 49 KiB; a full 10980 px Sentinel-2 tile at 64 px tiles, 29 929 tiles:
245 MiB / 1.5 GiB), so they are opt-in: ``rsclip index/search --dense-heatmap``; heat maps then score
patches (search._heatmap).
Queries memory-map ``embeddings.npy`` and score it in chunks (bounded RAM). float32 is the default because
numpy has no BLAS kernel for float16: scoring 1M x 64 takes ~40 ms in float32 but ~1 s in float16 on one
core. float16 halves the disk for very large indexes; its chunks are upcast for scoring.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
from affine import Affine

from .atomic import atomic_write_text, staged_dir, write_failure
from .bundle import Bundle, sha256_file
from .default_bundle import as_bundle
from .errors import InputError, OutputError
from .options import JobOptions, RasterOptions, RunOptions, TilingOptions, split_options
from .progress import Progress
from .settings import cache_dir
from .sources import source_id

INDEX_FORMAT = 1
EMBEDDINGS = "embeddings.npy"
TILES = "tiles.npy"
PATCHES = "patches.npy"
META = "meta.json"
STORAGE_DTYPES = ("float16", "float32")
# Bytes per chunk when the filled rows of a build are copied out (_keep_filled_rows).
COPY_CHUNK_BYTES = 64 << 20
# Rows per matrix-vector product when scoring a memory-mapped index: bounds RAM for 1M+ rows.
SCORE_CHUNK = 1 << 16

_verified: dict[str, tuple[int, int, str]] = {}
_verified_lock = threading.Lock()


class IndexCacheError(ValueError):
    """A cached index that cannot be trusted (missing, stale, corrupt); callers rebuild it."""


# The meta.json keys an opened index relies on, with their JSON types: valid JSON of another shape (a list,
# null, a missing key, a string where a number belongs) is a corrupt index, rebuilt like any other.
_NUMBER = (int, float)
_META_SCHEMA: dict[str, tuple[type, ...]] = {
    "format": (int,),
    "source": (str,),
    "modality": (str,),
    "dtype": (str,),
    "crs_wkt": (str,),
    "n_tiles": (int,),
    "grid_tiles": (int,),
    "dim": (int,),
    "tile_px": (int,),
    "stride_px": (int,),
    "embeddings_bytes": (int,),
    "tiles_bytes": (int,),
    "embeddings_sha256": (str,),
    "tiles_sha256": (str,),
    "transform": (list,),
    "out_transform": (list,),
    "out_window": (list,),
}
_META_LISTS = {"transform": (6, _NUMBER), "out_transform": (6, _NUMBER), "out_window": (4, (int,))}


def _check_meta_shape(meta: object, meta_path: Path) -> dict:
    """``meta`` if it has the shape of an index's meta.json, else IndexCacheError naming what is wrong."""
    if not isinstance(meta, dict):
        raise IndexCacheError(f"{meta_path}: a JSON {type(meta).__name__}, not an object")
    for key, types in _META_SCHEMA.items():
        value = meta.get(key)
        # bool is an int subclass in Python; a true/false is never a count
        if not isinstance(value, types) or isinstance(value, bool):
            raise IndexCacheError(f"{meta_path}: '{key}' is missing or not a {'/'.join(t.__name__ for t in types)}")
    for key, (n, types) in _META_LISTS.items():
        value = meta[key]
        if len(value) != n or not all(isinstance(v, types) and not isinstance(v, bool) for v in value):
            raise IndexCacheError(f"{meta_path}: '{key}' is not a list of {n} numbers")
    if min(meta["n_tiles"], meta["dim"], meta["tile_px"], meta["stride_px"]) < 0 or meta["dim"] == 0:
        raise IndexCacheError(f"{meta_path}: negative or zero sizes")
    if meta["dtype"] not in STORAGE_DTYPES:
        raise IndexCacheError(f"{meta_path}: dtype {meta['dtype']!r} is not one of {STORAGE_DTYPES}")
    return meta


def index_root() -> Path:
    return cache_dir() / "index"


def _sha256_cached(path: Path) -> str:
    """sha256 of a file, remembered per (size, mtime) so a process hashes each file version once."""
    st = path.stat()
    key = str(path)
    with _verified_lock:
        hit = _verified.get(key)
    if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
        return hit[2]
    digest = sha256_file(path)
    with _verified_lock:
        _verified[key] = (st.st_size, st.st_mtime_ns, digest)
    return digest


def source_files(source) -> list[Path]:
    """The files whose change makes an index stale: the file itself, or every band file of a folder/SAFE."""
    from .sources import discover, gdal_path

    if gdal_path(source.path) is not None:
        return []  # a remote or virtual file: no cheap stat; treated as immutable (COGs, STAC assets are)
    path = Path(source.path)
    if path.is_file():
        return [path.resolve()]
    files = set()
    for ref in discover(path).bands:
        p = Path(ref.uri)
        if p.is_file():
            files.add(p.resolve())
    return sorted(files) or [path.resolve()]


def fingerprint(files: Sequence[Path]) -> list[dict]:
    """Freshness entries of the files behind a raster: size and mtime, or for a VRT its pixel definition
    and the entries of the files behind it (see the module docstring)."""
    out: list[dict] = []
    for p in files:
        _fingerprint_into(Path(p), out, set())
    return out


# VRT elements that do not change pixel values: what GDAL/QGIS write when they compute statistics or
# re-serialise a VRT (PAM metadata, histograms, cached source sizes, colour interpretation, overview lists).
_VRT_NOT_PIXELS = frozenset({"Metadata", "Histograms", "SourceProperties", "ColorInterp", "OverviewList"})
# Attributes GDAL adds when it re-serialises a VRT that only spell out a default (the SRS axis mapping), or
# that only say how a file name is written (relativeToVRT: names are compared resolved).
_VRT_IGNORED_ATTRS = frozenset({"dataAxisToSRSAxisMapping", "relativeToVRT"})


def _numbers_or_text(text: str) -> object:
    """Comma-separated numbers as floats (GDAL rewrites a GeoTransform as '  3.6e+05,  1.0e+01, ...')."""
    try:
        return [float(v) for v in text.split(",")] if text else text
    except ValueError:
        return text


def _fingerprint_into(path: Path, out: list[dict], seen: set[str]) -> None:
    key = str(path)
    if key in seen:
        return
    seen.add(key)
    if not path.is_file():
        out.append({"path": key})  # a /vsi... source: identified by name only
        return
    if path.suffix.lower() == ".vrt":
        definition, sources = _vrt_definition(path)
        if definition is not None:
            out.append({"path": key, "vrt_sha256": definition})
            for src in sources:
                _fingerprint_into(src, out, seen)
            return
    st = path.stat()
    out.append({"path": key, "size": st.st_size, "mtime_ns": st.st_mtime_ns})


def _vrt_definition(path: Path) -> tuple[Optional[str], list[Path]]:
    """(sha256 of the VRT's pixel definition, the files it reads), or (None, []) when it does not parse.

    Source file names are resolved (relativeToVRT) so moving nothing but the VRT's text around changes
    nothing, and whitespace, attribute order and the elements in _VRT_NOT_PIXELS are ignored."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError):
        return None, []
    sources: list[Path] = []

    def canon(el: ET.Element) -> list:
        text = (el.text or "").strip()
        if el.tag == "SourceFilename":
            p = Path(text)
            if el.get("relativeToVRT") == "1":
                p = path.parent / text
            p = p.resolve() if not text.startswith("/vsi") else Path(text)
            sources.append(p)
            text = str(p)
        attrs = sorted((k, v) for k, v in el.attrib.items() if k not in _VRT_IGNORED_ATTRS)
        return [el.tag, attrs, _numbers_or_text(text), [canon(c) for c in el if c.tag not in _VRT_NOT_PIXELS]]

    digest = hashlib.sha256(json.dumps(canon(root)).encode()).hexdigest()
    return digest, list(dict.fromkeys(sources))


def _key(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


@dataclass
class Index:
    """An opened, verified index. ``embeddings`` is memory-mapped (read-only)."""

    root: Path
    meta: dict
    embeddings: np.ndarray
    tiles: np.ndarray
    reused: bool = False
    # [N, P, D] float16 bias-alleviated patch embeddings (memory-mapped), when built with dense_heatmap.
    patches: Optional[np.ndarray] = None
    _grid: Any = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.tiles.shape[0])

    @property
    def source_path(self) -> str:
        return self.meta["source"]

    @property
    def modality(self) -> str:
        return self.meta["modality"]

    @property
    def crs_wkt(self) -> str:
        return self.meta["crs_wkt"]

    @property
    def transform(self) -> Affine:
        return Affine(*self.meta["transform"])

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def out_window(self) -> tuple[int, int, int, int]:
        """(col, row, width, height) of the indexed extent on the working grid."""
        return tuple(self.meta["out_window"])  # type: ignore[return-value]

    @property
    def grid(self):
        """The tile grid of the indexed extent (a tiling.TileGrid): the one the build used, or, for an index
        opened from the cache, made once from its meta (heat maps are written on it)."""
        if self._grid is None:
            from rasterio.crs import CRS
            from rasterio.windows import Window

            from .tiling import TileGrid

            m = self.meta
            crs = CRS.from_wkt(self.crs_wkt) if self.crs_wkt else None
            self._grid = TileGrid([], int(m["tile_px"]), int(m["stride_px"]), Window(*self.out_window),
                                  Affine(*m["out_transform"]), crs)
        return self._grid

    def tile_bounds(self, i: int) -> tuple[float, float, float, float]:
        b = self.all_bounds(np.asarray([i]))[0]
        return (float(b[0]), float(b[1]), float(b[2]), float(b[3]))

    def tile_polygon(self, i: int) -> list[tuple[float, float]]:
        """Closed ring of tile i's four corners in the source CRS (exact also for rotated grids)."""
        col, row, w, h = (int(v) for v in self.tiles[i])
        t = self.transform
        corners = [(col, row + h), (col + w, row + h), (col + w, row), (col, row), (col, row + h)]
        pts = [t * c for c in corners]
        return [(float(x), float(y)) for x, y in pts]

    def all_bounds(self, rows: Optional[np.ndarray] = None) -> np.ndarray:
        """[n, 4] (xmin, ymin, xmax, ymax) of the given tiles (default all) in the source CRS."""
        tl = self.tiles if rows is None else self.tiles[np.asarray(rows, dtype=np.int64)]
        tl = tl.astype(np.float64)
        t = self.transform
        cols = np.stack([tl[:, 0], tl[:, 0] + tl[:, 2], tl[:, 0], tl[:, 0] + tl[:, 2]], 1)
        rws = np.stack([tl[:, 1], tl[:, 1], tl[:, 1] + tl[:, 3], tl[:, 1] + tl[:, 3]], 1)
        xs = t.a * cols + t.b * rws + t.c
        ys = t.d * cols + t.e * rws + t.f
        return np.stack([xs.min(1), ys.min(1), xs.max(1), ys.max(1)], 1)

    def scores(self, query: np.ndarray) -> np.ndarray:
        """Cosine similarity [N] float32 of every tile with an L2-normalised query vector [D]."""
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.dim:
            raise ValueError(f"query vector has {q.shape[0]} dimensions but the index {self.root.name} has {self.dim}")
        return score_rows(self.embeddings, q)

    @property
    def patch_grid(self) -> Optional[tuple[int, int]]:
        """(rows, cols) of the stored patch embeddings per tile; None when the index holds none."""
        p = self.meta.get("patches")
        return (int(p["grid"][0]), int(p["grid"][1])) if self.patches is not None and p else None

    def patch_scores(self, query: np.ndarray, rows: slice) -> np.ndarray:
        """[n, P] float32 patch scores (p - 0.3 c).q of the tiles in ``rows`` (float16 upcast for BLAS)."""
        if self.patches is None:
            raise ValueError(f"index {self.root.name} holds no patch embeddings; build it with dense_heatmap")
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        return np.asarray(self.patches[rows], dtype=np.float32) @ q

    def top_k(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows and scores of the k best tiles, best first (argpartition, then a sort of k)."""
        return top_k(self.scores(query), k)

    def summary(self) -> dict:
        m = self.meta
        return {
            "index": str(self.root),
            "source": m["source"],
            "modality": m["modality"],
            "tiles": len(self),
            "grid_tiles": m["grid_tiles"],
            "dim": m["dim"],
            "dtype": m["dtype"],
            "tile_px": m["tile_px"],
            "stride_px": m["stride_px"],
            "tile_size_m": m.get("tile_size_m"),
            "provider": m.get("provider"),
            "precision": index_precision(m),
            "device_description": m.get("device_description"),
            "seconds": m.get("seconds"),
            "created": m.get("created"),
            "reused": self.reused,
            # Patch embeddings for heat maps at patch resolution: grid and bytes on disk, or None.
            "patches": ({"grid": m["patches"]["grid"], "bytes": m["patches"]["bytes"]} if self.patches is not None
                        else None),
        }


def index_precision(meta: dict) -> str:
    """The precision an index's embeddings were computed at (indexes from before precisions existed: fp32)."""
    return str(meta.get("precision_used") or meta.get("precision") or "fp32")


def check_one_precision(indexes: Sequence[Index]) -> str:
    """The precision of ``indexes``, checked per encoder: indexes of one encoder built at several precisions are
    an InputError (their scores differ in the last decimals, so a ranking across them would be biased).
    Different encoders may differ (each runs at the precision its own recorded agreement allows; their
    vectors share the joint space): the result then names each, e.g. 'rgb fp32, s2-l2a int8'."""
    from .errors import InputError

    by_encoder: dict[str, dict[str, list[str]]] = {}
    for i in indexes:
        by_encoder.setdefault(i.modality, {}).setdefault(index_precision(i.meta), []).append(Path(i.source_path).name)
    for modality, found in by_encoder.items():
        if len(found) > 1:
            detail = "; ".join(f"{p}: {', '.join(names)}" for p, names in sorted(found.items()))
            raise InputError(
                f"the {modality} indexes were built at different precisions ({detail}); one search mixes none: "
                "set {precision} to one value (fp32 or int8) so every raster of that sensor is indexed alike"
            )
    used = {m: next(iter(found)) for m, found in by_encoder.items()}
    if len(set(used.values())) <= 1:
        return next(iter(used.values()), "fp32")
    return ", ".join(f"{m} {p}" for m, p in sorted(used.items()))


def score_rows(embeddings: np.ndarray, query: np.ndarray) -> np.ndarray:
    """embeddings [N, D] @ query [D] as float32, chunk by chunk (float16 chunks upcast to use BLAS)."""
    q = np.asarray(query, dtype=np.float32).reshape(-1)
    n = embeddings.shape[0]
    if embeddings.dtype == np.float32 and not isinstance(embeddings, np.memmap):
        return embeddings @ q
    out = np.empty(n, np.float32)
    for s in range(0, n, SCORE_CHUNK):
        e = min(s + SCORE_CHUNK, n)
        out[s:e] = np.asarray(embeddings[s:e], dtype=np.float32) @ q
    return out


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores).reshape(-1)
    n = scores.shape[0]
    k = max(0, min(int(k), n))
    if k == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    part = np.argpartition(-scores, k - 1)[:k] if k < n else np.arange(n)
    order = part[np.argsort(-scores[part], kind="stable")]
    return order.astype(np.int64), scores[order].astype(np.float32)


def open_index(root: Path, expect: Optional[dict] = None) -> Index:
    """Open and verify an index directory; raise IndexCacheError saying what is wrong if it cannot be trusted."""
    root = Path(root)
    meta_path = root / META
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexCacheError(f"{meta_path}: unreadable ({exc})") from exc
    if isinstance(meta, dict) and meta.get("format") != INDEX_FORMAT:
        raise IndexCacheError(f"{meta_path}: index format {meta.get('format')} is not {INDEX_FORMAT}")
    meta = _check_meta_shape(meta, meta_path)
    if expect is not None:
        changed = sorted(k for k, v in expect.items() if meta.get(k) != v)
        if changed:
            raise IndexCacheError(f"{root}: provenance changed ({', '.join(changed)})")
    for name, size_key, sha_key in ((EMBEDDINGS, "embeddings_bytes", "embeddings_sha256"), (TILES, "tiles_bytes", "tiles_sha256")):
        p = root / name
        if not p.is_file():
            raise IndexCacheError(f"{p}: missing")
        if p.stat().st_size != meta.get(size_key):
            raise IndexCacheError(f"{p}: {p.stat().st_size} bytes, meta says {meta.get(size_key)} (truncated or altered)")
        if _sha256_cached(p) != meta.get(sha_key):
            raise IndexCacheError(f"{p}: sha256 differs from meta.json (corrupt or altered)")
    try:
        emb = np.load(root / EMBEDDINGS, mmap_mode="r")
        tiles = np.load(root / TILES)
    except (OSError, ValueError) as exc:
        raise IndexCacheError(f"{root}: arrays unreadable ({exc})") from exc
    n = meta["n_tiles"]
    if emb.shape != (n, meta["dim"]) or tiles.shape != (n, 4) or emb.dtype != np.dtype(meta["dtype"]):
        raise IndexCacheError(f"{root}: array shapes {emb.shape}, {tiles.shape} do not match meta ({n} tiles)")
    return Index(root, meta, emb, tiles, patches=_open_patches(root, meta, n))


def _open_patches(root: Path, meta: dict, n: int) -> Optional[np.ndarray]:
    """The verified patch array of an index built with dense_heatmap (memory-mapped), else None."""
    pm = meta.get("patches")
    if pm is None:
        return None
    p = root / PATCHES
    try:
        grid, size, sha = [int(v) for v in pm["grid"]], int(pm["bytes"]), str(pm["sha256"])
    except (KeyError, TypeError, ValueError) as exc:
        raise IndexCacheError(f"{root / META}: malformed 'patches' entry ({exc})") from exc
    if not p.is_file() or p.stat().st_size != size or _sha256_cached(p) != sha:
        raise IndexCacheError(f"{p}: missing, truncated or altered")
    try:
        arr = np.load(p, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise IndexCacheError(f"{p}: unreadable ({exc})") from exc
    if arr.shape != (n, grid[0] * grid[1], meta["dim"]) or arr.dtype != np.float16:
        raise IndexCacheError(f"{p}: shape {arr.shape} does not match meta ({n} tiles, grid {grid})")
    return arr


def build_index(
    source,
    bundle: Union[Bundle, str, os.PathLike, None],
    *,
    raster: Optional[RasterOptions] = None,
    tiling: Optional[TilingOptions] = None,
    run: Optional[RunOptions] = None,
    progress: Optional[Progress] = None,
    force: bool = False,
    dtype: str = "float32",
    dense_heatmap: bool = False,
    **options: Any,
) -> Index:
    """The index of ``source`` (a raster path or an open RasterSource) for ``bundle``; built only when needed.

    ``raster``/``tiling``/``run``: see engine/options.py (the earlier individual keywords are accepted too).
    A valid cached index with the same provenance is reused (``Index.reused``); a stale, corrupt or
    missing one is (re)built atomically. ``force`` rebuilds regardless. ``dense_heatmap`` also stores patch
    embeddings (see the module docstring; needs an encoder with dense outputs, run as fp32).
    """
    from .pipeline import plan_tiles
    from .raster import RasterSource

    progress = progress or Progress()
    opts = split_options(raster, tiling, run, options, where="build_index")
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"index dtype must be one of {STORAGE_DTYPES}, got {dtype!r}")
    bundle = as_bundle(bundle)
    own = not isinstance(source, RasterSource)
    src = opts.raster.open(source) if own else source
    try:
        from .runtime import EncoderSession

        spec, grid = plan_tiles(bundle, src, opts.tiling)
        if dense_heatmap and not spec.dense:
            raise InputError(
                f"{{dense_heatmap}} needs an encoder with dense outputs, and the {spec.modality!r} encoder of bundle "
                f"{bundle.manifest.name!r} has none; leave it off (heat maps per tile), or re-export the bundle "
                "with rsclip-train export")
        # The precision the encoder will run at is part of the index's identity (the graph loads lazily, later);
        # a dense session runs the fp32 graph (EncoderSession refuses int8 with dense outputs, naming the fix).
        precision = EncoderSession(bundle, spec.modality, provider=opts.run.provider, precision=opts.run.precision,
                                   dense=bool(dense_heatmap)).planned_precision
        ow = grid.out_window
        identity = {
            "format": INDEX_FORMAT,
            "source": source_id(src.path),
            "bundle_digest": bundle.digest,
            "modality": spec.modality,
            "tile_px": int(grid.tile_px),
            "stride_px": int(grid.stride_px),
            "out_window": [int(ow.col_off), int(ow.row_off), int(ow.width), int(ow.height)],
            "sensor": src.sensor,
            "bands": list(src.band_names),
            "s2_offset_dn": src.s2_offset_dn,
            "sar_units": src.sar_units,
            "dtype": dtype,
            "precision": precision,
        }
        if dense_heatmap:  # only then: indexes without patches keep the keys they always had
            identity["dense_heatmap"] = True
        files = fingerprint(source_files(src))
        root = index_root() / _key(identity)
        if not force and (root / META).is_file():
            try:
                idx = open_index(root, expect={**identity, "files": files})
                idx.reused = True
                progress.update(1.0, "index reused")
                return idx
            except IndexCacheError:
                pass  # stale or corrupt: rebuilt below, never trusted
        try:
            return _build(root, identity, files, src, bundle, spec, grid, opts, progress, dtype)
        except BaseException as exc:
            if write_failure(exc):
                raise OutputError(
                    f"cannot write the index cache {root.parent}: {exc}; free some space there or set RSCLIP_CACHE "
                    "to a writable folder") from exc
            raise
    finally:
        if own:
            src.close()


def _keep_filled_rows(all_path: Path, final: Path, count: int) -> None:
    """Publish the first ``count`` rows of the array at ``all_path`` (one row per grid tile, filled in order) as
    ``final``: renamed when every row was filled, else (no-data tiles skipped) copied in chunks of at most
    COPY_CHUNK_BYTES, so RAM stays bounded and a full array is never written twice."""
    src = np.load(all_path, mmap_mode="r")
    if count == src.shape[0]:
        del src
        os.replace(all_path, final)
        return
    out = np.lib.format.open_memmap(final, mode="w+", dtype=src.dtype, shape=(count, *src.shape[1:]))
    step = max(1, COPY_CHUNK_BYTES // max(1, src[0].nbytes))
    for s in range(0, count, step):
        out[s : s + step] = src[s : min(s + step, count)]
    out.flush()
    del out, src
    all_path.unlink()


def _build(root: Path, identity: dict, files: list, src, bundle: Bundle, spec, grid, opts: JobOptions,
           progress: Progress, dtype: str) -> Index:
    from .pipeline import embed_tiles
    from .runtime import EncoderSession

    t0 = time.perf_counter()
    tile_size_m = opts.tiling.tile_size_m
    # Built in a hidden sibling (stale ones of killed builds are removed first) and swapped in; another
    # process finishing the same build first is fine: its index is the same.
    with staged_dir(root, complete=lambda d: (d / META).is_file()) as tmp:
        dense = bool(identity.get("dense_heatmap"))
        session = EncoderSession(bundle, spec.modality, provider=opts.run.provider, precision=opts.run.precision,
                                 dense=dense)
        n_grid, dim = len(grid), bundle.manifest.embed_dim
        full = np.lib.format.open_memmap(tmp / "all.npy", mode="w+", dtype=dtype, shape=(max(n_grid, 1), dim))
        patches = None
        if dense:
            from .classify import GLOBAL_BIAS_LAMBDA

            gh, gw = spec.dense_grid
            # Written in tile order as they come; no-data tiles leave the tail unused (cut below, like the rows).
            patches = np.lib.format.open_memmap(tmp / "all_patches.npy", mode="w+", dtype=np.float16,
                                                shape=(max(n_grid, 1), gh * gw, dim))
        rows = np.zeros((n_grid, 4), np.int32)
        count = 0
        for tile_indices, emb in embed_tiles(src, bundle, spec.modality, grid, session=session, progress=progress,
                                             batch_size=opts.run.batch_size, workers=opts.run.threads,
                                             encode=session.embed_dense if dense else None):
            progress.check()
            idx = np.asarray(tile_indices, dtype=np.int64).reshape(-1)
            m = idx.shape[0]
            if patches is not None:
                patches[count : count + m] = emb.patches - np.float32(GLOBAL_BIAS_LAMBDA) * emb.cls[:, None, :]
                emb = emb.pooled
            full[count : count + m] = np.asarray(emb, dtype=np.float32)
            for j, ti in enumerate(idx):
                w = grid.windows[int(ti)]
                rows[count + j] = (int(w.col_off), int(w.row_off), int(w.width), int(w.height))
            count += m
        progress.check()
        full.flush()
        del full  # no open mapping while the file is renamed (Windows refuses)
        emb_path = tmp / EMBEDDINGS
        _keep_filled_rows(tmp / "all.npy", emb_path, count)
        np.save(tmp / TILES, rows[:count])
        patch_meta = None
        if patches is not None:
            patches.flush()
            del patches
            _keep_filled_rows(tmp / "all_patches.npy", tmp / PATCHES, count)
            patch_meta = {"grid": list(spec.dense_grid), "dtype": "float16", "bytes": (tmp / PATCHES).stat().st_size,
                          "sha256": sha256_file(tmp / PATCHES), "bias_lambda": GLOBAL_BIAS_LAMBDA,
                          "variant": spec.dense.get("variant")}
        t = grid.out_transform
        src_t = src.transform
        meta = {
            **identity,
            "files": files,
            "n_tiles": int(count),
            "grid_tiles": int(n_grid),
            "dim": int(dim),
            "tile_size_m": float(tile_size_m) if tile_size_m is not None else spec.tile_size_m,
            "crs_wkt": src.crs.to_wkt() if src.crs else "",
            "transform": [src_t.a, src_t.b, src_t.c, src_t.d, src_t.e, src_t.f],
            "out_transform": [t.a, t.b, t.c, t.d, t.e, t.f],
            "width": int(src.width),
            "height": int(src.height),
            "bundle_name": bundle.manifest.name,
            "embeddings_bytes": emb_path.stat().st_size,
            "embeddings_sha256": sha256_file(emb_path),
            "tiles_bytes": (tmp / TILES).stat().st_size,
            "tiles_sha256": sha256_file(tmp / TILES),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "provider": session.provider_used,
            # the graph that ran; equals identity["precision"] unless a GPU failed and the CPU took over
            "precision_used": session.precision_used,
            "device_description": session.device_description,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        if patch_meta is not None:
            meta["patches"] = patch_meta
        atomic_write_text(tmp / META, json.dumps(meta, indent=2) + "\n")
    progress.update(1.0, f"indexed {count} tiles")
    idx = open_index(root)
    idx.reused = False
    idx._grid = grid
    return idx
