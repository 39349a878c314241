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

from training.checkpoint import CheckpointError, flatten_tensors, read_raw

log = logging.getLogger(__name__)

RGB_TO_S2 = ("B04", "B03", "B02")  # the teacher's red, green, blue channels


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
    """timm backbone (features, no classifier) + linear projection to the CLIP embedding size.

    ``model_kwargs`` go to ``timm.create_model`` (e.g. ``drop_path_rate``; ``depth`` for small test models).
    """

    def __init__(
        self,
        timm_name: str,
        in_chans: int,
        embed_dim: int,
        img_size: int,
        checkpoint: Optional[os.PathLike | str] = None,
        reinit_patch_embed: bool = False,
        model_kwargs: Optional[dict[str, Any]] = None,
    ):
        super().__init__()
        import timm

        kwargs: dict[str, Any] = {"pretrained": False, "in_chans": in_chans, "num_classes": 0, **(model_kwargs or {})}
        if "vit" in timm_name or "deit" in timm_name:
            kwargs["img_size"] = img_size
        self.backbone = timm.create_model(timm_name, **kwargs)
        self.load_report: dict[str, Any] = {}
        if checkpoint is not None:
            self.load_report = load_backbone_checkpoint(self.backbone, checkpoint, reinit_patch_embed=reinit_patch_embed)
        self.proj = nn.Linear(self.backbone.num_features, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.backbone(x))


# Among several encoders in one file, the one a downstream task uses: MoCo's query/base encoder (not the
# momentum copy), DINO's teacher (its evaluation default, ``--checkpoint_key teacher``).
_PREFERRED = ("base_encoder", "encoder_q", "teacher")
_AVOIDED = ("momentum_encoder", "encoder_k", "student", "predictor")


def find_encoder(flat: dict[str, torch.Tensor], own_keys: Sequence[str]) -> tuple[str, dict[str, int]]:
    """The key prefix under which ``flat`` holds a model with ``own_keys``, and what lies outside it.

    Every key that ends in one of the model's own key names votes for the prefix before that name
    (``module.base_encoder.blocks.0.norm1.weight`` -> ``module.base_encoder.``); the prefix with most votes wins,
    ties broken towards the encoder downstream code uses (``_PREFERRED``). Works for MoCo v2 (``encoder_q``),
    MoCo v3 (``base_encoder``/``momentum_encoder``/``predictor``), DINO (``teacher``/``student`` with
    ``backbone``/``head``), open_clip timm towers (``visual.trunk.``) and plain timm files (no prefix).
    Returns (prefix, {group outside the prefix: tensor count}).
    """
    own = set(own_keys)
    votes: dict[str, int] = {}
    for k in flat:
        parts = k.split(".")
        for i in range(len(parts)):
            if ".".join(parts[i:]) in own:
                pre = ".".join(parts[:i]) + ("." if i else "")
                votes[pre] = votes.get(pre, 0) + 1
                break
    if not votes:
        return "", {}

    def rank(pre: str) -> tuple[int, int]:
        words = pre.split(".")
        return votes[pre], (1 if any(w in _PREFERRED for w in words) else -1 if any(w in _AVOIDED for w in words) else 0)

    prefix = max(votes, key=rank)
    depth = prefix.count(".")
    ignored: dict[str, int] = {}
    for k in flat:
        if not k.startswith(prefix):
            group = ".".join(k.split(".")[: max(1, depth)])
            ignored[group] = ignored.get(group, 0) + 1
    return prefix, ignored


def load_backbone_checkpoint(
    backbone: nn.Module, path: os.PathLike | str, reinit_patch_embed: bool = False, min_fraction: float = 0.5
) -> dict[str, Any]:
    """Load the backbone of a local checkpoint (safetensors, or torch weights_only) leniently but not blindly.

    The encoder is found by ``find_encoder`` (MoCo v2/v3, DINO, timm, open_clip layouts); other encoders in the
    file (momentum copy, predictor, DINO student) are ignored and counted. Every tensor whose name and shape fit
    is loaded, the patch embedding included: Paper A swaps in the 13-channel convolution *before*
    ``load_state_dict(strict=False)``, so SSL4EO-S12's 13-band kernels are kept (``reinit_patch_embed=True``
    discards them on purpose). Heads and tensors of another shape are skipped; position embeddings of another
    grid are resampled. Raises when less than ``min_fraction`` of the backbone's tensors were found.
    Returns {checkpoint, prefix, loaded, total, patch_embed_loaded, skipped ['key: why'], missing, ignored}.
    """
    flat = flatten_tensors(read_raw(path))
    own = backbone.state_dict()
    prefix, ignored = find_encoder(flat, list(own))
    state = {k[len(prefix) :]: v for k, v in flat.items() if k.startswith(prefix)}
    use: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    for k, v in state.items():
        if k not in own:
            skipped.append(f"{k}: not in the model (head or other architecture)")
            continue
        if reinit_patch_embed and k.startswith("patch_embed."):
            skipped.append(f"{k}: reinit_patch_embed is set")
            continue
        if k == "pos_embed" and v.shape != own[k].shape and v.ndim == 3:
            v = _resample_pos_embed(v, own[k], backbone)
        if v.shape != own[k].shape:
            skipped.append(f"{k}: shape {tuple(v.shape)} vs the model's {tuple(own[k].shape)}")
            continue
        use[k] = v
    if len(use) < min_fraction * len(own):
        raise CheckpointError(
            f"{path}: only {len(use)} of the backbone's {len(own)} tensors found in the checkpoint (e.g. it has "
            f"{list(flat)[:3]}); is it a checkpoint of this architecture?"
        )
    backbone.load_state_dict(use, strict=False)
    missing = [k for k in own if k not in use]
    patch_keys = [k for k in own if k.startswith("patch_embed.")]
    report = {
        "checkpoint": str(path),
        "prefix": prefix,
        "loaded": len(use),
        "total": len(own),
        "patch_embed_loaded": bool(patch_keys) and all(k in use for k in patch_keys),
        "skipped": skipped,
        "missing": missing,
        "ignored": ignored,
    }
    log.info("loaded %d of %d tensors from %s (prefix %r); patch embedding %s; skipped %d; not loaded %s; ignored %s",
             len(use), len(own), path, prefix, "loaded" if report["patch_embed_loaded"] else "NEW", len(skipped),
             missing[:4], ignored)  # fmt: skip
    return report


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
            reinit_patch_embed=bool(cfg.get("reinit_patch_embed", False)),
            model_kwargs={**({"drop_path_rate": float(cfg["drop_path"])} if "drop_path" in cfg else {}), **(cfg.get("model_kwargs") or {})},
        )
    raise ValueError(f"unknown student kind {kind!r}: use 'clip_visual' or 'timm'")
