"""Source discovery: which files (and which band of each file) make up a raster the user points at.

A user gives one path; this module turns it into a list of :class:`BandRef` plus the metadata hints
(product name, processing baseline, radiometric offsets) that :mod:`.raster` needs to read it in
physical units. Four layouts are understood:

- a single GDAL raster (GeoTIFF, COG, VRT, ...): one BandRef per band, named from the band
  descriptions, or for a VRT from the file names of its sources, else left unnamed;
- a folder of per-band files named by band (``B04.tif``, ``B4.tif``, ``<patch>_B04.tif``, ``VV.tif``,
  ``<patch>_VH.tif``) at native resolutions;
- a Sentinel-2 ``.SAFE`` folder (``GRANULE/*/IMG_DATA[/R10m..]/*_B02[_10m].jp2``);
- the same SAFE as a ``.zip``, read in place through GDAL's ``/vsizip/``;
- any GDAL virtual path (``/vsicurl/https://...``, ``/vsis3/...``, ``/vsizip/...``) or a plain
  ``http(s)://`` / ``s3://`` / ``gs://`` address, read as a single raster: kept as text (:class:`GdalPath`),
  never through pathlib, whose normalisation turns ``https://`` into ``https:/``.

No pixel is read here; only names, XML and JSON.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .bands import RGB_BANDS, S1_BANDS, S2_BANDS, S2_L1C_BANDS, canonical_band, native_resolution
from .errors import InputError

RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt", ".img", ".nc")
SOURCE_HELP = (
    "give a GeoTIFF/COG/VRT, a Sentinel-2 .SAFE folder or .zip, or a folder of per-band files named by band "
    "(B04.tif, *_B04.tif, VV.tif)"
)
# Band files inside a SAFE: T33UUP_20220301T101031_B02_10m.jp2 (L2A) or ..._B02.jp2 (L1C).
_SAFE_BAND = re.compile(r"_(B\d{2}|B8A)(?:_(\d{2})m)?\.jp2$", re.IGNORECASE)
_PRODUCT_METADATA = re.compile(r"MTD_MSIL(1C|2A)\.xml$", re.IGNORECASE)


# Addresses GDAL reads through a virtual file system: scheme -> prefix.
_URL_PREFIX = {"http": "/vsicurl/", "https": "/vsicurl/", "ftp": "/vsicurl/", "s3": "/vsis3/", "gs": "/vsigs/",
               "az": "/vsiaz/", "abfs": "/vsiaz/"}
_VSI = re.compile(r"^/vsi[a-z0-9_]+/", re.IGNORECASE)
_SCHEME = re.compile(r"^([a-z][a-z0-9+.-]*)://", re.IGNORECASE)


class GdalPath(str):
    """A GDAL virtual path (``/vsicurl/https://host/x.tif``), kept as text.

    Offers the few ``Path`` members the engine uses on a source path (``name``, ``suffix``, ``stem``,
    ``exists``, ``is_file``, ``is_dir``, ``resolve``) without pathlib's normalisation of ``//``.
    Existence is not checked here (it would cost a network round trip); the first read says what failed.
    """

    @property
    def name(self) -> str:
        return self.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]

    @property
    def suffix(self) -> str:
        n = self.name
        return n[n.rfind("."):] if "." in n else ""

    @property
    def stem(self) -> str:
        n = self.name
        return n[: n.rfind(".")] if "." in n else n

    @property
    def url(self) -> str:
        """The address inside the prefix (what a user recognises in an error)."""
        return _VSI.sub("", str(self), count=1)

    def exists(self) -> bool:
        return True

    def is_file(self) -> bool:
        return True

    def is_dir(self) -> bool:
        return False

    def resolve(self) -> GdalPath:
        return self


def gdal_path(path) -> Optional[GdalPath]:
    """``path`` as a GdalPath when it names a GDAL virtual file or a URL (``https://`` -> ``/vsicurl/https://``), else None."""
    if isinstance(path, GdalPath):
        return path
    if not isinstance(path, str):
        return None  # a Path object is a local file (and a URL would already be mangled)
    if _VSI.match(path):
        return GdalPath(path)
    m = _SCHEME.match(path)
    if m and m.group(1).lower() in _URL_PREFIX:
        scheme = m.group(1).lower()
        prefix = _URL_PREFIX[scheme]
        # /vsicurl/ takes the whole URL; the cloud prefixes take bucket/key without the scheme.
        return GdalPath(prefix + (path if prefix == "/vsicurl/" else path[m.end():]))
    return None


def source_id(path) -> str:
    """The text that identifies a source across runs: a local path resolved, a GDAL path as given."""
    g = gdal_path(path)
    return str(g) if g is not None else str(Path(path).resolve())


class RasterError(InputError):
    """A raster that cannot be read or mapped; the message names the file and the fix."""


@dataclass(frozen=True)
class BandRef:
    """One band of one file: ``uri`` is what rasterio opens (may be a /vsizip/ path), index is 1-based."""

    name: Optional[str]
    uri: str
    index: int = 1


@dataclass
class Discovered:
    path: Path
    layout: str  # "file" | "folder" | "safe" | "stac"
    bands: list[BandRef]
    # Text in which a Sentinel-2 product name may appear (path, metadata PRODUCT_ID).
    name_hints: list[str] = field(default_factory=list)
    level: Optional[str] = None  # "s2-l1c" | "s2-l2a" when product metadata says so
    baseline: Optional[str] = None  # e.g. "04.00" from product metadata
    offsets_dn: Optional[dict[str, float]] = None  # per band, from SAFE metadata (BOA/RADIO_ADD_OFFSET)


def band_from_filename(name: str) -> Optional[str]:
    """Canonical band for a per-band file name: 'B04.tif', 'B4.tif', '<patch>_B8A.tif', 'T33_..._B02_10m.jp2', 'VV.tif'."""
    stem = Path(name).name
    for suffix in RASTER_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    tokens = stem.split("_")
    # Whole stem first (B04), then the last token (<patch>_B04), then the one before a resolution suffix (_B02_10m).
    candidates = [stem, tokens[-1]]
    if len(tokens) >= 2 and re.fullmatch(r"\d{2}m", tokens[-1], re.IGNORECASE):
        candidates.append(tokens[-2])
    for c in candidates:
        band = canonical_band(c)
        # A bare number ("image_1.tif") is not a band name in a file name: S2 names must start with B.
        if band is not None and (band not in S2_BANDS or c.upper().startswith("B")):
            return band
    return None


def discover(path: Path | str) -> Discovered:
    """The files and bands behind ``path``; raises RasterError naming what is wrong and what to give instead."""
    virtual = gdal_path(path)
    if str(path).lower().split("?", 1)[0].endswith(".json"):  # a STAC Item (file or URL): see stac.py
        from .stac import discover_stac

        return discover_stac(virtual if virtual is not None else Path(path))
    if virtual is not None:
        return Discovered(virtual, "file", [], name_hints=[virtual.url])  # type: ignore[arg-type]
    path = Path(path)
    if not path.exists():
        raise RasterError(f"{path}: no such file or folder; {SOURCE_HELP}")
    if path.is_file() and path.suffix.lower() == ".zip":
        return _discover_safe_zip(path)
    if path.is_dir():
        if path.suffix.upper() == ".SAFE" or (path / "GRANULE").is_dir():
            return _discover_safe_dir(path)
        return _discover_folder(path)
    return Discovered(path, "file", [], name_hints=[str(path.resolve())])


def _discover_folder(path: Path) -> Discovered:
    found: dict[str, list[Path]] = {}
    for f in sorted(path.iterdir()):
        if f.is_file() and f.suffix.lower() in RASTER_SUFFIXES:
            band = band_from_filename(f.name)
            if band is not None:
                found.setdefault(band, []).append(f)
    if not found:
        raise RasterError(f"{path}: a folder without band files; {SOURCE_HELP}")
    dupes = {b: [p.name for p in ps] for b, ps in found.items() if len(ps) > 1}
    if dupes:
        raise RasterError(f"{path}: more than one file for the same band {dupes}; keep one file per band in the folder")
    hints = [str(path.resolve())]
    meta = path / "metadata.json"
    if meta.is_file():
        # SSL4EO-S12 (Google Earth Engine export) keeps the product id here.
        try:
            d = json.loads(meta.read_text(encoding="utf-8"))
            hints += [str(d[k]) for k in ("PRODUCT_ID", "GRANULE_ID") if k in d]
        except (OSError, ValueError):
            pass
    bands = [BandRef(b, str(ps[0])) for b, ps in found.items()]
    return Discovered(path, "folder", _ordered(bands), name_hints=hints)


def _ordered(bands: list[BandRef]) -> list[BandRef]:
    order = {b: i for i, b in enumerate([*S2_L1C_BANDS, *S1_BANDS, *RGB_BANDS])}
    return sorted(bands, key=lambda r: order.get(r.name or "", 99))


def _granule(member: str) -> Optional[str]:
    parts = member.split("/")
    return parts[parts.index("GRANULE") + 1] if "GRANULE" in parts[:-1] else None


def _pick_safe_bands(members: list[str], label: str) -> list[tuple[str, str]]:
    """(band, member) at each band's native resolution from the image file names of one SAFE."""
    granules = {_granule(m) for m in members if _SAFE_BAND.search(m)} - {None}
    if len(granules) > 1:
        raise RasterError(
            f"{label}: the product holds {len(granules)} granules ({', '.join(sorted(granules))}); "
            "RS-CLIP reads one granule at a time: give the single-tile product or a VRT of one granule"
        )
    by_band: dict[str, list[tuple[float, str]]] = {}
    for m in members:
        if "IMG_DATA" not in m.split("/"):
            continue
        hit = _SAFE_BAND.search(m)
        if not hit:
            continue
        band = canonical_band(hit.group(1))
        if band is None:
            continue
        res = float(hit.group(2)) if hit.group(2) else (native_resolution(band) or 0.0)
        by_band.setdefault(band, []).append((res, m))
    if not by_band:
        raise RasterError(f"{label}: no band images under GRANULE/*/IMG_DATA; the SAFE product is incomplete")
    out = []
    for band, choices in by_band.items():
        native = native_resolution(band)
        exact = [m for r, m in choices if r == native]
        out.append((band, exact[0] if exact else min(choices)[1]))
    return out


def _parse_product_metadata(xml_bytes: bytes) -> tuple[Optional[str], Optional[dict[str, float]]]:
    """(processing baseline, per-band DN offset) from MTD_MSIL1C/2A.xml; offsets are the negated *_ADD_OFFSET."""
    try:
        root = ET.fromstring(xml_bytes)
    except ET.ParseError:
        return None, None
    baseline = None
    offsets: dict[str, float] = {}
    for el in root.iter():
        tag = el.tag.rsplit("}", 1)[-1]
        if tag == "PROCESSING_BASELINE" and el.text:
            baseline = el.text.strip()
        elif tag in ("BOA_ADD_OFFSET", "RADIO_ADD_OFFSET") and el.text:
            band_id = int(el.get("band_id", "-1"))
            # band_id follows ESA's physical band order B1..B8, B8A, B9..B12 = S2_L1C_BANDS.
            if 0 <= band_id < len(S2_L1C_BANDS):
                offsets[S2_L1C_BANDS[band_id]] = -float(el.text)
    return baseline, (offsets or None)


def _discover_safe_dir(path: Path) -> Discovered:
    members = [str(p.relative_to(path)).replace("\\", "/") for p in path.rglob("*") if p.is_file()]
    picked = _pick_safe_bands(members, str(path))
    d = Discovered(path, "safe", _ordered([BandRef(b, str(path / m)) for b, m in picked]), name_hints=[path.name])
    for m in members:
        hit = _PRODUCT_METADATA.search(m)
        if hit and "/" not in m:
            d.level = "s2-l1c" if hit.group(1).upper() == "1C" else "s2-l2a"
            d.baseline, d.offsets_dn = _parse_product_metadata((path / m).read_bytes())
    return d


def _discover_safe_zip(path: Path) -> Discovered:
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise RasterError(f"{path}: not a readable .zip ({exc}); {SOURCE_HELP}") from exc
    with zf:
        members = [i.filename for i in zf.infolist() if not i.is_dir()]
        safe_roots = sorted({m.split("/")[0] for m in members if m.split("/")[0].upper().endswith(".SAFE")})
        if len(safe_roots) != 1:
            raise RasterError(f"{path}: a .zip must hold exactly one Sentinel-2 .SAFE product (found {len(safe_roots)}); {SOURCE_HELP}")
        root = safe_roots[0]
        inner = [m[len(root) + 1 :] for m in members if m.startswith(root + "/")]
        picked = _pick_safe_bands(inner, str(path))
        vsi = f"/vsizip/{path.resolve()}/{root}"
        d = Discovered(path, "safe", _ordered([BandRef(b, f"{vsi}/{m}") for b, m in picked]), name_hints=[root, path.name])
        for m in inner:
            hit = _PRODUCT_METADATA.search(m)
            if hit and "/" not in m:
                d.level = "s2-l1c" if hit.group(1).upper() == "1C" else "s2-l2a"
                d.baseline, d.offsets_dn = _parse_product_metadata(zf.read(f"{root}/{m}"))
    return d


def vrt_source_names(vrt_path: Path, count: int) -> list[Optional[str]]:
    """Band names of a VRT from the file names of each band's source (gdalbuildvrt -separate keeps no descriptions)."""
    try:
        root = ET.parse(vrt_path).getroot()
    except (ET.ParseError, OSError):
        return [None] * count
    names: list[Optional[str]] = []
    for band in root.iter("VRTRasterBand"):
        files = {(el.text or "").strip() for el in band.iter("SourceFilename")}
        found = {band_from_filename(f) for f in files} - {None}
        names.append(found.pop() if len(found) == 1 else None)
    return names if len(names) == count else [None] * count
