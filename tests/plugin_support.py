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


def stack_bands(band_files: dict[str, Path], out: Path, window=None) -> Path:
    """One multi-band GeoTIFF (descriptions name the bands) on the grid of the first file (or of its
    ``window``, a rasterio Window), resampled bilinearly.

    The SSL4EO-S12 and Major-TOM samples keep each band in its own file at its native resolution; a QGIS layer
    is one file.
    """
    import numpy as np
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    names = list(band_files)
    with rasterio.open(band_files[names[0]]) as ref:
        profile = ref.profile.copy()
        grid = dict(crs=ref.crs, transform=ref.transform, width=ref.width, height=ref.height)
        if window is not None:
            grid.update(transform=ref.window_transform(window), width=int(window.width), height=int(window.height))
            profile.update(transform=grid["transform"], width=grid["width"], height=grid["height"])
    arrays = []
    for name in names:
        with rasterio.open(band_files[name]) as ds, WarpedVRT(ds, resampling=Resampling.bilinear, **grid) as vrt:
            arrays.append(vrt.read(1))
    profile.update(count=len(names), driver="GTiff", compress="deflate", tiled=False)
    profile.pop("blockxsize", None)
    profile.pop("blockysize", None)
    out.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(np.stack(arrays).astype(profile["dtype"]))
        for i, name in enumerate(names, start=1):
            dst.set_band_description(i, name)
    return out


def s2_l2a_crop(scene: Path, out: Path, size: int = 192, col: int = 300, row: int = 500) -> Path:
    """All twelve L2A bands of the Major-TOM scene on its 10 m grid, cropped to ``size`` px at (col, row): a
    12-band GeoTIFF the engine reads as s2-l2a (descriptions name the bands)."""
    from rasterio.windows import Window

    bands = sorted((p.stem for p in scene.glob("B*.tif")), key=lambda b: (b != "B02", b))  # a 10 m band first
    return stack_bands({b: scene / f"{b}.tif" for b in bands}, out, window=Window(col, row, size, size))


def ssl4eo_s1_s2(data_dir: Path, out_dir: Path) -> tuple[Path, Path]:
    """Co-located Sentinel-1 (VV, VH dB) and Sentinel-2 L2A (12 bands) GeoTIFFs of the SSL4EO-S12 sample."""
    from rs_clip_plugin.engine.bands import canonical_band

    s1 = sorted((data_dir / "ssl4eo_s12" / "s1" / "0000200").iterdir())[0]
    s2 = sorted((data_dir / "ssl4eo_s12" / "s2a" / "0000200").iterdir())[0]
    s1_tif = stack_bands({b: s1 / f"{b}.tif" for b in ("VV", "VH")}, out_dir / "s1_vv_vh.tif")
    files = sorted(s2.glob("B*.tif"), key=lambda p: (p.stem != "B2", canonical_band(p.stem)))  # a 10 m band first
    s2_tif = stack_bands({canonical_band(p.stem): p for p in files}, out_dir / "s2_l2a.tif")
    return s1_tif, s2_tif


def s2_vrt(scene: Path, out: Path, bands: tuple[str, ...] = ("B04", "B03", "B02", "B08"), size: int = 128,
           col: int = 300, row: int = 500) -> Path:
    """A VRT stacking the Major-TOM band files (as ``gdalbuildvrt -separate`` does: no band descriptions, the
    bands named by their source files), cropped to ``size`` px at (col, row)."""
    import rasterio

    with rasterio.open(scene / f"{bands[0]}.tif") as ds:
        gt = ds.window_transform(rasterio.windows.Window(col, row, size, size)).to_gdal()
        wkt = ds.crs.to_wkt()
    xml = [f'<VRTDataset rasterXSize="{size}" rasterYSize="{size}"><SRS>{wkt}</SRS>'
           f"<GeoTransform>{', '.join(map(repr, gt))}</GeoTransform>"]
    for i, b in enumerate(bands, 1):
        xml.append(
            f'<VRTRasterBand dataType="UInt16" band="{i}"><SimpleSource><SourceFilename relativeToVRT="0">'
            f"{scene / (b + '.tif')}</SourceFilename><SourceBand>1</SourceBand>"
            f'<SrcRect xOff="{col}" yOff="{row}" xSize="{size}" ySize="{size}"/>'
            f'<DstRect xOff="0" yOff="0" xSize="{size}" ySize="{size}"/></SimpleSource></VRTRasterBand>'
        )
    xml.append("</VRTDataset>")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(xml))
    return out


def scene_extent(scene: Path, size_m: float = 1280.0, dx: float = 3003.0, dy: float = 2007.0) -> tuple[float, ...]:
    """A square extent (xmin, ymin, xmax, ymax) of ``size_m`` inside the Major-TOM scene, ``dx``/``dy`` from its
    top-left corner: a small, fast area of a real raster."""
    import rasterio

    with rasterio.open(scene / "B04.tif") as ds:
        b = ds.bounds
    return (b.left + dx, b.top - dy - size_m, b.left + dx + size_m, b.top - dy)


def release_qgis_objects() -> None:
    """Destroy what Python still owns of QGIS while QGIS is alive: call it just before exitQgis(). Left to PyQt's
    exit clean-up, a QgsRasterLayer (held by a test, or by a dialog) was destroyed during interpreter finalisation,
    after QGIS's registries were gone, and QgsRasterPipe's destructor crashed the process (SIGSEGV / "double free")
    after all the work had succeeded."""
    import gc

    from qgis.core import QgsMapLayer, QgsProject
    from qgis.PyQt import sip
    from qgis.PyQt.QtWidgets import QApplication

    QgsProject.instance().removeAllMapLayers()
    for w in QApplication.topLevelWidgets():  # dialogs and docks hold layers of their own
        if sip.ispyowned(w):
            sip.delete(w)
    gc.collect()
    for obj in gc.get_objects():
        if isinstance(obj, QgsMapLayer) and not sip.isdeleted(obj) and sip.ispyowned(obj):
            sip.delete(obj)
