"""Archive search: many scenes embedded once into GeoParquet shards, searched through one ANN index.

An archive is a folder::

    archive.json              the bundle (path and digest), encoder modality, tiling; written by create
    items/<id>.json           STAC items of added ItemCollections/API searches (absolute hrefs)
    shards/<scene>-<key>.parquet   one GeoParquet file per scene (below), published atomically
    index/                    the ANN index over all shards (see ann.py), replaced atomically
        vectors.npy  [n, D] float32, shard order;  rows.npy [n, 2] int32 (shard number, row in shard)
        lonlat.npy   [n, 4] tile bounds in lon/lat (bbox filter, NMS);  time.npy [n] int64 epoch s (filter)
        ann.faiss    the FAISS index (approximate kinds);  meta.json (kind, scenes in order, recall@10)

A shard holds one row per embedded tile: ``scene``, ``datetime``, ``source``, ``tile`` (row), the tile
window ``col``/``row``/``width``/``height`` on the scene's working grid, its lon/lat bounds, ``geometry``
(the tile outline as WKB in OGC:CRS84, GeoParquet 1.1 metadata) and ``embedding`` (fixed-size list of
float32). The scene's CRS, transform and provenance are in the file's ``rsclip`` metadata.

A scene is identified by a key (a STAC item's collection/id, else the source path or URL): its shard
existing means it is done, so adding it again is a no-op and an interrupted add resumes where it stopped.
Scenes that fail are reported and skipped. Embedding uses the engine's own pipeline (``embed_tiles``),
locally or as one Dask task per scene (:mod:`.archive_dask`); each process opens the bundle once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Union

import numpy as np

from . import ann
from .atomic import atomic_write, atomic_write_text, open_outputs, staged_dir
from .errors import InputError, OutputExistsError, RSClipError
from .progress import Progress

ARCHIVE_FILE = "archive.json"
ARCHIVE_FORMAT = 1
SHARDS, ITEMS, INDEX = "shards", "items", "index"
HITS_FILE, HITS_LAYER = "hits.gpkg", "hits"
NO_TIME = np.iinfo(np.int64).min
# Rows per Parquet row group of a shard: a search reads the groups that hold its hits (a few hundred KB at
# 512-d), not the whole shard.
SHARD_ROW_GROUP = 1024
_STAMP = re.compile(r"(\d{4})-?(\d{2})-?(\d{2})(?:T(\d{2}):?(\d{2}):?(\d{2}))?")


class ArchiveError(InputError):
    """An archive folder that cannot be used: what is wrong and what to do."""


@dataclass(frozen=True)
class SceneTask:
    """One scene to add: what open_source reads, and how the archive names and dates it."""

    source: str
    scene: str
    key: str
    datetime: Optional[str] = None

    @property
    def shard_name(self) -> str:
        from .stac import safe_id

        return f"{safe_id(self.scene)[:80]}-{self.key}.parquet"


@dataclass
class AddReport:
    added: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already in the archive
    failed: list[tuple[str, str]] = field(default_factory=list)  # (scene, error)
    n_vectors: int = 0
    index: dict = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"added": self.added, "skipped": self.skipped,
                "failed": [{"scene": s, "error": e} for s, e in self.failed],
                "n_vectors": self.n_vectors, "index": self.index, "seconds": round(self.seconds, 2)}


@dataclass
class ArchiveHit:
    rank: int
    score: float
    scene: str
    datetime: Optional[str]
    source: str
    tile: int
    window: tuple[int, int, int, int]  # col, row, width, height on the scene's working grid
    lonlat: tuple[float, float, float, float]
    ring: list[tuple[float, float]]  # tile outline, lon/lat

    def as_dict(self) -> dict:
        return asdict(self)


def parse_datetime_range(text: Optional[str]) -> tuple[int, int]:
    """'2020-01-01/2020-12-31', '2020-05-01T00:00:00Z/..', or one date -> (start, end) epoch seconds, inclusive."""
    if not text:
        return NO_TIME, np.iinfo(np.int64).max
    parts = text.split("/")
    if len(parts) == 1:
        parts = [parts[0], parts[0]]
    if len(parts) != 2:
        raise ArchiveError(f"{{datetime}} {text!r}: give one date or START/END (ISO 8601, '..' for open)")

    def one(s: str, end: bool) -> int:
        s = s.strip()
        if s in ("", ".."):
            return np.iinfo(np.int64).max if end else NO_TIME + 1
        try:
            dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ArchiveError(f"{{datetime}} {text!r}: {s!r} is not an ISO 8601 date; e.g. 2020-01-01/2020-12-31") from exc
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        secs = int(dt.timestamp())
        return secs + 86399 if end and len(s) <= 10 else secs  # a bare end date includes that day

    return one(parts[0], False), one(parts[1], True)


def _epoch(iso: Optional[str]) -> int:
    if not iso:
        return NO_TIME
    dt = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return int((dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp())


def datetime_from_name(text: str) -> Optional[str]:
    """An acquisition time found in a file or product name (S2 ``20200223T032739``, ``2020-02-23``)."""
    m = _STAMP.search(Path(str(text)).name) or _STAMP.search(str(text))
    if not m:
        return None
    y, mo, d, h, mi, s = (int(v) if v else 0 for v in m.groups())
    try:
        return datetime(y, mo, d, h, mi, s, tzinfo=timezone.utc).isoformat().replace("+00:00", "Z")
    except ValueError:
        return None


def _key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# --- per-process bundle cache (a Dask worker opens the bundle once, not once per scene) -------------
_CACHE: dict[tuple[str, str, str], tuple] = {}
_CACHE_LOCK = threading.Lock()


def _bundle_and_sessions(bundle_path: str, digest: str, provider: str):
    from .default_bundle import as_bundle

    k = (bundle_path, digest, provider)
    with _CACHE_LOCK:
        hit = _CACHE.get(k)
        if hit is None:
            b = as_bundle(bundle_path or None)
            if b.digest != digest:
                raise ArchiveError(f"bundle {bundle_path} has changed since the archive was created (digest differs); "
                                   "create a new archive for the new bundle")
            hit = _CACHE[k] = (b, {})
    return hit


def bundle_opens() -> int:
    """How many bundles this process has opened for archive work (tests check one per worker)."""
    return len(_CACHE)


class Archive:
    """An archive folder (see the module docstring). Open with :meth:`open`, make with :func:`create_archive`."""

    def __init__(self, root: Path, config: dict):
        self.root = Path(root)
        self.config = config

    # --- opening ------------------------------------------------------------------------------------
    @classmethod
    def open(cls, root: Union[str, os.PathLike]) -> Archive:
        root = Path(root)
        f = root / ARCHIVE_FILE
        if not f.is_file():
            raise ArchiveError(f"{root}: not an archive (no {ARCHIVE_FILE}); create it with: rsclip archive create {root} --bundle B")
        try:
            config = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ArchiveError(f"{f}: unreadable ({exc}); recreate the archive") from exc
        if config.get("format") != ARCHIVE_FORMAT:
            raise ArchiveError(f"{f}: archive format {config.get('format')} is not {ARCHIVE_FORMAT}; recreate the archive")
        return cls(root, config)

    @property
    def shard_dir(self) -> Path:
        return self.root / SHARDS

    def shards(self) -> list[Path]:
        return sorted(self.shard_dir.glob("*.parquet"))

    # --- scenes -------------------------------------------------------------------------------------
    def expand(self, sources: Sequence[Union[str, os.PathLike]], stac_items: Sequence = ()) -> list[SceneTask]:
        """Scene tasks for files, folders, GDAL paths/URLs, STAC items/collections, and API-search items."""
        tasks: list[SceneTask] = []
        for item in stac_items:
            tasks.append(self._item_task(item))
        for s in sources:
            tasks.extend(self._expand_one(s))
        seen: set[str] = set()
        out = []
        for t in tasks:  # the same scene given twice in one call is added once
            if t.key not in seen:
                seen.add(t.key)
                out.append(t)
        return out

    def _item_task(self, item, given: Optional[str] = None) -> SceneTask:
        from .stac import item_scene, safe_id, write_item

        scene = item_scene(item)  # fails early (and clearly) when no asset maps to a band
        key = _key(f"stac:{item.collection_id}/{item.id}")
        src = given or str(write_item(item, self.root / ITEMS / f"{safe_id(item.id)}.json"))
        return SceneTask(src, item.id, key, scene.datetime)

    def _expand_one(self, s: Union[str, os.PathLike]) -> list[SceneTask]:
        from .sources import RASTER_SUFFIXES, discover, gdal_path, source_id
        from .stac import is_stac_json, load_items

        text = os.fspath(s) if not isinstance(s, str) else s
        if is_stac_json(text):
            items = load_items(text)
            if len(items) == 1 and gdal_path(text) is None:
                return [self._item_task(items[0], str(Path(text).resolve()))]
            return [self._item_task(it) for it in items]
        if gdal_path(text) is None and Path(text).is_dir():
            try:
                discover(Path(text))  # a raster folder (per-band files, SAFE)?
            except RSClipError:
                kids = sorted(p for p in Path(text).iterdir()
                              if p.is_dir() or p.suffix.lower() in (*RASTER_SUFFIXES, ".json", ".zip"))
                if not kids:
                    raise ArchiveError(f"{text}: no rasters, scene folders or STAC items inside") from None
                return [t for k in kids for t in self._expand_one(k)]
        sid = source_id(text)
        name = gdal_path(text).stem if gdal_path(text) is not None else Path(sid).stem  # type: ignore[union-attr]
        return [SceneTask(str(gdal_path(text) or sid), name, _key(f"src:{sid}"), datetime_from_name(sid))]

    def pending(self, tasks: Sequence[SceneTask]) -> tuple[list[SceneTask], list[SceneTask]]:
        """(to do, already in the archive)."""
        have = {p.name for p in self.shards()}
        todo = [t for t in tasks if t.shard_name not in have]
        done = [t for t in tasks if t.shard_name in have]
        return todo, done

    # --- adding -------------------------------------------------------------------------------------
    def add(self, sources: Sequence[Union[str, os.PathLike]] = (), *, stac_items: Sequence = (), provider: str = "cpu",
            dask: Optional[str] = None, progress: Optional[Progress] = None, retries: int = 2) -> AddReport:
        """Embed the scenes not yet in the archive (one shard each) and bring the index up to date."""
        progress = progress or Progress()
        t0 = time.perf_counter()
        tasks = self.expand(sources, stac_items)
        todo, done = self.pending(tasks)
        report = AddReport(skipped=[t.scene for t in done])
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        scenes_p = progress.sub(0.0, 0.9)
        if dask:
            from .archive_dask import run_tasks

            results = run_tasks(dask, todo, str(self.root), self.config, provider, scenes_p, retries=retries)
        else:
            results = []
            for i, t in enumerate(todo):
                scenes_p.check()
                results.append(run_task(t, str(self.root), self.config, provider))
                scenes_p.update((i + 1) / max(len(todo), 1), f"{i + 1}/{len(todo)} scenes")
        for t, (ok, msg) in zip(todo, results):
            if ok:
                report.added.append(t.scene)
            else:
                report.failed.append((t.scene, msg))
        progress.update(0.9, "index")
        report.index = self.sync_index()
        report.n_vectors = int(report.index.get("n_vectors", 0))
        report.seconds = time.perf_counter() - t0
        progress.update(1.0, f"{len(report.added)} added, {len(report.skipped)} already there, {len(report.failed)} failed")
        return report

    # --- the index ----------------------------------------------------------------------------------
    @property
    def index_dir(self) -> Path:
        return self.root / INDEX

    def index_meta(self) -> Optional[dict]:
        try:
            return json.loads((self.index_dir / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def _old_arrays(self, n_old: int, dim: int) -> Optional[dict[str, np.ndarray]]:
        """The current index's per-vector arrays (memory-mapped), when each holds at least ``n_old`` rows of the
        expected width; None when one is missing or damaged (the index is then rebuilt from the shards)."""
        widths = {"vectors.npy": (dim,), "rows.npy": (2,), "lonlat.npy": (4,), "time.npy": ()}
        out: dict[str, np.ndarray] = {}
        for name, width in widths.items():
            try:
                arr = np.load(self.index_dir / name, mmap_mode="r")
            except (OSError, ValueError):
                return None
            if arr.shape[1:] != width or arr.shape[0] < n_old:
                return None
            out[name] = arr
        return out

    def sync_index(self, kind: Optional[str] = None) -> dict:
        """Bring the index up to date with the shards: extended in place of a rebuild when only scenes were
        added and the kind for the new size is unchanged, else rebuilt. Published atomically."""
        import pyarrow.parquet as pq

        old = self.index_meta()
        shards = [p.name for p in self.shards()]
        stamps = {s: _shard_stamp(self.shard_dir / s) for s in shards}
        old_scenes = list(old["scenes"]) if old else []
        # A shard rewritten since the index was built (its scene re-embedded after the user deleted it) has the
        # same name and often the same row count: only its stamp tells that the old index's rows are stale.
        # An index from before stamps were recorded is rebuilt once.
        if old and old.get("stamps") == [stamps.get(s) for s in old_scenes]:
            order = old_scenes + sorted(s for s in shards if s not in set(old_scenes))
        else:
            order, old = shards, None
        if old and order == old_scenes and (kind or self.config.get("index_kind") or old["kind"]) == old["kind"]:
            return old
        counts = [pq.read_metadata(self.shard_dir / s).num_rows for s in order]
        n, dim = int(sum(counts)), int(self.config["embed_dim"])
        kind = kind or self.config.get("index_kind") or ann.choose_kind(n)
        # The old scenes keep their place in ``order``: their rows of every per-vector array are copied from the
        # current index instead of read again from their shards (unless a shard changed its row count).
        reuse = bool(old) and list(old.get("counts", []))[: len(old_scenes)] == counts[: len(old_scenes)]
        first_new = len(old_scenes) if reuse else 0
        n_old = sum(counts[:first_new])
        # The shards are the truth: an index whose arrays are missing or do not match its meta is rebuilt from them.
        kept = self._old_arrays(n_old, dim) if n_old else {}
        if kept is None:
            reuse, first_new, n_old, kept = False, 0, 0, {}
        extend = reuse and old["kind"] == kind and kind != "flat" and (self.index_dir / "ann.faiss").is_file()
        with staged_dir(self.index_dir) as tmp:
            vec = np.lib.format.open_memmap(tmp / "vectors.npy", mode="w+", dtype=np.float32, shape=(n, dim))
            rows = np.zeros((n, 2), np.int32)
            lonlat = np.zeros((n, 4), np.float64)
            times = np.full(n, NO_TIME, np.int64)
            for name, arr in (("vectors.npy", vec), ("rows.npy", rows), ("lonlat.npy", lonlat), ("time.npy", times)):
                if name in kept:
                    arr[:n_old] = kept[name][:n_old]
            del kept
            start = n_old
            for i, (s, c) in enumerate(zip(order, counts)):
                if i < first_new:
                    continue
                t = pq.read_table(self.shard_dir / s, columns=["embedding", "tile", "xmin", "ymin", "xmax", "ymax", "datetime"])
                vec[start : start + c] = _embedding_matrix(t.column("embedding"), dim)
                rows[start : start + c, 0] = i
                rows[start : start + c, 1] = t.column("tile").to_numpy()
                lonlat[start : start + c] = np.stack([t.column(k).to_numpy() for k in ("xmin", "ymin", "xmax", "ymax")], 1)
                times[start : start + c] = _epoch(t.column("datetime")[0].as_py() if c else None)
                start += c
            vec.flush()
            np.save(tmp / "rows.npy", rows)
            np.save(tmp / "lonlat.npy", lonlat)
            np.save(tmp / "time.npy", times)
            t_build = time.perf_counter()
            index = None
            if kind != "flat" and n > 0:
                faiss = ann._faiss()
                if extend:
                    index = faiss.read_index(str(self.index_dir / "ann.faiss"))
                    ann.add(index, vec[n_old:])
                    ann.tune(index, kind)
                else:
                    index = ann.build(vec, kind)
                faiss.write_index(index, str(tmp / "ann.faiss"))
            build_s = time.perf_counter() - t_build
            if n == 0:
                recall = {"recall_at_10": None, "queries": 0}
            elif index is None:
                recall = {"recall_at_10": 1.0, "queries": 0, "exact": True}
            else:
                recall = ann.measure_recall(index, vec).as_dict()
            meta = {"kind": kind, "n_vectors": n, "dim": dim, "scenes": order, "counts": counts,
                    "stamps": [stamps[s] for s in order],
                    "extended": extend, "reused_vectors": n_old, "build_s": round(build_s, 3), **recall,
                    "built": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            del vec
            atomic_write_text(tmp / "meta.json", json.dumps(meta, indent=1) + "\n")
        self._loaded = None
        return meta

    _loaded: Optional[tuple] = None

    def _load(self):
        if self._loaded is None:
            meta = self.index_meta()
            if meta is None:
                raise ArchiveError(f"{self.root}: the archive has no index yet; add scenes with: rsclip archive add {self.root} SOURCE")
            d = self.index_dir
            vec = np.load(d / "vectors.npy", mmap_mode="r")
            index = None
            if meta["kind"] != "flat" and (d / "ann.faiss").is_file():
                index = ann._faiss().read_index(str(d / "ann.faiss"))
                ann.tune(index, meta["kind"])
            # Memory-mapped: at 30 M vectors these per-row arrays are ~1.4 GB, read only where filters look.
            self._loaded = (meta, vec, index, *(np.load(d / f, mmap_mode="r") for f in ("rows.npy", "lonlat.npy", "time.npy")))
        return self._loaded

    # --- searching ----------------------------------------------------------------------------------
    def search(self, query: np.ndarray, *, top_k: int = 10, bbox: Optional[Sequence[float]] = None,
               datetime_range: Optional[str] = None, nms_iou: float = 0.3) -> list[ArchiveHit]:
        """The ``top_k`` best distinct places (NMS over lon/lat footprints) among tiles passing the filters."""
        from .nms import nms

        if int(top_k) < 1:
            raise ArchiveError(f"{{top_k}} must be at least 1, got {top_k}")
        meta, vec, index, rows, lonlat, times = self._load()
        q = np.asarray(query, np.float32).reshape(-1)
        if q.shape[0] != vec.shape[1]:
            raise ArchiveError(f"the query has {q.shape[0]} dimensions but the archive's bundle embeds in {vec.shape[1]}")
        n = vec.shape[0]
        if n == 0:
            return []
        mask = None
        if bbox is not None:
            x0, y0, x1, y1 = (float(v) for v in bbox)
            mask = (lonlat[:, 0] <= x1) & (lonlat[:, 2] >= x0) & (lonlat[:, 1] <= y1) & (lonlat[:, 3] >= y0)
        if datetime_range:
            t0, t1 = parse_datetime_range(datetime_range)
            m = (times >= t0) & (times <= t1)
            mask = m if mask is None else mask & m
        want = max(int(top_k) * 20, 64)  # candidates before NMS: enough for k distinct places
        if mask is not None and (index is None or mask.sum() <= ann.FLAT_MAX):
            allowed = np.flatnonzero(mask)  # few enough to score exactly
            r, scores = ann.exact(vec[allowed], q, want)
            cand = allowed[r]
        else:
            while True:  # widen the ANN candidate list until enough pass the filters
                cand, scores = (ann.search(index, vec, q, want) if index is not None else ann.exact(vec, q, want))
                if mask is not None:
                    keep = mask[cand]
                    cand, scores = cand[keep], scores[keep]
                if mask is None or cand.size >= want // 2 or want >= n:
                    break
                want = min(n, want * 4)
        kept = nms(lonlat[cand], scores, nms_iou, limit=int(top_k))
        records = self._records(meta, [(int(rows[cand[i], 0]), int(rows[cand[i], 1])) for i in kept])
        hits = []
        for rank, (i, t) in enumerate(zip(kept, records), start=1):
            hits.append(ArchiveHit(rank, float(scores[i]), t["scene"], t["datetime"], t["source"], int(t["tile"]),
                                   (t["col"], t["row"], t["width"], t["height"]),
                                   (t["xmin"], t["ymin"], t["xmax"], t["ymax"]), _ring_from_wkb(t["geometry"])))
        return hits

    def _records(self, meta: dict, where: Sequence[tuple[int, int]]) -> list[dict]:
        """The shard rows of the hits, given as (shard number, row): each shard opened once, and of it only the
        row groups that hold a hit (SHARD_ROW_GROUP rows each), not the whole shard."""
        import pyarrow.parquet as pq

        cols = ["scene", "datetime", "source", "tile", "col", "row", "width", "height", "xmin", "ymin", "xmax", "ymax", "geometry"]
        out: dict[tuple[int, int], dict] = {}
        for shard in sorted({s for s, _ in where}):
            pf = pq.ParquetFile(self.shard_dir / meta["scenes"][shard])
            starts = np.cumsum([0] + [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])
            groups: dict[int, object] = {}
            for s, r in where:
                if s != shard:
                    continue
                g = int(np.searchsorted(starts, r, side="right") - 1)
                if g not in groups:
                    groups[g] = pf.read_row_group(g, columns=cols)
                out[s, r] = groups[g].slice(r - int(starts[g]), 1).to_pylist()[0]
        return [out[w] for w in where]

    def info(self) -> dict:
        meta = self.index_meta() or {}
        shards = self.shards()
        return {
            "archive": str(self.root), "bundle": self.config.get("bundle"), "bundle_name": self.config.get("bundle_name"),
            "modality": self.config.get("modality"), "n_scenes": len(shards), "n_vectors": meta.get("n_vectors", 0),
            "index": meta.get("kind"), "recall_at_10": meta.get("recall_at_10"), "ann_ms": meta.get("ann_ms"),
            "exact_ms": meta.get("exact_ms"), "recall_queries": meta.get("queries"),
            # A flat index is exact by construction: its recall is not a measurement, and says so.
            "exact": bool(meta.get("exact")),
            "indexed_scenes": len(meta.get("scenes", [])),
        }


def search_archive(root: Union[str, os.PathLike], text: str, *, negative: Optional[Sequence[str]] = None, lang: str = "en",
                   top_k: int = 10, bbox: Optional[Sequence[float]] = None, datetime_range: Optional[str] = None,
                   nms_iou: float = 0.3, provider: str = "auto") -> list[ArchiveHit]:
    """One call for a front end (the search dock): open the archive, embed ``text`` with the archive's bundle
    (negatives and language as in ``rsclip search``), search with the filters."""
    from .search import text_query_vector

    arc = Archive.open(root)
    vec = text_query_vector(arc.config.get("bundle") or None, text, negative=list(negative or []) or None, lang=lang,
                            provider=provider)
    return arc.search(vec, top_k=top_k, bbox=bbox, datetime_range=datetime_range, nms_iou=nms_iou)


def display_source(hit_source: str, vrt_dir: Union[str, os.PathLike]) -> str:
    """What a map canvas opens to show a hit's scene: the raster / GDAL path itself, or for a STAC item a
    true-colour VRT (B04, B03, B02 or red, green, blue assets, ``/vsicurl/`` when remote) written to ``vrt_dir``."""
    from .stac import is_stac_json, load_scene, safe_id

    if not is_stac_json(hit_source):
        return hit_source
    scene = load_scene(hit_source)
    picks = [next((scene.bands[b] for b in names if b in scene.bands), None)
             for names in (("B04", "red"), ("B03", "green"), ("B02", "blue"))]
    if any(p is None for p in picks):
        return next(iter(scene.bands.values()))  # no true colour: the first band alone
    out = Path(vrt_dir) / f"{safe_id(scene.id)}.vrt"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, _true_colour_vrt(picks))  # type: ignore[arg-type]
    return str(out)


def _true_colour_vrt(uris: Sequence[str]) -> str:
    import html

    import rasterio

    with rasterio.open(uris[0]) as ds:
        w, h, t, crs, dtype = ds.width, ds.height, ds.transform, ds.crs, ds.dtypes[0]
    gdal_type = {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16", "float32": "Float32"}.get(dtype, "Float32")
    bands = "".join(
        f'<VRTRasterBand dataType="{gdal_type}" band="{i}"><ColorInterp>{ci}</ColorInterp><SimpleSource>'
        f'<SourceFilename relativeToVRT="0">{html.escape(u)}</SourceFilename><SourceBand>1</SourceBand>'
        f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/><DstRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
        f"</SimpleSource></VRTRasterBand>"
        for i, (u, ci) in enumerate(zip(uris, ("Red", "Green", "Blue")), start=1)
    )
    return (f'<VRTDataset rasterXSize="{w}" rasterYSize="{h}"><SRS>{html.escape(crs.to_wkt() if crs else "")}</SRS>'
            f"<GeoTransform>{t.c}, {t.a}, {t.b}, {t.f}, {t.d}, {t.e}</GeoTransform>{bands}</VRTDataset>\n")


def write_hits(hits: Sequence[ArchiveHit], out_dir: Union[str, os.PathLike], *, overwrite: bool = False,
               description: str = "archive search hits") -> Path:
    """hits.gpkg (EPSG:4326) with rank, score, scene, datetime, source, tile: like ``rsclip search``."""
    from rasterio.crs import CRS

    from .gpkg import Feature, Layer, write_gpkg

    feats = [Feature([h.ring], {"rank": h.rank, "score": h.score, "scene": h.scene, "datetime": h.datetime or "",
                                "source": h.source, "tile": h.tile}) for h in hits]
    fields = {"rank": int, "score": float, "scene": str, "datetime": str, "source": str, "tile": int}
    # EPSG:4326: GeoPackage geometries are always x = longitude, which is how the rings are stored.
    wgs84 = CRS.from_epsg(4326).to_wkt()
    # Published like every job's outputs (engine/atomic.py): staged on the folder's file system, one unit.
    with open_outputs(out_dir, [HITS_FILE], overwrite=overwrite) as out:
        write_gpkg(out.path / HITS_FILE, [Layer(HITS_LAYER, wgs84, fields, feats, description=description)])
        out.publish()
    return Path(out_dir) / HITS_FILE


def create_archive(root: Union[str, os.PathLike], bundle: Union[str, os.PathLike, None], *, modality: Optional[str] = None,
                   tile_size_m: Optional[float] = None, overlap: float = 0.0, index_kind: Optional[str] = None,
                   overwrite: bool = False) -> Archive:
    """A new, empty archive for ``bundle`` (its path is recorded: workers must reach the same path).
    ``index_kind`` fixes the ANN kind (flat | hnsw | ivfpq); default: chosen by size at each add."""
    from .default_bundle import as_bundle

    root = Path(root)
    if (root / ARCHIVE_FILE).exists() and not overwrite:
        raise OutputExistsError(f"{root} is already an archive; add scenes to it, or allow {{overwrite}} to start afresh")
    b = as_bundle(bundle)
    if index_kind is not None and index_kind not in ann.KINDS:
        raise ArchiveError(f"{{index_kind}} {index_kind!r}: one of {', '.join(ann.KINDS)} (or leave it out: chosen by size)")
    if modality is not None:
        b.manifest.encoder(modality)  # an unknown modality fails here, not on the first scene
    from .options import TilingOptions

    TilingOptions(modality=modality, tile_size_m=tile_size_m, overlap=overlap)  # checked once, before any scene
    if overwrite:
        for d in (SHARDS, ITEMS, INDEX):
            shutil.rmtree(root / d, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    config = {"format": ARCHIVE_FORMAT, "bundle": str(Path(bundle).resolve()) if bundle else "",
              "bundle_digest": b.digest, "bundle_name": b.manifest.name, "embed_dim": int(b.manifest.embed_dim),
              "modality": modality, "index_kind": index_kind, "tile_size_m": tile_size_m, "overlap": float(overlap),
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    atomic_write_text(root / ARCHIVE_FILE, json.dumps(config, indent=1) + "\n")
    return Archive(root, config)


# --- one scene: embed and publish its shard (runs in the client or in a Dask worker) -----------------
def run_task(task: SceneTask, root: str, config: dict, provider: str) -> tuple[bool, str]:
    """Embed ``task`` and write its shard; (True, shard name) or (False, the error) for a scene the user
    can fix (unreadable, unmappable). Other exceptions propagate: Dask retries those elsewhere."""
    try:
        table = embed_scene(task, config, provider)
    except (RSClipError, OSError, ValueError) as exc:
        return False, str(exc)
    path = Path(root) / SHARDS / task.shard_name
    write_shard(table, path)
    return True, path.name


def embed_scene(task: SceneTask, config: dict, provider: str):
    """A pyarrow Table (GeoParquet columns, see the module docstring) of the scene's tile embeddings."""
    import pyarrow as pa

    from .options import TilingOptions
    from .pipeline import embed_tiles, plan_tiles
    from .raster import open_source
    from .runtime import EncoderSession

    bundle, sessions = _bundle_and_sessions(config["bundle"], config["bundle_digest"], provider)
    with open_source(task.source) as src:
        if src.crs is None or not src.georeferenced:
            raise ArchiveError(f"{task.source}: not georeferenced; an archive needs scenes with a CRS")
        # The same encoder choice and tile plan as every other job (pipeline.plan_tiles).
        spec, grid = plan_tiles(bundle, src, TilingOptions(modality=config.get("modality"),
                                                           tile_size_m=config.get("tile_size_m"),
                                                           overlap=float(config.get("overlap") or 0.0)))
        with _CACHE_LOCK:
            session = sessions.get(spec.modality)
            if session is None:
                session = sessions[spec.modality] = EncoderSession(bundle, spec.modality, provider=provider)
        idx_parts, emb_parts = [], []
        for ti, emb in embed_tiles(src, bundle, spec.modality, grid, session=session):
            idx_parts.append(np.asarray(ti, np.int64))
            emb_parts.append(np.asarray(emb, np.float32))
        dim = int(bundle.manifest.embed_dim)
        tiles = np.concatenate(idx_parts) if idx_parts else np.zeros(0, np.int64)
        emb = np.concatenate(emb_parts) if emb_parts else np.zeros((0, dim), np.float32)
        win = np.array([[int(w.col_off), int(w.row_off), int(w.width), int(w.height)] for w in grid.windows], np.int64)
        win = win[tiles] if tiles.size else np.zeros((0, 4), np.int64)
        rings = _lonlat_rings(win, src.transform, src.crs)
        crs_wkt, tr = src.crs.to_wkt(), src.transform
    n = len(tiles)
    lo, hi = rings.min(axis=1), rings.max(axis=1)
    when = task.datetime
    cols = {
        "scene": pa.array([task.scene] * n, pa.string()),
        "datetime": pa.array([when] * n, pa.string()),
        "source": pa.array([task.source] * n, pa.string()),
        "tile": pa.array(np.arange(n, dtype=np.int32)),
        "col": pa.array(win[:, 0].astype(np.int32)), "row": pa.array(win[:, 1].astype(np.int32)),
        "width": pa.array(win[:, 2].astype(np.int32)), "height": pa.array(win[:, 3].astype(np.int32)),
        "xmin": pa.array(lo[:, 0]), "ymin": pa.array(lo[:, 1]), "xmax": pa.array(hi[:, 0]), "ymax": pa.array(hi[:, 1]),
        "geometry": pa.array([_ring_wkb(r) for r in rings], pa.binary()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), dim),
    }
    bbox = [float(lo[:, 0].min()), float(lo[:, 1].min()), float(hi[:, 0].max()), float(hi[:, 1].max())] if n else []
    geo = {"version": "1.1.0", "primary_column": "geometry",
           "columns": {"geometry": {"encoding": "WKB", "geometry_types": ["Polygon"], "bbox": bbox,
                                    "covering": {"bbox": {k: [k] for k in ("xmin", "ymin", "xmax", "ymax")}}}}}
    rsclip = {"scene": task.scene, "source": task.source, "datetime": when, "key": task.key, "crs_wkt": crs_wkt,
              "transform": [tr.a, tr.b, tr.c, tr.d, tr.e, tr.f], "modality": spec.modality, "tile_px": int(grid.tile_px),
              "bundle_digest": config["bundle_digest"], "n_tiles": n, "grid_tiles": len(grid.windows)}
    table = pa.table(cols)
    return table.replace_schema_metadata({b"geo": json.dumps(geo).encode(), b"rsclip": json.dumps(rsclip).encode()})


def _shard_stamp(path: Path) -> list[int]:
    """What tells a rewritten shard from the one an index was built from: write_shard publishes a new file by
    rename, so its inode and modification time change even when its size does not."""
    st = path.stat()
    return [int(st.st_ino), int(st.st_size), int(st.st_mtime_ns)]


def write_shard(table, path: Path) -> Path:
    """Written beside and renamed (atomic.atomic_write): a shard is complete or absent. Row groups of
    SHARD_ROW_GROUP rows let a search read only the groups that hold its hits."""
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="zstd", row_group_size=SHARD_ROW_GROUP))


def _lonlat_rings(win: np.ndarray, transform, crs) -> np.ndarray:
    """[n, 5, 2] closed tile outlines in lon/lat (corners of each window through the scene's transform)."""
    from rasterio.warp import transform as warp

    if win.shape[0] == 0:
        return np.zeros((0, 5, 2))
    c, r, w, h = (win[:, i].astype(np.float64) for i in range(4))
    cols = np.stack([c, c + w, c + w, c, c], 1)
    rows = np.stack([r + h, r + h, r, r, r + h], 1)
    xs = transform.a * cols + transform.b * rows + transform.c
    ys = transform.d * cols + transform.e * rows + transform.f
    lon, lat = warp(crs, "EPSG:4326", xs.reshape(-1).tolist(), ys.reshape(-1).tolist())
    return np.stack([np.asarray(lon), np.asarray(lat)], 1).reshape(-1, 5, 2)


def _ring_wkb(ring: np.ndarray) -> bytes:
    from .gpkg import polygon_wkb

    return polygon_wkb([[(float(x), float(y)) for x, y in ring]])


def _ring_from_wkb(wkb: bytes) -> list[tuple[float, float]]:
    import struct

    (n,) = struct.unpack_from("<I", wkb, 9)
    return [struct.unpack_from("<dd", wkb, 13 + 16 * i) for i in range(n)]


def _embedding_matrix(col, dim: int) -> np.ndarray:
    flat = col.combine_chunks().flatten() if hasattr(col, "combine_chunks") else col.flatten()
    return np.asarray(flat.to_numpy(zero_copy_only=False), np.float32).reshape(-1, dim)
