"""BigEarthNet v1 (Sumbul et al.): one folder per patch, one GeoTIFF per band, label JSON; 43 -> 19 classes.

Layout (as distributed, and as in ``../shared/data/bigearthnet_v1``)::

    BigEarthNet-S2/<tile>/<patch>/<patch>_B01.tif ... _B8A.tif [+ <patch>_labels_metadata.json]
    BigEarthNet-S1/<s1 product>/<s1 patch>/<s1 patch>_VV.tif, _VH.tif [+ _labels_metadata.json with
                   "corresponding_s2_patch"]

The v1 archive also exists flat (patch folders directly under the root); both are found. BigEarthNet v2
(LMDB + parquet) is not read here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from rs_clip_plugin.engine.bands import S1_GRD_BANDS, S2_L2A_BANDS

from .composites import dn_to_reflectance, to_13_bands
from .readers import DataError, band_files, read_band_stack, require_bands

# The 19-class nomenclature (Sumbul et al. 2020, "BigEarthNet-MM"): each of the 43 CORINE labels maps to one
# of 19 classes or is dropped (None).
LABELS_43_TO_19: dict[str, Optional[str]] = {
    "Continuous urban fabric": "Urban fabric",
    "Discontinuous urban fabric": "Urban fabric",
    "Industrial or commercial units": "Industrial or commercial units",
    "Road and rail networks and associated land": None,
    "Port areas": None,
    "Airports": None,
    "Mineral extraction sites": None,
    "Dump sites": None,
    "Construction sites": None,
    "Green urban areas": None,
    "Sport and leisure facilities": None,
    "Non-irrigated arable land": "Arable land",
    "Permanently irrigated land": "Arable land",
    "Rice fields": "Arable land",
    "Vineyards": "Permanent crops",
    "Fruit trees and berry plantations": "Permanent crops",
    "Olive groves": "Permanent crops",
    "Pastures": "Pastures",
    "Annual crops associated with permanent crops": "Permanent crops",
    "Complex cultivation patterns": "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation":
        "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas": "Agro-forestry areas",
    "Broad-leaved forest": "Broad-leaved forest",
    "Coniferous forest": "Coniferous forest",
    "Mixed forest": "Mixed forest",
    "Natural grassland": "Natural grassland and sparsely vegetated areas",
    "Moors and heathland": "Moors, heathland and sclerophyllous vegetation",
    "Sclerophyllous vegetation": "Moors, heathland and sclerophyllous vegetation",
    "Transitional woodland/shrub": "Transitional woodland, shrub",
    "Beaches, dunes, sands": "Beaches, dunes, sands",
    "Bare rock": None,
    "Sparsely vegetated areas": "Natural grassland and sparsely vegetated areas",
    "Burnt areas": None,
    "Inland marshes": "Inland wetlands",
    "Peatbogs": "Inland wetlands",
    "Salt marshes": "Coastal wetlands",
    "Salines": "Coastal wetlands",
    "Intertidal flats": None,
    "Water courses": "Inland waters",
    "Water bodies": "Inland waters",
    "Coastal lagoons": "Marine waters",
    "Estuaries": "Marine waters",
    "Sea and ocean": "Marine waters",
}  # fmt: skip
LABELS_19: tuple[str, ...] = tuple(dict.fromkeys(v for v in LABELS_43_TO_19.values() if v))
LABELS_43: tuple[str, ...] = tuple(LABELS_43_TO_19)
LABEL_SUFFIX = "_labels_metadata.json"


def labels_19(labels_43: list[str]) -> list[str]:
    unknown = [lab for lab in labels_43 if lab not in LABELS_43_TO_19]
    if unknown:
        raise DataError(f"unknown BigEarthNet labels {unknown}; expected names of the 43-class CORINE nomenclature")
    return sorted({LABELS_43_TO_19[lab] for lab in labels_43 if LABELS_43_TO_19[lab]}, key=LABELS_19.index)


def multi_hot(labels: list[str], classes: tuple[str, ...] = LABELS_19) -> np.ndarray:
    y = np.zeros(len(classes), np.float32)
    for lab in labels:
        y[classes.index(lab)] = 1.0
    return y


@dataclass
class BenPatch:
    name: str
    folder: Path
    sensor: str  # "s2" | "s1"
    labels_43: Optional[list[str]] = None
    meta: dict = field(default_factory=dict)

    @property
    def labels_19(self) -> Optional[list[str]]:
        return labels_19(self.labels_43) if self.labels_43 is not None else None


def _read_meta(folder: Path) -> dict:
    meta_files = sorted(folder.glob(f"*{LABEL_SUFFIX}"))
    if not meta_files:
        return {}
    try:
        return json.loads(meta_files[0].read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{meta_files[0]}: not valid JSON ({exc}); the patch's label file is damaged") from exc


class BigEarthNetV1:
    """Finds S2 and S1 patch folders under ``root`` (nested or flat) and reads them."""

    def __init__(self, root: Path, require_labels: bool = False, include: Optional[set[str]] = None,
                 exclude: frozenset[str] | set[str] = frozenset()):  # fmt: skip
        """``include``: only these patch names (an official split); ``exclude``: never these (the cloud/shadow and
        seasonal-snow lists). S1 patches follow their S2 patch (``corresponding_s2_patch``) when that is known."""
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: BigEarthNet v1 folder not found (expected BigEarthNet-S2/ and/or BigEarthNet-S1/)")
        self.s2: list[BenPatch] = []
        self.s1: list[BenPatch] = []
        for folder in sorted({p.parent for p in self.root.rglob("*.tif")}):
            meta = _read_meta(folder)
            s2_name = meta.get("corresponding_s2_patch") or folder.name
            if (include is not None and s2_name not in include) or s2_name in exclude:
                continue
            files = band_files(folder)
            labels = meta.get("labels")
            if require_labels and labels is None:
                raise DataError(f"{folder}: no {LABEL_SUFFIX} with 'labels'; labelled training needs the v1 label files")
            if any(b in files for b in S2_L2A_BANDS):
                require_bands(files, S2_L2A_BANDS, folder)
                self.s2.append(BenPatch(folder.name, folder, "s2", labels, meta))
            elif any(b in files for b in S1_GRD_BANDS):
                require_bands(files, S1_GRD_BANDS, folder)
                self.s1.append(BenPatch(folder.name, folder, "s1", labels, meta))
        if not self.s2 and not self.s1 and (include is not None or exclude):
            raise DataError(f"{self.root}: no patch is left after the split / exclusion lists; check that they name "
                            "this archive's patches (S2 patch names, first CSV column)")
        if not self.s2 and not self.s1:
            raise DataError(f"{self.root}: no BigEarthNet patch folders (per-band GeoTIFFs such as <patch>_B04.tif or _VV.tif)")

    def read_s2(self, patch: BenPatch, size: Optional[int] = 120) -> np.ndarray:
        """[13, H, W] L2A reflectance at 10 m (zero B10), bands resampled to the 120 px grid."""
        stack = read_band_stack(band_files(patch.folder), S2_L2A_BANDS, (size, size) if size else None, patch.folder)
        return to_13_bands(dn_to_reflectance(stack), "s2-l2a")

    def read_s1(self, patch: BenPatch) -> np.ndarray:
        """[2, H, W] VV, VH backscatter in dB (as distributed)."""
        return read_band_stack(band_files(patch.folder), S1_GRD_BANDS, None, patch.folder)

    def pairs(self) -> list[tuple[BenPatch, BenPatch]]:
        """(s1, s2) patches of the same ground: by the S1 label file's ``corresponding_s2_patch``, else by footprint."""
        by_name = {p.name: p for p in self.s2}
        out = []
        for s1 in self.s1:
            s2_name = s1.meta.get("corresponding_s2_patch")
            if s2_name:
                if s2_name in by_name:
                    out.append((s1, by_name[s2_name]))
                continue
            match = next((s2 for s2 in self.s2 if _same_footprint(s1.folder, s2.folder)), None)
            if match is not None:
                out.append((s1, match))
        return out


def read_patch_list(path: Path) -> set[str]:
    """Patch names from one of BigEarthNet's CSV lists (train.csv, val.csv, test.csv,
    patches_with_cloud_and_shadow.csv, patches_with_seasonal_snow.csv): the first column of each line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: BigEarthNet patch list not found; download the official split / exclusion CSVs "
                        "(BigEarthNet-S2 19-class splits and the cloud/snow lists) or drop the setting")
    names = {line.split(",")[0].strip() for line in path.read_text(encoding="utf-8").splitlines()}
    return {n for n in names if n and n != "patch_name"}


def open_v1(root: Path, spec: dict, require_labels: bool = False) -> BigEarthNetV1:
    """A ``BigEarthNetV1`` restricted as a recipe source says: ``split_csv`` (an official split: only its patches)
    and ``exclude_csvs`` (default none; Paper A's protocol drops the cloud/shadow and seasonal-snow lists).
    Relative CSV paths are under ``root``."""
    def at(p: str) -> Path:
        return Path(p) if Path(p).is_absolute() else Path(root) / p

    include = read_patch_list(at(spec["split_csv"])) if spec.get("split_csv") else None
    exclude: set[str] = set()
    for p in spec.get("exclude_csvs") or []:
        exclude |= read_patch_list(at(p))
    return BigEarthNetV1(root, require_labels=require_labels, include=include, exclude=exclude)


def _bounds(folder: Path) -> tuple[str, tuple[float, ...]]:
    import rasterio

    first = sorted(folder.glob("*.tif"))[0]
    with rasterio.open(first) as src:
        return str(src.crs), tuple(src.bounds)


def _same_footprint(a: Path, b: Path, tol: float = 15.0) -> bool:
    crs_a, ba = _bounds(a)
    crs_b, bb = _bounds(b)
    return crs_a == crs_b and all(abs(x - y) <= tol for x, y in zip(ba, bb))


class BenS2Dataset:
    """Map-style dataset over BigEarthNet-S2 patches (for DataLoader workers): (13-band reflectance, multi-hot 19)."""

    def __init__(self, ben: BigEarthNetV1, patches: Optional[list[BenPatch]] = None):
        self.ben = ben
        self.patches = patches if patches is not None else ben.s2
        unlabelled = [p.name for p in self.patches if p.labels_43 is None]
        if unlabelled:
            raise DataError(f"{ben.root}: {len(unlabelled)} S2 patches have no labels (e.g. {unlabelled[0]}); add the {LABEL_SUFFIX} files")

    def __len__(self) -> int:
        return len(self.patches)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        p = self.patches[i]
        return self.ben.read_s2(p), multi_hot(p.labels_19 or [])
