"""Training length from data: epochs (or samples seen) -> optimizer steps, for any number of GPUs.

A recipe states how much data its model sees (``epochs: 10`` or ``samples_seen: 450000``); the steps follow
from the data size, the per-GPU batch, the gradient accumulation and the world size (``torchrun`` ranks), so a
run on 4 GPUs does not make 4x the passes of one on 1 GPU. ``steps`` given outright wins (short smoke runs).
Durations of parts of a schedule may be given in epochs too (``warmup_epochs: 1`` -> ``warmup_steps``).
"""

from __future__ import annotations

import math
import os
from typing import Any, Optional


def world_size() -> int:
    """Ranks under torchrun (WORLD_SIZE), else 1."""
    return max(1, int(os.environ.get("WORLD_SIZE", "1")))


def plan_steps(
    n_samples: int,
    batch_size: int,
    *,
    epochs: Optional[float] = None,
    samples_seen: Optional[int] = None,
    steps: Optional[int] = None,
    accum_steps: int = 1,
    world: Optional[int] = None,
) -> dict[str, Any]:
    """{steps, epochs, samples_seen, global_batch, steps_per_epoch, world_size, n_samples, source}.

    ``batch_size`` is per GPU and micro-batch; one optimizer step consumes batch x accum x world samples.
    """
    world = world_size() if world is None else int(world)
    if n_samples <= 0:
        raise ValueError("no training samples: the training length cannot be derived from an empty data set")
    # A per-GPU batch larger than a rank's share of the data is cut to that share (as the trainers do).
    global_batch = min(int(batch_size), math.ceil(n_samples / world)) * int(accum_steps) * world
    if steps:
        n_steps, source = int(steps), "steps"
    elif samples_seen:
        n_steps, source = math.ceil(int(samples_seen) / global_batch), "samples_seen"
    elif epochs:
        n_steps, source = math.ceil(float(epochs) * n_samples / global_batch), "epochs"
    else:
        raise ValueError("give the training length as epochs (or samples_seen, or steps)")
    n_steps = max(1, n_steps)
    return {
        "steps": n_steps,
        "epochs": round(n_steps * global_batch / n_samples, 3),
        "samples_seen": n_steps * global_batch,
        "global_batch": global_batch,
        "steps_per_epoch": round(n_samples / global_batch, 3),
        "world_size": world,
        "n_samples": int(n_samples),
        "source": source,
    }


def epochs_to_steps(section: dict, steps_per_epoch: float) -> dict:
    """A copy of ``section`` with every ``<name>_epochs`` (except ``epochs``) turned into ``<name>_steps``."""
    out = dict(section)
    for key in list(out):
        if key.endswith("_epochs") and key != "epochs":
            out[key[: -len("_epochs")] + "_steps"] = round(float(out.pop(key)) * steps_per_epoch)
    return out


def describe(plan: dict[str, Any], what: str = "training") -> str:
    """One line a GPU owner reads before the run: data, batch, world size, epochs and steps."""
    return (f"{what}: {plan['n_samples']} samples, batch {plan['global_batch']} per step "
            f"({plan['world_size']} GPU(s)), {plan['epochs']:g} epochs = {plan['steps']} steps "
            f"({plan['samples_seen']} samples seen; from {plan['source']})")  # fmt: skip
