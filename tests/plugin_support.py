"""Helpers for the plugin and Processing tests: small real rasters cut from the sample scene."""

from __future__ import annotations

from pathlib import Path

S2_BANDS = ("B02", "B03", "B04", "B08")


def s2_crop(scene: Path, out: Path, size: int = 192, col: int = 300, row: int = 500) -> Path:
    """A 4-band 10 m GeoTIFF (B02, B03, B04, B08; descriptions name the bands) cut from the Major-TOM scene."""
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    window = Window(col, row, size, size)
    arrays, profile = [], None
    for band in S2_BANDS:
        with rasterio.open(scene / f"{band}.tif") as ds:
            arrays.append(ds.read(1, window=window))
            if profile is None:
                profile = ds.profile.copy()
                profile.update(width=size, height=size, count=len(S2_BANDS), transform=ds.window_transform(window),
                               driver="GTiff", compress="deflate", tiled=False)
                profile.pop("blockxsize", None)
                profile.pop("blockysize", None)
    out.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(np.stack(arrays))
        for i, band in enumerate(S2_BANDS, start=1):
            dst.set_band_description(i, band)
    return out
