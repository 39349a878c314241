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
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from ..engine.bundle import BundleError
from ..installed_bundles import ModelStore
from .outputs import field_message
from .tasks import EngineTask, log, start

# Store parameter -> the label of the field that sets it: a refused install names what to change here.
FIELDS = {"sha256": "sha256"}
COLUMNS = ["Name", "Default", "Modalities", "Languages", "Size", "Provenance"]
DEMO_NOTE = (
    "<b>The built-in model is a demonstration</b>: a tiny model trained on a few sample images so that every "
    "RS-CLIP tool works out of the box, offline. It is not an accurate land-cover model. For real work add a "
    "real model bundle: a folder or .zip exported with <code>rsclip-train export</code>, or the address of a "
    "published bundle .zip with its sha256."
)


class ModelManagerDialog(QDialog):
    def __init__(self, iface=None, store: Optional[ModelStore] = None, parent=None) -> None:
        super().__init__(parent or (iface.mainWindow() if iface else None))
        self.setObjectName("rsclip_model_manager")
        self.iface = iface
        self.store = store or ModelStore()
        self.task: Optional[EngineTask] = None
        self.setWindowTitle("RS-CLIP – Model manager")
        self.resize(800, 420)
        root = QVBoxLayout(self)
        note = QLabel(DEMO_NOTE)
        note.setObjectName("rsclip_models_note")
        note.setWordWrap(True)
        root.addWidget(note)
        root.addWidget(QLabel(f"Bundles installed in {self.store.root}"))
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setObjectName("rsclip_models_table")
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.horizontalHeader().setSectionResizeMode(len(COLUMNS) - 1, QHeaderView.Stretch)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeToContents)  # names in full
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        root.addWidget(self.table, 1)
        # A typed source works like a browsed one: power users paste paths and addresses.
        row = QHBoxLayout()
        self.source_edit = QLineEdit()
        self.source_edit.setObjectName("rsclip_models_source")
        self.source_edit.setPlaceholderText("bundle folder, bundle .zip, or https:// address of a bundle .zip")
        self.sha_edit = QLineEdit()
        self.sha_edit.setObjectName("rsclip_models_sha256")
        # Checked for .zip files and addresses alike (a folder has no single file to hash: its manifest's
        # per-file hashes are checked instead).
        self.sha_edit.setPlaceholderText("optional: the .zip's checksum from the publisher")
        self.sha_edit.setToolTip("sha256 of the bundle .zip (file or address); a file that differs is refused")
        sha_label = QLabel(FIELDS["sha256"])
        sha_label.setBuddy(self.sha_edit)
        browse_dir, browse_zip = QPushButton("Folder…"), QPushButton(".zip…")
        browse_dir.setObjectName("rsclip_models_browse_folder")
        browse_zip.setObjectName("rsclip_models_browse_zip")
        browse_dir.clicked.connect(lambda _checked=False: self.browse_folder())
        browse_zip.clicked.connect(lambda _checked=False: self.browse_zip())
        self.add_btn = QPushButton("Add")
        self.add_btn.setObjectName("rsclip_models_add")
        self.add_btn.clicked.connect(lambda _checked=False: self.add_source())
        row.addWidget(self.source_edit, 3)
        row.addWidget(browse_dir)
        row.addWidget(browse_zip)
        row.addWidget(sha_label)
        row.addWidget(self.sha_edit, 2)
        row.addWidget(self.add_btn)
        root.addLayout(row)
        self.message = QLabel("")
        self.message.setObjectName("rsclip_models_message")
        self.message.setWordWrap(True)
        root.addWidget(self.message)
        row = QHBoxLayout()
        for text, slot, name in (("Remove", self.remove_selected, "rsclip_models_remove"),
                                 ("Set as default", self.default_selected, "rsclip_models_default")):
            b = QPushButton(text)
            b.setObjectName(name)
            b.clicked.connect(lambda _checked=False, slot=slot: slot())
            row.addWidget(b)
        row.addStretch(1)
        close = QPushButton("Close")
        close.setObjectName("rsclip_models_close")
        close.clicked.connect(lambda _checked=False: self.close())
        row.addWidget(close)
        root.addLayout(row)
        self.refresh()

    def refresh(self) -> None:
        self.table.setRowCount(0)
        for b in self.store.installed():
            r = self.table.rowCount()
            self.table.insertRow(r)
            name = b.name + (" (built-in demonstration)" if b.builtin else "")
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
            self.source_edit.clear()
            self.sha_edit.clear()
            self.refresh()
            self._report(f"installed {b.name} ({', '.join(b.modalities)}; {b.size_text})")

        self.task = EngineTask(f"RS-CLIP: install {what}", lambda _p: fn(), done, lambda m: self._report(m, ok=False),
                               words=lambda exc: field_message(exc, FIELDS))
        start(self.task)

    def browse_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Bundle folder (holds manifest.json)")
        if folder:
            self.source_edit.setText(folder)

    def browse_zip(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Bundle archive", "", "Bundle (*.zip)")
        if path:
            self.source_edit.setText(path)

    def add_source(self) -> None:
        """Install what the source field names: an address, a .zip or a folder."""
        source, sha = self.source_edit.text().strip(), self.sha_edit.text().strip() or None
        if not source:
            self._report("type or browse a bundle folder, .zip or address in the field above ‘Add’", ok=False)
            return
        if source.lower().startswith(("http://", "https://")):
            self._install(source, lambda: self.store.add_url(source, sha256=sha))
        elif source.lower().endswith(".zip"):
            self._install(Path(source).name, lambda: self.store.add_zip(Path(source), sha256=sha))
        elif sha:  # a folder has no one file to hash: a typed checksum must not be silently ignored
            self._report(f"‘{FIELDS['sha256']}’ checks a bundle .zip or address, not a folder (whose manifest "
                         f"hashes each file): clear ‘{FIELDS['sha256']}’ or choose the .zip", ok=False)
        else:
            self._install(Path(source).name, lambda: self.store.add_folder(Path(source)))

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
