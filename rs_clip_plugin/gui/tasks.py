"""QgsTask wrappers: engine jobs run in QGIS's task manager, never on the GUI thread.

As in Deepness: the job runs in ``run()`` (worker thread) with the engine's Progress mapped onto
``setProgress``/``isCanceled``; everything that touches layers or widgets happens in ``finished()``, which
QGIS calls on the main thread. Jobs pass the engine their final output folder; the engine stages the files
and publishes them only when the job completes (engine/atomic.py), so a failed or cancelled run leaves
neither a file nor a layer behind.
"""

from __future__ import annotations

import traceback
from typing import Any, Callable, Optional

from qgis.core import Qgis, QgsApplication, QgsMessageLog, QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from ..engine.progress import Cancelled, Progress

LOG_TAG = "RS-CLIP"


def log(message: str, level=Qgis.Info) -> None:
    QgsMessageLog.logMessage(message, LOG_TAG, level)


class EngineTask(QgsTask):
    """Runs ``job(progress) -> result`` in the background; ``on_done(result)`` / ``on_error(message)`` on the GUI thread."""

    message = pyqtSignal(str)  # the engine's progress text (e.g. "indexing layer X"), for status labels

    def __init__(
        self,
        description: str,
        job: Callable[[Progress], Any],
        on_done: Optional[Callable[[Any], None]] = None,
        on_error: Optional[Callable[[str], None]] = None,
        words: Optional[Callable[[BaseException], str]] = None,
    ) -> None:
        super().__init__(description, QgsTask.CanCancel)
        self.job = job
        self.words = words  # the front end's wording of an engine error (its field names, its layer names)
        self.on_done = on_done
        self.on_error = on_error
        self.result: Any = None
        self.error: Optional[str] = None
        self.was_cancelled = False
        self._last_message = ""

    def _update(self, fraction: float, msg: str) -> None:
        self.setProgress(100.0 * fraction)
        if msg and msg != self._last_message:
            self._last_message = msg
            self.message.emit(msg)

    def run(self) -> bool:
        progress = Progress(self._update, self.isCanceled)
        try:
            self.result = self.job(progress)
        except Cancelled:
            self.was_cancelled = True
            return False
        except Exception as exc:  # every failure is reported with its message
            from ..engine.errors import RSClipError

            self.error = self._word(exc)
            if isinstance(exc, (RSClipError, OSError)):
                # The user's to fix (a raster, a bundle, a full disk): one line says what and how; a traceback
                # would only bury it.
                log(f"{self.description()}: {self.error}", Qgis.Warning)
            else:  # a bug: keep everything needed to fix it
                log(f"{self.description()} failed: {self.error}\n{traceback.format_exc()}", Qgis.Critical)
            return False
        # A job that returned has published its outputs (the engine checks for a cancel up to the last step):
        # a cancel arriving now is too late to undo them, and saying "nothing was written" would be false.
        return True

    def _word(self, exc: BaseException) -> str:
        if self.words is not None:
            try:
                return self.words(exc)
            except Exception:  # wording must never hide the error itself
                pass
        return str(exc) or type(exc).__name__

    def finished(self, ok: bool) -> None:
        if ok:
            if self.on_done:
                try:
                    self.on_done(self.result)
                except Exception as exc:
                    log(f"{self.description()}: showing the result failed: {exc}\n{traceback.format_exc()}", Qgis.Critical)
                    if self.on_error:
                        self.on_error(f"showing the result failed: {exc}")
            return
        if self.was_cancelled or self.isCanceled():
            if self.on_error:
                self.on_error("cancelled; nothing was written")
            return
        if self.on_error:
            self.on_error(self.error or "failed (see the RS-CLIP log)")


def start(task: QgsTask) -> QgsTask:
    QgsApplication.taskManager().addTask(task)
    return task


def wait_for(task: QgsTask, timeout_s: float = 300.0) -> bool:
    """Tests and scripts: spin the event loop until a started task has ended (its finished() included).

    Returns True when it completed, False when it failed or was cancelled.
    """
    import time

    from qgis.PyQt.QtCore import QCoreApplication

    # The manager deletes a task soon after it ends: remember the outcome from its signals, and read the
    # status now in case it ended before we connected (a task cancelled while queued ends at once).
    outcome: dict[str, bool] = {}
    task.taskCompleted.connect(lambda: outcome.setdefault("ok", True))
    task.taskTerminated.connect(lambda: outcome.setdefault("ok", False))
    if task.status() == QgsTask.Complete:
        outcome.setdefault("ok", True)
    elif task.status() == QgsTask.Terminated:
        outcome.setdefault("ok", False)
    t0 = time.monotonic()
    while "ok" not in outcome:
        QCoreApplication.processEvents()
        time.sleep(0.01)
        if time.monotonic() - t0 > timeout_s:
            task.cancel()
            raise TimeoutError(f"{task.description()} did not finish within {timeout_s:.0f} s")
    QCoreApplication.processEvents()
    return outcome["ok"]
