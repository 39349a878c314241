"""Per-modality augmentations. Geometric ones are shared by all modalities of one sample (pairs stay aligned)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def dihedral(arrays: Sequence[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """The same random flip / 90-degree rotation applied to every [..., H, W] array of one sample."""
    k = int(rng.integers(4))
    flip = bool(rng.integers(2))
    out = []
    for a in arrays:
        b = np.rot90(a, k, axes=(-2, -1))
        if flip:
            b = b[..., ::-1]
        out.append(np.ascontiguousarray(b))
    return out


def ms_gain_jitter(x: np.ndarray, rng: np.random.Generator, sigma: float = 0.03) -> np.ndarray:
    """Multiplicative per-band gain noise on reflectance: calibration and illumination differ between scenes."""
    if sigma <= 0:
        return x
    gain = 1.0 + rng.normal(0.0, sigma, size=(x.shape[-3], 1, 1)).astype(np.float32)
    return x * gain


def sar_speckle_db(x: np.ndarray, rng: np.random.Generator, sigma_db: float = 0.5) -> np.ndarray:
    """Additive noise in dB (multiplicative speckle in linear power)."""
    if sigma_db <= 0:
        return x
    return x + rng.normal(0.0, sigma_db, size=x.shape).astype(np.float32)


def rgb_brightness(x: np.ndarray, rng: np.random.Generator, delta: float = 0.05) -> np.ndarray:
    if delta <= 0:
        return x
    return np.clip(x + np.float32(rng.uniform(-delta, delta)), 0.0, 1.0)


def resize_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, size, size] (bilinear; no-op at the right size): crops to the encoder's input size."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def dihedral_batch(tensors: Sequence[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
    """One random flip / 90-degree rotation applied to every [B, C, H, W] tensor of a batch (pairs stay aligned)."""
    k = int(torch.randint(4, (1,), generator=generator))
    flip = bool(torch.randint(2, (1,), generator=generator))
    out = []
    for t in tensors:
        t = torch.rot90(t, k, dims=(-2, -1))
        out.append(torch.flip(t, dims=(-1,)) if flip else t)
    return out
