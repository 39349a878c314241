"""DINO-style self-distillation pieces (Caron et al. 2021), as RS-M-CLIP adds them to CLIP fine-tuning.

- multi-crop: ``n_global`` large crops and ``n_local`` small crops of each image (RandomResizedCrop
  geometry, flips in both axes since overhead imagery has no "up");
- ``DINOHead``: MLP -> L2-normalised bottleneck -> weight-normalised linear layer with K outputs whose
  norms are frozen at 1 (DINO's ``norm_last_layer=True``);
- EMA teacher with a cosine momentum schedule (base -> 1);
- ``DINOLoss``: cross-entropy between the sharpened, centred teacher distribution of each global crop and
  the student distribution of every other crop; teacher temperature warms up linearly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .losses import distributed


@dataclass
class CropConfig:
    n_global: int = 2
    global_size: int = 224
    global_scale: tuple[float, float] = (0.4, 1.0)
    n_local: int = 8
    local_size: int = 96
    local_scale: tuple[float, float] = (0.05, 0.4)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    # DINO's colour jitter, grayscale, blur and solarisation per view (training.data.augment.dino_photometric);
    # RGB images only.
    photometric: bool = True


def sample_crop_box(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], generator: torch.Generator
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random crop covering ``scale`` of the area with aspect ``ratio`` (w/h).

    torchvision's RandomResizedCrop rule: ten tries at a random area and log-uniform aspect ratio, then the
    largest centred crop whose aspect ratio is inside the range.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(3, generator=generator).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1])
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _crop_resize(
    images: torch.Tensor, size: int, scale: tuple[float, float], cfg: CropConfig, generator: torch.Generator
) -> torch.Tensor:
    out = []
    _, _, height, width = images.shape
    for img in images:
        top, left, h, w = sample_crop_box(height, width, scale, cfg.ratio, generator)
        crop = img[:, top : top + h, left : left + w].unsqueeze(0)
        crop = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        if cfg.flip:
            flips = torch.rand(2, generator=generator)
            if flips[0] < 0.5:
                crop = crop.flip(-1)
            if flips[1] < 0.5:
                crop = crop.flip(-2)
        out.append(crop)
    return torch.cat(out)


def multi_crop(images: torch.Tensor, cfg: CropConfig, generator: torch.Generator) -> list[torch.Tensor]:
    """[global_1, ..., global_G, local_1, ..., local_L], each [B, C, size, size], from images [B, C, H, W]."""
    crops = [_crop_resize(images, cfg.global_size, cfg.global_scale, cfg, generator) for _ in range(cfg.n_global)]
    crops += [_crop_resize(images, cfg.local_size, cfg.local_scale, cfg, generator) for _ in range(cfg.n_local)]
    if cfg.photometric and images.shape[1] == 3:
        from training.data.augment import dino_photometric

        # DINO: global view 1 always blurred; view 2 blurred with p 0.1 and solarised with p 0.2; local views p 0.5.
        views = ["global1", "global2"] + ["global2"] * max(cfg.n_global - 2, 0)
        crops = [dino_photometric(c, views[i] if i < cfg.n_global else "local", generator) for i, c in enumerate(crops)]
    return crops


def encode_any_size(visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Run an open_clip image tower on images of any size divisible by its patch size.

    Local crops are smaller than the tower's native input: for open_clip's ViT the positional embedding
    is interpolated (bicubic, as DINO does) inside the call, so gradients still reach the original
    parameter; other towers get the crops resized to their native size.
    """
    native = getattr(visual, "image_size", None)
    native = native[0] if isinstance(native, (tuple, list)) else native
    size = images.shape[-1]
    if native is None or size == native:
        return visual(images)
    pos = getattr(visual, "positional_embedding", None)
    patch = getattr(visual, "patch_size", None)
    patch = patch[0] if isinstance(patch, (tuple, list)) else patch
    if pos is None or patch is None or size % patch or pos.ndim != 2:
        return visual(F.interpolate(images, size=(native, native), mode="bilinear", align_corners=False))
    old_grid, new_grid = native // patch, size // patch
    cls_pos, grid_pos = pos[:1], pos[1:]
    grid_pos = grid_pos.reshape(1, old_grid, old_grid, -1).permute(0, 3, 1, 2)
    grid_pos = F.interpolate(grid_pos, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    grid_pos = grid_pos.permute(0, 2, 3, 1).reshape(new_grid * new_grid, -1)
    new_pos = torch.cat([cls_pos, grid_pos], dim=0)
    return torch.func.functional_call(visual, {"positional_embedding": new_pos}, (images,), strict=False)


class DINOHead(nn.Module):
    """MLP (n_layers, GELU) -> L2 normalise -> weight-normalised Linear(bottleneck, K) without bias."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        n_layers: int = 3,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        dims = [in_dim] + [hidden_dim] * (max(n_layers, 1) - 1) + [bottleneck_dim]
        for i in range(len(dims) - 1):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < len(dims) - 2:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        # The magnitude g (original0) is 1 per output; frozen, the logits are cosines (DINO's stability trick).
        with torch.no_grad():
            self.last_layer.parametrizations.weight.original0.fill_(1.0)
        if norm_last_layer:
            self.last_layer.parametrizations.weight.original0.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1)
        return self.last_layer(x)


class StudentTeacherBranch(nn.Module):
    """An image tower plus a DINO head: what is duplicated as the teacher."""

    def __init__(self, visual: nn.Module, head: DINOHead) -> None:
        super().__init__()
        self.visual = visual
        self.head = head

    def forward(self, crops: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeddings of all crops, head outputs) — crops of one size share one tower call."""
        embs = []
        start = 0
        while start < len(crops):
            end = start
            while end < len(crops) and crops[end].shape[-1] == crops[start].shape[-1]:
                end += 1
            embs.append(encode_any_size(self.visual, torch.cat(crops[start:end])))
            start = end
        emb = torch.cat(embs)
        return emb, self.head(emb)


def momentum_at(step: int, total_steps: int, base: float = 0.996, final: float = 1.0) -> float:
    """DINO's cosine teacher momentum schedule: ``base`` at step 0 rising to ``final`` at ``total_steps``."""
    if total_steps <= 0:
        return final
    t = min(max(step, 0), total_steps) / total_steps
    return final - (final - base) * (math.cos(math.pi * t) + 1) / 2


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, parameter by parameter."""
    for pt, ps in zip(teacher.parameters(), student.parameters()):
        pt.mul_(momentum).add_(ps.detach().to(pt.dtype), alpha=1.0 - momentum)


def teacher_temperature_at(step: int, warmup_steps: int, start: float = 0.04, final: float = 0.07) -> float:
    """Linear warm-up of the teacher temperature from ``start`` to ``final``, then constant."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return final
    return start + (final - start) * step / warmup_steps


class DINOLoss(nn.Module):
    """Cross-entropy of student crops against centred, sharpened teacher global crops."""

    def __init__(
        self,
        out_dim: int,
        n_global: int,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        center_init: str = "zeros",
    ) -> None:
        super().__init__()
        if center_init not in ("zeros", "first_batch"):
            raise ValueError(f"center_init {center_init!r}: use 'zeros' (DINO) or 'first_batch'")
        self.n_global = n_global
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))
        # 'first_batch' starts the centre at the first teacher mean: a randomly initialised tower gives nearly
        # identical outputs for every image, and a zero centre then rewards that collapse for the first steps.
        self.register_buffer("center_ready", torch.tensor(center_init == "zeros"))

    def teacher_probs(self, teacher_out: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """softmax((t - centre) / teacher_temp): centring stops one dimension dominating, sharpening stops uniformity."""
        return F.softmax((teacher_out - self.center) / teacher_temp, dim=-1)

    def forward(
        self, student_out: torch.Tensor, teacher_out: torch.Tensor, teacher_temp: float, update_center: bool = True
    ) -> torch.Tensor:
        """``student_out`` [(G+L)*B, K] (crop-major), ``teacher_out`` [G*B, K] (global crops only)."""
        n_crops = student_out.shape[0] // (teacher_out.shape[0] // self.n_global)
        if not bool(self.center_ready):
            self.update_center(teacher_out, momentum=0.0)
            self.center_ready.fill_(True)
        student = (student_out / self.student_temp).chunk(n_crops)
        teacher = self.teacher_probs(teacher_out, teacher_temp).detach().chunk(self.n_global)
        total, terms = student_out.new_zeros(()), 0
        for iq, q in enumerate(teacher):
            for v, s in enumerate(student):
                if v == iq:
                    continue  # a crop does not predict itself
                total = total + torch.sum(-q * F.log_softmax(s, dim=-1), dim=-1).mean()
                terms += 1
        if update_center:
            self.update_center(teacher_out)
        return total / max(terms, 1)

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor, momentum: Optional[float] = None) -> None:
        m = self.center_momentum if momentum is None else momentum
        batch_sum = teacher_out.detach().sum(dim=0, keepdim=True)
        count = torch.tensor(float(teacher_out.shape[0]), device=teacher_out.device)
        if distributed():
            dist.all_reduce(batch_sum)
            dist.all_reduce(count)
        self.center.mul_(m).add_(batch_sum / count, alpha=1 - m)
