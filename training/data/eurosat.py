"""EuroSAT (Helber et al.): RGB JPEGs and 13-band Sentinel-2 L1C GeoTIFFs in one folder per class."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from rs_clip_plugin.engine.bands import S2_L1C_BANDS

from .composites import dn_to_reflectance
from .readers import DataError, read_multiband

EUROSAT_CLASSES = (
    "AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial",
    "Pasture", "PermanentCrop", "Residential", "River", "SeaLake",
)  # fmt: skip
RGB_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif")
MS_SUFFIXES = (".tif", ".tiff")


@dataclass(frozen=True)
class LabelledFile:
    path: Path
    label: int


def scan_class_folders(
    root: Path, suffixes: Sequence[str], classes: Optional[Sequence[str]] = None, what: str = "images"
) -> tuple[list[LabelledFile], list[str]]:
    """Files of a class-folder dataset; labels index ``classes`` (default: the folders found, sorted)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found; it should hold one sub-folder per class of {what}")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    if classes is None:
        classes = folders
    unknown = [f for f in folders if f not in classes]
    if unknown:
        raise DataError(f"{root}: class folders {unknown} are not among the known classes {list(classes)}")
    items = []
    for name in folders:
        files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in suffixes)
        items += [LabelledFile(p, list(classes).index(name)) for p in files]
    if not items:
        raise DataError(f"{root}: no {what} ({', '.join(suffixes)}) in its class folders")
    return items, list(classes)


def read_rgb(path: Path) -> np.ndarray:
    """[3, H, W] float32 in [0, 1]."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.float32) / np.float32(255.0)
    except OSError as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from exc
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def read_ms(path: Path) -> np.ndarray:
    """EuroSAT-MS patch: [13, H, W] L1C reflectance (EuroSAT predates the baseline-04.00 offset)."""
    return dn_to_reflectance(read_multiband(path, expected_bands=len(S2_L1C_BANDS)))


def holdout_split(items: Sequence[LabelledFile], per_class: int) -> tuple[list[LabelledFile], list[LabelledFile]]:
    """The last ``per_class`` files of every class are held out (deterministic: files are sorted)."""
    train, held = [], []
    by_label: dict[int, list[LabelledFile]] = {}
    for it in items:
        by_label.setdefault(it.label, []).append(it)
    for label in sorted(by_label):
        group = by_label[label]
        k = min(per_class, len(group) - 1) if len(group) > 1 else 0
        train += group[: len(group) - k]
        held += group[len(group) - k :]
    return train, held
