"""Model manager dialog: installed bundles, add (folder / .zip / URL with sha256), remove, choose the default."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from qgis.core import Qgis
from qgis.PyQt.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QMessageBox,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from ..engine.bundle import BundleError
from ..models import ModelStore
from .tasks import EngineTask, log, start

COLUMNS = ["Name", "Default", "Modalities", "Languages", "Size", "Provenance"]


class ModelManagerDialog(QDialog):
    def __init__(self, iface=None, store: Optional[ModelStore] = None, parent=None) -> None:
        super().__init__(parent or (iface.mainWindow() if iface else None))
        self.iface = iface
        self.store = store or ModelStore()
        self.task: Optional[EngineTask] = None
        self.setWindowTitle("RS-CLIP – Model manager")
        self.resize(760, 360)
        root = QVBoxLayout(self)
        root.addWidget(QLabel(f"Bundles installed in {self.store.root}"))
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.horizontalHeader().setSectionResizeMode(len(COLUMNS) - 1, QHeaderView.Stretch)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        root.addWidget(self.table, 1)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        root.addWidget(self.message)
        row = QHBoxLayout()
        for text, slot in (("Add folder…", self.add_folder), ("Add .zip…", self.add_zip), ("Add from URL…", self.add_url),
                           ("Remove", self.remove_selected), ("Set as default", self.default_selected)):
            b = QPushButton(text)
            b.clicked.connect(slot)
            row.addWidget(b)
        row.addStretch(1)
        close = QPushButton("Close")
        close.clicked.connect(self.close)
        row.addWidget(close)
        root.addLayout(row)
        self.refresh()

    def refresh(self) -> None:
        self.table.setRowCount(0)
        for b in self.store.installed():
            r = self.table.rowCount()
            self.table.insertRow(r)
            name = b.name + (" (built-in)" if b.builtin else "")
            for c, text in enumerate([name, "✔" if b.is_default else "", ", ".join(b.modalities),
                                      ", ".join(b.languages), b.size_text, b.provenance_text]):
                item = QTableWidgetItem(text)
                item.setToolTip(str(b.path))
                self.table.setItem(r, c, item)
            self.table.item(r, 0).setData(256, b.name)  # Qt.UserRole

    def selected_name(self) -> Optional[str]:
        rows = {i.row() for i in self.table.selectedIndexes()}
        return self.table.item(rows.pop(), 0).data(256) if rows else None

    def _report(self, text: str, ok: bool = True) -> None:
        self.message.setText(text if ok else f"<span style='color:#b00'>{text}</span>")
        log(text, Qgis.Info if ok else Qgis.Warning)
        if self.iface is not None:
            self.iface.messageBar().pushMessage("RS-CLIP", text, level=Qgis.Success if ok else Qgis.Warning, duration=6)

    def _install(self, what: str, fn) -> None:
        # Hash checks and copying take seconds for real models: run in the background.
        def done(b):
            self.refresh()
            self._report(f"installed {b.name} ({', '.join(b.modalities)}; {b.size_text})")

        self.task = EngineTask(f"RS-CLIP: install {what}", lambda _p: fn(), done, lambda m: self._report(m, ok=False))
        start(self.task)

    def add_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Bundle folder (holds manifest.json)")
        if folder:
            self._install(Path(folder).name, lambda: self.store.add_folder(Path(folder)))

    def add_zip(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Bundle archive", "", "Bundle (*.zip)")
        if path:
            self._install(Path(path).name, lambda: self.store.add_zip(Path(path)))

    def add_url(self) -> None:
        url, ok = QInputDialog.getText(self, "Add bundle from URL", "Address of the bundle .zip:")
        if not ok or not url.strip():
            return
        sha, ok = QInputDialog.getText(self, "Add bundle from URL", "Its sha256 (from the publisher; strongly advised):")
        if not ok:
            return
        self._install(url, lambda: self.store.add_url(url.strip(), sha256=sha.strip() or None))

    def remove_selected(self) -> None:
        name = self.selected_name()
        if not name:
            return
        if QMessageBox.question(self, "Remove bundle", f"Remove the bundle {name!r} from this profile?") != QMessageBox.Yes:
            return
        try:
            self.store.remove(name)
            self._report(f"removed {name}")
        except BundleError as exc:
            self._report(str(exc), ok=False)
        self.refresh()

    def default_selected(self) -> None:
        name = self.selected_name()
        if not name:
            return
        try:
            self.store.set_default(name)
            self._report(f"{name} is now the default bundle")
        except BundleError as exc:
            self._report(str(exc), ok=False)
        self.refresh()
