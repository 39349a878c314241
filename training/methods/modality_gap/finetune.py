"""Stage 1: fine-tune the CLIP image encoder through the frozen zero-shot head, and evaluate classifiers."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from training.data.transforms import dihedral_batch

from .losses import classification_loss
from .zeroshot_head import ClassificationHead

# (tensors of one batch, generator) -> the same tensors augmented per sample (training.data.augment)
Augment = Callable[[list[torch.Tensor], torch.Generator], list[torch.Tensor]]


def shuffled_batches(images: Sequence[torch.Tensor], labels: torch.Tensor, batch_size: int, seed: int,
                     augment: bool = True) -> Iterator[tuple[torch.Tensor, ...]]:  # fmt: skip
    """Endless shuffled batches (*images, labels) from in-memory tensors, reproducible from ``seed``.

    With ``augment`` every image tensor of a batch gets the same random flip/rotation (pairs stay aligned).
    """
    from training.data.loaders import world

    rank, size = world()
    g = torch.Generator().manual_seed(seed)  # the same on every rank: the shards below are disjoint
    n = labels.shape[0]
    bs = max(1, min(batch_size, n // size))
    while True:
        # Under torchrun each rank takes every size-th sample of one shared permutation (as DistributedSampler
        # does), so a step sees batch_size x world distinct samples and the derived step count holds.
        perm = torch.randperm(n, generator=g)[rank::size]
        for i in range(0, len(perm) - bs + 1, bs):
            idx = perm[i : i + bs]
            xs = [x[idx] for x in images]
            if augment:
                xs = dihedral_batch(xs, g)
            yield (*xs, labels[idx])


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int, augment: bool = True) -> Iterator:
    """Endless shuffled batches of (x, y)."""
    return shuffled_batches([x], y, batch_size, seed, augment)


def finetune_step(kind: str, label_smoothing: float, device: torch.device, augment: Optional[Augment] = None, seed: int = 0):
    """Loss of one batch; ``augment`` (e.g. ``PaperAStage1``) runs per sample on the device, seeded by ``seed``."""
    g = torch.Generator().manual_seed(seed)

    def step(model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, float]]:
        x, y = (t.to(device, non_blocking=True) for t in batch)
        if augment is not None and model.training:
            (x,) = augment([x], g)
        loss = classification_loss(model(x), y, kind, label_smoothing)
        return loss, {"loss": float(loss.detach())}

    return step


@torch.no_grad()
def embed(encoder: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = 64) -> torch.Tensor:
    encoder.eval()
    return torch.cat([encoder(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, x.shape[0], batch_size)])


@torch.no_grad()
def evaluate_head(encoder: nn.Module, head: ClassificationHead, x: torch.Tensor, y: np.ndarray, device: torch.device) -> float:
    """Accuracy (single-label) or macro mAP (multi-label), in percent."""
    from training.evaluate.zero_shot import accuracy, macro_map

    scores = head.to(device)(embed(encoder, x, device).to(device)).cpu().numpy()
    return macro_map(scores, y) if y.ndim == 2 else accuracy(scores, y)
