"""The 'which execution provider, which device' label shown wherever results are produced."""

from __future__ import annotations

from typing import Optional

from qgis.PyQt.QtWidgets import QLabel

from .layers import provider_label


def available_text() -> str:
    try:
        from ..engine.runtime import available_providers

        names = [p.replace("ExecutionProvider", "") for p in available_providers()]
    except Exception as exc:  # onnxruntime missing: say so instead of failing the dialog
        return f"ONNX Runtime not available ({exc}); use RS-CLIP > Check dependencies"
    gpu = "CUDA" in names or "TensorRT" in names
    return "available: " + ", ".join(names) + ("" if gpu else " (no GPU provider: install onnxruntime-gpu for CUDA)")


class ProviderStatusLabel(QLabel):
    """Says where the last job ran (CUDA / CPU and the device) — users of other plugins could never tell."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setWordWrap(True)
        self.provider: Optional[str] = None
        self.setText(f"Execution provider: {available_text()}")

    def set_provider(self, provider: Optional[str], extra: str = "", device: Optional[str] = None) -> None:
        self.provider = provider
        text = f"Execution provider: <b>{provider_label(provider, device)}</b>"
        self.setText(text + (f" — {extra}" if extra else ""))
