"""The two stages' objectives (Paper A)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def smooth_multilabel(targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Binary label smoothing: y * (1 - s) + s / 2 (1 -> 1 - s/2, 0 -> s/2)."""
    return targets * (1.0 - smoothing) + 0.5 * smoothing


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, kind: str, label_smoothing: float = 0.0) -> torch.Tensor:
    """'ce': single-label cross-entropy (targets = class indices); 'bce': multi-label BCE-with-logits (multi-hot)."""
    if kind == "ce":
        return F.cross_entropy(logits, targets.long(), label_smoothing=label_smoothing)
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, smooth_multilabel(targets.float(), label_smoothing))
    raise ValueError(f"unknown classification loss {kind!r}: use 'ce' (single-label) or 'bce' (multi-label)")


def alignment_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    logits: Optional[torch.Tensor] = None,
    targets: Optional[torch.Tensor] = None,
    labelled: Optional[torch.Tensor] = None,
    lam: float = 0.05,
    kind: str = "bce",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """MSE(student, teacher) + lam * classification loss of the frozen text head on the student's embedding.

    ``labelled`` (bool [B]) restricts the classification term to samples that have labels; without any
    labelled sample (or lam = 0) only the MSE term remains.
    """
    mse = F.mse_loss(student.float(), teacher.float())
    cls = torch.zeros((), device=student.device)
    if lam and logits is not None and targets is not None:
        if labelled is None:
            labelled = torch.ones(logits.shape[0], dtype=torch.bool, device=logits.device)
        if bool(labelled.any()):
            cls = classification_loss(logits[labelled].float(), targets[labelled], kind, label_smoothing)
    total = mse + lam * cls
    return total, {"mse": float(mse.detach()), "cls": float(cls.detach()), "loss": float(total.detach())}
