"""Paper A's released checkpoints -> a bundle.

The paper's files are torch ``.pt`` dicts ``{"model": state_dict, "optimizer": ..., "scaler": ...}`` (read with
``torch.load(weights_only=True)`` only). A *patched* file holds the CLIP image encoder (keys such as
``model.visual.conv1.weight``, as WiSE-FT's ``ImageEncoder`` wrapper saves them); an *aligned* file holds the
Sentinel-2 student: a timm backbone plus a linear head to the CLIP embedding (``backbone.*``/``proj.*``, or
bare timm keys with the head under ``head.``/``fc.``/``projection.``/``proj.``), or the released layout: an
open_clip model with a timm trunk (``visual.trunk.*``, ``visual.head.*``, ``_orig_mod.classification_head.*``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional

import torch

from rs_clip_plugin.engine.bands import S2_L1C_BANDS
from rs_clip_plugin.engine.radiometry import default_transform
from training.checkpoint import CheckpointError, check_fits, read_state_dict
from training.data.composites import S2_L2A_AS_13

from .students import TimmStudent

log = logging.getLogger(__name__)

_VISUAL_PREFIXES = ("image_encoder.model.", "image_encoder.", "model.", "module.", "clip.")
_HEAD_NAMES = ("proj", "head", "fc", "projection")


def visual_state(path: os.PathLike | str) -> dict[str, torch.Tensor]:
    """The ``visual.*`` tensors of a patched checkpoint, keyed as in an open_clip model."""
    state = read_state_dict(path)
    out = {}
    for k, v in state.items():
        for p in _VISUAL_PREFIXES:
            if k.startswith(p + "visual."):
                k = k[len(p) :]
                break
        if k.startswith("visual."):
            out[k] = v
    if not out:
        raise CheckpointError(f"{path}: no image-encoder tensors (keys like model.visual.conv1.weight); is it a patched checkpoint?")
    return out


def load_patched(model: torch.nn.Module, path: os.PathLike | str) -> None:
    state = visual_state(path)
    own = {k: v for k, v in model.state_dict().items() if k.startswith("visual.")}
    check_fits(own, state, path, "check --model", allow_unexpected=True, what="the model's image encoder")
    model.load_state_dict({**model.state_dict(), **state})


_WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile's OptimizedModule, DDP


def _unwrapped_key(k: str) -> str:
    while k.startswith(_WRAPPER_PREFIXES):
        k = k.split(".", 1)[1]
    return k


def student_state(path: os.PathLike | str) -> dict[str, torch.Tensor]:
    """An aligned student's tensors keyed as ``TimmStudent`` (backbone.*, proj.*).

    Layouts: Paper A's released ``AlignmentAgent.save_checkpoint`` (an open_clip model with a timm trunk:
    ``visual.trunk.*``, the replaced ``visual.head`` Linear, plus ``_orig_mod.classification_head.*``,
    ``_orig_mod.logit_scale`` and the unused text parts, all ignored); this project's (``backbone.*``/``proj.*``);
    bare timm keys with the head under ``head.``/``fc.``/``projection.``/``proj.``. ``_orig_mod.``/``module.``
    wrappers are removed first.
    """
    state = {_unwrapped_key(k): v for k, v in read_state_dict(path).items()}
    if any(k.startswith("visual.trunk.") for k in state):
        out = {}
        for k, v in state.items():
            if k.startswith("visual.trunk."):
                out["backbone." + k[len("visual.trunk.") :]] = v
            elif k in ("visual.head.weight", "visual.head.bias", "visual.head.proj.weight", "visual.head.proj.bias"):
                out["proj." + k.rsplit(".", 1)[1]] = v  # Paper A's nn.Linear(384, D), or open_clip's head.proj
        ignored = sorted({k.split(".")[0] for k in state if not k.startswith(("visual.trunk.", "visual.head."))})
        log.info("%s: open_clip timm-trunk layout; ignored %s", path, ignored)
        if "proj.weight" in out and "proj.bias" not in out:  # open_clip's linear projection has no bias
            out["proj.bias"] = torch.zeros(out["proj.weight"].shape[0], dtype=out["proj.weight"].dtype)
        return out
    if any(k.startswith("backbone.") for k in state):
        return state
    out = {}
    for k, v in state.items():
        head = next((h for h in _HEAD_NAMES if k in (f"{h}.weight", f"{h}.bias")), None)
        out[f"proj.{k.split('.')[-1]}" if head else f"backbone.{k}"] = v
    return out


def load_student(path: os.PathLike | str, timm_name: str, in_chans: int, embed_dim: int, img_size: int) -> TimmStudent:
    student = TimmStudent(timm_name, in_chans, embed_dim, img_size)
    state = student_state(path)
    own = student.state_dict()
    check_fits(own, state, path, "check --student", allow_unexpected=True,
               what=f"a {timm_name} student with {in_chans} bands and a {embed_dim}-d head")
    student.load_state_dict({k: state[k] for k in own})
    return student.eval()


def import_checkpoints(
    model: str,
    out_dir: os.PathLike | str,
    *,
    pretrained: Optional[str] = None,
    patched: Optional[os.PathLike | str] = None,
    aligned: Optional[os.PathLike | str] = None,
    student: str = "vit_small_patch16_224",
    student_size: int = 224,
    gsd_m: float = 10.0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """A bundle with the text encoder, the (patched) RGB encoder and, given ``aligned``, s2-l1c and s2-l2a encoders."""
    from training.export.exporter import ImageEncoderExport, export_model, rgb_encoder, student_module
    from training.models.factory import create_model

    lm = create_model(model, pretrained=pretrained)
    if patched:
        load_patched(lm.model, patched)
    encoders = [rgb_encoder(lm, gsd_m=gsd_m)]
    if aligned:
        # with the default dense outputs when the student is a class-token timm ViT (Paper A's ViT-S/16 is)
        s2 = student_module(load_student(aligned, student, len(S2_L1C_BANDS), lm.embed_dim, student_size))
        for modality, bands in (("s2-l1c", list(S2_L1C_BANDS)), ("s2-l2a", list(S2_L2A_AS_13))):
            units, transforms, mean, std = default_transform(modality, len(bands))
            encoders.append(ImageEncoderExport(modality, s2, bands, units, transforms, mean, std, student_size, gsd_m))
    provenance = {
        "method": "modality-gap (Paper A) imported checkpoint",
        "patched_checkpoint": str(patched) if patched else None,
        "aligned_checkpoint": str(aligned) if aligned else None,
        "student": student if aligned else None,
    }
    return export_model(lm, out_dir=Path(out_dir), image_encoders=encoders, provenance=provenance, overwrite=overwrite)
