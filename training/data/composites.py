"""Band handling shared by every Sentinel dataset: 13-band layout, RGB composites, encoder inputs.

Sentinel-2 patches are kept as *reflectance* in the 13-band L1C order (B01..B12 with B10); Level-2A data,
which has no B10, gets a zero band at index 10 as Paper A does. Encoder inputs are made with the engine's
``radiometry`` functions and ``default_transform``, so a bundle's manifest describes exactly what training did.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rs_clip_plugin.engine.bands import (
    S1_GRD_BANDS,
    S2_L1C_BANDS,
    S2_L2A_BANDS,
    S2_MISSING_IN_L2A,
    S2_TRUE_COLOUR,
    S2_TRUE_COLOUR_WHITE_REFLECTANCE,
    ZERO_BAND,
)
from rs_clip_plugin.engine.radiometry import apply_transform, default_transform, s2_reflectance

ZERO_BAND_INDEX = S2_L1C_BANDS.index(S2_MISSING_IN_L2A)  # 10, as in Paper A
# The bundle's s2-l2a encoder: the 12 L2A bands with the pseudo band "zero" where B10 was.
S2_L2A_AS_13: tuple[str, ...] = tuple(ZERO_BAND if b == S2_MISSING_IN_L2A else b for b in S2_L1C_BANDS)
S2_LEVELS = ("s2-l1c", "s2-l2a")


def insert_zero_band(l2a: np.ndarray, band_axis: int = -3) -> np.ndarray:
    """12 L2A bands (S2_L2A_BANDS order) -> 13 with zeros at B10's index."""
    if l2a.shape[band_axis] != len(S2_L2A_BANDS):
        raise ValueError(f"expected {len(S2_L2A_BANDS)} L2A bands {S2_L2A_BANDS}, got {l2a.shape[band_axis]}")
    zero_shape = list(l2a.shape)
    zero_shape[band_axis] = 1
    zeros = np.zeros(zero_shape, dtype=l2a.dtype)
    axis = band_axis % l2a.ndim
    head = np.take(l2a, range(ZERO_BAND_INDEX), axis=axis)
    tail = np.take(l2a, range(ZERO_BAND_INDEX, l2a.shape[axis]), axis=axis)
    return np.concatenate([head, zeros, tail], axis=axis)


def to_13_bands(reflectance: np.ndarray, level: str) -> np.ndarray:
    """[12 or 13, H, W] reflectance of ``level`` -> [13, H, W] in L1C order (zero B10 for L2A)."""
    if level not in S2_LEVELS:
        raise ValueError(f"unknown Sentinel-2 level {level!r}: use one of {S2_LEVELS}")
    n = reflectance.shape[-3]
    if level == "s2-l1c":
        if n != len(S2_L1C_BANDS):
            raise ValueError(f"an L1C patch has {len(S2_L1C_BANDS)} bands {S2_L1C_BANDS}, got {n}")
        return reflectance.astype(np.float32, copy=False)
    if n == len(S2_L1C_BANDS):
        out = reflectance.astype(np.float32, copy=True)
        out[..., ZERO_BAND_INDEX, :, :] = 0.0  # an L2A stack that already carries a B10 slot
        return out
    return insert_zero_band(reflectance.astype(np.float32, copy=False))


def dn_to_reflectance(dn: np.ndarray, offset_dn: float = 0.0) -> np.ndarray:
    return s2_reflectance(dn, offset_dn)


def rgb_composite(s2_13: np.ndarray, level: str, quantize: bool = True) -> np.ndarray:
    """True-colour composite [..., 3, H, W] in [0, 1] from 13-band reflectance, Paper A's scaling.

    Paper A's code: B4, B3, B2 digital numbers / 2000 (L2A) or / 3558 (L1C), x 255, clamped, cast to uint8,
    then the CLIP preprocessing divides by 255. ``quantize`` keeps that uint8 step.
    """
    if level not in S2_TRUE_COLOUR_WHITE_REFLECTANCE:
        raise ValueError(f"no composite scaling for {level!r}: use one of {sorted(S2_TRUE_COLOUR_WHITE_REFLECTANCE)}")
    white = np.float32(S2_TRUE_COLOUR_WHITE_REFLECTANCE[level])
    idx = [S2_L1C_BANDS.index(S2_TRUE_COLOUR[c]) for c in ("red", "green", "blue")]
    rgb = np.take(s2_13, idx, axis=-3).astype(np.float32) / white
    if quantize:
        return np.floor(np.clip(rgb * np.float32(255.0), 0.0, 255.0)) / np.float32(255.0)
    return np.clip(rgb, 0.0, 1.0)


def ms_input(s2_13: np.ndarray) -> np.ndarray:
    """Student input for 13-band reflectance: clamp(x, 0, 1) (= clamp(DN / 10000, 0, 1)), no CLIP normalisation."""
    _, transforms, mean, std = default_transform("s2-l1c", len(S2_L1C_BANDS))
    return apply_transform(s2_13, transforms, mean, std)


def s1_input(db: np.ndarray) -> np.ndarray:
    """Student input for Sentinel-1 VV, VH backscatter in dB (the engine's default SAR transform)."""
    _, transforms, mean, std = default_transform("s1-grd", len(S1_GRD_BANDS))
    return apply_transform(db, transforms, mean, std)


def rgb_input(rgb01: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Teacher input: RGB in [0, 1] normalised with the CLIP model's own mean/std."""
    _, transforms, _, _ = default_transform("rgb", 3)
    return apply_transform(rgb01, transforms, mean, std)
