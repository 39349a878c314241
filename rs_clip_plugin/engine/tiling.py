"""Tiles over a raster's working grid, and the per-pixel averaging of tile results.

Grid policy: tiles start at the extent's top-left corner and step by ``stride_px``. The last row and
column are *shifted inward* so that they end exactly at the extent's far edge (no padding, no tile
sticking out of the data) — the extra overlap is absorbed by logit averaging. An extent narrower than one
tile gets one tile centred on it and shifted to lie inside the raster (its context comes from the real
pixels around the extent).

Tile size (``tile_size_px_for``): the bundle's tile on the ground, or ``tile_size_m``, in the raster's
pixels, *clamped to the raster's shorter side*. A CLIP encoder takes a fixed input size, so every tile is
resized to it anyway; a raster smaller than the tile is therefore encoded whole (one tile of real pixels,
resized up) rather than padded. Padding was wrong twice over: NaN padding counted as no data and the tile
was skipped (the raster came out all label 0), and any fill (mean, reflection) shows the encoder content
that is not there, while a smaller tile only changes the scale, as ``tile_size_m`` does by design. An
explicit ``tile_size_m`` larger than the whole raster, not finite or not positive, or a tile whose read
would exceed MAX_TILE_BYTES, is an InputError naming ``{tile_size_m}``.

The output grid is the source's working grid restricted to the extent (snapped outward to whole
pixels): ``TileGrid.out_window`` on the working grid, ``TileGrid.out_transform`` for writers.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from affine import Affine
from rasterio.windows import Window

from .bundle import EncoderSpec
from .errors import InputError
from .raster import RasterSource

DEFAULT_MAX_NODATA = 0.5
# Per-pixel sums beyond this many bytes go to a disk-backed memmap instead of RAM.
DENSE_IN_MEMORY_BYTES = 256 * 1024 * 1024
# One tile read (float32, all encoder bands) may hold at most this much: a 12-band tile of ~2360 px side
# (23 km at 10 m), an RGB tile of ~4700 px. Larger tiles would only be averaged down to the encoder's input.
MAX_TILE_BYTES = 256 << 20


@dataclass
class TileGrid:
    windows: list[Window]  # on the source's working grid
    tile_px: int
    stride_px: int
    out_window: Window  # the output raster's footprint on the working grid
    out_transform: Affine
    crs: object

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) of the output grid in the source CRS."""
        t = self.out_transform
        w, h = int(self.out_window.width), int(self.out_window.height)
        xs, ys = (t.c, t.c + t.a * w), (t.f, t.f + t.e * h)
        return (min(xs), min(ys), max(xs), max(ys))

    @property
    def out_shape(self) -> tuple[int, int]:
        return int(self.out_window.height), int(self.out_window.width)

    def __len__(self) -> int:
        return len(self.windows)


def _starts(begin: int, length: int, tile: int, stride: int, size: int) -> list[int]:
    """Tile offsets along one axis of the working grid (``size`` pixels) covering ``begin``..``begin+length``."""
    if length <= tile:
        # One tile centred on the extent, inside the raster when it fits (context from real pixels around it).
        return [max(0, min(begin + (length - tile) // 2, size - tile))]
    n = math.ceil((length - tile) / stride) + 1
    starts = [begin + i * stride for i in range(n)]
    starts[-1] = begin + length - tile  # shifted inward: the last tile ends at the edge
    return sorted(set(starts))


def extent_window(source: RasterSource, extent: Sequence[float]) -> Window:
    """(xmin, ymin, xmax, ymax) in the source CRS -> a window of whole pixels covering it, clipped to the raster."""
    xmin, ymin, xmax, ymax = map(float, extent)
    if not (xmax > xmin and ymax > ymin):
        raise ValueError(f"extent {tuple(extent)} is empty: give xmin, ymin, xmax, ymax with xmax > xmin and ymax > ymin")
    inv = ~source.transform
    cols, rows = zip(*(inv * (x, y) for x in (xmin, xmax) for y in (ymin, ymax)))
    eps = 1e-6  # a bound on a pixel edge must not pull in the neighbouring pixel
    c0, c1 = math.floor(min(cols) + eps), math.ceil(max(cols) - eps)
    r0, r1 = math.floor(min(rows) + eps), math.ceil(max(rows) - eps)
    c0, r0 = max(c0, 0), max(r0, 0)
    c1, r1 = min(c1, source.width), min(r1, source.height)
    if c1 <= c0 or r1 <= r0:
        b = source.bounds
        raise ValueError(
            f"extent {tuple(extent)} does not overlap the raster {source.path} (bounds {tuple(round(v, 3) for v in b)} "
            f"in {source.crs}); give the extent in the raster's CRS"
        )
    return Window(c0, r0, c1 - c0, r1 - r0)


def stride_for(tile_px: int, overlap: float) -> int:
    """Stride in pixels for a tile overlap fraction in [0, 1)."""
    if not 0.0 <= float(overlap) < 1.0:
        raise ValueError(f"overlap must be a fraction in [0, 1), got {overlap}; e.g. 0.5 for half-tile overlap")
    return max(1, round(tile_px * (1.0 - float(overlap))))


def make_grid(
    source: RasterSource,
    tile_size_px: int,
    stride_px: Optional[int] = None,
    extent: Optional[Sequence[float]] = None,
) -> TileGrid:
    """Tiles of ``tile_size_px`` every ``stride_px`` (default: no overlap) covering the extent (default: all)."""
    if tile_size_px <= 0:
        raise ValueError(f"tile size must be a positive number of pixels, got {tile_size_px}")
    stride = tile_size_px if stride_px is None else int(stride_px)
    if not 0 < stride <= tile_size_px:
        raise ValueError(f"stride {stride} px must be between 1 and the tile size {tile_size_px} px (gaps would leave pixels unlabelled)")
    out = Window(0, 0, source.width, source.height) if extent is None else extent_window(source, extent)
    c0, r0, w, h = int(out.col_off), int(out.row_off), int(out.width), int(out.height)
    windows = [
        Window(c, r, tile_size_px, tile_size_px)
        for r in _starts(r0, h, tile_size_px, stride, source.height)
        for c in _starts(c0, w, tile_size_px, stride, source.width)
    ]
    return TileGrid(windows, tile_size_px, stride, out, source.transform * Affine.translation(c0, r0), source.crs)


def check_tile_size_m(tile_size_m: object) -> float:
    """``tile_size_m`` as a finite, positive number of metres, else an InputError naming it."""
    try:
        metres = float(tile_size_m)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InputError(f"{{tile_size_m}} {tile_size_m!r} is not a number; give the tile size on the ground in "
                         "metres, e.g. 640", params=("tile_size_m",)) from None
    if not math.isfinite(metres) or metres <= 0:
        raise InputError(f"{{tile_size_m}} must be a positive number of metres, got {tile_size_m}; e.g. 640, or leave "
                         "it unset for the bundle's tile size", params=("tile_size_m",))
    return metres


def tile_size_px_for(spec: EncoderSpec, source: RasterSource, tile_size_m: Optional[float] = None) -> int:
    """Tile size in the source's pixels for a tile of ``tile_size_m`` (default: the bundle's) on the ground,
    clamped to the raster's shorter side (see the module docstring).

    A raster without georeferencing (plain photos) has no ground size: the bundle's tile_size_px is used.
    Raises InputError for a ``tile_size_m`` that is not a positive finite number, larger than the whole
    raster, or too large to read (MAX_TILE_BYTES).
    """
    explicit = tile_size_m is not None
    metres = check_tile_size_m(tile_size_m) if explicit else spec.tile_size_m
    res = source.res_m
    short, long = min(source.width, source.height), max(source.width, source.height)
    if res is None:
        px = int(spec.tile_size_px)
    else:
        px = max(1, round(metres / res))
        if explicit and px > long:
            raise InputError(
                f"{{tile_size_m}} {metres:g} m is larger than the whole raster {source.path.name} "
                f"({source.width} x {source.height} px, {long * res:.0f} m on its longer side); give at most "
                f"{long * res:.0f} m, or leave {{tile_size_m}} unset to use the bundle's tile",
                params=("tile_size_m",),
            )
    px = max(1, min(px, short))
    max_px = math.isqrt(MAX_TILE_BYTES // (4 * max(1, len(spec.bands))))
    if px > max_px:
        limit = f"{max_px * res:.0f} m" if res else f"{max_px} px"
        raise InputError(
            f"{{tile_size_m}}: a tile of {px} x {px} px in {len(spec.bands)} bands needs "
            f"{4 * len(spec.bands) * px * px / 2**20:.0f} MiB per read; give at most {limit} "
            f"({max_px} px) for {{tile_size_m}}",
            params=("tile_size_m",),
        )
    return px


def nodata_fraction(tile: np.ndarray) -> float:
    """Fraction of no-data pixels of a tile: a (C, h, w) float tile (a pixel where any band is NaN), or the
    (h, w) bool no-data mask the strip reader already has."""
    mask = tile if tile.dtype == bool else np.isnan(tile).any(axis=0)
    if mask.size == 0:
        return 1.0
    return float(mask.mean())


def should_skip(tile: np.ndarray, max_nodata: float = DEFAULT_MAX_NODATA) -> bool:
    """True for tiles that are mostly no data (they are not encoded and come out as nodata)."""
    return nodata_fraction(tile) > max_nodata


class LogitAccumulator:
    """Per-pixel average of the logits of all tiles covering each pixel, on a TileGrid's output grid.

    ``add(window, logits)`` takes a tile's window on the working grid and either one score vector
    ``(n_classes,)`` for the whole tile (zero-shot labelling) or a per-pixel map ``(n_classes, h, w)``.
    Tile vectors are kept as a list (n_tiles x n_classes, small) and spread over pixels only when a
    strip is requested, so memory stays bounded by the strip; per-pixel maps go to sum/count arrays
    that live in RAM when small and in a temporary np.memmap otherwise.

    ``averaged(window)`` and ``strips()`` use windows on the OUTPUT grid (row 0 = top of the extent),
    i.e. what a writer of the output raster needs. Pixels no tile covered are NaN.
    """

    def __init__(self, grid: TileGrid, n_classes: int, strip_rows: int = 256):
        if n_classes <= 0:
            raise ValueError(f"n_classes must be positive, got {n_classes}")
        self.grid = grid
        self.n_classes = n_classes
        self.strip_rows = strip_rows
        self._c0, self._r0 = int(grid.out_window.col_off), int(grid.out_window.row_off)
        self._h, self._w = grid.out_shape
        self._boxes: list[tuple[int, int, int, int]] = []  # output-grid r0, r1, c0, c1 of each tile vector
        self._vectors: list[np.ndarray] = []
        self._box_array: Optional[np.ndarray] = None
        self._dense_sum: Optional[np.ndarray] = None
        self._dense_count: Optional[np.ndarray] = None
        self._tmpdir: Optional[tempfile.TemporaryDirectory] = None

    def _clip(self, window: Window) -> Optional[tuple[int, int, int, int]]:
        r0 = int(window.row_off) - self._r0
        c0 = int(window.col_off) - self._c0
        r1, c1 = r0 + int(window.height), c0 + int(window.width)
        box = (max(r0, 0), min(r1, self._h), max(c0, 0), min(c1, self._w))
        return box if box[1] > box[0] and box[3] > box[2] else None

    def add(self, window: Window, logits: np.ndarray) -> None:
        logits = np.asarray(logits, dtype=np.float32)
        box = self._clip(window)
        if box is None:
            return
        if logits.ndim == 1:
            if logits.shape[0] != self.n_classes:
                raise ValueError(f"{logits.shape[0]} scores for a tile, expected {self.n_classes}")
            self._boxes.append(box)
            self._vectors.append(logits)
            return
        expected = (self.n_classes, int(window.height), int(window.width))
        if logits.shape != expected:
            raise ValueError(f"per-pixel logits of shape {logits.shape}, expected {expected}")
        r0, r1, c0, c1 = box
        wr0, wc0 = r0 - (int(window.row_off) - self._r0), c0 - (int(window.col_off) - self._c0)
        part = logits[:, wr0 : wr0 + (r1 - r0), wc0 : wc0 + (c1 - c0)]
        s, n = self._dense()
        s[:, r0:r1, c0:c1] += part
        n[r0:r1, c0:c1] += 1

    def _dense(self) -> tuple[np.ndarray, np.ndarray]:
        if self._dense_sum is None:
            shape = (self.n_classes, self._h, self._w)
            if 4 * self.n_classes * self._h * self._w <= DENSE_IN_MEMORY_BYTES:
                self._dense_sum = np.zeros(shape, np.float32)
                self._dense_count = np.zeros((self._h, self._w), np.uint16)
            else:
                self._tmpdir = tempfile.TemporaryDirectory(prefix="rsclip-logits-")
                d = Path(self._tmpdir.name)
                self._dense_sum = np.memmap(d / "sum.f32", np.float32, "w+", shape=shape)
                self._dense_count = np.memmap(d / "count.u16", np.uint16, "w+", shape=(self._h, self._w))
        assert self._dense_count is not None
        return self._dense_sum, self._dense_count

    def averaged(self, window: Window) -> np.ndarray:
        """float32 (n_classes, h, w) mean logits for a window of the output grid; NaN where no tile."""
        r0, c0 = int(window.row_off), int(window.col_off)
        h, w = int(window.height), int(window.width)
        total = np.zeros((self.n_classes, h, w), np.float32)
        count = np.zeros((h, w), np.float32)
        if self._vectors:
            if self._box_array is None or len(self._box_array) != len(self._boxes):
                self._box_array = np.asarray(self._boxes, dtype=np.int64)
            boxes = self._box_array
            hit = (boxes[:, 0] < r0 + h) & (boxes[:, 1] > r0) & (boxes[:, 2] < c0 + w) & (boxes[:, 3] > c0)
            for i in np.flatnonzero(hit):
                br0, br1, bc0, bc1 = boxes[i]
                rr0, rr1 = max(br0, r0) - r0, min(br1, r0 + h) - r0
                cc0, cc1 = max(bc0, c0) - c0, min(bc1, c0 + w) - c0
                total[:, rr0:rr1, cc0:cc1] += self._vectors[i][:, None, None]
                count[rr0:rr1, cc0:cc1] += 1
        if self._dense_sum is not None and self._dense_count is not None:
            total += self._dense_sum[:, r0 : r0 + h, c0 : c0 + w]
            count += self._dense_count[r0 : r0 + h, c0 : c0 + w]
        with np.errstate(invalid="ignore", divide="ignore"):
            out = total / count[None]
        out[:, count == 0] = np.nan
        return out

    def strips(self) -> Iterator[Window]:
        """Output-grid windows of ``strip_rows`` full rows, top to bottom, for writing."""
        for r in range(0, self._h, self.strip_rows):
            yield Window(0, r, self._w, min(self.strip_rows, self._h - r))

    def close(self) -> None:
        self._dense_sum = self._dense_count = None
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None
