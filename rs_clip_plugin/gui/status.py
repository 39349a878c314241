"""The 'where does it run' label shown wherever results are produced: GPU or CPU, and which."""

from __future__ import annotations

import re
from typing import Optional

from qgis.PyQt.QtWidgets import QLabel

from ..styling import provider_label


def available_text() -> str:
    """Where the next job will run, before any has (engine.runtime.available_devices)."""
    try:
        from ..engine.runtime import available_devices

        return available_devices()
    except Exception as exc:  # onnxruntime missing: say so instead of failing the dialog
        return f"ONNX Runtime is not available ({exc}); use RS-CLIP > Check Python packages"


class ProviderStatusLabel(QLabel):
    """Says where the last job ran (GPU or CPU, and which) — users of other plugins could never tell."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setObjectName("rsclip_provider_status")
        self.setWordWrap(True)
        self.provider: Optional[str] = None
        self.setText(f"Runs on: {available_text()}")

    def set_provider(self, provider: Optional[str], extra: str = "", device: Optional[str] = None,
                     precision: Optional[str] = None, mode: Optional[str] = None) -> None:
        """Where the last job ran, with the precision (fp32/int8/...) and, for a class map, the mode."""
        self.provider = provider
        how = ", ".join(x for x in (precision, f"{mode} mode" if mode else None) if x)
        self._short = provider_label(provider, device) + (f", {how}" if how else "")
        text = f"Ran on: <b>{self._short}</b>"
        self.setText(text + (f" — {extra}" if extra else ""))

    def short_text(self) -> str:
        """'CPU (…, 2 threads)' of the last job, for message bars; plain text."""
        return getattr(self, "_short", None) or re.sub("<[^>]+>", "", self.text())
