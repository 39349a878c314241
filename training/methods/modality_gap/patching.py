"""Weight-space patching (PAINT / WiSE-FT): theta = (1 - alpha) * theta_zeroshot + alpha * theta_finetuned."""

from __future__ import annotations

from collections.abc import Mapping

import torch


def interpolate(zeroshot: Mapping[str, torch.Tensor], finetuned: Mapping[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """Interpolated state dict over every floating-point tensor; integer buffers must agree and are kept."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if set(zeroshot) != set(finetuned):
        diff = sorted(set(zeroshot) ^ set(finetuned))
        raise ValueError(f"the two state dicts hold different tensors (e.g. {diff[:3]}); patch models of one architecture")
    out = {}
    for k, zs in zeroshot.items():
        ft = finetuned[k]
        if zs.shape != ft.shape:
            raise ValueError(f"{k}: shape {tuple(zs.shape)} vs {tuple(ft.shape)}")
        if zs.is_floating_point():
            out[k] = (1.0 - alpha) * zs + alpha * ft
        else:
            if not torch.equal(zs, ft):
                raise ValueError(f"{k}: non-float tensor differs between the models; cannot interpolate it")
            out[k] = zs.clone()
    return out


def max_abs_diff(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a)
