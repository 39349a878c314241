"""The tile-embedding producer shared by labelling, indexing and search.

Reading and preprocessing run ahead of inference: worker threads (each with its own RasterSource, GDAL
handles are not thread-safe) prepare whole batches -- read the tile in the encoder's bands and units, apply
the bundle's radiometric transform, resize to the encoder's input size -- and hand them over through a
bounded queue of futures, so the encoder never waits for the disk and memory stays bounded. Tiles that are
mostly no data are skipped (never encoded; they come out as nodata). Progress is reported and cancellation
checked once per batch.

Reads go by strips: the tiles of a batch that lie in one tile row are read with ONE window spanning them
(bounded by ``STRIP_MAX_BYTES``), transformed in place once (``apply_transform(inplace=True)``), and cut into tiles. The per-call cost of
GDAL and of resampling 20/60 m bands is then paid per strip, not per tile, and a pixel shared by
overlapping tiles is transformed once. The result equals per-tile reads (``read_tile_batch``
is the reference the tests compare against). Memory: one strip per worker plus the prepared batches.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Optional

import numpy as np
from rasterio.errors import RasterioError
from rasterio.windows import Window

from .bundle import Bundle, EncoderSpec
from .errors import read_failure
from .options import TilingOptions
from .progress import Progress
from .radiometry import apply_transform
from .raster import RasterSource, encoder_for
from .runtime import EncoderSession, physical_cores
from .tiling import DEFAULT_MAX_NODATA, TileGrid, make_grid, should_skip, stride_for, tile_size_px_for

__all__ = [
    "BLOCK_MAX_BYTES",
    "STRIP_MAX_BYTES",
    "TileStats",
    "auto_workers",
    "block_groups",
    "choose_encoder",
    "embed_tiles",
    "plan_tiles",
    "preprocess_tile",
    "read_tile_batch",
    "resize_chw",
    "resize_hw",
    "strip_groups",
    "work_units",
]

# One strip (float32, all encoder bands) holds at most this much; wider runs of tiles are split.
STRIP_MAX_BYTES = 64 << 20
# A block of several tile rows (block_groups) holds at most this much: larger blocks gain no speed (each pass
# over them goes to main memory) and would raise the peak memory.
BLOCK_MAX_BYTES = 16 << 20
# Prepared encoder input per reader work unit (see work_units): with the queue's depth, the read-ahead's memory.
UNIT_MAX_BYTES = 16 << 20


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


def choose_encoder(bundle: Bundle, source: RasterSource, modality: Optional[str] = None) -> EncoderSpec:
    """The encoder that embeds ``source``: the ``modality`` asked for, else the one the source feeds best (its
    own sensor's, a compatible S2 level, else the rgb composite). The one place this choice is made, for
    labelling, indexing, search queries and benchmarks.

    Raises the raster mapping error (what the bundle expects, what the raster has) when the source cannot
    feed the encoder.
    """
    spec = bundle.manifest.encoder(modality) if modality is not None else encoder_for(bundle.manifest, source)
    source.check_mapping(spec)
    return spec


def plan_tiles(bundle: Bundle, source: RasterSource, tiling: TilingOptions) -> tuple[EncoderSpec, TileGrid]:
    """The encoder (choose_encoder) and the tile grid of ``source`` for these tiling options: the grid is
    made here once and travels as an object to embedding, writing and the index."""
    spec = choose_encoder(bundle, source, tiling.modality)
    tile_px = tile_size_px_for(spec, source, tiling.tile_size_m)
    return spec, make_grid(source, tile_px, stride_for(tile_px, tiling.overlap), tiling.extent)


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


def resize_hw(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize (C, h, w) to (C, height, width) with the same matrices as resize_chw (bilinear with half-pixel
    centres when enlarging, area averaging when shrinking); e.g. patch logits onto a tile's pixels."""
    ry, rx = _resize_matrix(x.shape[1], int(height)), _resize_matrix(x.shape[2], int(width))
    return np.matmul(ry @ x, rx.T)


def resize_chw(x: np.ndarray, size: int) -> np.ndarray:
    """Resize (C, h, w) to (C, size, size): two small matrix products, fast and exact for area averaging."""
    _, h, w = x.shape
    if h == size and w == size:
        return x
    out = np.empty((x.shape[0], size, size), np.float32)
    _resize_into(x, size, out)
    return out


def preprocess_tile(tile: np.ndarray, spec: EncoderSpec) -> np.ndarray:
    """Physical (C, h, w) in the encoder's bands -> encoder input (C, S, S). No data becomes the band mean (0)."""
    y = apply_transform(tile, spec.transforms, spec.mean, spec.std)
    return resize_chw(y, spec.input_size)


def _resize_into(x: np.ndarray, size: int, out: np.ndarray) -> None:
    """resize_chw(x, size) written into ``out`` (C, size, size) without a temporary for the result."""
    _, h, w = x.shape
    if h == size and w == size:
        np.copyto(out, x)
        return
    ry, rx = _resize_matrix(h, size), _resize_matrix(w, size)
    np.matmul(ry @ x, rx.T, out=out)


@dataclass(frozen=True)
class StripGroup:
    """Tiles of one tile row read with one window (``window`` spans them all, on the working grid)."""

    window: Window
    indices: tuple[int, ...]


def strip_groups(windows: Sequence[Window], indices: Sequence[int], n_bands: int,
                 max_bytes: int = STRIP_MAX_BYTES) -> list[StripGroup]:
    """Group ``indices`` (in order) into runs of tiles sharing a row offset and size, close enough side by
    side that one read serves them: a gap wider than a tile, or a strip over ``max_bytes``, starts a new run."""
    groups: list[StripGroup] = []
    run: list[int] = []
    key: Optional[tuple[int, int, int]] = None
    c0 = c1 = 0

    def close() -> None:
        if run:
            first = windows[run[0]]
            groups.append(StripGroup(Window(c0, int(first.row_off), c1 - c0, int(first.height)), tuple(run)))

    for i in indices:
        w = windows[i]
        col, width = int(w.col_off), int(w.width)
        k = (int(w.row_off), int(w.height), width)
        if run and k == key and c1 - width <= col <= c1 + width:
            end = max(c1, col + width)
            if 4 * n_bands * k[1] * (end - c0) <= max_bytes:
                run.append(i)
                c1 = end
                continue
        close()
        run, key, c0, c1 = [i], k, col, col + width
    close()
    return groups


def block_groups(groups: Sequence[StripGroup], n_bands: int, max_bytes: int = BLOCK_MAX_BYTES) -> list[StripGroup]:
    """Merge consecutive strips (``strip_groups``) covering the same columns of adjacent or overlapping tile rows
    into one block read: each read costs a fixed ~1-2 ms of per-band calls (GDAL, conversion, interpolation)
    whatever its size, so fewer, larger reads make most of the reader's speed with small tiles. A block stays
    under ``max_bytes`` (float32, all bands); a strip already larger is read alone."""
    out: list[StripGroup] = []
    for g in groups:
        if out:
            last = out[-1]
            lw, w = last.window, g.window
            bottom = int(lw.row_off) + int(lw.height)
            if (int(w.col_off), int(w.width)) == (int(lw.col_off), int(lw.width)) \
                    and int(lw.row_off) < int(w.row_off) <= bottom:
                height = int(w.row_off) + int(w.height) - int(lw.row_off)
                if height >= int(lw.height) and 4 * n_bands * height * int(lw.width) <= max_bytes:
                    out[-1] = StripGroup(Window(int(lw.col_off), int(lw.row_off), int(lw.width), height),
                                         last.indices + g.indices)
                    continue
        out.append(g)
    return out


def work_units(n: int, batch_size: int, spec: EncoderSpec, max_bytes: Optional[int] = None) -> list[range]:
    """Tile index ranges a reader prepares at a time: a whole number of encoder batches, as many as fit
    ``max_bytes`` of prepared encoder input (at least one batch). Larger than one batch so that a read spans
    several tile rows (see block_groups); bounded so the queue's memory stays small."""
    max_bytes = UNIT_MAX_BYTES if max_bytes is None else max_bytes
    per_tile = 4 * len(spec.bands) * spec.input_size * spec.input_size
    size = batch_size * max(1, max_bytes // max(1, batch_size * per_tile))
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


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
        self.path = source.path
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
    try:
        kept, batch, skipped, masks = read_tile_batch(readers.get(), grid.windows, indices, spec, max_nodata,
                                                      keep_masks)
    except RasterioError as exc:  # a truncated or damaged file: name it, and say what to do
        raise read_failure(readers.path, exc) from exc
    return _Prepared(kept, batch, skipped, masks, time.perf_counter() - t0)


def read_tile_batch(
    read: Callable[[Window], np.ndarray],
    windows: Sequence[Window],
    indices: Sequence[int],
    spec: EncoderSpec,
    max_nodata: float = DEFAULT_MAX_NODATA,
    keep_masks: bool = False,
    strips: bool = True,
) -> tuple[list[int], np.ndarray, list[int], dict[int, np.ndarray]]:
    """Encoder inputs for the tiles ``indices``: (kept indices, batch [k, C, S, S], skipped indices, masks).

    ``read`` gives physical (C, h, w) for a window (``RasterSource.encoder_input``). With ``strips`` the
    tiles of a row are read as one strip (see the module docstring); without, tile by tile (the reference).
    """
    s = spec.input_size
    batch = np.empty((len(indices), len(spec.bands), s, s), np.float32)
    kept: list[int] = []
    skipped: list[int] = []
    masks: dict[int, np.ndarray] = {}
    if strips:
        groups = block_groups(strip_groups(windows, indices, len(spec.bands)), len(spec.bands))
    else:
        groups = [StripGroup(windows[i], (i,)) for i in indices]
    for g in groups:
        data = read(g.window)
        nan_mask = np.isnan(data)
        nodata_all = nan_mask.any(axis=0)
        apply_transform(data, spec.transforms, spec.mean, spec.std, inplace=True, nan_mask=nan_mask)
        del nan_mask
        gc0, gr0 = int(g.window.col_off), int(g.window.row_off)
        any_nodata = bool(nodata_all.any())  # usually False: then no tile needs its own look
        for i in g.indices:
            w = windows[i]
            dc, dr = int(w.col_off) - gc0, int(w.row_off) - gr0
            cut = (slice(dr, dr + int(w.height)), slice(dc, dc + int(w.width)))
            if any_nodata:
                nodata = nodata_all[cut]
                if should_skip(nodata, max_nodata):
                    skipped.append(i)
                    continue
                if keep_masks and nodata.any():
                    masks[i] = nodata.copy()  # a copy: a view would keep the whole strip alive
            _resize_into(data[(slice(None), *cut)], s, batch[len(kept)])
            kept.append(i)
        del data, nodata_all  # release the strip before the next one is read
    return kept, batch[: len(kept)], skipped, masks


def auto_workers(gpu: bool, cores: Optional[int] = None) -> int:
    """Reader threads for embed_tiles. Strip reads cost a fraction of inference, so on the CPU one reader
    keeps the encoder fed and a second would only take a core from ONNX Runtime's pool (on 2 cores it
    measurably slows the run); with a GPU encoding, the CPU is free for readers."""
    cores = cores if cores is not None else physical_cores()
    if gpu:
        return max(1, min(4, cores - 1))
    return 1 if cores <= 4 else 2


def embed_tiles(
    source: RasterSource,
    bundle: Bundle,
    modality: Optional[str],
    grid: TileGrid,
    *,
    session: EncoderSession,
    batch_size: Optional[int] = None,
    progress: Optional[Progress] = None,
    workers: Optional[int] = None,
    max_nodata: float = DEFAULT_MAX_NODATA,
    stats: Optional[TileStats] = None,
    encode: Optional[Callable[[np.ndarray], Any]] = None,
) -> Iterator[tuple[list[int], Any]]:
    """Yield (tile indices, L2-normalised embeddings [b, D]) batch by batch, in grid order.

    ``encode`` replaces ``session.embed`` for what is yielded per batch (e.g. ``session.embed_dense``, whose
    patch outputs dense labelling needs); reading, skipping and timing stay the same.

    Tiles with more than ``max_nodata`` of no data are left out (listed in ``stats.skipped``).
    ``workers=0`` reads in the calling thread (no read-ahead); ``None`` picks a number for the device
    (``auto_workers``). Raises Cancelled between batches.
    """
    progress = progress or Progress()
    stats = stats if stats is not None else TileStats()
    spec = choose_encoder(bundle, source, modality)
    modality = spec.modality
    if session.role != modality:
        raise ValueError(f"the session runs the {session.role!r} encoder but tiles are read for {modality!r}")
    if not 0.0 <= max_nodata <= 1.0:
        raise ValueError(f"max_nodata must be a fraction between 0 and 1, got {max_nodata}")
    bs = session.auto_batch_size(batch_size)
    workers = auto_workers(session.is_gpu) if workers is None else int(workers)
    n = len(grid.windows)
    stats.total, stats.batch_size = n, bs
    units = work_units(n, bs, spec)
    readers = _Readers(source, spec, share_source=workers <= 0)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rsclip-read") if workers > 0 else None
    # One unit ahead per worker beside the one each is reading: enough to hide read latency, and memory stays
    # bounded (units are at most UNIT_MAX_BYTES of prepared input).
    depth = max(1, 2 * workers)
    pending: deque[Future] = deque()
    todo = iter(units)

    def submit() -> bool:
        if pool is None:
            return False
        nxt = next(todo, None)
        if nxt is None:
            return False
        pending.append(pool.submit(_prepare, readers, grid, spec, nxt, max_nodata, stats.keep_masks))
        return True

    try:
        progress.check()
        progress.update(0.0, f"{n} tiles")
        while len(pending) < depth and submit():
            pass
        for unit in units:
            progress.check()
            t0 = time.perf_counter()
            if pool is None:
                prep = _prepare(readers, grid, spec, unit, max_nodata, stats.keep_masks)
            else:
                prep = pending.popleft().result()
                submit()
                stats.wait_s += time.perf_counter() - t0
            stats.read_s += prep.seconds
            stats.partial_masks.update(prep.masks)
            skipped = sorted(prep.skipped)
            # Encoder batches are slices of the unit's prepared array (contiguous views: no copy, no concatenate).
            for a in range(0, len(prep.indices), bs):
                if a:
                    progress.check()
                idx = prep.indices[a : a + bs]
                t1 = time.perf_counter()
                emb = (encode or session.embed)(prep.batch[a : a + bs])
                stats.inference_s += time.perf_counter() - t1
                stats.embedded += len(idx)
                while skipped and skipped[0] < idx[-1]:  # skipped tiles are reported in grid order with the rest
                    stats.skipped.append(skipped.pop(0))
                _report(progress, idx[-1] + 1, n, stats)
                yield idx, emb
            stats.skipped += skipped
            _report(progress, unit.stop, n, stats)
    finally:
        for f in pending:
            f.cancel()
        if pool is not None:
            pool.shutdown(wait=True)
        readers.close()


def _report(progress: Progress, done: int, n: int, stats: TileStats) -> None:
    skipped_msg = f", {len(stats.skipped)} skipped (no data)" if stats.skipped else ""
    progress.update(done / max(n, 1), f"{done}/{n} tiles{skipped_msg}")
