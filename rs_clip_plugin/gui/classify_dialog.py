"""'Classify layer by prompt': choose a raster, type classes (or a preset), run the engine in a QgsTask."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from qgis.core import (
    Qgis,
    QgsCoordinateTransform,
    QgsMapLayerProxyModel,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
)
from qgis.gui import QgsColorButton, QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QColor
from qgis.PyQt.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDialog,
    QDoubleSpinBox,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..engine.bands import MODALITIES
from ..engine.classes import UNKNOWN
from ..engine.options import LABEL_MODES, SYNONYM_MERGES, RasterOptions, RunOptions, TilingOptions
from ..engine.refine import REFINE_METHODS
from ..engine.runtime import PRECISION_CHOICES
from ..installed_bundles import ModelStore
from ..presets import PRESETS, preset_classes, preset_languages
from ..styling import add_classification_layers
from .bundle_combo import chosen_bundle_is_dense, fill_bundle_combo, select_bundle
from .forms import PRECISION_TIP, check_and_spin, choice_row
from .outputs import field_message, output_root, push_result, remember_output_root, unique_result_dir
from .status import ProviderStatusLabel
from .tasks import EngineTask, log, start

SENSORS = ["auto", *MODALITIES]  # from the band tables: one list for the engine, the CLI, Processing and here
EXTENTS = ["Whole layer", "Current map canvas", "Selected features"]
MODES = ["auto", *LABEL_MODES]
SYNONYMS = ["auto", *SYNONYM_MERGES]
REFINES = ["none", *REFINE_METHODS]
REFINE_TIP = ("pamr: move the dense labels' edges onto the image's edges (field and river borders); "
              "a little slower")
PRECISIONS = list(PRECISION_CHOICES)
MIN_CLASS_ROWS = 6
AREA_ROWS = 5  # rows of the area table shown before it scrolls
# Engine parameter -> the label of the field that sets it: errors name what to change in this dialog.
FIELDS = {
    "sensor": "Sensor", "modality": "Sensor", "bands": "Band mapping", "bundle": "Model bundle",
    "lang": "Language", "classes": "Classes", "threshold": "Threshold", "tile_size_m": "Tile size",
    "overlap": "Overlap", "extent": "Extent", "out": "Output folder", "overwrite": "Output folder",
    "s2_offset": "Band mapping", "sar_units": "Sensor", "precision": "Precision", "mode": "Mode", "mmu_ha": "Polygons",
    "background": "Background", "synonyms": "Synonyms", "refine": "Refine edges",
}


def table_height(table: QTableWidget, rows: int) -> int:
    """Pixels a table needs to show its header and ``rows`` rows without scrolling."""
    header = table.horizontalHeader().sizeHint().height()
    return header + rows * table.verticalHeader().defaultSectionSize() + 2 * table.frameWidth()


class ClassifyDialog(QDialog):
    def __init__(self, iface=None, store: Optional[ModelStore] = None, parent=None) -> None:
        super().__init__(parent or (iface.mainWindow() if iface else None))
        self.setObjectName("rsclip_classify_dialog")
        self.iface = iface
        self.store = store or ModelStore()
        self.task: Optional[EngineTask] = None
        self.result = None
        self.result_layers: tuple = ()
        self._detected_bands: list[str] = []
        self.setWindowTitle("RS-CLIP – Classify layer by prompt")
        self.resize(640, 780)
        self._build()
        self.refresh_bundles()
        self.select_active_layer()
        self.on_layer_changed()
        self.load_preset()  # the class table shows the preset the combo shows, never an empty table

    # -- layout -----------------------------------------------------------------------------------------
    def _build(self) -> None:
        # Inputs scroll in the upper part, which takes the spare height; results (progress, provider, message,
        # area table) sit below it at a bounded height, so showing results never scrolls the layer choice away.
        outer = QVBoxLayout(self)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.NoFrame)
        body = QWidget()
        root = QVBoxLayout(body)
        root.setContentsMargins(0, 0, 0, 0)
        scroll.setWidget(body)
        outer.addWidget(scroll, 1)
        form = QFormLayout()
        self.layer_combo = QgsMapLayerComboBox()
        self.layer_combo.setObjectName("rsclip_layer_combo")
        self.layer_combo.setFilters(QgsMapLayerProxyModel.RasterLayer)
        self.layer_combo.layerChanged.connect(self.on_layer_changed)
        form.addRow("Raster layer", self.layer_combo)
        self.detected_label = QLabel("—")
        self.detected_label.setObjectName("rsclip_detected")
        self.detected_label.setWordWrap(True)
        form.addRow("Detected", self.detected_label)
        self.sensor_combo = QComboBox()
        self.sensor_combo.setObjectName("rsclip_sensor_combo")
        self.sensor_combo.addItems(SENSORS)
        self.sensor_combo.setToolTip("'rgb' runs the bundle's RGB encoder on the true-colour bands of any raster")
        form.addRow("Sensor", self.sensor_combo)
        self.bands_edit = QLineEdit()
        self.bands_edit.setObjectName("rsclip_bands_edit")
        self.bands_edit.setPlaceholderText("band names in band order, e.g. B02,B03,B04,B08 or blue,green,red,nir")
        form.addRow("Band mapping", self.bands_edit)
        self.bundle_combo = QComboBox()
        self.bundle_combo.setObjectName("rsclip_bundle_combo")
        form.addRow("Model bundle", self.bundle_combo)
        root.addLayout(form)

        box = QGroupBox("Classes")
        bl = QVBoxLayout(box)
        row = QHBoxLayout()
        self.preset_combo = QComboBox()
        self.preset_combo.setObjectName("rsclip_preset_combo")
        self.preset_combo.addItems(list(PRESETS))
        self.preset_combo.currentIndexChanged.connect(self._preset_changed)
        self.lang_combo = QComboBox()
        self.lang_combo.setObjectName("rsclip_lang_combo")
        self.lang_combo.addItems(preset_languages(next(iter(PRESETS))))
        self.preset_btn = QPushButton("Load preset")
        self.preset_btn.setObjectName("rsclip_load_preset")
        self.preset_btn.clicked.connect(lambda _checked=False: self.load_preset())
        row.addWidget(QLabel("Preset"))
        row.addWidget(self.preset_combo, 1)
        row.addWidget(QLabel("Language"))
        row.addWidget(self.lang_combo)
        row.addWidget(self.preset_btn)
        bl.addLayout(row)
        self.classes_table = QTableWidget(0, 2)
        self.classes_table.setObjectName("rsclip_classes_table")
        self.classes_table.setHorizontalHeaderLabels(["Class (synonyms as forest|woodland)", "Colour"])
        self.classes_table.horizontalHeader().setSectionResizeMode(0, QHeaderView.Stretch)
        self.classes_table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.classes_table.setMinimumHeight(table_height(self.classes_table, MIN_CLASS_ROWS))
        bl.addWidget(self.classes_table, 1)
        row = QHBoxLayout()
        add_btn, del_btn = QPushButton("Add class"), QPushButton("Remove selected")
        add_btn.setObjectName("rsclip_add_class")
        del_btn.setObjectName("rsclip_remove_class")
        add_btn.clicked.connect(lambda _checked=False: self.add_class_row(""))
        del_btn.clicked.connect(lambda _checked=False: self.remove_selected())
        row.addWidget(add_btn)
        row.addWidget(del_btn)
        row.addStretch(1)
        bl.addLayout(row)
        root.addWidget(box, 1)

        opts = QFormLayout()
        self.extent_combo = QComboBox()
        self.extent_combo.setObjectName("rsclip_extent_combo")
        self.extent_combo.addItems(EXTENTS)
        opts.addRow("Extent", self.extent_combo)
        self.tile_spin = QDoubleSpinBox()
        self.tile_spin.setObjectName("rsclip_tile_spin")
        self.tile_spin.setRange(0, 100000)
        self.tile_spin.setSuffix(" m")
        self.tile_spin.setSpecialValueText("bundle default")
        opts.addRow("Tile size", self.tile_spin)
        self.overlap_spin = QDoubleSpinBox()
        self.overlap_spin.setObjectName("rsclip_overlap_spin")
        self.overlap_spin.setRange(0, 0.9)
        self.overlap_spin.setSingleStep(0.25)
        opts.addRow("Overlap", self.overlap_spin)
        self.polygons_check, self.mmu_spin = check_and_spin(
            opts, "Polygons", "classes.gpkg, merging patches under", "rsclip_polygons_check", "rsclip_mmu_spin",
            (0, 10000), 0.0)
        self.polygons_check.setChecked(True)  # analysts want the vector layer with names and areas
        self.mmu_spin.setDecimals(2)
        self.mmu_spin.setSuffix(" ha")
        self.mmu_spin.setSpecialValueText("no minimum")
        self.mode_combo = choice_row(opts, "Mode", "rsclip_mode_combo", MODES,
                                     "dense: a label per pixel from the encoder's patch tokens (when the bundle has "
                                     "them); tile: one label per tile; auto: dense when possible")
        self.refine_combo = choice_row(opts, "Refine edges", "rsclip_refine_combo", REFINES, REFINE_TIP)
        self.mode_combo.currentIndexChanged.connect(self._update_refine)
        self.bundle_combo.currentIndexChanged.connect(self._update_refine)
        self.precision_combo = choice_row(opts, "Precision", "rsclip_precision_combo", PRECISIONS, PRECISION_TIP)
        self.threshold_check, self.threshold_spin = check_and_spin(
            opts, "Threshold", "'unknown' below", "rsclip_threshold_check", "rsclip_threshold_spin", (0, 1), 0.3)
        self.threshold_spin.setSingleStep(0.05)
        self.background_edit = QLineEdit()
        self.background_edit.setObjectName("rsclip_background_edit")
        self.background_edit.setPlaceholderText("optional, e.g. cloud;shadow")
        self.background_edit.setToolTip("Prompts that compete with the classes; the pixels they win become "
                                        "'background / unknown', like those below the threshold (SegEarth-OV)")
        opts.addRow("Background", self.background_edit)
        self.synonyms_combo = choice_row(opts, "Synonyms", "rsclip_synonyms_combo", SYNONYMS,
                                         "How a class's synonyms (forest|woodland) are merged: mean (one averaged "
                                         "prompt) or max (the best-matching one); auto: max, measured better")
        self.out_widget = QgsFileWidget()
        self.out_widget.setObjectName("rsclip_output_folder")
        self.out_widget.setStorageMode(QgsFileWidget.GetDirectory)
        self.out_widget.setFilePath(str(output_root()))
        self.out_widget.fileChanged.connect(remember_output_root)  # QGIS remembers the user's choice
        opts.addRow("Output folder", self.out_widget)
        root.addLayout(opts)

        results = QWidget()
        rl = QVBoxLayout(results)
        rl.setContentsMargins(0, 0, 0, 0)
        self.progress = QProgressBar()
        self.progress.setObjectName("rsclip_classify_progress")
        self.progress.setRange(0, 100)
        rl.addWidget(self.progress)
        self.status = ProviderStatusLabel()
        rl.addWidget(self.status)
        self.message_label = QLabel("")
        self.message_label.setObjectName("rsclip_classify_message")
        self.message_label.setWordWrap(True)
        self.message_label.setTextInteractionFlags(Qt.TextBrowserInteraction)
        self.message_label.setOpenExternalLinks(True)
        rl.addWidget(self.message_label)
        self.area_table = QTableWidget(0, 3)
        self.area_table.setObjectName("rsclip_area_table")
        self.area_table.setHorizontalHeaderLabels(["Class", "Area (ha)", "Share"])
        self.area_table.horizontalHeader().setSectionResizeMode(0, QHeaderView.Stretch)
        self.area_table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.area_table.setMinimumHeight(table_height(self.area_table, 3))
        self.area_table.setVisible(False)
        rl.addWidget(self.area_table)
        outer.addWidget(results)

        row = QHBoxLayout()
        row.addStretch(1)
        self.run_btn, self.cancel_btn, close_btn = QPushButton("Classify"), QPushButton("Cancel"), QPushButton("Close")
        self.run_btn.setObjectName("rsclip_classify_run")
        self.cancel_btn.setObjectName("rsclip_classify_cancel")
        close_btn.setObjectName("rsclip_classify_close")
        self.run_btn.setDefault(True)
        self.cancel_btn.setEnabled(False)
        # clicked(bool) would hand Qt's 'checked' flag to run()'s first parameter: never connect run directly.
        self.run_btn.clicked.connect(lambda _checked=False: self.run())
        self.cancel_btn.clicked.connect(lambda _checked=False: self.cancel())
        close_btn.clicked.connect(lambda _checked=False: self.close())
        for b in (self.run_btn, self.cancel_btn, close_btn):
            row.addWidget(b)
        outer.addLayout(row)

    # -- inputs -----------------------------------------------------------------------------------------
    def refresh_bundles(self) -> None:
        fill_bundle_combo(self.bundle_combo, self.store, show_modalities=True)
        self._update_refine()

    def set_bundle_path(self, path: Path) -> None:
        """Select (adding it when missing) a bundle folder or .zip."""
        select_bundle(self.bundle_combo, path)
        self._update_refine()  # also when the path is the entry already selected (no index change)

    def select_active_layer(self) -> None:
        """Start on the layer the user is working on (the active one), not the first in the project."""
        active = self.iface.activeLayer() if self.iface is not None else None
        if isinstance(active, QgsRasterLayer):
            self.layer_combo.setLayer(active)

    def showEvent(self, event) -> None:
        if self.task is None:
            self.select_active_layer()
        super().showEvent(event)

    def on_layer_changed(self, *_args) -> None:
        layer = self.layer_combo.currentLayer()
        self._detected_bands = []
        if not isinstance(layer, QgsRasterLayer):
            self.detected_label.setText("choose a raster layer")
            return
        source = layer.source().split("|")[0]
        try:
            from ..engine.raster import open_source

            with open_source(source) as src:
                self._detected_bands = list(src.band_names)
                res = f"{src.res_m:.0f} m" if src.res_m else "not georeferenced"
                self.detected_label.setText(
                    f"{src.sensor}, {len(src.band_names)} bands ({', '.join(src.band_names)}), {res}"
                )
        except Exception as exc:  # the user can still fix it with sensor + band mapping
            self.detected_label.setText(f"not detected: {self.words(exc, layer)}")
        self.bands_edit.setText(",".join(self._detected_bands))

    def refine_problem(self) -> Optional[str]:
        """Why 'Refine edges' cannot apply (it refines dense labels): Mode asks for one label per tile, or no
        encoder of the chosen bundle has dense outputs; else None. Which encoder reads the layer (and int8) is
        settled by the run: when that gives tile labels, the engine's error names 'Refine edges'."""
        if self.mode_combo.currentText() == "tile":
            return "Mode ‘tile’ gives one label per tile: there are no dense labels to refine; choose Mode auto or dense"
        if chosen_bundle_is_dense(self.bundle_combo) is False:  # unknown (e.g. a broken bundle): the run says why
            return (f"the encoders of bundle {Path(self.bundle_combo.currentData()).name} have no dense outputs, so "
                    "it labels per tile; re-export it with rsclip-train export (dense on by default) to refine edges")
        return None

    def _update_refine(self, *_args) -> None:
        """Grey 'Refine edges' out, saying why in its tooltip, while it cannot apply."""
        problem = self.refine_problem()
        self.refine_combo.setEnabled(problem is None)
        self.refine_combo.setToolTip(REFINE_TIP if problem is None else f"{REFINE_TIP}\nNot available: {problem}")

    def refine(self) -> str:
        """The refinement the job gets: none while the combo is greyed out (its shown value does not count)."""
        return self.refine_combo.currentText() if self.refine_combo.isEnabled() else "none"

    def words(self, exc: BaseException, layer: Optional[QgsRasterLayer] = None) -> str:
        """An engine error in this dialog's words: field labels for parameters, the layer's name for its file."""
        paths = [(layer.source().split("|")[0], layer.name())] if layer is not None else []
        return field_message(exc, FIELDS, paths)

    def _preset_changed(self, *_args) -> None:
        current = self.lang_combo.currentText()
        self.lang_combo.clear()
        self.lang_combo.addItems(preset_languages(self.preset_combo.currentText()))
        if current:
            self.lang_combo.setCurrentText(current)
        self.load_preset()

    def add_class_row(self, name: str, colour: Optional[str] = None) -> None:
        r = self.classes_table.rowCount()
        self.classes_table.insertRow(r)
        self.classes_table.setItem(r, 0, QTableWidgetItem(name))
        btn = QgsColorButton()
        btn.setColor(QColor(colour or "#808080"))
        btn.setShowMenu(False)
        self.classes_table.setCellWidget(r, 1, btn)

    def remove_selected(self) -> None:
        for r in sorted({i.row() for i in self.classes_table.selectedIndexes()}, reverse=True):
            self.classes_table.removeRow(r)

    def set_classes(self, names: list[str], colours: Optional[list[str]] = None) -> None:
        from ..engine.classes import class_colours

        colours = colours or class_colours(names)
        self.classes_table.setRowCount(0)
        for name, colour in zip(names, colours):
            self.add_class_row(name, colour)

    def load_preset(self) -> None:
        try:
            self.set_classes(preset_classes(self.preset_combo.currentText(), self.lang_combo.currentText()))
        except ValueError as exc:
            self.show_error(str(exc))

    def classes(self) -> list[tuple[str, str]]:
        out = []
        for r in range(self.classes_table.rowCount()):
            item = self.classes_table.item(r, 0)
            name = item.text().strip() if item else ""
            if name:
                out.append((name, self.classes_table.cellWidget(r, 1).color().name()))
        return out

    def extent(self, layer: QgsRasterLayer) -> Optional[tuple[float, float, float, float]]:
        """The chosen extent in the layer's CRS (None = whole layer)."""
        choice = self.extent_combo.currentIndex()
        if choice == 0 or self.iface is None:
            return None
        if choice == 1:
            canvas = self.iface.mapCanvas()
            rect, crs = canvas.extent(), canvas.mapSettings().destinationCrs()
        else:
            vl = self.iface.activeLayer()
            if not isinstance(vl, QgsVectorLayer) or vl.selectedFeatureCount() == 0:
                raise ValueError("no features selected: select features in the active vector layer, or choose another extent")
            rect, crs = vl.boundingBoxOfSelected(), vl.crs()
        if crs != layer.crs():
            rect = QgsCoordinateTransform(crs, layer.crs(), QgsProject.instance()).transformBoundingBox(rect)
        rect = rect.intersect(layer.extent())
        if rect.isEmpty():
            raise ValueError("the chosen extent does not overlap the layer; pan the map onto the layer or choose 'Whole layer'")
        return (rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum())

    # -- running ----------------------------------------------------------------------------------------
    def run(self, extent_override: Optional[QgsRectangle] = None) -> Optional[EngineTask]:
        """Start the job; returns the task (tests wait on it). The Classify button calls this with no argument."""
        from ..engine.bundle import load_bundle
        from ..engine.classify import classify_raster

        layer = self.layer_combo.currentLayer()
        try:
            if not isinstance(layer, QgsRasterLayer):
                raise ValueError("choose a raster layer to classify in ‘Raster layer’")
            classes = self.classes()
            if not classes:
                raise ValueError("no classes: type at least two class names in ‘Classes’, or load a preset")
            bundle_path = self.bundle_combo.currentData()
            bundle = load_bundle(self.store.resolve(bundle_path or ""))
            if extent_override is not None:
                extent = (extent_override.xMinimum(), extent_override.yMinimum(),
                          extent_override.xMaximum(), extent_override.yMaximum())
            else:
                extent = self.extent(layer)
        except Exception as exc:
            self.show_error(self.words(exc, layer if isinstance(layer, QgsRasterLayer) else None))
            return None
        sensor = self.sensor_combo.currentText()
        bands = [b.strip() for b in self.bands_edit.text().split(",") if b.strip()]
        try:  # the engine's option objects, built once from the fields (they check the values)
            raster = RasterOptions(sensor=None if sensor == "auto" else sensor,
                                   bands=bands if bands and bands != self._detected_bands else None)
            mode = self.mode_combo.currentText()
            tiling = TilingOptions(tile_size_m=self.tile_spin.value() or None, overlap=self.overlap_spin.value(),
                                   extent=extent, mode=None if mode == "auto" else mode)
            run = RunOptions(precision=self.precision_combo.currentText())
        except Exception as exc:
            self.show_error(self.words(exc, layer))
            return None
        kwargs = dict(
            bundle=bundle,
            lang=self.lang_combo.currentText() or "en",
            threshold=self.threshold_spin.value() if self.threshold_check.isChecked() else None,
            raster=raster,
            tiling=tiling,
            run=run,
            polygons=self.polygons_check.isChecked(),
            mmu_ha=self.mmu_spin.value(),
            background=self.background_edit.text().strip() or None,
            synonyms=self.synonyms_combo.currentText(),
            refine=self.refine(),
        )
        source = layer.source().split("|")[0]
        names = [n for n, _ in classes]
        colours = {n.split("|")[0].strip(): c for n, c in classes}
        title = f"{layer.name()} ({time.strftime('%H%M%S')})"
        out_root = Path(self.out_widget.filePath() or output_root())
        final = unique_result_dir(out_root, title)

        def job(progress):
            # The engine stages on the folder's file system and publishes it whole; the paths it returns (and
            # records in summary.json) are the final ones.
            return classify_raster(source, names, final, progress=progress, **kwargs)

        self.task = EngineTask(f"RS-CLIP: classify {layer.name()}", job, lambda r: self._done(r, title, colours),
                               self._failed, words=lambda exc: self.words(exc, layer))
        self.task.progressChanged.connect(lambda v: self.progress.setValue(int(v)))
        self.task.message.connect(self.message_label.setText)
        self.run_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.message_label.setText("running in the background (QGIS stays usable)…")
        start(self.task)
        return self.task

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def _done(self, result, title: str, colours: dict) -> None:
        self.result = result
        self.task = None
        self.run_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)
        self.progress.setValue(100)
        self.result_layers = add_classification_layers(result, title, colours)
        provider = result.summary.get("provider")
        fallback = result.summary.get("provider_fallback") or ""
        self.status.set_provider(provider, fallback, device=result.summary.get("device"),
                                 precision=result.summary.get("precision"), mode=result.summary.get("mode"))
        self.fill_area_table(result.summary)
        folder = Path(result.labels_path).parent
        self.message_label.setText(f"done: written to <a href='{folder.as_uri()}'>{folder.name}</a>")
        push_result(self.iface, f"Classified {title} on {self.status.short_text()}; results in {folder.name}", folder)

    def fill_area_table(self, summary: dict) -> None:
        rows = list(summary.get("classes", []))
        unknown = summary.get("unknown") or {}
        if unknown.get("pixels"):
            rows.append({"name": UNKNOWN, **unknown})  # the summary names it ('background / unknown' with background)
        valid = float(summary.get("valid_pixels") or 0) or float(sum(int(c.get("pixels", 0)) for c in rows)) or 1.0
        self.area_table.setRowCount(0)
        for c in rows:
            r = self.area_table.rowCount()
            self.area_table.insertRow(r)
            item = QTableWidgetItem(str(c.get("name")))
            item.setData(Qt.DecorationRole, QColor(c.get("color") or c.get("colour") or "#808080"))
            self.area_table.setItem(r, 0, item)
            area = c.get("area_ha")
            self.area_table.setItem(r, 1, QTableWidgetItem("n/a" if area is None else f"{float(area):.1f}"))
            self.area_table.setItem(r, 2, QTableWidgetItem(f"{100 * int(c.get('pixels', 0)) / valid:.1f} %"))
        # Tall enough for a few classes; longer tables scroll inside, leaving the inputs their room.
        self.area_table.setFixedHeight(table_height(self.area_table, min(max(len(rows), 3), AREA_ROWS)))
        self.area_table.setVisible(True)

    def _failed(self, message: str) -> None:
        self.task = None
        self.run_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)
        self.progress.setValue(0)
        self.show_error(message)

    def show_error(self, message: str) -> None:
        self.message_label.setText(f"<span style='color:#b00'>{message}</span>")
        log(message, Qgis.Warning)
        if self.iface is not None:
            self.iface.messageBar().pushMessage("RS-CLIP", message, level=Qgis.Warning, duration=10)
