"""The tile-embedding producer shared by labelling, indexing and search.

Reading and preprocessing run ahead of inference: worker threads (each with its own RasterSource, GDAL
handles are not thread-safe) prepare whole batches -- read the tile in the encoder's bands and units, apply
the bundle's radiometric transform, resize to the encoder's input size -- and hand them over through a
bounded queue of futures, so the encoder never waits for the disk and memory stays bounded. Tiles that are
mostly no data are skipped (never encoded; they come out as nodata). Progress is reported and cancellation
checked once per batch.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Optional

import numpy as np

from .bundle import Bundle, EncoderSpec
from .progress import Progress
from .radiometry import apply_transform
from .raster import RasterSource, encoder_for
from .runtime import EncoderSession
from .tiling import DEFAULT_MAX_NODATA, TileGrid

__all__ = ["TileStats", "choose_modality", "embed_tiles", "preprocess_tile", "resize_chw"]


@dataclass
class TileStats:
    """What happened to the tiles of one embed_tiles run (filled in as it goes)."""

    total: int = 0
    embedded: int = 0
    skipped: list[int] = field(default_factory=list)  # tile indices, mostly no data
    # Tile index -> bool (h, w) no-data mask, for embedded tiles that hold some no data (when keep_masks).
    partial_masks: dict[int, np.ndarray] = field(default_factory=dict)
    keep_masks: bool = False
    batch_size: int = 0
    read_s: float = 0.0  # summed over worker threads: read + transform + resize
    wait_s: float = 0.0  # time the encoder waited for a prepared batch
    inference_s: float = 0.0

    def as_dict(self) -> dict:
        return {
            "tiles": self.total,
            "embedded": self.embedded,
            "skipped_nodata": len(self.skipped),
            "batch_size": self.batch_size,
            "read_s": round(self.read_s, 3),
            "wait_s": round(self.wait_s, 3),
            "inference_s": round(self.inference_s, 3),
        }


def choose_modality(source: RasterSource, bundle: Bundle) -> str:
    """The bundle encoder a source feeds best: its own sensor's, a compatible S2 level, else the rgb composite.

    Raises the raster mapping error (what the bundle expects, what the raster has) when none fits.
    """
    return encoder_for(bundle.manifest, source).modality


@lru_cache(maxsize=32)
def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights: area averaging when shrinking, bilinear (half-pixel centres) when enlarging."""
    m = np.zeros((n_out, n_in), np.float32)
    if n_in == n_out:
        np.fill_diagonal(m, 1.0)
    elif n_in > n_out:
        scale = n_in / n_out
        for i in range(n_out):
            lo, hi = i * scale, (i + 1) * scale
            for j in range(int(np.floor(lo)), min(int(np.ceil(hi)), n_in)):
                m[i, j] = min(hi, j + 1) - max(lo, j)
        m /= m.sum(axis=1, keepdims=True)
    else:
        src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        src = np.clip(src, 0, n_in - 1)
        j0 = np.floor(src).astype(int)
        j1 = np.minimum(j0 + 1, n_in - 1)
        f = (src - j0).astype(np.float32)
        m[np.arange(n_out), j0] += 1 - f
        m[np.arange(n_out), j1] += f
    m.setflags(write=False)
    return m


def resize_chw(x: np.ndarray, size: int) -> np.ndarray:
    """Resize (C, h, w) to (C, size, size): two small matrix products, fast and exact for area averaging."""
    _, h, w = x.shape
    if h == size and w == size:
        return x
    ry, rx = _resize_matrix(h, size), _resize_matrix(w, size)
    return np.ascontiguousarray((ry @ x) @ rx.T, dtype=np.float32)


def preprocess_tile(tile: np.ndarray, spec: EncoderSpec) -> np.ndarray:
    """Physical (C, h, w) in the encoder's bands -> encoder input (C, S, S). No data becomes the band mean (0)."""
    y = apply_transform(tile, spec.transforms, spec.mean, spec.std)
    return resize_chw(y, spec.input_size)


@dataclass
class _Prepared:
    indices: list[int]
    batch: np.ndarray
    skipped: list[int]
    masks: dict[int, np.ndarray]
    seconds: float


class _Readers:
    """One RasterSource (and encoder reader) per worker thread; all closed at the end."""

    def __init__(self, source: RasterSource, spec: EncoderSpec, share_source: bool):
        self._source, self._spec, self._share = source, spec, share_source
        self._local = threading.local()
        self._opened: list[RasterSource] = []
        self._lock = threading.Lock()

    def get(self) -> Callable:
        reader = getattr(self._local, "reader", None)
        if reader is None:
            if self._share:
                src = self._source
            else:
                src = self._source.reopen()
                with self._lock:
                    self._opened.append(src)
            reader = self._local.reader = src.encoder_input(self._spec)
        return reader

    def close(self) -> None:
        with self._lock:
            for s in self._opened:
                s.close()
            self._opened.clear()


def _prepare(readers: _Readers, grid: TileGrid, spec: EncoderSpec, indices: Sequence[int], max_nodata: float,
             keep_masks: bool) -> _Prepared:
    t0 = time.perf_counter()
    read = readers.get()
    s = spec.input_size
    batch = np.empty((len(indices), len(spec.bands), s, s), np.float32)
    kept: list[int] = []
    skipped: list[int] = []
    masks: dict[int, np.ndarray] = {}
    for i in indices:
        tile = read(grid.windows[i])
        nodata = np.isnan(tile).any(axis=0)
        frac = float(nodata.mean()) if nodata.size else 1.0
        if frac > max_nodata:
            skipped.append(i)
            continue
        if keep_masks and frac > 0:
            masks[i] = nodata
        batch[len(kept)] = preprocess_tile(tile, spec)
        kept.append(i)
    return _Prepared(kept, batch[: len(kept)], skipped, masks, time.perf_counter() - t0)


def embed_tiles(
    source: RasterSource,
    bundle: Bundle,
    modality: Optional[str],
    grid: TileGrid,
    *,
    session: EncoderSession,
    batch_size: Optional[int] = None,
    progress: Optional[Progress] = None,
    workers: int = 2,
    max_nodata: float = DEFAULT_MAX_NODATA,
    stats: Optional[TileStats] = None,
) -> Iterator[tuple[list[int], np.ndarray]]:
    """Yield (tile indices, L2-normalised embeddings [b, D]) batch by batch, in grid order.

    Tiles with more than ``max_nodata`` of no data are left out (listed in ``stats.skipped``).
    ``workers=0`` reads in the calling thread (no read-ahead). Raises Cancelled between batches.
    """
    progress = progress or Progress()
    stats = stats if stats is not None else TileStats()
    modality = modality or choose_modality(source, bundle)
    spec = bundle.manifest.encoder(modality)
    if session.role != modality:
        raise ValueError(f"the session runs the {session.role!r} encoder but tiles are read for {modality!r}")
    if not 0.0 <= max_nodata <= 1.0:
        raise ValueError(f"max_nodata must be a fraction between 0 and 1, got {max_nodata}")
    source.check_mapping(spec)  # a raster that cannot feed the encoder fails here, before any thread starts
    bs = session.auto_batch_size(batch_size)
    n = len(grid.windows)
    stats.total, stats.batch_size = n, bs
    batches = [list(range(i, min(i + bs, n))) for i in range(0, n, bs)]
    readers = _Readers(source, spec, share_source=workers <= 0)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rsclip-read") if workers > 0 else None
    # Two batches in flight per worker: enough to hide read latency, bounded so memory stays small.
    depth = max(1, 2 * workers)
    pending: deque[Future] = deque()
    todo = iter(batches)

    def submit() -> bool:
        if pool is None:
            return False
        nxt = next(todo, None)
        if nxt is None:
            return False
        pending.append(pool.submit(_prepare, readers, grid, spec, nxt, max_nodata, stats.keep_masks))
        return True

    done = 0
    try:
        progress.check()
        progress.update(0.0, f"{n} tiles")
        while len(pending) < depth and submit():
            pass
        for _ in range(len(batches)):
            progress.check()
            t0 = time.perf_counter()
            if pool is None:
                nxt = next(todo)
                prep = _prepare(readers, grid, spec, nxt, max_nodata, stats.keep_masks)
            else:
                prep = pending.popleft().result()
                submit()
            t1 = time.perf_counter()
            stats.wait_s += t1 - t0 if pool is not None else 0.0
            stats.read_s += prep.seconds
            stats.skipped += prep.skipped
            stats.partial_masks.update(prep.masks)
            done += len(prep.indices) + len(prep.skipped)
            if prep.indices:
                emb = session.embed(prep.batch)
                stats.inference_s += time.perf_counter() - t1
                stats.embedded += len(prep.indices)
            skipped_msg = f", {len(stats.skipped)} skipped (no data)" if stats.skipped else ""
            progress.update(done / max(n, 1), f"{done}/{n} tiles{skipped_msg}")
            if prep.indices:
                yield prep.indices, emb
    finally:
        for f in pending:
            f.cancel()
        if pool is not None:
            pool.shutdown(wait=True)
        readers.close()
