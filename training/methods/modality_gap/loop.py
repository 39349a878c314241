"""One training loop for both stages: AdamW, warm-up + cosine, grad-clip, bf16 on GPU, resumable checkpoints, DDP."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from rs_clip_plugin.engine.atomic import atomic_write, atomic_write_text

from .schedule import adamw, autocast, cosine_lr, set_lr

log = logging.getLogger(__name__)
STATE = "state.json"
WEIGHTS = "model.safetensors"
OPTIM = "optimizer.pt"


@dataclass
class OptimConfig:
    steps: int
    lr: float
    weight_decay: float
    warmup_steps: int
    grad_clip: float = 1.0
    precision: str = "bf16"
    checkpoint_every: int = 0

    @classmethod
    def from_dict(cls, d: dict, steps: int) -> OptimConfig:
        return cls(
            steps=int(steps),
            lr=float(d["lr"]),
            weight_decay=float(d["weight_decay"]),
            warmup_steps=int(d.get("warmup_steps", 0)),
            grad_clip=float(d.get("grad_clip", 1.0)),
            precision=str(d.get("precision", "bf16")),
            checkpoint_every=int(d.get("checkpoint_every", 0)),
        )


def world() -> tuple[int, int]:
    """(rank, world size) under torchrun, else (0, 1)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def maybe_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """Wrap in DistributedDataParallel when launched by torchrun (initialising the process group once)."""
    _, size = world()
    if size <= 1:
        return module
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def save_state(ckpt_dir: Path, module: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
    """Weights in safetensors, optimizer state as plain tensors (readable with weights_only=True), step last."""
    from safetensors.torch import save_file

    ckpt_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in _unwrap(module).state_dict().items()}
    atomic_write(ckpt_dir / WEIGHTS, lambda tmp: save_file(state, str(tmp)))
    atomic_write(ckpt_dir / OPTIM, lambda tmp: torch.save(optimizer.state_dict(), tmp))
    atomic_write_text(ckpt_dir / STATE, json.dumps({"step": step}) + "\n")


def load_state(ckpt_dir: Path, module: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Resume: the step to continue from (0 when there is no checkpoint)."""
    from safetensors.torch import load_file

    if not (ckpt_dir / STATE).is_file():
        return 0
    step = int(json.loads((ckpt_dir / STATE).read_text())["step"])
    _unwrap(module).load_state_dict(load_file(str(ckpt_dir / WEIGHTS)))
    optimizer.load_state_dict(torch.load(ckpt_dir / OPTIM, map_location="cpu", weights_only=True))
    log.info("resumed from %s at step %d", ckpt_dir, step)
    return step


def _unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def train(
    module: nn.Module,
    step_loss: Callable[[nn.Module, object], tuple[torch.Tensor, dict[str, float]]],
    batches: Iterator,
    cfg: OptimConfig,
    device: torch.device,
    ckpt_dir: Optional[Path] = None,
    on_step: Optional[Callable[[int, dict], None]] = None,
) -> list[dict[str, float]]:
    """Run ``cfg.steps`` optimisation steps of ``step_loss(module, batch)``; returns per-step figures."""
    model = maybe_ddp(module.to(device), device)
    optimizer = adamw(model.parameters(), cfg.lr, cfg.weight_decay)
    start = load_state(ckpt_dir, model, optimizer) if ckpt_dir else 0
    history: list[dict[str, float]] = []
    rank, _ = world()
    model.train()
    for step in range(start, cfg.steps):
        batch = next(batches)
        lr = cosine_lr(step, cfg.lr, cfg.warmup_steps, cfg.steps)
        set_lr(optimizer, lr)
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, cfg.precision):
            loss, parts = step_loss(model, batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {float(loss)} at step {step}; lower the learning rate or check the inputs")
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
        optimizer.step()
        parts = {**parts, "step": step, "lr": lr}
        history.append(parts)
        if on_step:
            on_step(step, parts)
        if ckpt_dir and rank == 0 and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0:
            save_state(ckpt_dir, model, optimizer, step + 1)
    if ckpt_dir and rank == 0 and cfg.steps > start:
        save_state(ckpt_dir, model, optimizer, cfg.steps)
    model.eval()
    return history
