"""SEN12MS (Schmitt et al.): co-registered Sentinel-1 / Sentinel-2 / land-cover triplets.

Layout::

    <root>/ROIs1158_spring/s1_1/ROIs1158_spring_s1_1_p30.tif   2 bands VV, VH (dB)
    <root>/ROIs1158_spring/s2_1/ROIs1158_spring_s2_1_p30.tif   13 bands L1C
    <root>/ROIs1158_spring/lc_1/ROIs1158_spring_lc_1_p30.tif   4 bands (IGBP, LCCS-LC, LCCS-LU, LCCS-SH)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rs_clip_plugin.engine.bands import S1_GRD_BANDS, S2_L1C_BANDS

from .composites import dn_to_reflectance
from .readers import DataError, read_multiband

# The simplified 10-class IGBP scheme used for SEN12MS evaluation (Schmitt et al. 2019 / Paper A).
IGBP_SIMPLIFIED = (
    "Forest", "Shrubland", "Savanna", "Grassland", "Wetlands",
    "Croplands", "Urban/Built-up", "Snow/Ice", "Barren", "Water",
)  # fmt: skip
# Full 17-class IGBP code (1..17) -> simplified class index (0..9).
IGBP_TO_SIMPLIFIED = {1: 0, 2: 0, 3: 0, 4: 0, 5: 0, 6: 1, 7: 1, 8: 2, 9: 2, 10: 3, 11: 4, 12: 5, 13: 6, 14: 5, 15: 7, 16: 8, 17: 9}


@dataclass(frozen=True)
class Sen12msTriplet:
    s1: Path
    s2: Path
    lc: Path


def scan(root: Path) -> list[Sen12msTriplet]:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: SEN12MS folder not found (expected ROIs*_<season>/s1_*/, s2_*/, lc_*/)")
    out, missing = [], []
    for s1 in sorted(root.glob("ROIs*/s1_*/*.tif")):
        s2 = s1.parent.parent / s1.parent.name.replace("s1_", "s2_", 1) / s1.name.replace("_s1_", "_s2_")
        lc = s1.parent.parent / s1.parent.name.replace("s1_", "lc_", 1) / s1.name.replace("_s1_", "_lc_")
        if not s2.is_file() or not lc.is_file():
            missing.append(str(s2 if not s2.is_file() else lc))
            continue
        out.append(Sen12msTriplet(s1, s2, lc))
    if missing:
        raise DataError(f"{root}: {len(missing)} Sentinel-1 patches lack their S2/land-cover twin, e.g. {missing[0]}")
    if not out:
        raise DataError(f"{root}: no SEN12MS patches found (ROIs*/s1_*/*.tif)")
    return out


def read_triplet(t: Sen12msTriplet) -> tuple[np.ndarray, np.ndarray, int]:
    """(S1 dB [2, H, W], S2 L1C reflectance [13, H, W], majority simplified-IGBP label)."""
    s1 = read_multiband(t.s1, expected_bands=len(S1_GRD_BANDS))
    s2 = dn_to_reflectance(read_multiband(t.s2, expected_bands=len(S2_L1C_BANDS)))
    lc = read_multiband(t.lc, expected_bands=4)[0].astype(np.int64)
    simplified = np.vectorize(lambda v: IGBP_TO_SIMPLIFIED.get(int(v), -1))(lc)
    valid = simplified[simplified >= 0]
    if valid.size == 0:
        raise DataError(f"{t.lc}: no valid IGBP codes (1..17)")
    return s1, s2, int(np.bincount(valid, minlength=len(IGBP_SIMPLIFIED)).argmax())
