"""Dependency dialog: shows what is missing and installs it with pip in a QProcess (live log, no freeze)."""

from __future__ import annotations

from typing import Optional

from qgis.core import Qgis
from qgis.PyQt.QtCore import QProcess
from qgis.PyQt.QtGui import QFont
from qgis.PyQt.QtWidgets import QDialog, QHBoxLayout, QLabel, QPlainTextEdit, QPushButton, QVBoxLayout

from .. import deps
from .tasks import log


class DependencyDialog(QDialog):
    def __init__(self, iface=None, parent=None) -> None:
        super().__init__(parent or (iface.mainWindow() if iface else None))
        self.iface = iface
        self.process: Optional[QProcess] = None
        self.setWindowTitle("RS-CLIP – Python packages")
        self.resize(720, 420)
        self.target = deps.private_site_dir()
        self.gpu = deps.has_nvidia_gpu()
        root = QVBoxLayout(self)
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        root.addWidget(self.summary)
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setFont(QFont("monospace"))
        root.addWidget(self.log_view, 1)
        self.outcome = QLabel("")
        self.outcome.setWordWrap(True)
        root.addWidget(self.outcome)
        row = QHBoxLayout()
        row.addStretch(1)
        self.install_btn, close = QPushButton("Install"), QPushButton("Close")
        self.install_btn.clicked.connect(self.install)
        close.clicked.connect(self.close)
        row.addWidget(self.install_btn)
        row.addWidget(close)
        root.addLayout(row)
        self.refresh()

    def refresh(self) -> list:
        missing = deps.missing_packages()
        ort = deps.onnxruntime_package(self.gpu)
        self.summary.setText(
            f"{deps.describe(missing)}<br>NVIDIA GPU found: <b>{'yes' if self.gpu else 'no'}</b> "
            f"(ONNX Runtime package: {ort}).<br>Packages go to <tt>{self.target}</tt>; a constraints file frozen "
            "from QGIS's own packages keeps pip from replacing anything QGIS uses."
        )
        self.install_btn.setEnabled(bool(missing) and self.process is None)
        return missing

    def command(self) -> list[str]:
        missing = deps.missing_packages()
        constraints = deps.write_constraints(self.target.parent / "rsclip-constraints.txt", exclude=self.target)
        return deps.pip_install_command(missing, self.target, constraints, gpu=self.gpu)

    def install(self) -> None:
        cmd = self.command()
        self.target.mkdir(parents=True, exist_ok=True)
        self.log_view.appendPlainText("$ " + " ".join(cmd))
        self.process = QProcess(self)
        self.process.setProcessChannelMode(QProcess.MergedChannels)
        self.process.readyReadStandardOutput.connect(self._read)
        self.process.finished.connect(self._finished)
        self.process.errorOccurred.connect(lambda _e: self._finished(-1, None))
        self.install_btn.setEnabled(False)
        self.outcome.setText("installing… (QGIS stays usable)")
        self.process.start(cmd[0], cmd[1:])

    def _read(self) -> None:
        if self.process is not None:
            self.log_view.appendPlainText(bytes(self.process.readAllStandardOutput()).decode(errors="replace").rstrip())

    def _finished(self, code, _status) -> None:
        if self.process is None:
            return
        self._read()
        self.process = None
        deps.activate_private_site(self.target)
        missing = self.refresh()
        if code == 0 and not missing:
            text, level = "Installed. RS-CLIP is ready (restart QGIS if a package was already imported).", Qgis.Success
        else:
            text = (f"pip failed (exit {code}); the log above says why. Still missing: "
                    f"{', '.join(r.module for r in missing) or 'nothing'}. Fix: install them with your system's "
                    "package manager or the OSGeo4W shell, then restart QGIS.")
            level = Qgis.Critical
        self.outcome.setText(text)
        log(text + "\n" + self.log_view.toPlainText()[-4000:], level)
        if self.iface is not None:
            self.iface.messageBar().pushMessage("RS-CLIP", text, level=level, duration=10)
