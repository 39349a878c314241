"""The one table of sensor bands, shared by the engine and the training package.

Everything that needs to know which band is B04, which wavelength it has, at which resolution
Sentinel-2 delivers it or whether a product carries the baseline-04.00 radiometric offset asks here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

MODALITIES = ("rgb", "s2-l1c", "s2-l2a", "s1-grd")


@dataclass(frozen=True)
class Band:
    name: str
    wavelength_nm: Optional[float]
    resolution_m: Optional[float]
    description: str


# ESA Sentinel-2 MSI band set (central wavelengths of S2A, rounded).
S2_BANDS: dict[str, Band] = {
    b.name: b
    for b in (
        Band("B01", 443.0, 60.0, "coastal aerosol"),
        Band("B02", 490.0, 10.0, "blue"),
        Band("B03", 560.0, 10.0, "green"),
        Band("B04", 665.0, 10.0, "red"),
        Band("B05", 705.0, 20.0, "red edge 1"),
        Band("B06", 740.0, 20.0, "red edge 2"),
        Band("B07", 783.0, 20.0, "red edge 3"),
        Band("B08", 842.0, 10.0, "near infrared"),
        Band("B8A", 865.0, 20.0, "narrow near infrared"),
        Band("B09", 945.0, 60.0, "water vapour"),
        Band("B10", 1375.0, 60.0, "cirrus"),
        Band("B11", 1610.0, 20.0, "short-wave infrared 1"),
        Band("B12", 2190.0, 20.0, "short-wave infrared 2"),
    )
}
S2_L1C_BANDS: tuple[str, ...] = tuple(S2_BANDS)
# Level-2A drops the cirrus band: it is consumed by the atmospheric correction.
S2_L2A_BANDS: tuple[str, ...] = tuple(b for b in S2_BANDS if b != "B10")
S2_MISSING_IN_L2A = "B10"

S1_BANDS: dict[str, Band] = {
    b.name: b
    for b in (
        Band("VV", None, 10.0, "vertical transmit, vertical receive"),
        Band("VH", None, 10.0, "vertical transmit, horizontal receive"),
        Band("HH", None, 10.0, "horizontal transmit, horizontal receive"),
        Band("HV", None, 10.0, "horizontal transmit, vertical receive"),
    )
}
S1_GRD_BANDS: tuple[str, ...] = ("VV", "VH")

RGB_BANDS: tuple[str, ...] = ("red", "green", "blue")

# Pseudo band an encoder may list: fed as zeros (Paper A's 13-band encoders on L2A, which has no B10).
ZERO_BAND = "zero"

SENSOR_BANDS: dict[str, tuple[str, ...]] = {
    "s2-l1c": S2_L1C_BANDS,
    "s2-l2a": S2_L2A_BANDS,
    "s1-grd": S1_GRD_BANDS,
    "rgb": RGB_BANDS,
}

# Sentinel-2 digital numbers are reflectance times this quantification value.
S2_QUANTIFICATION = 10000.0
# Sentinel-2's NO_DATA digital number (both levels).
S2_NODATA_DN = 0
# From processing baseline 04.00 (products from 25 Jan 2022 on) both L1C and L2A digital numbers
# carry +1000 (RADIO_ADD_OFFSET / BOA_ADD_OFFSET = -1000) so that dark pixels keep their noise.
S2_OFFSET_BASELINE = (4, 0)
S2_BASELINE_OFFSET_DN = 1000.0

# Sentinel-2 true-colour composite as Paper A feeds its RGB teacher: B4, B3, B2 divided by these DN
# values (then x255 and clamped to uint8 in their code), i.e. reflectance 0.2 (L2A) / 0.3558 (L1C) is white.
S2_TRUE_COLOUR: dict[str, str] = {"red": "B04", "green": "B03", "blue": "B02"}
S2_TRUE_COLOUR_WHITE_REFLECTANCE: dict[str, float] = {"s2-l2a": 2000.0 / S2_QUANTIFICATION, "s2-l1c": 3558.0 / S2_QUANTIFICATION}

# STAC ``eo:bands`` common names (and Earth Search's asset keys) of the Sentinel-2 bands (the unambiguous ones: 'rededge' names B05, B06
# and B07 alike, so those are given by number). A band list or band descriptions in common names mean
# Sentinel-2 bands when they hold a name only a multispectral sensor has (MULTISPECTRAL_COMMON_NAMES) or the
# sensor is a Sentinel-2 level; 'red, green, blue' alone stay a photo's channels.
S2_COMMON_NAMES: dict[str, str] = {
    "coastal": "B01", "blue": "B02", "green": "B03", "red": "B04",
    # Earth Search's asset keys and band names for the red edge, numbered because 'rededge' is all three.
    "rededge1": "B05", "rededge071": "B05", "rededge2": "B06", "rededge075": "B06", "rededge3": "B07",
    "rededge078": "B07",
    "nir": "B08", "nir08": "B8A", "nir09": "B09", "cirrus": "B10", "swir16": "B11", "swir22": "B12",
}
MULTISPECTRAL_COMMON_NAMES = frozenset(S2_COMMON_NAMES) - frozenset(RGB_BANDS)
AMBIGUOUS_COMMON_NAMES = frozenset({"rededge"})

_S2_NAME = re.compile(r"^(?:B|BAND)?0?(\d{1,2}|8A)$", re.IGNORECASE)
_RGB_ALIASES = {"r": "red", "red": "red", "g": "green", "green": "green", "b": "blue", "blue": "blue"}


def canonical_band(name: str, s2_common: bool = False) -> Optional[str]:
    """Canonical band name for a label found in a file name or band description, or None.

    Accepts 'B4', 'B04', 'b8a', 'band_08', 'VV', 'vh', 'Red'; with ``s2_common`` the STAC common names
    ('red', 'nir', 'nir08', 'swir16', ...) as the Sentinel-2 bands they name (S2_COMMON_NAMES).
    """
    token = name.strip().replace("_", "").replace(" ", "")
    upper = token.upper()
    if upper in S1_BANDS:
        return upper
    lower = token.lower()
    if s2_common and name.strip().lower() in S2_COMMON_NAMES:
        return S2_COMMON_NAMES[name.strip().lower()]
    if lower in _RGB_ALIASES:
        rgb = _RGB_ALIASES[lower]
        return S2_COMMON_NAMES[rgb] if s2_common else rgb
    m = _S2_NAME.match(upper)
    if m:
        num = m.group(1).upper()
        cand = "B8A" if num == "8A" else f"B{int(num):02d}"
        return cand if cand in S2_BANDS else None
    return None


def names_s2_bands(labels: Sequence[Optional[str]], sensor: Optional[str] = None) -> bool:
    """Whether common names in ``labels`` mean Sentinel-2 bands (see S2_COMMON_NAMES)."""
    if sensor is not None and sensor.startswith("s2"):
        return True
    return any(lab is not None and lab.strip().lower() in MULTISPECTRAL_COMMON_NAMES for lab in labels)


_PRODUCT = re.compile(
    r"(?P<mission>S2[ABCD_])_MSI(?P<level>L1C|L2A)_(?P<date>\d{8})T\d{6}_N(?P<baseline>\d{4})_R\d{3}_T(?P<tile>\w{5})"
)


@dataclass(frozen=True)
class S2Product:
    level: str  # "s2-l1c" | "s2-l2a"
    baseline: str  # "0400", or "9999" for reprocessings
    date: str
    tile: str


def parse_s2_product(text: str) -> Optional[S2Product]:
    """Level, processing baseline, date and tile from a Sentinel-2 product name found anywhere in text."""
    m = _PRODUCT.search(text)
    if not m:
        return None
    level = "s2-l1c" if m.group("level") == "L1C" else "s2-l2a"
    return S2Product(level, m.group("baseline"), m.group("date"), m.group("tile"))


def s2_offset_dn(baseline: Optional[str]) -> float:
    """DN offset to subtract for a product of this processing baseline ('0400', '04.00', '9999').

    N9999 marks reprocessed collections whose numbers predate the offset convention: no offset. Checked on
    real data for BigEarthNet v2 (reBEN, all N9999 products): on patch
    S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_75_43, 11046 of 14400 B02 pixels read below 1000 DN (min
    35, median 438) and the darkest, water-like pixel reads B08 380 DN (3.8 % reflectance): impossible with a
    +1000 offset (training/data/bigearthnet_v2.py: REBEN_OFFSET_DN, boa_offset_evidence).
    """
    if baseline is None:
        return 0.0
    digits = baseline.replace(".", "")
    if not digits.isdigit() or digits == "9999":
        return 0.0
    major, minor = int(digits[:2]), int(digits[2:] or 0)
    return S2_BASELINE_OFFSET_DN if (major, minor) >= S2_OFFSET_BASELINE else 0.0


def bands_for(modality: str) -> tuple[str, ...]:
    if modality not in SENSOR_BANDS:
        raise ValueError(f"unknown modality {modality!r}: expected one of {', '.join(MODALITIES)}")
    return SENSOR_BANDS[modality]


def native_resolution(band: str) -> Optional[float]:
    b = S2_BANDS.get(band) or S1_BANDS.get(band)
    return b.resolution_m if b else None
