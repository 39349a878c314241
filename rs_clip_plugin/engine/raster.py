"""Reading rasters the way users have them: band identity, physical units, streamed windows.

``open_source(path)`` accepts a GeoTIFF/COG/VRT, a folder of per-band files, or a Sentinel-2 SAFE
folder/.zip (see :mod:`.sources`) and returns a :class:`RasterSource`. Its *working grid* is the grid of
its finest band (10 m for Sentinel-2); every read is a window on that grid and returns float32
``(C, h, w)`` in physical units:

- Sentinel-2: reflectance ``(DN - offset) / 10000``; the +1000 offset of processing baseline >= 04.00
  comes from the product metadata (MTD_MSIL*.xml), else the product name, else ``s2_offset``;
  DN 0 is Sentinel-2's no-data value and becomes NaN;
- Sentinel-1: backscatter as stored, in dB or linear power (``sar_units``, detected from the values);
- RGB: uint8 / 255, uint16 / 65535, floats as stored.

No-data (declared nodata, NaN, outside the file) is NaN. Bands coarser than the working grid are
resampled on the fly (bilinear), so 20/60 m bands line up with 10 m ones. When a band's grid is the working
grid coarsened by a whole factor (Sentinel-2: 20 m = 2 x 10 m, 60 m = 6 x 10 m, same origin), the bilinear
interpolation is computed here from a native read, in physical units on the coarse grid (k*k fewer pixels
to convert): bands with no data in reach through ``upsample_bilinear_valid`` (float32, whole-row gathers),
the others through ``upsample_bilinear`` (GDAL's warper kernel, no-data excluded and weights renormalised,
float64). Both equal the warper within float32 rounding and are many times faster; any other grid goes
through GDAL's warper (WarpedVRT).

Threads: a RasterSource holds open GDAL handles, which must not be shared between threads. Use one
RasterSource per worker thread: ``source.reopen()`` gives an independent one without re-detection.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from .bands import (
    AMBIGUOUS_COMMON_NAMES,
    MODALITIES,
    MULTISPECTRAL_COMMON_NAMES,
    RGB_BANDS,
    S1_BANDS,
    S1_GRD_BANDS,
    S2_BANDS,
    S2_L1C_BANDS,
    S2_L2A_BANDS,
    S2_MISSING_IN_L2A,
    S2_NODATA_DN,
    S2_TRUE_COLOUR,
    S2_TRUE_COLOUR_WHITE_REFLECTANCE,
    SENSOR_BANDS,
    ZERO_BAND,
    canonical_band,
    names_s2_bands,
    parse_s2_product,
    s2_offset_dn,
)
from .bundle import EncoderSpec, Manifest
from .errors import ReadError
from .radiometry import SAR_UNITS, db_to_linear, linear_to_db, s2_reflectance
from .sources import SOURCE_HELP, BandRef, Discovered, RasterError, discover, gdal_path, vrt_source_names

__all__ = [
    "RasterError",
    "RasterSource",
    "encoder_for",
    "encoders_for",
    "mapping_error",
    "open_source",
    "upsample_bilinear",
    "upsample_bilinear_valid",
]

# GDAL's block cache defaults to 5% of RAM and counts toward this process's memory; streamed strip reads
# only need about one block row of the bands read. Set before GDAL first sizes its cache; a user's own
# GDAL_CACHEMAX (or QGIS's setting, inside QGIS) wins.
GDAL_CACHE_MB = 256
os.environ.setdefault("GDAL_CACHEMAX", str(GDAL_CACHE_MB))
SENSOR_HELP = f"{{sensor}} ({'|'.join(MODALITIES)}) and/or {{bands}} NAME,NAME,... (one name per raster band, in order)"
# Encoders a source can feed, best first. A 13-band (L1C) encoder takes L2A data with a zero B10
# (Paper A); an L2A encoder takes L1C minus B10; an rgb encoder takes a Sentinel-2 true-colour composite.
_COMPATIBLE: dict[str, tuple[str, ...]] = {
    "s2-l2a": ("s2-l2a", "s2-l1c", "rgb"),
    "s2-l1c": ("s2-l1c", "s2-l2a", "rgb"),
    "s1-grd": ("s1-grd",),
    "rgb": ("rgb",),
}
# Metres per degree, for a ground resolution of geographic (EPSG:4326) rasters.
_M_PER_DEG_LAT = 110_574.0
_M_PER_DEG_LON_EQUATOR = 111_320.0


def mapping_error(
    expected_modality: str,
    expected_bands: Sequence[str],
    found_sensor: str,
    found_bands: Sequence[str],
    source: str,
    missing: Optional[Sequence[str]] = None,
) -> RasterError:
    """The one "expects X, found Y, use --sensor/--bands" error; returned, for the caller to raise."""
    miss = f"; missing {list(missing)}" if missing else ""
    return RasterError(
        f"{source}: the bundle's {expected_modality} encoder expects bands {list(expected_bands)} but the raster "
        f"has {list(found_bands)} (detected as {found_sensor}){miss}. If the detection is wrong, say what the "
        f"raster holds with {SENSOR_HELP}; otherwise use a bundle with an encoder for {found_sensor}"
    )


@dataclass(frozen=True)
class _Band:
    ref: BandRef
    name: str
    offset_dn: float  # Sentinel-2 only


@dataclass(frozen=True)
class _Resolved:
    """Everything detection decided, so reopen() can skip it."""

    discovered: Discovered
    sensor: str
    bands: tuple[_Band, ...]
    sar_units: Optional[str]
    label: str
    # Bundle encoders this source can feed, best first (_COMPATIBLE[sensor], or only "rgb" when the user
    # asked for the true-colour composite of a Sentinel-2 raster with sensor="rgb").
    encoders: tuple[str, ...] = ()


def open_source(
    path: Path | str,
    *,
    sensor: Optional[str] = None,
    bands: Optional[Sequence[str]] = None,
    s2_offset: Optional[float] = None,
    sar_units: Optional[str] = None,
) -> RasterSource:
    """Open a raster for streaming reads in physical units.

    sensor: "s2-l1c" | "s2-l2a" | "s1-grd" | "rgb" overrides detection.
    bands: the band names of a single multi-band raster, in band order (overrides descriptions and heuristics).
    s2_offset: DN offset to subtract from Sentinel-2 numbers (1000 for baseline >= 04.00), overriding metadata.
    sar_units: "db" | "linear": what a Sentinel-1 raster holds, overriding detection from its values.
    Raises RasterError (a ValueError) saying what is wrong and what to pass instead.
    """
    if sensor is not None and sensor not in MODALITIES:
        raise RasterError(f"unknown sensor {sensor!r}; use one of {', '.join(MODALITIES)}")
    if sar_units is not None and sar_units not in SAR_UNITS:
        raise RasterError(f"unknown SAR units {sar_units!r}; use 'db' or 'linear'")
    d = discover(path)
    label = str(d.path)
    if d.layout == "file":
        refs = _single_file_bands(d.path, bands, sensor)
    else:
        if bands is not None:
            raise RasterError(
                f"{label}: {{bands}} names the bands of a single multi-band raster; a {d.layout} names its bands by "
                "file name (rename the files, e.g. B04.tif, or build a VRT)"
            )
        refs = d.bands
    names = [r.name for r in refs]
    encoders: Optional[tuple[str, ...]] = None
    if sensor == "rgb" and _holds_true_colour(names):
        # "Use this Sentinel-2 raster's true-colour bands with the rgb encoder": read as the Sentinel-2
        # level it is (DN -> reflectance, offsets, no data), composite B04/B03/B02 for the rgb encoder.
        sensor, encoders = _detect_sensor(names, d, label, None), ("rgb",)
    detected = _detect_sensor(names, d, label, sensor)
    if sensor is not None and not _names_fit(sensor, names):
        raise RasterError(
            f"{label}: {{sensor}} {sensor} does not fit the raster's bands {names}; give the bands with {{bands}} or "
            "choose the matching {sensor} (rgb takes a Sentinel-2 raster holding B04, B03, B02)"
        )
    sensor = sensor or detected
    # A 4th band of an RGB file (alpha / NIR) is not used.
    refs = [r for r in refs if r.name is not None]
    offsets = _s2_offsets(d, sensor, s2_offset, [r.name for r in refs])
    resolved_bands = tuple(_Band(r, r.name, offsets.get(r.name, 0.0)) for r in refs)  # type: ignore[arg-type]
    units = None
    if sensor == "s1-grd":
        units = sar_units or _detect_sar_units(refs[0])
    return RasterSource(_Resolved(d, sensor, resolved_bands, units, label, encoders or _COMPATIBLE[sensor]))


def _holds_true_colour(names: Sequence[Optional[str]]) -> bool:
    """Sentinel-2 band names that include the true-colour bands (B04, B03, B02)."""
    known = [n for n in names if n is not None]
    return bool(known) and all(n in S2_BANDS for n in known) and set(S2_TRUE_COLOUR.values()) <= set(known)


def _open(uri: str, label: str) -> rasterio.io.DatasetReader:
    try:
        with warnings.catch_warnings():
            # Plain photos (UC Merced) have no georeferencing; that is handled (res_m is None), not a warning.
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(uri)
    except RasterioIOError as exc:
        remote = gdal_path(uri)
        if remote is not None and remote.url != str(remote):
            raise ReadError(
                f"{remote.url}: cannot be read through GDAL's {str(remote)[: len(remote) - len(remote.url)]} ({exc}); "
                "check the address and the network, and for a private bucket GDAL's credentials settings "
                "(AWS_*, GS_*, AZURE_*, GDAL_HTTP_*)"
            ) from exc
        raise RasterError(f"{label}: not a raster GDAL can read ({exc}); {SOURCE_HELP}") from exc


def _single_file_bands(path: Path, bands: Optional[Sequence[str]], sensor: Optional[str]) -> list[BandRef]:
    uri = str(path)
    with _open(uri, str(path)) as ds:
        count, dtype, driver = ds.count, ds.dtypes[0], ds.driver
        raw_descriptions = list(ds.descriptions)
    # 8-bit data is never Sentinel-2 reflectance: there red/green/blue are a photo's channels, and an 'nir'
    # channel (e.g. aerial RGBN) is left unused like an alpha band.
    photo = dtype == "uint8"
    if bands is not None:
        s2_common = names_s2_bands(bands, sensor) and not photo
        names = [canonical_band(b, s2_common) for b in bands]
        ambiguous = [b for b in bands if b.strip().lower() in AMBIGUOUS_COMMON_NAMES]
        if ambiguous:
            raise RasterError(f"{path}: {{bands}} {ambiguous} names more than one band (B05, B06, B07); give them as B05, B06, B07")
        bad = [b for b, n in zip(bands, names) if n is None and not (photo and b.strip().lower() in MULTISPECTRAL_COMMON_NAMES)]
        if bad:
            raise RasterError(
                f"{path}: {{bands}} {bad} are not band names; use names such as B04, B8A, VV, or the common names "
                "red, green, blue, nir, nir08, swir16, swir22"
            )
        if len(names) != count:
            raise RasterError(f"{path}: {{bands}} lists {len(names)} names but the raster has {count} bands; give one per band")
    else:
        s2_common = names_s2_bands(raw_descriptions, sensor) and not photo
        descriptions = [canonical_band(d, s2_common) if d else None for d in raw_descriptions]
        if all(descriptions):
            names = descriptions
        else:
            names = vrt_source_names(path, count) if driver == "VRT" else [None] * count
            if not all(names):
                names = _names_from_count(path, count, dtype, sensor)
    known = [n for n in names if n is not None]
    if len(set(known)) != len(known):
        raise RasterError(f"{path}: band names {names} repeat a band; give each band once with {{bands}}")
    return [BandRef(n, uri, i + 1) for i, n in enumerate(names)]


def _names_from_count(path: Path, count: int, dtype: str, sensor: Optional[str]) -> list[Optional[str]]:
    """Band identity when nothing names the bands: the user's --sensor, else the band count and data type."""
    if sensor is not None:
        want = SENSOR_BANDS[sensor]
        if count == len(want):
            return list(want)
        if sensor == "rgb" and count == 4:
            return [*want, None]
        raise RasterError(
            f"{path}: {{sensor}} {sensor} has {len(want)} bands {list(want)} but the raster has {count} unnamed bands; "
            "name them with {bands}"
        )
    is_float = np.issubdtype(np.dtype(dtype), np.floating)
    if count == 13:
        return list(S2_L1C_BANDS)
    if count == 12:
        return list(S2_L2A_BANDS)
    if count == 2 and is_float:
        return list(S1_GRD_BANDS)
    if count in (3, 4) and dtype in ("uint8", "uint16"):
        return [*RGB_BANDS, *[None] * (count - 3)]
    raise RasterError(
        f"{path}: cannot tell which band is which ({count} unnamed {dtype} bands, no band descriptions); "
        f"say what the raster holds with {SENSOR_HELP}"
    )


def _names_fit(sensor: str, names: Sequence[Optional[str]]) -> bool:
    known = [n for n in names if n is not None]
    if sensor.startswith("s2"):
        return all(n in S2_BANDS for n in known)
    if sensor == "s1-grd":
        return all(n in S1_BANDS for n in known)
    return all(n in RGB_BANDS for n in known)


def _detect_sensor(names: Sequence[Optional[str]], d: Discovered, label: str, sensor: Optional[str]) -> str:
    known = [n for n in names if n is not None]
    if sensor is not None:
        return sensor
    if known and all(n in S1_BANDS for n in known):
        return "s1-grd"
    if known and all(n in RGB_BANDS for n in known):
        return "rgb"
    if known and all(n in S2_BANDS for n in known):
        if d.level:
            return d.level
        for hint in d.name_hints:
            product = parse_s2_product(hint)
            if product:
                return product.level
        # Without product metadata the band set decides: the cirrus band exists only in L1C. A partial
        # set without B10 is assumed L2A (the common analysis-ready product); --sensor overrides.
        return "s2-l1c" if S2_MISSING_IN_L2A in known else "s2-l2a"
    raise RasterError(f"{label}: bands {list(names)} mix sensors or are unknown; say what the raster holds with {SENSOR_HELP}")


def _s2_offsets(d: Discovered, sensor: str, override: Optional[float], names: Sequence[str]) -> dict[str, float]:
    """DN offset per band: --s2-offset, else SAFE metadata, else the product name's processing baseline."""
    if not sensor.startswith("s2"):
        return {}
    if override is not None:
        return {n: float(override) for n in names}
    if d.offsets_dn:
        return {n: d.offsets_dn.get(n, 0.0) for n in names}
    baseline = d.baseline
    if baseline is None:
        for hint in d.name_hints:
            product = parse_s2_product(hint)
            if product:
                baseline = product.baseline
                break
    value = s2_offset_dn(baseline)
    return {n: value for n in names}


def _detect_sar_units(ref: BandRef) -> str:
    """dB backscatter is mostly negative; linear power never is. Decided on a decimated read, not the whole scene."""
    with _open(ref.uri, ref.uri) as ds:
        for key in ("units", "UNITS", "unit"):
            tag = (ds.tags(ref.index).get(key) or ds.tags().get(key) or "").lower()
            if tag in ("db", "decibel", "decibels"):
                return "db"
            if tag in ("linear", "power", "intensity"):
                return "linear"
        if ds.units and ds.units[ref.index - 1]:
            u = ds.units[ref.index - 1].lower()
            if u in ("db", "decibel"):
                return "db"
        h, w = min(ds.height, 256), min(ds.width, 256)
        sample = ds.read(ref.index, out_shape=(h, w), resampling=Resampling.nearest, masked=True)
    values = np.asarray(sample.compressed(), dtype=np.float64)
    values = values[np.isfinite(values)]
    return "db" if values.size and (values < 0).mean() > 0.01 else "linear"


class RasterSource:
    """A raster opened for streaming reads on its working grid (see the module docstring).

    Attributes: path, sensor, band_names, crs, transform, width, height, res (ground units per pixel,
    CRS units), res_m (metres per pixel or None when not georeferenced), sar_units, s2_offset_dn.
    ``resample_with_warper = True`` (per instance) sends every coarse band through GDAL's warper (the reference).
    """

    resample_with_warper: bool = False

    def __init__(self, resolved: _Resolved):
        self._r = resolved
        self.path: Path = resolved.discovered.path
        self.sensor: str = resolved.sensor
        self.sar_units: Optional[str] = resolved.sar_units
        self.band_names: list[str] = [b.name for b in resolved.bands]
        # Encoder modalities this source can feed, best first (see _COMPATIBLE).
        self.encoders: tuple[str, ...] = resolved.encoders or _COMPATIBLE[resolved.sensor]
        self._bands = {b.name: b for b in resolved.bands}
        self._datasets: dict[str, rasterio.io.DatasetReader] = {}
        self._warped: dict[str, WarpedVRT] = {}
        self._factors: dict[str, Optional[int]] = {}
        self._closed = False
        grid_ds = self._finest_dataset()
        self.crs = grid_ds.crs
        self.transform = grid_ds.transform
        self.width: int = grid_ds.width
        self.height: int = grid_ds.height
        self.georeferenced: bool = grid_ds.crs is not None and not grid_ds.transform.is_identity
        self._native = {n: self._on_grid(self._dataset(b.ref.uri)) for n, b in self._bands.items()}

    # --- grid -------------------------------------------------------------------------------------
    @property
    def res(self) -> float:
        """Pixel size of the working grid in CRS units (x); see res_m for metres."""
        return float(abs(self.transform.a))

    @property
    def res_m(self) -> Optional[float]:
        """Ground pixel size in metres (geometric mean of x and y); None for rasters without georeferencing."""
        if not self.georeferenced:
            return None
        rx, ry = abs(self.transform.a), abs(self.transform.e)
        if self.crs.is_geographic:
            lat = np.deg2rad(self.transform.f + self.transform.e * self.height / 2)
            rx, ry = rx * _M_PER_DEG_LON_EQUATOR * np.cos(lat), ry * _M_PER_DEG_LAT
        elif self.crs.linear_units_factor:
            factor = self.crs.linear_units_factor[1]
            rx, ry = rx * factor, ry * factor
        return float(np.sqrt(rx * ry))

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) of the working grid in its CRS."""
        return _bounds(self.transform, self.width, self.height)

    @property
    def s2_offset_dn(self) -> Optional[float]:
        """The DN offset applied to Sentinel-2 bands (None for other sensors; the largest if bands differ)."""
        if not self.sensor.startswith("s2"):
            return None
        return max(b.offset_dn for b in self._bands.values())

    # --- reading ----------------------------------------------------------------------------------
    def read(self, window: Window, bands: Optional[Sequence[str]] = None) -> np.ndarray:
        """float32 (C, h, w) in physical units for a window of the working grid; NaN where there is no data.

        The window may extend past the raster (tiles padded at the edge): those pixels are NaN.
        """
        names = list(bands) if bands is not None else self.band_names
        out = np.empty((len(names), int(window.height), int(window.width)), dtype=np.float32)
        self._read_into(window, names, out, range(len(names)))
        return out

    def _read_into(self, window: Window, names: Sequence[str], out: np.ndarray, rows: Sequence[int]) -> None:
        """``read`` written into ``out[rows[i]]`` for ``names[i]`` (no intermediate array, no copy)."""
        if self._closed:
            raise RasterError(f"{self._r.label}: read after close(); open the source again")
        missing = [n for n in names if n not in self._bands]
        if missing:
            raise RasterError(f"{self._r.label}: no band {missing} in this raster (it has {self.band_names})")
        col, row = int(window.col_off), int(window.row_off)
        w, h = int(window.width), int(window.height)
        c0, r0 = max(col, 0), max(row, 0)
        c1, r1 = min(col + w, self.width), min(row + h, self.height)
        if c0 > col or r0 > row or c1 < col + w or r1 < row + h:
            out[list(rows)] = np.nan  # the part past the raster's edge
        if c1 <= c0 or r1 <= r0:
            return
        inner = Window(c0, r0, c1 - c0, r1 - r0)
        dst = (slice(r0 - row, r1 - row), slice(c0 - col, c1 - col))
        # Bands of one file on the working grid are read in one call; the others through a warped view.
        groups: dict[tuple[str, bool], list[int]] = {}
        for i, n in enumerate(names):
            groups.setdefault((self._bands[n].ref.uri, self._native[n]), []).append(i)
        # Coarse bands to interpolate, keyed by factor: bands of one factor share their source span and are
        # interpolated together (per-call overhead dominates on strips of a few tiles).
        coarse: dict[tuple[int, tuple[int, int]], list[tuple[np.ndarray, np.ndarray]]] = {}
        for (uri, native), idx in groups.items():
            indexes = [self._bands[names[i]].ref.index for i in idx]
            src = self._dataset(uri)
            factor = None if native or self.resample_with_warper else self._upsample_factor(uri)
            if factor is not None:
                phys, offset = self._coarse_physical(uri, indexes, inner, factor, [names[i] for i in idx])
                coarse.setdefault((factor, offset), []).extend(zip(phys, (out[(rows[i], *dst)] for i in idx)))
                continue
            raw = (src if native else self._warped_view(uri)).read(indexes, window=inner)
            for k, i in enumerate(idx):
                j = indexes[k] - 1
                nodata = src.nodatavals[j] if native else np.nan
                self._to_physical(raw[k], nodata, np.dtype(src.dtypes[j]), self._bands[names[i]],
                                  out=out[(rows[i], *dst)])
        for (factor, offset), jobs in coarse.items():
            _upsample_jobs(jobs, factor, offset)

    def _to_physical(self, raw: np.ndarray, nodata: Optional[float], src_dtype: np.dtype, band: _Band,
                     out: Optional[np.ndarray] = None) -> np.ndarray:
        """Raw values of one band -> float32 physical units, NaN where there is no data; written into ``out``
        (a strip's band) when given, in a few passes and no temporaries of the band's size but the mask."""
        x = np.empty(raw.shape, np.float32) if out is None else out
        invalid = raw == nodata if nodata is not None and not np.isnan(nodata) else None
        if self.sensor.startswith("s2"):
            if nodata != S2_NODATA_DN:
                hit = raw == S2_NODATA_DN
                invalid = hit if invalid is None else invalid | hit
            s2_reflectance(raw, band.offset_dn, out=x)
        else:
            np.copyto(x, raw, casting="unsafe")
            if self.sensor == "rgb":
                if src_dtype == np.uint8:
                    x /= np.float32(255.0)
                elif src_dtype == np.uint16:
                    x /= np.float32(65535.0)
        if not np.issubdtype(raw.dtype, np.integer):  # NaN stays NaN; infinities (also from the cast) are no data
            inf = ~np.isfinite(x)
            invalid = inf if invalid is None else invalid | inf
        if invalid is not None and invalid.any():
            np.copyto(x, np.float32(np.nan), where=invalid)
        return x

    # --- encoder mapping --------------------------------------------------------------------------
    def check_mapping(self, spec: EncoderSpec) -> None:
        """Raise the mapping error when this source cannot feed ``spec``; silent when it can."""
        self._plan(spec)

    def encoder_input(self, spec: EncoderSpec) -> Callable[[Window], np.ndarray]:
        """A reader of windows in the encoder's band order and units (checks the mapping now, not per tile)."""
        self._plan(spec)
        return lambda window: self.read_for(spec, window)

    def read_for(self, spec: EncoderSpec, window: Window) -> np.ndarray:
        """float32 (C, h, w) in ``spec``'s band order and units (before the bundle's transform); NaN = no data.

        Handles the "zero" pseudo band (and B10 for L2A sources: Paper A feeds it as zeros), the rgb
        encoder on Sentinel-2 data (B04/B03/B02 scaled so the product level's white reflectance is 1,
        clipped to [0, 1]) and dB <-> linear when the encoder's units differ from the raster's.
        """
        plan, scale = self._plan(spec)
        rows = [i for i, p in enumerate(plan) if p is not None]
        out = np.empty((len(plan), int(window.height), int(window.width)), dtype=np.float32)
        out[[i for i, p in enumerate(plan) if p is None]] = 0.0
        if rows:
            self._read_into(window, [plan[i] for i in rows], out, rows)  # type: ignore[misc]
        if scale is not None:
            out *= np.float32(scale)
            np.clip(out, 0.0, 1.0, out=out)  # NaN passes through np.clip
        if spec.modality == "s1-grd" and self.sar_units and spec.units in SAR_UNITS and spec.units != self.sar_units:
            out = db_to_linear(out) if spec.units == "linear" else linear_to_db(out)
        return out

    def _plan(self, spec: EncoderSpec) -> tuple[list[Optional[str]], Optional[float]]:
        """Per encoder band the source band to read (None = zeros), and a scale for S2 -> rgb composites."""
        if spec.modality not in self.encoders:
            raise mapping_error(spec.modality, spec.bands, self.sensor, self.band_names, self._r.label)
        plan: list[Optional[str]] = []
        missing = []
        scale = None
        rgb_from_s2 = spec.modality == "rgb" and self.sensor.startswith("s2")
        if rgb_from_s2:
            scale = 1.0 / S2_TRUE_COLOUR_WHITE_REFLECTANCE[self.sensor]
        for b in spec.bands:
            if b == ZERO_BAND:
                plan.append(None)
                continue
            name = S2_TRUE_COLOUR.get(b, b) if rgb_from_s2 else b
            if name in self._bands:
                plan.append(name)
            elif name == S2_MISSING_IN_L2A and self.sensor == "s2-l2a":
                plan.append(None)  # L2A has no cirrus band; Paper A inserts a zero band there
            else:
                missing.append(b)
        if missing:
            raise mapping_error(spec.modality, spec.bands, self.sensor, self.band_names, self._r.label, missing)
        return plan, scale

    # --- lifecycle --------------------------------------------------------------------------------
    def reopen(self) -> RasterSource:
        """An independent RasterSource on the same data (for another thread); detection is not repeated."""
        return RasterSource(self._r)

    def close(self) -> None:
        for vrt in self._warped.values():
            vrt.close()
        for ds in self._datasets.values():
            ds.close()
        self._warped.clear()
        self._datasets.clear()
        self._closed = True

    def __enter__(self) -> RasterSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RasterSource({str(self.path)!r}, sensor={self.sensor!r}, {self.width}x{self.height}, bands={self.band_names})"

    # --- internals --------------------------------------------------------------------------------
    def _dataset(self, uri: str) -> rasterio.io.DatasetReader:
        ds = self._datasets.get(uri)
        if ds is None:
            ds = self._datasets[uri] = _open(uri, self._r.label)
        return ds

    def _finest_dataset(self) -> rasterio.io.DatasetReader:
        """The working grid is the finest band's grid (first such band in canonical order)."""
        best = None
        for b in self._r.bands:
            ds = self._dataset(b.ref.uri)
            if best is None or abs(ds.transform.a) < abs(best.transform.a) - 1e-12:
                best = ds
        assert best is not None
        return best

    def _on_grid(self, ds: rasterio.io.DatasetReader) -> bool:
        return (
            ds.width == self.width
            and ds.height == self.height
            and ds.transform.almost_equals(self.transform, precision=1e-9 * max(1.0, abs(self.transform.a)))
            and ds.crs == self.crs
        )

    def _upsample_factor(self, uri: str) -> Optional[int]:
        """The whole factor k when the file's grid is the working grid coarsened k times (same CRS, origin and
        extent, no rotation), else None (the warper resamples it)."""
        if uri in self._factors:
            return self._factors[uri]
        ds, t = self._dataset(uri), self.transform
        st = ds.transform
        k = abs(st.a) / abs(t.a) if t.a else 0.0
        kk = round(k)
        fits = (
            kk >= 2
            and abs(k - kk) < 1e-9
            and ds.crs == self.crs
            and st.b == 0 and st.d == 0 and t.b == 0 and t.d == 0
            and abs(st.e - t.e * kk) <= 1e-9 * abs(st.e)
            and np.sign(st.a) == np.sign(t.a)
            and abs(st.c - t.c) <= 1e-6 * abs(t.a) and abs(st.f - t.f) <= 1e-6 * abs(t.e)
            and ds.width * kk == self.width and ds.height * kk == self.height
        )
        self._factors[uri] = kk if fits else None
        return self._factors[uri]

    def _coarse_physical(self, uri: str, indexes: list[int], window: Window, k: int,
                         names: Sequence[str]) -> tuple[list[np.ndarray], tuple[int, int]]:
        """Physical values (NaN = no data) of the coarse file's pixels that ``window`` of the working grid
        interpolates between, and the (row, col) of the window's first pixel relative to the first of them, in
        fine pixels. Converting before interpolating touches k*k fewer pixels, and gives the same values: the
        conversion is affine and the weights sum to one."""
        ds = self._dataset(uri)
        r0, c0 = int(window.row_off), int(window.col_off)
        sr0, sr1 = _source_span(r0, int(window.height), k, ds.height)
        sc0, sc1 = _source_span(c0, int(window.width), k, ds.width)
        raw = ds.read(indexes, window=Window(sc0, sr0, sc1 - sc0, sr1 - sr0))
        phys = [self._to_physical(raw[b], ds.nodatavals[index - 1], np.dtype(ds.dtypes[index - 1]),
                                  self._bands[name]) for b, (index, name) in enumerate(zip(indexes, names))]
        return phys, (r0 - sr0 * k, c0 - sc0 * k)

    def _warped_view(self, uri: str) -> WarpedVRT:
        vrt = self._warped.get(uri)
        if vrt is None:
            ds = self._dataset(uri)
            src_nodata = ds.nodata
            if src_nodata is None:
                src_nodata = S2_NODATA_DN if self.sensor.startswith("s2") else (np.nan if ds.dtypes[0].startswith("float") else None)
            finer = abs(ds.transform.a) < abs(self.transform.a)
            vrt = self._warped[uri] = WarpedVRT(
                ds,
                crs=self.crs,
                transform=self.transform,
                width=self.width,
                height=self.height,
                # Coarse bands are interpolated onto the finer grid; a finer band is averaged down.
                resampling=Resampling.average if finer else Resampling.bilinear,
                src_nodata=src_nodata,
                nodata=np.nan,
                dtype="float32",
            )
        return vrt


def _source_span(start: int, length: int, k: int, size: int) -> tuple[int, int]:
    """[first, last + 1) source pixels that fine pixels start..start+length-1 interpolate from (k x coarser)."""
    lo = int(np.floor((start + 0.5) / k - 0.5))
    hi = int(np.floor((start + length - 0.5) / k - 0.5)) + 2
    return max(lo, 0), min(max(hi, 1), size)


def _bilinear_axis(n_out: int, offset: int, k: int, n_src: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For fine pixels offset..offset+n_out-1 (relative to the first source pixel read, in fine pixels): the two
    source indices and the weight of the second, clamped at the edges (an outside neighbour counts as absent)."""
    pos = (np.arange(n_out, dtype=np.float64) + offset + 0.5) / k - 0.5
    j0 = np.floor(pos).astype(np.int64)
    frac = pos - j0
    return np.clip(j0, 0, n_src - 1), np.clip(j0 + 1, 0, n_src - 1), frac


def upsample_bilinear(raw: np.ndarray, valid: np.ndarray, k: int, offset: tuple[int, int],
                      shape: tuple[int, int]) -> np.ndarray:
    """Bilinear interpolation of (n, hs, ws) source pixels onto a grid k times finer, as GDAL's warper does it:
    half-pixel centres, invalid (``~valid``) and outside neighbours left out and the weights of the others
    renormalised; NaN where none is valid. ``offset`` = (row, col) of the output's first pixel on the fine grid
    relative to the first source pixel's top-left corner. Separable, in float64; float32 result (n, h, w).
    The reader sends only bands with no data in reach here; all-valid ones go to ``upsample_bilinear_valid``."""
    h, w = shape
    n, hs, ws = raw.shape
    if hs == 0 or ws == 0:
        return np.full((n, h, w), np.nan, np.float32)
    y0, y1, fy = _bilinear_axis(h, offset[0], k, hs)
    x0, x1, fx = _bilinear_axis(w, offset[1], k, ws)
    gy, gx = (1.0 - fy)[None, :, None], fy[None, :, None]
    wx0, wx1 = (1.0 - fx)[None, None, :], fx[None, None, :]
    m = valid.astype(np.float64)
    v = np.where(valid, raw, 0).astype(np.float64)
    num = v[:, y0, :] * gy + v[:, y1, :] * gx
    den = m[:, y0, :] * gy + m[:, y1, :] * gx
    num = num[:, :, x0] * wx0 + num[:, :, x1] * wx1
    den = den[:, :, x0] * wx0 + den[:, :, x1] * wx1
    # GDAL leaves a pixel empty when the source pixel under its centre is invalid, or no neighbour is valid.
    cy = np.clip((np.arange(h) + offset[0]) // k, 0, hs - 1)
    cx = np.clip((np.arange(w) + offset[1]) // k, 0, ws - 1)
    ok = valid[:, cy[:, None], cx[None, :]] & (den >= 1e-5)
    out = np.full(num.shape, np.nan, np.float32)
    np.divide(num, den, out=out, where=ok, casting="unsafe")
    return out


def _upsample_jobs(jobs: Sequence[tuple[np.ndarray, np.ndarray]], k: int, offset: tuple[int, int]) -> None:
    """Interpolate each coarse band of ``jobs`` (coarse physical (hs, ws), fine destination (h, w)) k times
    finer. Band by band: one band's arrays stay in the L2 cache through all the steps (stacking the bands
    was 6x slower on a strip)."""
    for src, dst in jobs:
        invalid = np.isnan(src)
        if invalid.any():
            dst[...] = upsample_bilinear(src[None], ~invalid[None], k, offset, dst.shape)[0]
        else:
            upsample_bilinear_valid(src, k, offset, dst)


def upsample_bilinear_valid(src: np.ndarray, k: int, offset: tuple[int, int], out: np.ndarray) -> np.ndarray:
    """``upsample_bilinear`` of one all-valid (hs, ws) band into ``out`` (h, w), in float32.

    By phase: the fine pixels i with (offset + i) % k == p all sit at the same fraction between two source
    pixels, and those pixels advance by one as i advances by k, so each phase is ``lo + (hi - lo) * f`` on
    plain slices of the band padded by its edge pixels (the clamped neighbour), written to every k-th pixel:
    no index gathers and no transposes. Columns first (on hs rows), then rows. The fraction depends only on
    the phase, so a pixel gets the same value whether it is read in a strip or in a tile."""
    w = out.shape[1]
    hs, ws = src.shape
    pad = np.empty((hs + 2, ws + 2), np.float32)  # edge-replicated: the clamped neighbour at either side
    pad[1:-1, 1:-1] = src
    pad[0, 1:-1], pad[-1, 1:-1] = src[0], src[-1]
    pad[:, 0], pad[:, -1] = pad[:, 1], pad[:, -2]
    cols = np.empty((hs + 2, w), np.float32)
    if not _lerp_phases(pad, cols, k, offset[1], axis=1):
        return _upsample_gather(src, k, offset, out)
    if not _lerp_phases(cols, out, k, offset[0], axis=0):
        return _upsample_gather(src, k, offset, out)
    return out


@lru_cache(maxsize=64)
def _phase_fractions(k: int) -> tuple[tuple[int, np.float32], ...]:
    """Per phase p (fine pixel index % k): (floor of its position in source pixels, fraction as float32)."""
    out = []
    for p in range(k):
        q = (p + 0.5) / k - 0.5
        fl = int(np.floor(q))
        out.append((fl, np.float32(q - fl)))
    return tuple(out)


def _lerp_phases(src: np.ndarray, out: np.ndarray, k: int, offset: int, axis: int) -> bool:
    """Interpolate ``src`` (padded by one edge pixel each side along ``axis``) k times finer into ``out``
    along ``axis``, fine pixel i at fine position offset + i from the first unpadded source pixel. False (and
    nothing trustworthy written) when a neighbour would fall outside the padded source."""
    n_out, n_src = out.shape[axis], src.shape[axis]
    fr = _phase_fractions(k)
    # hi - lo of every neighbour pair, once for all k phases (on the coarse side of this axis: k times smaller)
    diff = np.subtract(src[:, 1:], src[:, :-1]) if axis == 1 else np.subtract(src[1:], src[:-1])
    for i0 in range(min(k, n_out)):
        g = offset + i0
        p = g % k
        fl, f = fr[p]
        count = len(range(i0, n_out, k))
        a = (g - p) // k + fl + 1  # +1: the padding
        if a < 0 or a + 1 + count > n_src:
            return False
        if axis == 1:
            lo, d, dst = src[:, a : a + count], diff[:, a : a + count], out[:, i0::k]
        else:
            lo, d, dst = src[a : a + count], diff[a : a + count], out[i0::k]
        np.multiply(d, f, out=dst)
        dst += lo
    return True


def _upsample_gather(src: np.ndarray, k: int, offset: tuple[int, int], out: np.ndarray) -> np.ndarray:
    """``upsample_bilinear_valid`` by index gathers (clamped indices): for spans the phase path cannot serve."""
    h, w = out.shape
    hs, ws = src.shape
    y0, y1, fy = _lerp_axis(h, offset[0], k, hs)
    x0, x1, fx = _lerp_axis(w, offset[1], k, ws)
    t = np.ascontiguousarray(src.T, dtype=np.float32)  # (ws, hs)
    lo, hi = t[x0], t[x1]
    hi -= lo
    hi *= fx
    lo += hi
    cols = np.ascontiguousarray(lo.T)  # (hs, w)
    lo, hi = cols[y0], cols[y1]
    np.subtract(hi, lo, out=hi)
    hi *= fy
    np.add(lo, hi, out=out)
    return out


@lru_cache(maxsize=256)
def _lerp_axis(n_out: int, offset: int, k: int, n_src: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """_bilinear_axis with the weight as a float32 column, cached (a reader asks for the same few spans)."""
    j0, j1, frac = _bilinear_axis(n_out, offset, k, n_src)
    f = frac.astype(np.float32)[:, None]
    for a in (j0, j1, f):
        a.setflags(write=False)
    return j0, j1, f


def _bounds(transform, width: int, height: int) -> tuple[float, float, float, float]:
    xs = (transform.c, transform.c + transform.a * width)
    ys = (transform.f, transform.f + transform.e * height)
    return (min(xs), min(ys), max(xs), max(ys))


def encoders_for(manifest: Manifest, source: RasterSource) -> list[EncoderSpec]:
    """The bundle's encoders the source can feed (bands present), best first: its own sensor's, a compatible
    Sentinel-2 level, then the rgb composite. A 4-band B04, B03, B02, B08 raster cannot feed a 12-band
    encoder but can feed the rgb one."""
    have = {e.modality: e for e in manifest.encoders}
    out = []
    for modality in source.encoders:
        if modality in have:
            try:
                source.check_mapping(have[modality])
            except RasterError:
                continue
            out.append(have[modality])
    return out


def encoder_for(manifest: Manifest, source: RasterSource) -> EncoderSpec:
    """The bundle's encoder best suited to the source (``encoders_for``'s first); when none can be fed, the
    mapping error of the best candidate (what it expects, what the raster has)."""
    usable = encoders_for(manifest, source)
    if usable:
        return usable[0]
    have = {e.modality: e for e in manifest.encoders}
    for modality in source.encoders:
        if modality in have:
            source.check_mapping(have[modality])  # raises the mapping error naming the missing bands
    first = manifest.encoders[0]
    raise mapping_error(
        "/".join(have) or "(none)", first.bands, source.sensor, source.band_names, str(source.path)
    )
