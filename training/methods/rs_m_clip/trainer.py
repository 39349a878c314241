"""RS-M-CLIP training loop: CLIP InfoNCE + lambda * DINO self-distillation on the image tower.

One step: multi-crop every image; the student (the CLIP image tower + a DINO head) sees all crops, the EMA
teacher only the global ones; the first global crop's student embedding is the image side of the
contrastive loss, against one caption per image sampled across languages. Mixed precision on GPU,
gradient accumulation, safetensors checkpoints with resume, DDP under ``torchrun`` (gradients averaged by
hand after backward, because the image tower runs several forwards per step).
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.distributed as dist

from rs_clip_plugin.engine.atomic import atomic_write_text, staged_dir
from rs_clip_plugin.engine.progress import Progress

from .dino import CropConfig, DINOHead, DINOLoss, StudentTeacherBranch, ema_update, momentum_at, multi_crop
from .dino import teacher_temperature_at as teacher_temp_at
from .losses import distributed, info_nce

CHECKPOINT_DIR = "checkpoint"
TRAINER_STATE = "trainer.safetensors"
TRAINER_META = "trainer.json"


@dataclass
class TrainConfig:
    steps: int = 0  # optimizer steps; the recipe derives them from epochs / samples_seen (training.length)
    epochs: float = 0.0
    samples_seen: int = 0
    batch_size: int = 64  # per rank, per micro-batch
    accum_steps: int = 1
    lr: float = 5e-6
    head_lr: float = 5e-4
    weight_decay: float = 0.2
    # DINO head: weight decay on its weights follows DINO's cosine schedule 0.04 -> 0.4 (biases: none)
    head_weight_decay: float = 0.04
    head_weight_decay_end: float = 0.4
    grad_clip: float = 3.0  # DINO's clip_gradients: each parameter's gradient norm capped at 3.0; 0: off
    warmup_steps: int = 100
    seed: int = 0
    precision: str = "bf16"  # on GPU: bf16 | fp16 | fp32; CPU always fp32
    dino_weight: float = 1.0  # lambda
    head_out_dim: int = 65536
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    head_layers: int = 3
    student_temp: float = 0.1
    teacher_temp_start: float = 0.04
    teacher_temp: float = 0.07
    teacher_temp_warmup_steps: int = 0
    momentum_base: float = 0.996
    center_momentum: float = 0.9
    center_init: str = "zeros"  # DINO; "first_batch" for randomly initialised towers
    freeze_last_layer_steps: int = 0
    crops: CropConfig = field(default_factory=CropConfig)
    checkpoint_every: int = 0  # 0: only at the end
    resume: bool = True
    lang_weights: dict[str, float] = field(default_factory=dict)  # empty: uniform over a sample's languages

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        crops = d.pop("crops", {}) or {}
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown training options {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        bad_crop = set(crops) - set(CropConfig.__dataclass_fields__)
        if bad_crop:
            raise ValueError(f"unknown crop options {sorted(bad_crop)}; known: {sorted(CropConfig.__dataclass_fields__)}")
        crops = {k: tuple(v) if isinstance(v, list) else v for k, v in crops.items()}
        return cls(crops=CropConfig(**crops), **d)


@dataclass
class Sample:
    image: torch.Tensor  # [C, H, W] float in [0, 1]
    captions: dict[str, list[str]]  # lang -> captions


def init_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device); starts the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def sample_caption(captions: dict[str, list[str]], weights: dict[str, float], rng: random.Random) -> tuple[str, str]:
    """(lang, caption): a language drawn by ``weights`` among those the image has, then a caption uniformly."""
    langs = [lang for lang in captions if captions[lang]]
    if not langs:
        raise ValueError("an image without any caption reached the trainer; filter such images out")
    w = [weights.get(lang, 0.0 if weights else 1.0) for lang in langs]
    if sum(w) <= 0:
        w = [1.0] * len(langs)
    lang = rng.choices(langs, weights=w)[0]
    return lang, rng.choice(captions[lang])


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    sd = opt.state_dict()
    tensors = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            t = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"optim.{idx}.{name}"] = t.detach().cpu().contiguous()
    return tensors, sd["param_groups"]


def _unflatten_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": groups})


class RSMCLIPTrainer:
    """Holds the CLIP model, the DINO student head, the EMA teacher and the optimiser."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Callable[[list[str]], torch.Tensor],
        mean: tuple[float, ...],
        std: tuple[float, ...],
        cfg: TrainConfig,
        out_dir: Path,
        *,
        model_name: str,
        pretrained: Optional[str] = None,
        progress: Optional[Progress] = None,
    ) -> None:
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.model_name, self.pretrained = model_name, pretrained
        self.progress = progress or Progress()
        self.rank, self.world, self.device = init_distributed()
        torch.manual_seed(cfg.seed + self.rank)
        self.model = model.to(self.device).train()
        self.tokenizer = tokenizer
        self.mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, -1, 1, 1)
        embed_dim = int(getattr(model.visual, "output_dim", 0) or model.text_projection.shape[-1])
        head = DINOHead(embed_dim, cfg.head_out_dim, cfg.head_hidden_dim, cfg.head_bottleneck_dim, cfg.head_layers)
        self.student = StudentTeacherBranch(self.model.visual, head.to(self.device))
        self.teacher = copy.deepcopy(self.student).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.dino_loss = DINOLoss(cfg.head_out_dim, cfg.crops.n_global, cfg.student_temp, cfg.center_momentum,
                                 cfg.center_init).to(self.device)
        self.optimizer = self._make_optimizer()
        self.use_amp = self.device.type == "cuda" and cfg.precision in ("bf16", "fp16")
        self.amp_dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and cfg.precision == "fp16")
        self.step = 0
        self.history: list[dict[str, float]] = []

    def _make_optimizer(self) -> torch.optim.Optimizer:
        # No weight decay on gains, biases, embeddings and the temperature (open_clip's rule).
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            if p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name or "embedding" in name:
                no_decay.append(p)
            else:
                decay.append(p)
        head = [(n, p) for n, p in self.student.head.named_parameters() if p.requires_grad]
        # DINO's get_params_groups: biases and 1-d tensors are not regularised.
        head_decay = [p for n, p in head if p.ndim >= 2 and not n.endswith(".bias")]
        head_plain = [p for n, p in head if not (p.ndim >= 2 and not n.endswith(".bias"))]
        groups = [
            {"params": decay, "weight_decay": self.cfg.weight_decay, "lr": self.cfg.lr, "base_lr": self.cfg.lr},
            {"params": no_decay, "weight_decay": 0.0, "lr": self.cfg.lr, "base_lr": self.cfg.lr},
            {"params": head_decay, "weight_decay": self.cfg.head_weight_decay, "lr": self.cfg.head_lr,
             "base_lr": self.cfg.head_lr, "wd_schedule": True},
            {"params": head_plain, "weight_decay": 0.0, "lr": self.cfg.head_lr, "base_lr": self.cfg.head_lr},
        ]
        return torch.optim.AdamW(groups, betas=(0.9, 0.98), eps=1e-6)

    def head_weight_decay_at(self, step: int) -> float:
        """DINO's cosine_scheduler for weight decay: head_weight_decay at step 0 to head_weight_decay_end at the end."""
        start, end = self.cfg.head_weight_decay, self.cfg.head_weight_decay_end
        t = min(max(step, 0), max(self.cfg.steps, 1)) / max(self.cfg.steps, 1)
        return end + 0.5 * (start - end) * (1 + math.cos(math.pi * t))

    def _clip_gradients(self) -> None:
        """DINO's clip_gradients: every parameter's gradient scaled down to norm ``grad_clip`` on its own."""
        if self.cfg.grad_clip <= 0:
            return
        self.scaler.unscale_(self.optimizer)
        for g in self.optimizer.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    norm = p.grad.detach().norm(2)
                    p.grad.mul_(torch.clamp(self.cfg.grad_clip / (norm + 1e-6), max=1.0))

    def _lr_factor(self, step: int) -> float:
        if step < self.cfg.warmup_steps:
            return (step + 1) / self.cfg.warmup_steps
        span = max(self.cfg.steps - self.cfg.warmup_steps, 1)
        return 0.5 * (1 + math.cos(math.pi * min(step - self.cfg.warmup_steps, span) / span))

    # ---- checkpoints -------------------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_DIR

    def save(self) -> Path:
        """out_dir/checkpoint/{model/, trainer.safetensors, trainer.json}, replaced as a whole (atomic rename)."""
        if self.rank != 0:
            return self.checkpoint_path
        from safetensors.torch import save_file

        from training.checkpoint import save_checkpoint

        with staged_dir(self.checkpoint_path) as tmp:  # swapped in whole (rs_clip_plugin.engine.atomic)
            save_checkpoint(self.model, tmp / "model", self.model_name, pretrained=self.pretrained, step=self.step,
                            extra={"method": "rs_m_clip"})
            tensors = {f"head.{k}": v for k, v in self.student.head.state_dict().items()}
            tensors.update({f"teacher.{k}": v for k, v in self.teacher.state_dict().items()})
            tensors["dino.center"] = self.dino_loss.center
            opt_tensors, groups = _flatten_optimizer(self.optimizer)
            tensors.update(opt_tensors)
            save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, str(tmp / TRAINER_STATE))
            meta = {"step": self.step, "param_groups": groups, "history": self.history}
            (tmp / TRAINER_META).write_text(json.dumps(meta, default=float) + "\n", encoding="utf-8")
        return self.checkpoint_path

    def try_resume(self) -> bool:
        """Load out_dir/checkpoint if present (and resume is on); returns whether training resumed."""
        path = self.checkpoint_path
        if not (self.cfg.resume and (path / TRAINER_META).is_file()):
            return False
        from safetensors.torch import load_file

        from training.checkpoint import load_checkpoint, load_into

        info, state = load_checkpoint(path / "model")
        if info.model_name != self.model_name:
            raise ValueError(f"{path}: holds a {info.model_name!r} run but the recipe trains {self.model_name!r}; "
                             "use another --out or delete the checkpoint")
        load_into(self.model, state, path / "model")
        tensors = load_file(str(path / TRAINER_STATE), device=str(self.device))
        meta = json.loads((path / TRAINER_META).read_text(encoding="utf-8"))
        self.student.head.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")})
        self.teacher.load_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("teacher.")})
        self.dino_loss.center.copy_(tensors["dino.center"])
        self.dino_loss.center_ready.fill_(True)
        _unflatten_optimizer(self.optimizer, tensors, meta["param_groups"])
        self.step = int(meta["step"])
        self.history = list(meta.get("history", []))
        return True

    # ---- training ----------------------------------------------------------------------------------------------
    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def _micro_step(self, images: torch.Tensor, texts: list[str], gen: torch.Generator) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        # Crops and colour augmentations run on the device (per-sample blur loops would stall a GPU run on CPU).
        crops = [self._normalise(c) for c in multi_crop(images.to(self.device), cfg.crops, gen)]
        tokens = self.tokenizer(texts).to(self.device)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
            emb, student_out = self.student(crops)
            with torch.no_grad():
                _, teacher_out = self.teacher(crops[: cfg.crops.n_global])
            text_features = self.model.encode_text(tokens)
            b = images.shape[0]
            contrastive = info_nce(emb[:b].float(), text_features.float(), self.model.logit_scale)
            tt = teacher_temp_at(self.step, cfg.teacher_temp_warmup_steps, cfg.teacher_temp_start, cfg.teacher_temp)
            dino = self.dino_loss(student_out.float(), teacher_out.float(), tt)
        return {"contrastive": contrastive, "dino": dino, "total": contrastive + cfg.dino_weight * dino}

    def _all_reduce_grads(self) -> None:
        if not distributed():
            return
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        for p in params:
            dist.all_reduce(p.grad)
            p.grad.div_(self.world)

    def fit(self, samples: list[Sample]) -> list[dict[str, float]]:
        """Train to ``cfg.steps`` optimizer steps (continuing from a resumed step); returns the per-step log."""
        cfg = self.cfg
        if len(samples) < 2:
            raise ValueError(f"{len(samples)} training images: the contrastive loss needs at least 2")
        # Seeded by (seed, rank, step): a resumed run draws fresh, reproducible batches from where it stopped.
        seed = (cfg.seed * 1000 + self.rank) * 100003 + self.step
        rng = random.Random(seed)
        gen = torch.Generator().manual_seed(seed)
        order: list[int] = []
        shard = list(range(self.rank, len(samples), self.world))
        batch = min(cfg.batch_size, len(shard))
        t0 = time.monotonic()
        while self.step < cfg.steps:
            self.progress.check()
            factor = self._lr_factor(self.step)
            for g in self.optimizer.param_groups:
                g["lr"] = g["base_lr"] * factor
                if g.get("wd_schedule"):
                    g["weight_decay"] = self.head_weight_decay_at(self.step)
            self.optimizer.zero_grad(set_to_none=True)
            logs = {"contrastive": 0.0, "dino": 0.0, "total": 0.0}
            for _ in range(cfg.accum_steps):
                idx, order = self._next_indices(order, shard, batch, rng)
                images = torch.stack([samples[i].image for i in idx])
                texts = [sample_caption(samples[i].captions, cfg.lang_weights, rng)[1] for i in idx]
                losses = self._micro_step(images, texts, gen)
                self.scaler.scale(losses["total"] / cfg.accum_steps).backward()
                for k in logs:
                    logs[k] += float(losses[k].detach()) / cfg.accum_steps
            self._all_reduce_grads()
            self._clip_gradients()
            if self.step < cfg.freeze_last_layer_steps:
                for p in self.student.head.last_layer.parameters():
                    p.grad = None  # DINO: keep the output layer fixed while the rest settles
            self.scaler.step(self.optimizer)
            self.scaler.update()
            with torch.no_grad():
                self.model.logit_scale.clamp_(0, math.log(100))
            ema_update(self.teacher, self.student, momentum_at(self.step, cfg.steps, cfg.momentum_base))
            self.step += 1
            logs.update(step=self.step, lr=cfg.lr * factor, logit_scale=float(self.model.logit_scale.detach().exp()),
                        seconds=time.monotonic() - t0)
            self.history.append(logs)
            self.progress.update(self.step / cfg.steps, f"step {self.step} loss {logs['total']:.3f}")
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
                self.save()
        self.save()
        if self.rank == 0:
            atomic_write_text(self.out_dir / "train_log.json", json.dumps(self.history, indent=1) + "\n")
        return self.history

    @staticmethod
    def _next_indices(order: list[int], shard: list[int], batch: int, rng: random.Random) -> tuple[list[int], list[int]]:
        if len(order) < batch:
            fresh = shard[:]
            rng.shuffle(fresh)
            order = order + fresh
        return order[:batch], order[batch:]


def summarise(history: list[dict[str, Any]], window: int = 1) -> dict[str, dict[str, float]]:
    """{"contrastive": {"loss_first", "loss_last"}, "dino": {...}}: means over the first/last ``window`` steps."""
    out = {}
    w = max(1, min(window, len(history) // 2 or 1))
    for key in ("contrastive", "dino"):
        values = np.array([h[key] for h in history], dtype=np.float64)
        out[key] = {"loss_first": float(values[:w].mean()), "loss_last": float(values[-w:].mean()), "window": w}
    return out
