"""Radiometric transforms: from a sensor's physical values to the numbers an encoder was trained on.

Two steps, kept apart on purpose:
1. *physical units*, a property of the product: Sentinel-2 reflectance (DN - offset) / 10000,
   Sentinel-1 backscatter in dB or linear power, RGB intensity in [0, 1];
2. the *encoder's transform*, a property of the model and stored in the bundle manifest:
   per band ``clip(x * scale + offset, lo, hi)`` then ``(x - mean) / std``.
Training builds its tensors with the same functions, so the plugin normalises exactly as training did.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from .bands import S2_QUANTIFICATION

# open_clip / OpenAI CLIP image normalisation (RGB in [0, 1]).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

UNITS = ("reflectance", "db", "linear", "unit")
# Sentinel-1 dB range mapped to [0, 1] by the default SAR transform.
S1_DB_RANGE = (-30.0, 5.0)
_DB_FLOOR = 1e-10


@dataclass(frozen=True)
class BandTransform:
    scale: float = 1.0
    offset: float = 0.0
    clip: Optional[tuple[float, float]] = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["clip"] = list(self.clip) if self.clip is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> BandTransform:
        clip = d.get("clip")
        return cls(float(d.get("scale", 1.0)), float(d.get("offset", 0.0)), tuple(clip) if clip is not None else None)


def s2_reflectance(dn: np.ndarray, offset_dn: float = 0.0) -> np.ndarray:
    """Sentinel-2 digital numbers to reflectance; offset_dn is 1000 for baseline >= 04.00."""
    return (dn.astype(np.float32) - np.float32(offset_dn)) / np.float32(S2_QUANTIFICATION)


def db_to_linear(db: np.ndarray) -> np.ndarray:
    return np.power(np.float32(10.0), db.astype(np.float32) / np.float32(10.0))


def linear_to_db(lin: np.ndarray) -> np.ndarray:
    return np.float32(10.0) * np.log10(np.maximum(lin.astype(np.float32), np.float32(_DB_FLOOR)))


def default_transform(modality: str, n_bands: int) -> tuple[str, list[BandTransform], list[float], list[float]]:
    """(units, per-band transforms, mean, std) that training uses unless a recipe says otherwise."""
    if modality.startswith("s2"):
        # Paper A: clamp(x / 10000, 0, 1) and no CLIP normalisation on multispectral input.
        return "reflectance", [BandTransform(1.0, 0.0, (0.0, 1.0))] * n_bands, [0.0] * n_bands, [1.0] * n_bands
    if modality == "s1-grd":
        lo, hi = S1_DB_RANGE
        t = BandTransform(1.0 / (hi - lo), -lo / (hi - lo), (0.0, 1.0))
        return "db", [t] * n_bands, [0.5] * n_bands, [0.25] * n_bands
    if modality == "rgb":
        if n_bands != 3:
            raise ValueError(f"an rgb encoder takes 3 bands, not {n_bands}")
        return "unit", [BandTransform(1.0, 0.0, (0.0, 1.0))] * 3, list(CLIP_MEAN), list(CLIP_STD)
    raise ValueError(f"unknown modality {modality!r}")


def apply_transform(
    x: np.ndarray,
    transforms: Sequence[BandTransform],
    mean: Sequence[float],
    std: Sequence[float],
    band_axis: int = -3,
) -> np.ndarray:
    """Physical values (..., C, H, W) -> encoder input, float32. NaN (nodata) becomes the band mean -> 0."""
    x = np.asarray(x, dtype=np.float32)
    c = x.shape[band_axis]
    if not (len(transforms) == len(mean) == len(std) == c):
        raise ValueError(f"{c} bands in the data but {len(transforms)} transforms / {len(mean)} means / {len(std)} stds")
    shape = [1] * x.ndim
    shape[band_axis] = c
    scale = np.array([t.scale for t in transforms], np.float32).reshape(shape)
    offset = np.array([t.offset for t in transforms], np.float32).reshape(shape)
    lo = np.array([t.clip[0] if t.clip else -np.inf for t in transforms], np.float32).reshape(shape)
    hi = np.array([t.clip[1] if t.clip else np.inf for t in transforms], np.float32).reshape(shape)
    m = np.array(mean, np.float32).reshape(shape)
    s = np.array(std, np.float32).reshape(shape)
    y = np.clip(x * scale + offset, lo, hi)
    y = (y - m) / s
    return np.nan_to_num(y, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32, copy=False)
