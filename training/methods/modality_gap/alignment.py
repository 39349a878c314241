"""Stage 2: distil the frozen patched RGB teacher into a Sentinel-2 or Sentinel-1 student."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .finetune import Augment, shuffled_batches
from .losses import alignment_loss
from .zeroshot_head import ClassificationHead


def paired_batches(student_x: torch.Tensor, teacher_x: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int,
                   augment: bool = True) -> Iterator:  # fmt: skip
    """Endless shuffled (student input, teacher input, label) batches; the same flip/rotation on both inputs."""
    return shuffled_batches([student_x, teacher_x], labels, batch_size, seed, augment)


def alignment_step(teacher: nn.Module, head: ClassificationHead, lam: float, kind: str, label_smoothing: float,
                   device: torch.device, augment: Optional[Augment] = None, seed: int = 0):  # fmt: skip
    """Loss MSE(student(x_s), teacher(x_t)) + lam * loss(head(student(x_s)), y) for labelled samples (y >= 0).

    ``augment`` (e.g. ``PairedGeometric``) gets [x_s, x_t] and must keep them aligned."""
    teacher.eval()
    g = torch.Generator().manual_seed(seed)

    def step(student: nn.Module, batch) -> tuple[torch.Tensor, dict[str, float]]:
        xs, xt, y = (t.to(device, non_blocking=True) for t in batch)
        if augment is not None and student.training:
            xs, xt = augment([xs, xt], g)
        with torch.no_grad():
            target = teacher(xt).float()
        emb = student(xs)
        labelled = y >= 0 if y.ndim == 1 else y.sum(-1) >= 0
        logits = head(emb.float())
        return alignment_loss(emb, target, logits, y.clamp(min=0) if y.ndim == 1 else y, labelled, lam, kind, label_smoothing)

    return step


@torch.no_grad()
def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.float(), b.float(), dim=-1).mean())
