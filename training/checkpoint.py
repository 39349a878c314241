"""This project's training checkpoints and the state-dict readers shared with the model factory.

A checkpoint is a directory::

    model.safetensors   the full open_clip model's state dict
    checkpoint.json     {"format": 1, "model_name", "pretrained", "model_config", "step", "extra"}

Foreign checkpoints (RemoteCLIP, GeoRSCLIP, SkyCLIP, Paper A's patched/aligned ``.pt`` files) are single
files; ``read_state_dict`` reads them safely (``torch.load(weights_only=True)`` only, never pickle code).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from rs_clip_plugin.engine.atomic import staged_dir

CHECKPOINT_FORMAT = 1
WEIGHTS = "model.safetensors"
META = "checkpoint.json"
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file and the fix."""


@dataclass
class CheckpointInfo:
    model_name: str
    pretrained: Optional[str] = None
    model_config: Optional[dict] = None
    step: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def is_project_checkpoint(path: os.PathLike | str) -> bool:
    p = Path(path)
    return p.is_dir() and (p / META).is_file()


def save_checkpoint(
    model: torch.nn.Module,
    out_dir: os.PathLike | str,
    model_name: str,
    *,
    pretrained: Optional[str] = None,
    model_config: Optional[dict] = None,
    step: int = 0,
    extra: Optional[dict] = None,
) -> Path:
    """Write ``out_dir`` (model.safetensors + checkpoint.json) atomically; replaces an older checkpoint there."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    # Written beside ``out`` and swapped in whole (rs_clip_plugin.engine.atomic): a reader or a resumed run sees
    # the previous checkpoint or this one; the folder of a killed save is removed by the next.
    with staged_dir(out) as tmp:
        # safetensors refuses shared storage (tied weights): store contiguous copies.
        state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS), metadata={"model_name": model_name})
        meta = {
            "format": CHECKPOINT_FORMAT,
            "model_name": model_name,
            "pretrained": pretrained,
            "model_config": model_config,
            "step": int(step),
            "extra": extra or {},
        }
        (tmp / META).write_text(json.dumps(meta, indent=2, default=str) + "\n", encoding="utf-8")
    return out


def read_checkpoint_info(path: os.PathLike | str) -> CheckpointInfo:
    p = Path(path)
    meta_path = p / META
    if not meta_path.is_file():
        raise CheckpointError(f"{meta_path}: missing; a checkpoint directory holds {WEIGHTS} and {META} (save_checkpoint writes both)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{meta_path}: not valid JSON ({exc}); the checkpoint is damaged, save it again") from exc
    if meta.get("format", 0) > CHECKPOINT_FORMAT:
        raise CheckpointError(f"{meta_path}: checkpoint format {meta['format']} is newer than this code ({CHECKPOINT_FORMAT}); update RS-CLIP")
    if not meta.get("model_name"):
        raise CheckpointError(f"{meta_path}: no 'model_name'; the checkpoint does not say which architecture it holds")
    return CheckpointInfo(
        model_name=meta["model_name"],
        pretrained=meta.get("pretrained"),
        model_config=meta.get("model_config"),
        step=int(meta.get("step", 0)),
        extra=meta.get("extra") or {},
    )


def load_checkpoint(path: os.PathLike | str) -> tuple[CheckpointInfo, dict[str, torch.Tensor]]:
    """(info, state_dict) of a project checkpoint directory."""
    info = read_checkpoint_info(path)
    return info, read_state_dict(Path(path) / WEIGHTS)


def read_state_dict(path: os.PathLike | str) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch file (``.pt/.pth/.bin``), unwrapped and without 'module.'."""
    p = Path(path)
    if p.is_dir():
        if (p / META).is_file():
            return load_checkpoint(p)[1]
        raise CheckpointError(f"{p}: a directory but not an RS-CLIP checkpoint (no {META}); give a .safetensors/.pt file")
    return _unwrap(read_raw(p), p)


def read_raw(path: os.PathLike | str) -> Any:
    """The object stored in a weights file, as saved (wrappers such as {'state_dict': ...} kept).

    Torch files are read with ``weights_only=True``; ``argparse.Namespace`` is allowed because DINO and other
    training scripts store their arguments beside the weights (plain attributes, no code).
    """
    import argparse

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such checkpoint file; check the path")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(p), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{p}: not a readable safetensors file ({exc}); download or save it again") from exc
    if p.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        try:
            with torch.serialization.safe_globals([argparse.Namespace]):
                return torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle errors come in many types
            raise CheckpointError(
                f"{p}: cannot be read with torch.load(weights_only=True) ({str(exc).splitlines()[0]}); only plain tensor "
                "checkpoints are accepted (no pickled code): re-save it as a state dict or .safetensors"
            ) from exc
    raise CheckpointError(f"{p}: unknown checkpoint type {p.suffix!r}; use .safetensors, .pt, .pth or .bin")


def flatten_tensors(obj: Any, prefix: str = "", skip: tuple[str, ...] = ("optimizer", "scaler", "lr_scheduler", "opt")) -> dict[str, torch.Tensor]:
    """Every tensor in nested dicts, keyed by its dotted path ({'teacher': {'a.b': t}} -> 'teacher.a.b').

    Optimiser and scaler states (top-level keys in ``skip``) are left out: they hold no model weights; top-level
    wrappers ({'state_dict': ...}, {'model': ...}) add no prefix."""
    out: dict[str, torch.Tensor] = {}
    if isinstance(obj, torch.Tensor):
        out[prefix[:-1]] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(k, str) and not (not prefix and k in skip):
                out.update(flatten_tensors(v, "" if not prefix and k in _WRAPPER_KEYS else f"{prefix}{k}.", skip))
    return out


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    # Training scripts wrap weights in {'state_dict': ...} (open_clip), {'model': ...} (Paper A, with optimizer/scaler).
    for _ in range(3):
        if isinstance(obj, dict) and not _is_tensor_dict(obj):
            inner = next((obj[k] for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict) or not obj or not _is_tensor_dict(obj):
        raise CheckpointError(
            f"{path}: holds no state dict of tensors (top-level keys: {list(obj)[:8] if isinstance(obj, dict) else type(obj).__name__}); "
            "expected a state dict or one wrapped as {'state_dict': ...} / {'model': ...}"
        )
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def _is_tensor_dict(d: dict) -> bool:
    return bool(d) and all(isinstance(k, str) for k in d) and all(isinstance(v, torch.Tensor) for v in d.values())


def check_fits(
    own: dict[str, torch.Tensor],
    state: dict[str, torch.Tensor],
    source: os.PathLike | str,
    fix: str,
    *,
    allow_unexpected: bool = False,
    what: str = "the model",
) -> None:
    """Raise a CheckpointError naming the missing, unexpected and mis-shaped keys, and ``fix``."""
    missing = [k for k in own if k not in state]
    unexpected = [] if allow_unexpected else [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[:2]})")
        raise CheckpointError(f"{source}: does not fit {what}: {'; '.join(parts)}; {fix}")


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: os.PathLike | str) -> None:
    """Load strictly; on a mismatch say which keys and shapes differ, and what to check."""
    check_fits(model.state_dict(), state, source, "check that --model names the architecture the checkpoint was trained with")
    model.load_state_dict(state, strict=True)
