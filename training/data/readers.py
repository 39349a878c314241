"""Reading Sentinel rasters into float32 stacks on one grid (the finest band's), naming what is missing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Optional

import numpy as np

from rs_clip_plugin.engine.bands import ZERO_BAND, canonical_band


class DataError(FileNotFoundError):
    """A dataset whose files are missing or malformed; the message names the path and the fix."""


def band_files(folder: Path, suffix: str = ".tif") -> dict[str, Path]:
    """Canonical band name -> file for a per-band folder (``B4.tif``, ``..._B04.tif``, ``VV.tif``)."""
    out: dict[str, Path] = {}
    for p in sorted(Path(folder).glob(f"*{suffix}")):
        token = p.stem.rsplit("_", 1)[-1]
        band = canonical_band(token)
        if band is not None:
            out[band] = p
    return out


def require_bands(files: Mapping[str, Path], bands: Sequence[str], where: Path) -> None:
    missing = [b for b in bands if b != ZERO_BAND and b not in files]
    if missing:
        raise DataError(
            f"{where}: missing band files {missing} (found {sorted(files)}); a complete patch folder holds one "
            "GeoTIFF per band named like B04.tif or <patch>_B04.tif"
        )


def read_band_stack(
    files: Mapping[str, Path],
    bands: Sequence[str],
    out_shape: Optional[tuple[int, int]] = None,
    where: Optional[Path] = None,
) -> np.ndarray:
    """[C, H, W] float32 in file units; coarser bands resampled (bilinear) to the finest grid; 'zero' -> zeros."""
    import rasterio
    from rasterio.enums import Resampling

    require_bands(files, bands, where or Path(next(iter(files.values()), ".")).parent)
    if out_shape is None:
        shapes = []
        for b in bands:
            if b == ZERO_BAND:
                continue
            with rasterio.open(files[b]) as src:
                shapes.append((src.height, src.width))
        out_shape = max(shapes)
    stack = np.zeros((len(bands), *out_shape), np.float32)
    for i, b in enumerate(bands):
        if b == ZERO_BAND:
            continue
        with rasterio.open(files[b]) as src:
            resampling = Resampling.nearest if (src.height, src.width) == tuple(out_shape) else Resampling.bilinear
            stack[i] = src.read(1, out_shape=out_shape, resampling=resampling).astype(np.float32)
    return stack


def read_multiband(path: Path, expected_bands: Optional[int] = None) -> np.ndarray:
    """All bands of one GeoTIFF as [C, H, W] float32; checks the band count."""
    import rasterio

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; check the dataset root")
    with rasterio.open(path) as src:
        if expected_bands is not None and src.count != expected_bands:
            raise DataError(f"{path}: has {src.count} bands but {expected_bands} are expected; is this the right product level?")
        return src.read().astype(np.float32)


def grid_windows(height: int, width: int, size: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners of size x size windows covering the image (the last row/column flush with the edge)."""
    if height < size or width < size:
        return []

    def starts(n: int) -> list[int]:
        s = list(range(0, n - size + 1, stride))
        if s[-1] != n - size:
            s.append(n - size)
        return s

    return [(y, x) for y in starts(height) for x in starts(width)]


def split_windows(
    windows: Sequence[tuple[int, int]], height: int, size: int, holdout_fraction: float
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Spatial split: held-out windows lie in the bottom band of the image, training windows wholly above it.

    Overlapping crops on both sides of a random split would leak pixels into the held-out set.
    """
    if holdout_fraction <= 0:
        return list(windows), []
    cut = round(height * (1.0 - holdout_fraction))
    train = [(y, x) for y, x in windows if y + size <= cut]
    held = [(y, x) for y, x in windows if y >= cut]
    return train, held
