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
from functools import lru_cache
from typing import Optional

import numpy as np

from .bands import S2_QUANTIFICATION

# open_clip / OpenAI CLIP image normalisation (RGB in [0, 1]).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

UNITS = ("reflectance", "db", "linear", "unit")
# How Sentinel-1 backscatter may be stored.
SAR_UNITS = ("db", "linear")
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


def s2_reflectance(dn: np.ndarray, offset_dn: float = 0.0, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Sentinel-2 digital numbers to reflectance; offset_dn is 1000 for baseline >= 04.00.

    ``out`` (float32, dn's shape) receives the result without temporaries (the reader's strips)."""
    x = np.empty(dn.shape, np.float32) if out is None else out
    if offset_dn:
        np.subtract(dn, np.float32(offset_dn), out=x, dtype=np.float32)
    else:
        np.copyto(x, dn, casting="unsafe")  # x - 0 == x: the subtraction would change no bit
    np.divide(x, np.float32(S2_QUANTIFICATION), out=x)
    return x


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
    *,
    inplace: bool = False,
    nan_mask: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Physical values (..., C, H, W) -> encoder input, float32. NaN (nodata) becomes the band mean -> 0.

    Per band ``clip(x * scale + offset, lo, hi)`` then ``(x - mean) / std``. ``inplace`` overwrites ``x``
    (float32, writable: the engine's strips); ``nan_mask`` (``np.isnan(x)``, when the caller has it) saves a
    pass. Steps that change nothing (scale 1, offset 0, mean 0, std 1, no bound) are skipped: on a strip
    each would be a full pass over memory.
    """
    x = _float32_array(x, inplace)
    c = x.shape[band_axis]
    if not (len(transforms) == len(mean) == len(std) == c):
        raise ValueError(f"{c} bands in the data but {len(transforms)} transforms / {len(mean)} means / {len(std)} stds")
    axis = band_axis % x.ndim
    scale, offset, lo, hi, m, s = _transform_arrays(tuple(transforms), tuple(mean), tuple(std), x.ndim - axis)
    if (scale != 1).any():
        np.multiply(x, scale, out=x)
    if (offset != 0).any():
        np.add(x, offset, out=x)
    # Clip by compare-and-fill where a bound is crossed: numpy 1.x's NaN-aware clip/maximum/minimum are several
    # times slower than a comparison, and real data rarely crosses the bounds. NaN compares False: it stays.
    hit = np.empty(x.shape, bool)
    for bound, crosses in ((lo, np.less), (hi, np.greater)):
        if np.isfinite(bound).any() and crosses(x, bound, out=hit).any():
            np.copyto(x, np.broadcast_to(bound, x.shape), where=hit)
    if (m != 0).any():
        np.subtract(x, m, out=x)
    if (s != 1).any():
        np.divide(x, s, out=x)
    if np.isfinite(lo).all() and np.isfinite(hi).all() and np.isfinite(s).all() and (s != 0).all():
        # Finite bounds leave no infinities and keep NaN where it was: only no data is left to zero.
        np.copyto(x, 0.0, where=np.isnan(x) if nan_mask is None else nan_mask)
    else:
        np.nan_to_num(x, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return x


def _float32_array(x: np.ndarray, inplace: bool) -> np.ndarray:
    if not inplace:
        return np.array(x, dtype=np.float32)  # a copy: the caller's array is left as it was
    if not (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.flags.writeable):
        raise ValueError("apply_transform(inplace=True) needs a writable float32 array")
    return x


@lru_cache(maxsize=64)
def _transform_arrays(transforms: tuple[BandTransform, ...], mean: tuple[float, ...], std: tuple[float, ...],
                      trailing: int) -> tuple[np.ndarray, ...]:
    """(scale, offset, lo, hi, mean, std) as float32 arrays shaped (C, 1, ..., 1) to broadcast over ``trailing``
    dims from the band axis on; cached, since a reader asks for the same spec's constants strip after strip."""
    shape = (len(transforms),) + (1,) * (trailing - 1)
    arrays = (
        [t.scale for t in transforms],
        [t.offset for t in transforms],
        [t.clip[0] if t.clip else -np.inf for t in transforms],
        [t.clip[1] if t.clip else np.inf for t in transforms],
        mean,
        std,
    )
    out = tuple(np.array(a, np.float32).reshape(shape) for a in arrays)
    for a in out:
        a.setflags(write=False)
    return out
