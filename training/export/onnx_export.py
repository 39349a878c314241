"""Encoders to ONNX files that describe themselves (``metadata_props``), with optional fp16 twins.

Graphs output *unnormalised* embeddings: the engine L2-normalises, so one graph serves cosine search
and anything that needs the raw projection.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from rs_clip_plugin.engine.bundle import EMBEDDING_OUTPUT, ONNX_META_PREFIX

OPSET = 17
FP16_KEEP_FP32_OPS = ("Transpose",)


class TextEncoder(torch.nn.Module):
    """``model.encode_text`` without normalisation, as a module ONNX export can trace."""

    def __init__(self, clip_model: torch.nn.Module):
        super().__init__()
        self.clip = clip_model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_text(input_ids, normalize=False)


class ImageEncoder(torch.nn.Module):
    """``model.encode_image`` without normalisation."""

    def __init__(self, clip_model: torch.nn.Module):
        super().__init__()
        self.clip = clip_model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(image, normalize=False)


@contextmanager
def mha_fastpath_disabled() -> Iterator[None]:
    """Turn off nn.MultiheadAttention's fused inference kernel for the block, restoring the previous setting.

    PyTorch takes that kernel (aten::_native_multi_head_attention, which has no ONNX symbolic) whenever no
    input needs a gradient, e.g. under no_grad or for a model whose parameters are all frozen.
    """
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def export_onnx(
    module: torch.nn.Module,
    example: torch.Tensor,
    path: Path,
    input_name: str,
    metadata: dict[str, Any],
) -> Path:
    """Trace ``module`` on ``example`` to ``path`` (opset 17, dynamic batch) and stamp ``metadata`` into it."""
    import onnx

    path = Path(path)
    module = module.eval()
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with mha_fastpath_disabled(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about python control flow on constant shapes
            torch.onnx.export(
                module,
                (example,),
                str(tmp),
                dynamo=False,
                opset_version=OPSET,
                input_names=[input_name],
                output_names=[EMBEDDING_OUTPUT],
                dynamic_axes={input_name: {0: "batch"}, EMBEDDING_OUTPUT: {0: "batch"}},
                do_constant_folding=True,
            )
        proto = onnx.load(str(tmp))
        set_metadata(proto, metadata)
        onnx.checker.check_model(proto)
        _save_atomic(proto, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def set_metadata(proto: Any, metadata: dict[str, Any]) -> None:
    """Write ``metadata`` as JSON values under ``ONNX_META_PREFIX`` keys (replacing ones already there)."""
    keep = [p for p in proto.metadata_props if not p.key.startswith(ONNX_META_PREFIX)]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key = f"{ONNX_META_PREFIX}{key}"
        entry.value = json.dumps(value, ensure_ascii=False)


def read_metadata(path: Path) -> dict[str, Any]:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    n = len(ONNX_META_PREFIX)
    return {p.key[n:]: json.loads(p.value) for p in proto.metadata_props if p.key.startswith(ONNX_META_PREFIX)}


def convert_fp16(src: Path, dst: Path, metadata: dict[str, Any]) -> Path:
    """Half-precision weights and compute, float32 inputs and outputs (drop-in for the fp32 file)."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    proto = onnx.load(str(src))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "values clipped to fp16 range" for -inf attention masks is expected
        # fp16 Transpose nodes crash ONNX Runtime 1.32's CPU layout optimiser (ORT_ENABLE_ALL segfaults at session
        # creation); kept in fp32 they cost two casts each and the graph loads everywhere.
        half = convert_float_to_float16(
            proto, keep_io_types=True, op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FP16_KEEP_FP32_OPS]
        )
    set_metadata(half, {**metadata, "precision": "fp16"})
    _save_atomic(half, dst)
    return dst


def _save_atomic(proto: Any, path: Path) -> None:
    import onnx

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        onnx.save(proto, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
