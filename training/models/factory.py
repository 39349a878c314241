"""One way to get a CLIP model, whatever it comes from.

- an open_clip name with a pretrained tag (``ViT-B-32`` / ``openai``): open_clip downloads the weights;
- an ``hf-hub:org/name`` id (RS-M-CLIP, RemoteCLIP ports): open_clip resolves it;
- a local weights file (``.safetensors``, or ``.pt/.pth/.bin`` read with ``torch.load(weights_only=True)``);
- one of this project's checkpoint directories (``training.checkpoint``), which names its own architecture;
- the tiny test configurations (``rsclip-tiny``, ``rsclip-tiny-multilingual``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from training.checkpoint import (
    CheckpointError,
    is_project_checkpoint,
    load_checkpoint,
    load_into,
    read_state_dict,
)

from .tiny import TINY_MODELS, ensure_registered


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: Any  # open_clip tokenizer: callable list[str] -> LongTensor [N, context_length]
    model_name: str
    pretrained: Optional[str]
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    context_length: int
    checkpoint: Optional[str] = None

    @property
    def embed_dim(self) -> int:
        dim = getattr(getattr(self.model, "visual", None), "output_dim", None)
        return int(dim) if dim else _probe_dim(self)

    @property
    def is_hf_text(self) -> bool:
        return hasattr(self.model, "text") and hasattr(self.model.text, "transformer") and hasattr(self.model.text, "config")


def _probe_dim(lm: LoadedModel) -> int:
    with torch.no_grad():
        return int(lm.model.encode_text(lm.tokenizer(["a"])).shape[-1])


def create_model(
    name: str,
    pretrained: Optional[str] = None,
    checkpoint: Optional[os.PathLike | str] = None,
    device: str = "cpu",
) -> LoadedModel:
    """Build ``name`` and load weights from ``pretrained`` (open_clip tag) or ``checkpoint`` (file or directory).

    ``name`` may be omitted (empty) when ``checkpoint`` is a project checkpoint directory, which records it.
    """
    import open_clip

    if pretrained and checkpoint:
        raise ValueError("give either a pretrained tag or a checkpoint, not both")
    info = None
    state = None
    if checkpoint is not None:
        cpath = Path(checkpoint)
        if is_project_checkpoint(cpath):
            info, state = load_checkpoint(cpath)
            if name and name != info.model_name:
                raise CheckpointError(
                    f"{cpath}: holds a {info.model_name!r} model but --model says {name!r}; drop --model or make them agree"
                )
            name = info.model_name
        else:
            state = read_state_dict(cpath)
    if not name:
        raise ValueError("no model name: pass --model (an open_clip name such as ViT-B-32, or rsclip-tiny)")
    ensure_registered(name)
    if not name.startswith(("hf-hub:", "local-dir:")) and name not in open_clip.list_models():
        raise ValueError(
            f"unknown model {name!r}: use an open_clip architecture (e.g. ViT-B-32, xlm-roberta-base-ViT-B-32), "
            f"an hf-hub:org/name id, or one of {', '.join(TINY_MODELS)}"
        )

    kwargs: dict[str, Any] = {}
    if _text_cfg(name).get("hf_model_name") and not pretrained:
        # Without CLIP weights open_clip would fetch the HF text tower's own weights (no hub here, and they
        # would be overwritten by a checkpoint anyway).
        kwargs["pretrained_text"] = False
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(max(quiet, logging.ERROR))  # open_clip warns "initialized randomly" for every tiny model
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, device=device, **kwargs)
    except RuntimeError as exc:
        if pretrained:
            raise ValueError(
                f"cannot load {name} / {pretrained}: {exc}; the pretrained weights need internet access (or a "
                "local --checkpoint file)"
            ) from exc
        raise
    finally:
        logging.getLogger().setLevel(quiet)
    if state is not None:
        load_into(model, state, checkpoint)
    model.eval()
    tokenizer = open_clip.get_tokenizer(name)
    image_size, mean, std = _preprocess_facts(model, preprocess)
    context_length = int(getattr(tokenizer, "context_length", None) or getattr(model, "context_length", 77))
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        model_name=name,
        pretrained=pretrained or (info.pretrained if info else None),
        image_size=image_size,
        mean=mean,
        std=std,
        context_length=context_length,
        checkpoint=str(checkpoint) if checkpoint is not None else None,
    )


def _text_cfg(name: str) -> dict:
    import open_clip

    if name.startswith(("hf-hub:", "local-dir:")):
        return {}
    cfg = open_clip.get_model_config(name) or {}
    return cfg.get("text_cfg", {})


def _preprocess_facts(model: torch.nn.Module, preprocess: Any) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    size = getattr(model.visual, "image_size", 224)
    if isinstance(size, (tuple, list)):
        size = size[0]
    mean = getattr(model.visual, "image_mean", None)
    std = getattr(model.visual, "image_std", None)
    if mean is None or std is None:
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        for t in getattr(preprocess, "transforms", []):
            if hasattr(t, "mean") and hasattr(t, "std"):
                mean, std = t.mean, t.std
        mean = mean or OPENAI_DATASET_MEAN
        std = std or OPENAI_DATASET_STD
    return int(size), tuple(float(v) for v in mean), tuple(float(v) for v in std)
