"""Does the ONNX file compute what the torch module computes? Same inputs through both, compared."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

FP32_MIN_COSINE = 0.9999
FP16_MIN_COSINE = 0.999


class ParityError(ValueError):
    """The exported graph disagrees with the torch model beyond the threshold."""


def ort_session(path: Path, threads: int = 1):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Row-wise cosine (minimum over rows) and the largest absolute difference."""
    a = reference.astype(np.float64)
    b = candidate.astype(np.float64)
    if a.shape != b.shape:
        raise ParityError(f"output shapes differ: torch {a.shape}, ONNX {b.shape}")
    cos = (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)
    return {"min_cosine": float(cos.min()), "max_abs_diff": float(np.abs(a - b).max())}


def check_parity(
    module: torch.nn.Module,
    onnx_path: Path,
    input_name: str,
    inputs: torch.Tensor,
    min_cosine: float = FP32_MIN_COSINE,
) -> dict[str, float]:
    """Run ``inputs`` through ``module`` and ``onnx_path``; raise ParityError below ``min_cosine``."""
    with torch.no_grad():
        ref = module.eval()(inputs).float().cpu().numpy()
    got = ort_session(onnx_path).run(None, {input_name: inputs.cpu().numpy()})[0]
    figures = compare(ref, got)
    if not np.isfinite(got).all() or figures["min_cosine"] < min_cosine:
        raise ParityError(
            f"{Path(onnx_path).name}: ONNX Runtime output differs from torch (min cosine {figures['min_cosine']:.6f} < "
            f"{min_cosine}, max abs diff {figures['max_abs_diff']:.3g}); the export is wrong, do not ship it"
        )
    return figures


def check_parity_outputs(
    module: torch.nn.Module,
    onnx_path: Path,
    input_name: str,
    inputs: torch.Tensor,
    names: Sequence[str],
    min_cosine: float = FP32_MIN_COSINE,
) -> dict[str, dict[str, float]]:
    """``check_parity`` for a module with several outputs (a tuple, in the order of ``names``, which are the
    ONNX output names): figures per output, cosine taken over the last axis (per token for [B, N, D])."""
    with torch.no_grad():
        refs = [r.float().cpu().numpy() for r in module.eval()(inputs)]
    gots = ort_session(onnx_path).run(list(names), {input_name: inputs.cpu().numpy()})
    out: dict[str, dict[str, float]] = {}
    for name, ref, got in zip(names, refs, gots):
        figures = compare(ref, got)
        if not np.isfinite(got).all() or figures["min_cosine"] < min_cosine:
            raise ParityError(
                f"{Path(onnx_path).name}: ONNX Runtime output {name!r} differs from torch (min cosine "
                f"{figures['min_cosine']:.6f} < {min_cosine}, max abs diff {figures['max_abs_diff']:.3g}); the "
                "export is wrong, do not ship it"
            )
        out[name] = figures
    return out


def random_images(n: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    """Encoder-input-like values: normalised inputs are roughly N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, channels, size, size, generator=g)
