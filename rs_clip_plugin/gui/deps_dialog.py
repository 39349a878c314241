"""Dependency dialog: shows what is missing and installs it with pip in a QProcess (live log, no freeze)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from qgis.core import Qgis
from qgis.gui import QgsFileWidget
from qgis.PyQt.QtCore import QProcess, pyqtSignal
from qgis.PyQt.QtGui import QFont
from qgis.PyQt.QtWidgets import QDialog, QHBoxLayout, QLabel, QPlainTextEdit, QPushButton, QVBoxLayout

from .. import deps
from .tasks import log


class DependencyDialog(QDialog):
    installed = pyqtSignal()  # everything the engine needs is importable now (the plugin clears its warning)

    def __init__(self, iface=None, parent=None) -> None:
        super().__init__(parent or (iface.mainWindow() if iface else None))
        self.setObjectName("rsclip_deps_dialog")
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
        row.addWidget(QLabel("Offline: install from a folder of wheels"))
        self.wheels_widget = QgsFileWidget()
        self.wheels_widget.setObjectName("rsclip_deps_wheels")
        self.wheels_widget.setStorageMode(QgsFileWidget.GetDirectory)
        self.wheels_widget.setToolTip("A folder of .whl files for this Python (made elsewhere with `pip download`); "
                                      "leave empty to download from the package index")
        row.addWidget(self.wheels_widget, 1)
        root.addLayout(row)
        row = QHBoxLayout()
        row.addStretch(1)
        self.install_btn, close = QPushButton("Install"), QPushButton("Close")
        self.install_btn.setObjectName("rsclip_deps_install")
        self.install_btn.clicked.connect(lambda _checked=False: self.install())
        close.clicked.connect(lambda _checked=False: self.close())
        row.addWidget(self.install_btn)
        row.addWidget(close)
        root.addLayout(row)
        self.refresh()

    def refresh(self) -> list:
        missing = deps.missing_packages()
        ort = deps.onnxruntime_package(self.gpu)
        try:
            python = deps.python_executable()
        except RuntimeError as exc:
            python = str(exc)
        lines = [deps.describe(missing)]
        lines += [f"<b>{line}</b>" for line in deps.shadowed(missing)]
        hint = deps.system_package_hint(missing)
        if hint:
            lines.append(hint)
        lines += [
            f"NVIDIA GPU found: <b>{'yes' if self.gpu else 'no'}</b> (ONNX Runtime package: {ort}).",
            f"Rasters are read with: {deps.gdal_status()}.",
            f"Packages go to <tt>{self.target}</tt> for the Python QGIS runs (<tt>{python}</tt>); a constraints "
            "file frozen from QGIS's own packages keeps pip from replacing anything QGIS uses.",
        ]
        self.summary.setText("<br>".join(lines))
        installable = [r for r in missing if r.problem() == "missing"]
        self.install_btn.setEnabled(bool(installable) and self.process is None)
        return missing

    def command(self) -> list[str]:
        missing = [r for r in deps.missing_packages() if r.problem() == "missing"]
        constraints = deps.write_constraints(self.target.parent / "rsclip-constraints.txt", exclude=self.target)
        wheels = self.wheels_widget.filePath().strip()
        return deps.pip_install_command(missing, self.target, constraints, gpu=self.gpu,
                                        wheels=Path(wheels) if wheels else None)

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
            self.installed.emit()
        else:
            text = (f"pip failed (exit {code}); the log above says why. Still missing: "
                    f"{', '.join(r.module for r in missing) or 'nothing'}. Fix: install them with your system's "
                    "package manager or the OSGeo4W shell, then restart QGIS.")
            level = Qgis.Critical
        self.outcome.setText(text)
        log(text + "\n" + self.log_view.toPlainText()[-4000:], level)
        if self.iface is not None:
            self.iface.messageBar().pushMessage("RS-CLIP", text, level=level, duration=10)
