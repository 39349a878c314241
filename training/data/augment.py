"""Per-sample batched augmentations on tensors, as the references apply them one image at a time.

Everything takes a batch [B, C, H, W] and draws independent parameters per sample from a CPU generator
(reproducible, whatever the device the batch lives on). Geometric functions take a *list* of tensors and apply
the same crop/flip to the i-th sample of each, so student/teacher pairs stay pixel-aligned. Photometric
functions work on RGB in [0, 1] (before CLIP normalisation), like torchvision's transforms on PIL images.

- ``PaperAStage1``: Paper A's fine-tuning augmentation (MindTheModalityGap ``transforms.image_transform`` with
  ``use_augmentations`` and open_clip's train transform): RandomResizedCrop(scale 0.9-1), horizontal and
  vertical flips, ColorJitter(0.4, 0.4, 0.4) p=0.8, RandomGrayscale p=0.2, GaussianBlur(3x7, sigma 0.1-2) p=0.4.
- ``PairedGeometric``: RandomResizedCrop + flips shared by both inputs of an alignment pair (stage 2).
- ``dino_photometric``: DINO's ``DataAugmentationDINO`` colour part per crop (facebookresearch/dino main_dino.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

_GRAY = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale


def _u(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _chance(n: int, p: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=g) < p


def _col(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.to(like.device, like.dtype).view(-1, 1, 1, 1)


def gray(x: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] -> [B, 1, H, W] luma."""
    w = torch.tensor(_GRAY, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


# -- geometry -------------------------------------------------------------------------------------------------
def crop_boxes(n: int, scale: tuple[float, float], ratio: tuple[float, float], g: torch.Generator) -> torch.Tensor:
    """[n, 4] relative (top, left, h, w) boxes by torchvision's RandomResizedCrop rule on a unit square."""
    from training.methods.rs_m_clip.dino import sample_crop_box

    res = 1000  # box on a 1000 x 1000 grid, then relative: one rule for inputs of any (and differing) sizes
    return torch.tensor([sample_crop_box(res, res, scale, ratio, g) for _ in range(n)], dtype=torch.float64) / res


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, hflip: torch.Tensor, vflip: torch.Tensor,
                 size: Optional[int] = None) -> torch.Tensor:  # fmt: skip
    """Each sample's relative box cut out, flipped as asked and resampled (bilinear) to ``size`` (default: H).

    One ``grid_sample`` for the whole batch: the box and flips are an affine map of the output grid.
    """
    b, _, h, _ = x.shape
    size = size or h
    top, left, bh, bw = (boxes[:, i].to(torch.float32) for i in range(4))
    sx, sy = bw, bh  # half-extent of the box in normalised [-1, 1] coordinates
    cx, cy = 2 * (left + bw / 2) - 1, 2 * (top + bh / 2) - 1
    sx = torch.where(hflip, -sx, sx)
    sy = torch.where(vflip, -sy, sy)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, cx, sy, cy
    grid = F.affine_grid(theta.to(x.device, x.dtype), [b, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


@dataclass
class PairedGeometric:
    """The same RandomResizedCrop(``scale``) and flips on the i-th sample of every tensor (pairs stay aligned)."""

    scale: tuple[float, float] = (0.9, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    vflip: float = 0.5

    def __call__(self, xs: Sequence[torch.Tensor], g: torch.Generator) -> list[torch.Tensor]:
        n = xs[0].shape[0]
        boxes = crop_boxes(n, tuple(self.scale), tuple(self.ratio), g)
        hf, vf = _chance(n, self.hflip, g), _chance(n, self.vflip, g)
        return [resized_crop(x, boxes, hf, vf) for x in xs]


# -- photometry (RGB in [0, 1]) ----------------------------------------------------------------------------------
def color_jitter(x: torch.Tensor, g: torch.Generator, brightness: float = 0.4, contrast: float = 0.4,
                 saturation: float = 0.4, hue: float = 0.0, p: float = 0.8) -> torch.Tensor:  # fmt: skip
    """torchvision's ColorJitter per sample, applied with probability ``p``: factors uniform in [1-v, 1+v]
    (hue shift in [-hue, hue]); the order of the four operations is drawn per batch (torchvision: per image)."""
    n = x.shape[0]
    on = _col(_chance(n, p, g), x)
    out = x
    for op in torch.randperm(4, generator=g).tolist():
        if op == 0 and brightness > 0:
            out = (out * _col(_u(n, 1 - brightness, 1 + brightness, g), x)).clamp(0, 1)
        elif op == 1 and contrast > 0:
            mean = gray(out).mean(dim=(1, 2, 3), keepdim=True)
            f = _col(_u(n, 1 - contrast, 1 + contrast, g), x)
            out = (f * out + (1 - f) * mean).clamp(0, 1)
        elif op == 2 and saturation > 0:
            f = _col(_u(n, 1 - saturation, 1 + saturation, g), x)
            out = (f * out + (1 - f) * gray(out)).clamp(0, 1)
        elif op == 3 and hue > 0:
            from torchvision.transforms.v2.functional import adjust_hue

            shifts = _u(n, -hue, hue, g).tolist()
            out = torch.stack([adjust_hue(out[i], shifts[i]) for i in range(n)])
    return torch.where(on > 0, out, x)


def random_grayscale(x: torch.Tensor, g: torch.Generator, p: float = 0.2) -> torch.Tensor:
    on = _col(_chance(x.shape[0], p, g), x)
    return torch.where(on > 0, gray(x).expand_as(x), x)


def gaussian_blur(x: torch.Tensor, g: torch.Generator, p: float, sigma: tuple[float, float] = (0.1, 2.0),
                  kernel: Optional[tuple[int, int]] = None) -> torch.Tensor:  # fmt: skip
    """Blur with probability ``p``, sigma uniform in ``sigma``. ``kernel`` (width, height) as torchvision's
    GaussianBlur(kernel_size); None: 2 * ceil(3 sigma) + 1, as PIL's GaussianBlur(radius) that DINO uses."""
    from torchvision.transforms.v2.functional import gaussian_blur as blur

    n = x.shape[0]
    on = _chance(n, p, g).tolist()
    sig = _u(n, sigma[0], sigma[1], g).tolist()
    out = x.clone()
    for i in range(n):
        if on[i]:
            k = list(kernel) if kernel else [2 * math.ceil(3 * sig[i]) + 1] * 2
            k = [min(v, 2 * (min(x.shape[-2:]) // 2) - 1) for v in k]  # odd and no larger than the image
            out[i] = blur(x[i], kernel_size=k, sigma=[sig[i], sig[i]])
    return out


def solarize(x: torch.Tensor, g: torch.Generator, p: float, threshold: float = 0.5) -> torch.Tensor:
    """PIL ImageOps.solarize(128) on [0, 1]: invert the pixels at or above ``threshold``, with probability ``p``."""
    on = _col(_chance(x.shape[0], p, g), x)
    return torch.where((on > 0) & (x >= threshold), 1.0 - x, x)


@dataclass
class PaperAStage1:
    """Paper A's stage-1 training augmentation on CLIP-normalised RGB batches (un-normalised, augmented,
    normalised again). Values default to the released code; each can be changed from the recipe."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: tuple[float, float] = (0.9, 1.0)  # open_clip's train RandomResizedCrop
    jitter: float = 0.4  # ColorJitter(0.4, 0.4, 0.4)
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.4
    blur_kernel: tuple[int, int] = (3, 7)  # GaussianBlur(kernel_size=(3, 7)): 3 wide, 7 high, as released
    blur_sigma: tuple[float, float] = (0.1, 2.0)

    def __call__(self, xs: Sequence[torch.Tensor], g: torch.Generator) -> list[torch.Tensor]:
        (x,) = xs
        m = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        s = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        (x,) = PairedGeometric(tuple(self.scale))([(x * s + m).clamp(0, 1)], g)
        x = color_jitter(x, g, self.jitter, self.jitter, self.jitter, 0.0, self.jitter_p)
        x = random_grayscale(x, g, self.grayscale_p)
        x = gaussian_blur(x, g, self.blur_p, tuple(self.blur_sigma), tuple(self.blur_kernel))
        return [(x - m) / s]


# DINO's DataAugmentationDINO (main_dino.py): colour jitter and grayscale on every crop, then the blur and
# solarisation probabilities of global crop 1, global crop 2 and the local crops.
DINO_JITTER = {"brightness": 0.4, "contrast": 0.4, "saturation": 0.2, "hue": 0.1, "p": 0.8}
DINO_GRAYSCALE_P = 0.2
DINO_BLUR_P = {"global1": 1.0, "global2": 0.1, "local": 0.5}
DINO_SOLARIZE_P = {"global1": 0.0, "global2": 0.2, "local": 0.0}


def dino_photometric(crop: torch.Tensor, which: str, g: torch.Generator) -> torch.Tensor:
    """One multi-crop view ([B, 3, h, w] in [0, 1]) through DINO's photometric pipeline for view ``which``
    ('global1', 'global2' or 'local')."""
    x = color_jitter(crop, g, **DINO_JITTER)
    x = random_grayscale(x, g, DINO_GRAYSCALE_P)
    x = gaussian_blur(x, g, DINO_BLUR_P[which])
    return solarize(x, g, DINO_SOLARIZE_P[which])
