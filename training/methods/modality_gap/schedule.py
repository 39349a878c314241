"""Optimiser, learning-rate schedule, seeding and precision shared by both stages."""

from __future__ import annotations

import math
import os
import random
from contextlib import nullcontext

import numpy as np
import torch


def cosine_lr(step: int, base_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up to base_lr over warmup_steps ((step+1)/warmup), then half-cosine to 0 (WiSE-FT's cosine_lr)."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    e = step - warmup_steps
    es = max(total_steps - warmup_steps, 1)
    return 0.5 * (1.0 + math.cos(math.pi * e / es)) * base_lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr


def adamw(params, lr: float, weight_decay: float) -> torch.optim.AdamW:
    return torch.optim.AdamW([p for p in params if p.requires_grad], lr=lr, weight_decay=weight_decay)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)


def autocast(device: torch.device, precision: str):
    """bf16 autocast on CUDA when asked (the paper's setting); plain fp32 on the CPU."""
    if device.type == "cuda" and precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
