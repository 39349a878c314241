"""Student encoders for Sentinel-2 (13 bands) and Sentinel-1 (VV, VH) that are distilled from the RGB teacher.

Two initialisations:
- ``TimmStudent``: any timm model (Paper A: ViT-S/16 from SSL4EO-S12 MoCo weights) with ``in_chans`` bands,
  optionally from a local checkpoint, and a linear head to the CLIP embedding size;
- ``ClipVisualStudent``: the CLIP visual tower itself with its patch embedding inflated to the new bands,
  the RGB kernels placed on B4/B3/B2 (so on those bands it starts as the teacher does).
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from typing import Any, Optional

import torch
from torch import nn

from training.checkpoint import CheckpointError, read_state_dict

log = logging.getLogger(__name__)

RGB_TO_S2 = ("B04", "B03", "B02")  # the teacher's red, green, blue channels
_PREFIXES = ("module.", "encoder_q.", "momentum_encoder.", "base_encoder.", "backbone.", "encoder.", "model.", "student.")
_HEAD_PREFIXES = ("head.", "fc.", "heads.")


def inflate_patch_embed(
    rgb_weight: torch.Tensor, bands: Sequence[str], rgb_bands: Sequence[str] = RGB_TO_S2, fill: str = "zero"
) -> torch.Tensor:
    """[D, 3, k, k] RGB kernels -> [D, len(bands), k, k]: the red/green/blue kernels on the bands named by
    ``rgb_bands``; other bands get zeros (``fill='zero'``) or the mean RGB kernel x 3 / C (``fill='mean'``: a
    grey input gives the same response as in RGB)."""
    if rgb_weight.ndim != 4 or rgb_weight.shape[1] != 3:
        raise ValueError(f"expected RGB patch-embedding weights [D, 3, k, k], got {tuple(rgb_weight.shape)}")
    if fill not in ("zero", "mean"):
        raise ValueError(f"fill must be 'zero' or 'mean', got {fill!r}")
    d, _, kh, kw = rgb_weight.shape
    out = torch.zeros(d, len(bands), kh, kw, dtype=rgb_weight.dtype)
    mean = rgb_weight.mean(dim=1) * (3.0 / len(bands))
    for i, band in enumerate(bands):
        if band in rgb_bands:
            out[:, i] = rgb_weight[:, list(rgb_bands).index(band)]
        elif fill == "mean":
            out[:, i] = mean
    return out


class ClipVisualStudent(nn.Module):
    """A copy of the CLIP visual tower whose first convolution takes ``bands``."""

    def __init__(self, visual: nn.Module, bands: Sequence[str], fill: str = "zero"):
        super().__init__()
        self.visual = copy.deepcopy(visual)
        conv = getattr(self.visual, "conv1", None)
        if not isinstance(conv, nn.Conv2d):
            raise ValueError("the CLIP visual tower has no conv1 patch embedding (only ViT towers can be inflated); use a timm student")
        new = nn.Conv2d(len(bands), conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None)
        with torch.no_grad():
            new.weight.copy_(inflate_patch_embed(conv.weight.detach().cpu(), bands, fill=fill))
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
        self.visual.conv1 = new.to(conv.weight.device)
        for p in self.visual.parameters():
            p.requires_grad_(True)
        self.bands = list(bands)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x)


class TimmStudent(nn.Module):
    """timm backbone (features, no classifier) + linear projection to the CLIP embedding size."""

    def __init__(
        self,
        timm_name: str,
        in_chans: int,
        embed_dim: int,
        img_size: int,
        checkpoint: Optional[os.PathLike | str] = None,
        reinit_patch_embed: bool = True,
    ):
        super().__init__()
        import timm

        kwargs: dict[str, Any] = {"pretrained": False, "in_chans": in_chans, "num_classes": 0}
        if "vit" in timm_name or "deit" in timm_name:
            kwargs["img_size"] = img_size
        self.backbone = timm.create_model(timm_name, **kwargs)
        self.load_report: dict[str, Any] = {}
        if checkpoint is not None:
            self.load_report = load_backbone_checkpoint(self.backbone, checkpoint, reinit_patch_embed=reinit_patch_embed)
        self.proj = nn.Linear(self.backbone.num_features, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.backbone(x))


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes (DDP 'module.', MoCo 'encoder_q.'/'base_encoder.', 'backbone.') until none is left."""
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if state and sum(k.startswith(p) for k in state) >= max(1, len(state) // 2):
                state = {k[len(p) :]: v for k, v in state.items() if k.startswith(p)}
                changed = True
    return state


def load_backbone_checkpoint(
    backbone: nn.Module, path: os.PathLike | str, reinit_patch_embed: bool = True, min_fraction: float = 0.5
) -> dict[str, Any]:
    """Load a local backbone checkpoint (safetensors, or torch weights_only) leniently but not blindly.

    Classifier/projection heads are dropped; a patch embedding of another shape (or any, with
    ``reinit_patch_embed``) is left freshly initialised; position embeddings of another grid are resampled.
    Raises when less than ``min_fraction`` of the backbone's tensors were found: wrong architecture.
    """
    state = strip_prefixes(read_state_dict(path))
    own = backbone.state_dict()
    use, skipped = {}, []
    for k, v in state.items():
        if k.startswith(_HEAD_PREFIXES) or k not in own:
            skipped.append(k)
            continue
        if "patch_embed" in k and (reinit_patch_embed or v.shape != own[k].shape):
            skipped.append(k)
            continue
        if k == "pos_embed" and v.shape != own[k].shape:
            v = _resample_pos_embed(v, own[k], backbone)
        if v.shape != own[k].shape:
            skipped.append(k)
            continue
        use[k] = v
    if len(use) < min_fraction * len(own):
        raise CheckpointError(
            f"{path}: only {len(use)} of the backbone's {len(own)} tensors found in the checkpoint (e.g. it has "
            f"{list(state)[:3]}); is it a checkpoint of this architecture?"
        )
    backbone.load_state_dict(use, strict=False)
    missing = [k for k in own if k not in use]
    log.info("loaded %d tensors from %s; %d left initialised (%s)", len(use), path, len(missing), missing[:4])
    return {"loaded": len(use), "missing": missing, "skipped": skipped}


def _resample_pos_embed(v: torch.Tensor, target: torch.Tensor, backbone: nn.Module) -> torch.Tensor:
    from timm.layers import resample_abs_pos_embed

    prefix = int(getattr(backbone, "num_prefix_tokens", 1))
    n_new = target.shape[1] - prefix
    side = round(n_new**0.5)
    return resample_abs_pos_embed(v, new_size=(side, side), num_prefix_tokens=prefix)


def build_student(
    cfg: dict, bands: Sequence[str], clip_visual: nn.Module, embed_dim: int, input_size: int
) -> nn.Module:
    """A student from its config: {'kind': 'clip_visual', 'fill': ...} or {'kind': 'timm', 'name': ..., 'checkpoint': ...}."""
    kind = cfg.get("kind", "clip_visual")
    if kind == "clip_visual":
        return ClipVisualStudent(clip_visual, bands, fill=cfg.get("fill", "zero"))
    if kind == "timm":
        if not cfg.get("name"):
            raise ValueError("a timm student needs 'name' (e.g. vit_small_patch16_224)")
        return TimmStudent(
            cfg["name"],
            len(bands),
            embed_dim,
            int(cfg.get("img_size", input_size)),
            checkpoint=cfg.get("checkpoint"),
            reinit_patch_embed=bool(cfg.get("reinit_patch_embed", True)),
        )
    raise ValueError(f"unknown student kind {kind!r}: use 'clip_visual' or 'timm'")
