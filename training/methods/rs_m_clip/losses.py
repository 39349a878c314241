"""Symmetric InfoNCE (the CLIP loss) with a learnable temperature, over the global batch under DDP."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0; gradients flow back to each rank's own rows."""
    if not distributed():
        return x
    import torch.distributed.nn.functional as dist_fn

    return torch.cat(dist_fn.all_gather(x), dim=0)


def clip_logit_scale(logit_scale: torch.Tensor, max_scale: float = 100.0) -> torch.Tensor:
    """exp(logit_scale) capped at ``max_scale`` (CLIP's stabiliser); ``logit_scale`` is the learnable log."""
    return logit_scale.exp().clamp(max=max_scale)


def info_nce(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    *,
    normalise: bool = True,
    max_scale: float = 100.0,
) -> torch.Tensor:
    """(CE(image->text) + CE(text->image)) / 2 with pair i matching i, over all ranks' samples.

    ``logit_scale`` is the log of the inverse temperature (open_clip's ``model.logit_scale``). Each rank
    computes the full global loss: the all-gather's backward sums the copies, and averaging gradients over
    ranks then gives exactly the gradient of the global loss.
    """
    if image_features.shape != text_features.shape:
        raise ValueError(f"image features {tuple(image_features.shape)} and text features {tuple(text_features.shape)} differ")
    if normalise:
        image_features = F.normalize(image_features, dim=-1)
        text_features = F.normalize(text_features, dim=-1)
    img = gather_with_grad(image_features)
    txt = gather_with_grad(text_features)
    scale = clip_logit_scale(logit_scale, max_scale)
    logits = scale * img @ txt.T
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
