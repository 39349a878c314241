"""Writers of results: streamed GeoTIFFs, class names and colours, QGIS .qml styles, JSON summaries.

Label rasters carry their legend three ways, so every reader finds it:
- a GDAL colour table (rasterio ``write_colormap``), read by QGIS, ArcGIS, GDAL tools;
- GDAL category names (``SetCategoryNames``) written with ``osgeo.gdal`` when it is importable. For a
  GeoTIFF GDAL keeps them in a ``<file>.aux.xml`` side-car (the TIFF format has no field for them);
- the same names inside the TIFF itself as band tags ``CLASS_NAMES`` (JSON list, index = pixel value)
  and ``CLASS_COLORS`` (JSON list of '#rrggbb'), which need no side-car and no osgeo.
Plus a ``.qml`` paletted style that QGIS applies when the layer is loaded from the same folder.
"""

from __future__ import annotations

import errno
import json
import os
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np
import rasterio
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning

from .bundle import atomic_write_text
from .classes import hex_to_rgb

# Every raster the engine writes says so, so front ends never offer their own results as search inputs.
OUTPUT_TAG = "RSCLIP_OUTPUT"
CLASS_NAMES_TAG = "CLASS_NAMES"
CLASS_COLORS_TAG = "CLASS_COLORS"
AUX_SUFFIX = ".aux.xml"
_BLOCK = 256


def geotiff_profile(
    width: int, height: int, transform: Affine, crs, dtype: str, nodata: Optional[float], compress: str = "deflate"
) -> dict:
    """A tiled, compressed single-band GeoTIFF profile (BigTIFF when needed) for window-by-window writing."""
    profile = {
        "driver": "GTiff",
        "width": int(width),
        "height": int(height),
        "count": 1,
        "dtype": dtype,
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
        "compress": compress,
        "BIGTIFF": "IF_SAFER",
    }
    # Tiny rasters stay striped: a 256 px block would be mostly padding.
    if width >= _BLOCK and height >= _BLOCK:
        profile.update(tiled=True, blockxsize=_BLOCK, blockysize=_BLOCK)
    if np.dtype(dtype).kind == "f":
        profile["predictor"] = 3
    return profile


def open_geotiff(path: Path, profile: dict):
    """A rasterio dataset open for writing; the caller writes windows and closes it."""
    with warnings.catch_warnings():
        # Outputs follow the input's grid: a plain photo's labels have no georeferencing either, as expected.
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        dst = rasterio.open(Path(path), "w", **profile)
    dst.update_tags(**{OUTPUT_TAG: Path(path).stem})
    return dst


def overview_factors(width: int, height: int, block: int = _BLOCK) -> list[int]:
    """2, 4, 8, ... until the smallest overview fits in one block (GDAL's COG driver stops at the same point)."""
    factors, f = [], 2
    while max(width, height) / (f // 2) > block:
        factors.append(f)
        f *= 2
    return factors


def make_cog(path: Path, resampling: str) -> Path:
    """Turn the tiled GeoTIFF at ``path`` (written window by window, closed) into a Cloud-Optimised GeoTIFF.

    GDAL's COG driver cannot be written window by window, so: build the overviews on the written file
    (``resampling``: 'mode' for labels, 'average' for scores; GDAL skips nodata), then copy it with
    COPY_SRC_OVERVIEWS=YES, which puts the overviews' and the image's tiles in the COG order (ghost header,
    overviews first). Both steps work block by block (bounded memory); the copy keeps the colour table,
    nodata, band description and tags. Category names (the .aux.xml) are set afterwards on the result."""
    from rasterio.enums import Resampling
    from rasterio.shutil import copy as rio_copy

    path = Path(path)
    work = path.with_name(f".{path.name}.tiled.tif")
    os.replace(path, work)
    try:
        with rasterio.open(work, "r+") as ds:
            factors = overview_factors(ds.width, ds.height)
            if factors:
                ds.build_overviews(factors, Resampling[resampling])
            profile = ds.profile
        opts = {"COPY_SRC_OVERVIEWS": "YES", "COMPRESS": profile.get("compress", "deflate"), "BIGTIFF": "IF_SAFER"}
        if profile.get("tiled"):
            opts.update(TILED="YES", BLOCKXSIZE=profile["blockxsize"], BLOCKYSIZE=profile["blockysize"])
        if profile.get("predictor"):
            opts["PREDICTOR"] = profile["predictor"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            rio_copy(work, path, driver="GTiff", **opts)
    finally:
        work.unlink(missing_ok=True)
        work.with_name(work.name + ".ovr").unlink(missing_ok=True)
        work.with_name(work.name + AUX_SUFFIX).unlink(missing_ok=True)
    return path


def write_class_legend(dst, names: Sequence[str], colours: Sequence[str], band: int = 1) -> None:
    """Colour table and name tags on an open uint8 dataset; names[0]/colours[0] are value 0 (nodata/unknown)."""
    cmap = {0: (*hex_to_rgb(colours[0]), 0)}  # value 0 is nodata: transparent
    for value, colour in enumerate(colours[1:], start=1):
        cmap[value] = (*hex_to_rgb(colour), 255)
    dst.write_colormap(band, cmap)
    dst.update_tags(band, **{CLASS_NAMES_TAG: json.dumps(list(names), ensure_ascii=False),
                             CLASS_COLORS_TAG: json.dumps(list(colours))})
    dst.set_band_description(band, "class")


def set_category_names(path: Path, names: Sequence[str]) -> Optional[Path]:
    """GDAL category names (in the .aux.xml side-car for GeoTIFF); returns the side-car, or None without osgeo."""
    try:
        from osgeo import gdal
    except ImportError:
        return None
    path = Path(path)
    gdal.UseExceptions()
    # GDAL only warns (on stderr) when the side-car cannot be saved, e.g. on a full disk: collect its messages
    # and fail instead, so a label raster never silently loses its category names.
    problems: list[str] = []
    gdal.PushErrorHandler(lambda cls, code, msg: problems.append(msg) if cls >= gdal.CE_Warning else None)
    try:
        try:
            ds = gdal.Open(str(path), gdal.GA_Update)
        except RuntimeError as exc:  # the raster just written is unreadable: its write failed (a full disk)
            raise OSError(errno.EIO, f"{path} could not be written completely ({str(exc).splitlines()[0]})") from exc
        try:
            ds.GetRasterBand(1).SetCategoryNames(list(names))
            ds.FlushCache()
        finally:
            ds = None  # closing the dataset is what writes the side-car
    finally:
        gdal.PopErrorHandler()
    if problems:
        raise OSError(errno.EIO, f"{problems[0].strip()} (GDAL)")
    aux = path.with_name(path.name + AUX_SUFFIX)
    return aux if aux.is_file() else None


def read_class_legend(path: Path) -> dict:
    """Names and colours of a label raster (from its tags and colour table), for plugins and tests."""
    with rasterio.open(Path(path)) as ds:
        tags = ds.tags(1)
        names = json.loads(tags[CLASS_NAMES_TAG]) if CLASS_NAMES_TAG in tags else []
        try:
            cmap = ds.colormap(1)
        except ValueError:
            cmap = {}
    colours = [f"#{r:02x}{g:02x}{b:02x}" for r, g, b, _ in (cmap[i] for i in range(len(names)))] if cmap else []
    return {"names": names, "colors": colours}


def _sub(parent: ET.Element, tag: str, **attrs: object) -> ET.Element:
    return ET.SubElement(parent, tag, {k: str(v) for k, v in attrs.items()})


def qml_paletted(entries: Sequence[tuple[int, str, str]], band: int = 1, opacity: float = 1.0) -> str:
    """A QGIS layer style (.qml) with a paletted renderer: entries are (value, '#rrggbb', label)."""
    root = ET.Element("qgis", {"version": "3.22.0", "styleCategories": "AllStyleCategories", "hasScaleBasedVisibilityFlag": "0"})
    pipe = _sub(root, "pipe")
    r = _sub(pipe, "rasterrenderer", type="paletted", band=band, opacity=opacity, alphaBand=-1, nodataColor="")
    _sub(r, "rasterTransparency")
    mmo = _sub(r, "minMaxOrigin")
    for tag, text in (("limits", "None"), ("extent", "WholeRaster"), ("statAccuracy", "Estimated"),
                      ("cumulativeCutLower", "0.02"), ("cumulativeCutUpper", "0.98"), ("stdDevFactor", "2")):
        _sub(mmo, tag).text = text
    palette = _sub(r, "colorPalette")
    for value, colour, label in entries:
        _sub(palette, "paletteEntry", value=int(value), color=colour, alpha=255, label=label)
    _sub(pipe, "brightnesscontrast", brightness=0, contrast=0, gamma=1)
    _sub(pipe, "huesaturation", saturation=0, grayscaleMode=0, colorizeOn=0, colorizeRed=255, colorizeGreen=128,
         colorizeBlue=128, colorizeStrength=100, invertColors=0)
    _sub(pipe, "rasterresampler", maxOversampling=2)
    _sub(root, "blendMode").text = "0"
    ET.indent(root)
    return "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n" + ET.tostring(root, encoding="unicode") + "\n"


def _user_readable(path: Path) -> Path:
    """Temporary files are created 0600; results are for the user's other tools too (umask decides)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
    return path


def write_qml(path: Path, entries: Sequence[tuple[int, str, str]]) -> Path:
    atomic_write_text(Path(path), qml_paletted(entries))
    return _user_readable(Path(path))


def write_json(path: Path, data: dict) -> Path:
    atomic_write_text(Path(path), json.dumps(data, indent=2, ensure_ascii=False, default=_json_default) + "\n")
    return _user_readable(Path(path))


def _json_default(o: object):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    return str(o)
