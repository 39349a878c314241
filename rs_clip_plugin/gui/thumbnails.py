"""Search-hit thumbnails with their own contrast stretch.

QGIS's layer renderer stretches over the whole layer (or its first load's statistics), so a small hit
window of a Sentinel scene comes out nearly black. Each thumbnail here is read through the engine's
raster reader (physical units) and stretched between the window's own 2nd and 98th percentiles: true
colour (B04, B03, B02; one range for the three bands, so hues stay true) for Sentinel-2 and RGB, VV / VH /
VV-VH ratio (dB; a range per channel) false colour for Sentinel-1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np

from ..engine.bands import RGB_BANDS, S1_GRD_BANDS, S2_TRUE_COLOUR
from ..engine.radiometry import linear_to_db

PERCENTILES = (2.0, 98.0)


def composite_bands(sensor: str, band_names: Sequence[str]) -> list[str]:
    """The source bands a thumbnail shows as R, G, B (S1: VV and VH; the ratio is derived)."""
    names = list(band_names)
    if sensor.startswith("s2"):
        want = [S2_TRUE_COLOUR[c] for c in RGB_BANDS]
    elif sensor == "s1-grd":
        want = list(S1_GRD_BANDS)
    else:
        want = names[:3]
    missing = [b for b in want if b not in names]
    if missing:
        raise ValueError(f"no band {missing} for a thumbnail of this {sensor} raster (it has {names})")
    return want


def false_colour(sensor: str, data: np.ndarray, sar_units: Optional[str] = None) -> np.ndarray:
    """(C, h, w) physical values of ``composite_bands`` -> (3, h, w) float channels before stretching."""
    if sensor == "s1-grd":
        vv, vh = data[0], data[1]
        if sar_units != "db":  # the ratio and the stretch both read better on a log scale
            vv, vh = linear_to_db(vv), linear_to_db(vh)
        return np.stack([vv, vh, vv - vh])
    if data.shape[0] == 1:
        return np.repeat(data, 3, axis=0)
    return data[:3]


def stretch(
    channels: np.ndarray, percentiles: tuple[float, float] = PERCENTILES, per_channel: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile stretch to uint8 (3, h, w), and the valid mask (h, w) (NaN in any channel = invalid).

    ``per_channel=False`` takes one range over all channels: true colour keeps its hues (a white roof stays
    white); a false-colour composite of different quantities needs a range per channel.
    """
    valid = np.all(np.isfinite(channels), axis=0)
    out = np.zeros(channels.shape, dtype=np.uint8)
    if not valid.any():
        return out, valid
    ranges = [np.percentile(ch[valid], percentiles) for ch in channels]
    if not per_channel:
        joint = np.percentile(channels[:, valid], percentiles)
        ranges = [joint] * len(channels)
    for i, (ch, (lo, hi)) in enumerate(zip(channels, ranges)):
        if hi <= lo:  # a flat window: mid grey rather than a division by zero
            out[i][valid] = 128
            continue
        scaled = np.clip((ch - lo) / (hi - lo), 0.0, 1.0)
        out[i][valid] = np.round(scaled[valid] * 255).astype(np.uint8)
    return out, valid


def read_window_rgb(source: str, bounds: tuple[float, float, float, float], max_px: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The stretched (3, h, w) uint8 composite and valid mask of ``bounds`` (the source's CRS) of a raster."""
    from rasterio.windows import from_bounds

    from ..engine.raster import open_source

    with open_source(source) as src:
        bands = composite_bands(src.sensor, src.band_names)
        window = from_bounds(*bounds, transform=src.transform).round_offsets().round_lengths()
        if window.width < 1 or window.height < 1:
            raise ValueError(f"the hit {bounds} is smaller than a pixel of {source}")
        data = src.read(window, bands)
        sar_units = src.sar_units
        sensor = src.sensor
    step = max(1, int(np.ceil(max(data.shape[1:]) / max_px)))  # the icon is small: no need for every pixel
    channels = false_colour(sensor, data[:, ::step, ::step], sar_units)
    return stretch(channels, per_channel=sensor == "s1-grd")


def to_qimage(rgb: np.ndarray, valid: np.ndarray):
    """(3, h, w) uint8 + mask -> a QImage (RGBA8888; invalid pixels transparent) that owns its pixels."""
    from qgis.PyQt.QtGui import QImage

    h, w = valid.shape
    rgba = np.empty((h, w, 4), dtype=np.uint8)  # RGBA8888 is R, G, B, A in memory on any byte order
    rgba[..., :3] = np.moveaxis(rgb, 0, -1)
    rgba[..., 3] = np.where(valid, 255, 0)
    buf = np.ascontiguousarray(rgba)
    return QImage(buf.tobytes(), w, h, 4 * w, QImage.Format_RGBA8888).copy()  # copy: detach from the bytes
