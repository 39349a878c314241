"""The one progress-and-cancel interface every long job takes.

The CLI adapts it to a progress bar, the plugin to ``QgsTask.setProgress``/``isCanceled`` and
Processing to ``QgsProcessingFeedback``. Jobs call ``update`` and check ``cancelled`` between batches;
on cancel they raise ``Cancelled`` after removing anything they had started to write.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Optional


class Cancelled(Exception):
    """The user cancelled; nothing was left behind."""


class Progress:
    """Base: silent, never cancelled. Subclass or pass callbacks."""

    def __init__(
        self,
        on_update: Optional[Callable[[float, str], None]] = None,
        is_cancelled: Optional[Callable[[], bool]] = None,
    ) -> None:
        self._on_update = on_update
        self._is_cancelled = is_cancelled

    def update(self, fraction: float, message: str = "") -> None:
        if self._on_update is not None:
            self._on_update(min(max(fraction, 0.0), 1.0), message)

    def cancelled(self) -> bool:
        return bool(self._is_cancelled and self._is_cancelled())

    def check(self) -> None:
        if self.cancelled():
            raise Cancelled("cancelled by the user")

    def sub(self, start: float, end: float) -> Progress:
        """A view of this progress mapping [0, 1] onto [start, end], sharing cancellation."""
        return Progress(lambda f, m: self.update(start + (end - start) * f, m), self.cancelled)


class ConsoleProgress(Progress):
    """A one-line progress bar on stderr (only when stderr is a terminal, or when forced)."""

    def __init__(self, label: str, enabled: Optional[bool] = None, width: int = 30) -> None:
        super().__init__()
        self.label = label
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.width = width
        self._last = 0.0
        self._t0 = time.monotonic()

    def update(self, fraction: float, message: str = "") -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if fraction < 1.0 and now - self._last < 0.1:
            return
        self._last = now
        filled = int(self.width * fraction)
        bar = "#" * filled + "-" * (self.width - filled)
        end = "\n" if fraction >= 1.0 else ""
        sys.stderr.write(f"\r{self.label} [{bar}] {fraction * 100:5.1f}% {now - self._t0:6.1f}s {message[:40]:40s}{end}")
        sys.stderr.flush()
