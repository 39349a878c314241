"""The map search dock: text queries and 'find similar' clicks over chosen raster layers.

Indexes are built (once, in the background) by the engine's ``build_index`` and reused by every later
search; the dock says which layer is being indexed. Results: a list (rank, score, thumbnail) where a click
zooms to and flashes the place, a hits layer and an optional similarity heat map.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from qgis.core import (
    Qgis,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsGeometry,
    QgsMapLayerProxyModel,
    QgsPointXY,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsSettings,
    QgsVectorLayer,
)
from qgis.gui import QgsDockWidget, QgsFileWidget, QgsMapLayerComboBox, QgsMapToolEmitPoint
from qgis.PyQt.QtCore import QSize, Qt
from qgis.PyQt.QtGui import QIcon, QPixmap
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..engine.options import RunOptions
from ..engine.runtime import PRECISION_CHOICES
from ..installed_bundles import ModelStore
from ..styling import add_search_layers, mark_output, style_hits
from .bundle_combo import chosen_bundle_is_dense, fill_bundle_combo, select_bundle
from .forms import PRECISION_TIP, choice_row
from .outputs import field_message, output_root, push_result, remember_output_root, unique_result_dir
from .status import ProviderStatusLabel
from .tasks import EngineTask, log, start
from .thumbnails import read_window_rgb, to_qimage

THUMB = 72
FIELDS = {"bundle": "Model bundle", "lang": "Language", "top_k": "Top k", "out": "Output folder",
          "overwrite": "Output folder", "query": "the query field",
          # The dock has no band fields: a layer it cannot read needs its bands named where it comes from.
          "sensor": "the sensor (the classify dialog's Sensor)",
          "bands": "band names (the layer's band descriptions, or a VRT naming them)",
          "precision": "Precision",
          "dense_heatmap": "Heat map per patch"}
DENSE_TIP = ("Index patch embeddings too and score every patch, so the heat map follows shapes inside a tile. "
             "Stores P x D float16 per tile (e.g. 7 x 7 x 512 = 49 KiB for ViT-B/32) and needs a bundle whose "
             "encoder has dense outputs; the index runs at fp32.")


def short_reason(problem: str) -> str:
    """The gist of why a layer cannot be searched, for one line in the panel (the tooltip has it all)."""
    gist = problem.split("; ")[0]
    # "‘name’: the bundle's ..." -> drop the layer name the line already starts with
    return gist.split(": ", 1)[1] if gist.startswith("‘") and ": " in gist else gist


SCOPES = ["Loaded raster layers", "An archive folder"]
ARCHIVE_SCOPE = SCOPES[1]
ARCHIVE_KEY = "rsclip/archive_folder"
ARCHIVE_FIELDS = {"lang": "Language", "top_k": "Top k", "out": "Output folder", "overwrite": "Output folder",
                  "bbox": "the map extent", "datetime": "Dates", "datetime_range": "Dates", "archive": "Archive"}


@dataclass(frozen=True)
class SearchChoices:
    """What the dock's option widgets say for one search over loaded layers, read once when it starts (the
    task runs in another thread, so it never reads the widgets itself)."""

    top_k: int
    heatmap: bool
    dense_heatmap: bool  # 'Heat map per patch': indexes with patch embeddings, heat maps per patch
    run: RunOptions


@dataclass
class ArchiveResult:
    hits: list
    gpkg_path: Path


@dataclass
class Candidate:
    """A raster layer the dock may search, and why it cannot be (None when a bundle encoder reads it)."""

    layer_id: str
    name: str
    source: str
    problem: Optional[str] = None


class SearchDock(QgsDockWidget):
    def __init__(self, iface=None, store: Optional[ModelStore] = None, parent=None) -> None:
        super().__init__("RS-CLIP map search", parent)
        self.setObjectName("RSClipSearchDock")
        self.iface = iface
        self.store = store or ModelStore()
        self.task: Optional[EngineTask] = None
        self.result = None
        self.hit_layers: tuple = ()
        self.map_tool: Optional[QgsMapToolEmitPoint] = None
        self.index_states: dict[str, str] = {}  # layer name -> "built" | "reused" (last search)
        self.skipped: list[str] = []  # "layer: reason" of the last search
        self.notes: list[str] = []  # "layer: what differs from what was asked" (a heat map per tile, not patch)
        self._readable_cache: dict = {}
        self._build()
        self.refresh_bundles()
        self.refresh_layers()
        QgsProject.instance().layersAdded.connect(self.refresh_layers)
        QgsProject.instance().layersRemoved.connect(self.refresh_layers)

    def _build(self) -> None:
        w = QWidget()
        root = QVBoxLayout(w)
        row = QHBoxLayout()
        self.query_edit = QLineEdit()
        self.query_edit.setObjectName("rsclip_search_query")
        self.query_edit.setPlaceholderText("describe what to find, e.g. a river, um rio, ein Hafen")
        self.query_edit.returnPressed.connect(self.search_text)
        self.search_btn = QPushButton("Search")
        self.search_btn.setObjectName("rsclip_search_run")
        self.search_btn.clicked.connect(lambda _checked=False: self.search_text())
        row.addWidget(self.query_edit, 1)
        row.addWidget(self.search_btn)
        root.addLayout(row)
        form = QFormLayout()
        self.lang_combo = QComboBox()
        self.lang_combo.setObjectName("rsclip_search_lang")
        form.addRow("Language", self.lang_combo)
        self.topk_spin = QSpinBox()
        self.topk_spin.setObjectName("rsclip_search_topk")
        self.topk_spin.setRange(1, 500)
        self.topk_spin.setValue(10)
        form.addRow("Top k", self.topk_spin)
        self.heatmap_check = QCheckBox("add a similarity heat map")
        self.heatmap_check.setObjectName("rsclip_search_heatmap")
        self.heatmap_check.toggled.connect(self._update_dense_check)
        form.addRow("", self.heatmap_check)
        self.dense_check = QCheckBox("Heat map per patch")
        self.dense_check.setObjectName("rsclip_dense_heatmap")
        self.dense_check.setToolTip(DENSE_TIP)
        self.dense_check.setEnabled(False)
        form.addRow("", self.dense_check)
        self.pin_check = QCheckBox("keep earlier results on the map")
        self.pin_check.setObjectName("rsclip_search_pin")
        self.pin_check.setToolTip("Unticked, a new search replaces the previous search's hits and heat map")
        form.addRow("", self.pin_check)
        self.bundle_combo = QComboBox()
        self.bundle_combo.setObjectName("rsclip_search_bundle")
        self.bundle_combo.currentIndexChanged.connect(self._bundle_changed)
        form.addRow("Model bundle", self.bundle_combo)
        self.precision_combo = choice_row(form, "Precision", "rsclip_search_precision", PRECISION_CHOICES,
                                          f"{PRECISION_TIP}; each layer's index remembers its precision")
        self.precision_combo.currentIndexChanged.connect(self._update_dense_check)  # int8 has no patch outputs
        self.out_widget = QgsFileWidget()
        self.out_widget.setObjectName("rsclip_search_output_folder")
        self.out_widget.setStorageMode(QgsFileWidget.GetDirectory)
        self.out_widget.setFilePath(str(output_root()))
        self.out_widget.fileChanged.connect(remember_output_root)
        form.addRow("Output folder", self.out_widget)
        # Where to search: the rasters loaded in the project, or an archive built with `rsclip archive`
        # (many scenes, STAC items, remote COGs) searched through its ANN index.
        self.scope_combo = choice_row(form, "Search in", "rsclip_search_scope", SCOPES,
                                      "the rasters loaded in the project, or an archive folder (rsclip archive)")
        self.archive_widget = QgsFileWidget()
        self.archive_widget.setObjectName("rsclip_archive_folder")
        self.archive_widget.setStorageMode(QgsFileWidget.GetDirectory)
        self.archive_widget.setFilePath(QgsSettings().value(ARCHIVE_KEY, "", type=str))
        self.archive_widget.fileChanged.connect(lambda path: QgsSettings().setValue(ARCHIVE_KEY, path))
        self.archive_widget.fileChanged.connect(self._fill_languages)  # an archive brings its bundle's languages
        form.addRow("Archive", self.archive_widget)
        self.dates_edit = QLineEdit()
        self.dates_edit.setObjectName("rsclip_archive_dates")
        self.dates_edit.setPlaceholderText("optional, e.g. 2021-01-01/2021-12-31 or 2021-06-01/..")
        form.addRow("Dates", self.dates_edit)
        self._archive_rows = [self.archive_widget, self.dates_edit]
        self._form = form
        root.addLayout(form)
        self.layers_title = QLabel("Layers to search:")
        root.addWidget(self.layers_title)
        self.layers_list = QListWidget()
        self.layers_list.setObjectName("rsclip_search_layers")
        self.layers_list.setMaximumHeight(110)
        root.addWidget(self.layers_list)
        self.skipped_label = QLabel("")
        self.skipped_label.setObjectName("rsclip_search_skipped")
        self.skipped_label.setWordWrap(True)
        root.addWidget(self.skipped_label)
        row = QHBoxLayout()
        self.query_layer_combo = QgsMapLayerComboBox()
        self.query_layer_combo.setObjectName("rsclip_example_layer")
        self.query_layer_combo.setFilters(QgsMapLayerProxyModel.RasterLayer)
        self.similar_btn = QPushButton("Find similar (click map)")
        self.similar_btn.setObjectName("rsclip_find_similar")
        self.similar_btn.setCheckable(True)
        self.similar_btn.toggled.connect(self._toggle_map_tool)
        self.example_title = QLabel("Example from")
        row.addWidget(self.example_title)
        row.addWidget(self.query_layer_combo, 1)
        root.addLayout(row)
        root.addWidget(self.similar_btn)
        self.index_label = QLabel("")
        self.index_label.setObjectName("rsclip_search_message")
        self.index_label.setWordWrap(True)
        root.addWidget(self.index_label)
        row = QHBoxLayout()
        self.progress = QProgressBar()
        self.progress.setObjectName("rsclip_search_progress")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setObjectName("rsclip_search_cancel")
        self.cancel_btn.setEnabled(False)
        self.cancel_btn.clicked.connect(lambda _checked=False: self.task and self.task.cancel())
        row.addWidget(self.progress, 1)
        row.addWidget(self.cancel_btn)
        root.addLayout(row)
        self.status = ProviderStatusLabel()
        root.addWidget(self.status)
        self.results_list = QListWidget()
        self.results_list.setObjectName("rsclip_search_results")
        self.results_list.setIconSize(QSize(THUMB, THUMB))
        self.results_list.itemClicked.connect(self._item_clicked)
        root.addWidget(self.results_list, 1)
        self.setWidget(w)
        # Find similar works on loaded layers only: an archive is searched by text. An archive also brings its
        # own model and its index's precision: the dock's 'Model bundle' and 'Precision' would do nothing there.
        self._layer_rows = [self.layers_title, self.layers_list, self.skipped_label, self.example_title,
                            self.query_layer_combo, self.similar_btn, self.heatmap_check, self.dense_check,
                            self.bundle_combo,
                            self.precision_combo]
        self.scope_combo.currentIndexChanged.connect(self._scope_changed)
        self._scope_changed()

    # -- inputs -----------------------------------------------------------------------------------------
    def refresh_bundles(self) -> None:
        self.bundle_combo.blockSignals(True)
        fill_bundle_combo(self.bundle_combo, self.store)
        self.bundle_combo.blockSignals(False)
        self._bundle_changed()

    def set_bundle_path(self, path: Path) -> None:
        select_bundle(self.bundle_combo, path)
        self._bundle_changed()

    def _bundle_changed(self, *_args) -> None:
        self._fill_languages()
        self._update_dense_check()
        if hasattr(self, "layers_list"):
            self.refresh_layers()  # which layers are readable depends on the bundle's encoders

    def dense_problem(self) -> Optional[str]:
        """Why 'Heat map per patch' cannot be ticked now (no heat map asked, 'Precision' int8, or no encoder of
        the chosen bundle with dense outputs), or None."""
        if not self.heatmap_check.isChecked():
            return "tick ‘add a similarity heat map’ first"
        if hasattr(self, "precision_combo") and self.precision_combo.currentText() == "int8":
            # Patch embeddings come from the fp32 graph (EncoderSession refuses int8 with dense outputs).
            return "patches come from the fp32 graph; set ‘Precision’ to auto or fp32"
        dense = chosen_bundle_is_dense(self.bundle_combo)
        if dense is None:
            return "choose an installed bundle folder in ‘Model bundle’"
        if not dense:
            return (f"the encoders of bundle {Path(self.bundle_combo.currentData()).name} have no dense outputs; "
                    "re-export it with rsclip-train export (dense on by default) for heat maps per patch")
        return None

    def _update_dense_check(self, *_args) -> None:
        if not hasattr(self, "dense_check"):
            return  # the bundle combo fills before the rest of the form exists
        problem = self.dense_problem()
        self.dense_check.setEnabled(problem is None)
        self.dense_check.setToolTip(DENSE_TIP if problem is None else f"{DENSE_TIP}\nNot available: {problem}")

    def archive_bundle_path(self) -> Optional[str]:
        """The bundle the chosen archive was created with (archive.json; the default bundle when it recorded
        none, if that is built), or None when the folder is not an archive."""
        from ..engine.archive import Archive
        from ..engine.default_bundle import default_bundle_path

        folder = self.archive_widget.filePath().strip()
        try:
            return Archive.open(folder).config.get("bundle") or str(default_bundle_path(build=False))
        except Exception:  # not (yet) an archive: typing its path goes through partial ones
            return None

    def query_bundle_path(self) -> Optional[str]:
        """The bundle that embeds a text query: the archive's own in archive mode, else 'Model bundle'."""
        return self.archive_bundle_path() if self.archive_mode() else (self.bundle_combo.currentData() or None)

    def _fill_languages(self, *_args) -> None:
        """The languages of the bundle that will read the query (query_bundle_path); the current choice kept
        when the new bundle knows it too."""
        from ..engine.bundle import BundleError, load_bundle, read_manifest

        path = self.query_bundle_path() if hasattr(self, "scope_combo") else self.bundle_combo.currentData()
        langs = ["en"]
        if path:
            try:
                root = Path(path)
                manifest = read_manifest(root) if root.is_dir() else load_bundle(root, check_onnx=False).manifest
                langs = manifest.text.languages or ["en"]
            except (BundleError, OSError):
                pass
        if langs == [self.lang_combo.itemText(i) for i in range(self.lang_combo.count())]:
            return  # unchanged (a keystroke in 'Archive'): keep what the user chose
        before = self.lang_combo.currentText()
        self.lang_combo.clear()
        self.lang_combo.addItems(langs)
        if before in langs:
            self.lang_combo.setCurrentText(before)

    def candidates(self) -> list[Candidate]:
        """Raster layers of the project other than RS-CLIP's own results, each with the reason a bundle
        encoder cannot read it (a 1-band raster, a DEM...), or None."""
        from ..styling import is_rsclip_output

        bundle = self._bundle_or_none()
        out = []
        for lyr in QgsProject.instance().mapLayers().values():
            if not isinstance(lyr, QgsRasterLayer) or is_rsclip_output(lyr):
                continue
            source = lyr.source().split("|")[0]
            cand = Candidate(lyr.id(), lyr.name(), source)
            if lyr.providerType() != "gdal":
                cand.problem = f"a {lyr.providerType()} layer; RS-CLIP searches local rasters"
            elif bundle is not None:
                cand.problem = self._unreadable(source, lyr.name(), bundle)
            out.append(cand)
        return out

    def _unreadable(self, source: str, name: str, bundle) -> Optional[str]:
        """Why no encoder of ``bundle`` can read the raster, in one line; None when one can. Cached per file
        state, since the list refreshes whenever a layer is added."""
        from ..engine.pipeline import choose_encoder
        from ..engine.raster import open_source

        try:
            st = Path(source).stat()
            key = (source, st.st_mtime_ns, st.st_size, str(bundle.root))
        except OSError:
            key = (source, 0, 0, str(bundle.root))
        if key not in self._readable_cache:
            try:
                with open_source(source) as src:
                    choose_encoder(bundle, src)
                self._readable_cache[key] = None
            except Exception as exc:
                self._readable_cache[key] = field_message(exc, FIELDS, [(source, name)])
        return self._readable_cache[key]

    def _bundle_or_none(self):
        from ..engine.bundle import load_bundle

        try:
            return load_bundle(self.store.resolve(self.bundle_combo.currentData() or ""))
        except Exception:
            return None

    def _query_bundle_or_none(self):
        """The bundle that reads a text query (query_bundle_path), loaded; None when there is none to load."""
        from ..engine.bundle import load_bundle

        if not self.archive_mode():
            return self._bundle_or_none()
        path = self.archive_bundle_path()
        try:
            return load_bundle(path) if path else None
        except Exception:
            return None

    def refresh_layers(self, *_args) -> None:
        """Readable layers listed ticked (unless the user unticked them); the others listed unticked and
        greyed with their reason, so nobody wonders why a layer is not searched."""
        if not hasattr(self, "_readable_cache"):
            self._readable_cache: dict = {}
        unticked = set(self._unticked)
        self.layers_list.clear()
        skipped = []
        for cand in self.candidates():
            item = QListWidgetItem(cand.name)
            item.setData(Qt.UserRole, cand.layer_id)
            if cand.problem:
                item.setFlags(item.flags() & ~Qt.ItemIsEnabled & ~Qt.ItemIsUserCheckable)
                item.setCheckState(Qt.Unchecked)
                item.setToolTip(cand.problem)
                item.setText(f"{cand.name} — cannot be searched")
                skipped.append(f"{cand.name}: {short_reason(cand.problem)}")
            else:
                item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
                item.setCheckState(Qt.Unchecked if cand.layer_id in unticked else Qt.Checked)
            self.layers_list.addItem(item)
        self.skipped_label.setText("\n".join(f"skipped {line}" for line in skipped))
        self.skipped_label.setVisible(bool(skipped) and not self.archive_mode())

    @property
    def _unticked(self) -> list[str]:
        out = []
        for i in range(self.layers_list.count()):
            it = self.layers_list.item(i)
            if it.flags() & Qt.ItemIsUserCheckable and it.checkState() != Qt.Checked:
                out.append(it.data(Qt.UserRole))
        return out

    def checked_layer_ids(self) -> list[str]:
        out = []
        for i in range(self.layers_list.count()):
            it = self.layers_list.item(i)
            if it.checkState() == Qt.Checked:
                out.append(it.data(Qt.UserRole))
        return out

    def checked_layers(self) -> list[QgsRasterLayer]:
        project = QgsProject.instance()
        return [lyr for lid in self.checked_layer_ids() if (lyr := project.mapLayer(lid)) is not None]

    # -- jobs -------------------------------------------------------------------------------------------
    def archive_mode(self) -> bool:
        return self.scope_combo.currentIndex() == SCOPES.index(ARCHIVE_SCOPE)

    def _scope_changed(self, *_args) -> None:
        archive = self.archive_mode()
        self._fill_languages()  # the query is read by the archive's bundle there, by 'Model bundle' here
        shown = [(w, archive) for w in self._archive_rows]
        shown += [(w, not archive and (w is not self.skipped_label or bool(self.skipped_label.text())))
                  for w in self._layer_rows]
        for w, visible in shown:
            w.setVisible(visible)
            label = self._form.labelForField(w)  # a form row's label goes with its field
            if label is not None:
                label.setVisible(visible)

    def search_text(self) -> Optional[EngineTask]:
        text = self.query_edit.text().strip()
        if not text:
            self.show_error("type what to look for, e.g. 'a river'")
            return None
        lang = self.lang_combo.currentText() or "en"
        bundle = self._query_bundle_or_none()
        if bundle is not None:
            from ..engine.text import check_query_language, guess_language

            warning = check_query_language(bundle, text, lang)
            if warning:
                guess = guess_language(text)
                if guess not in bundle.manifest.text.languages:
                    fix = ("search an archive created with a multilingual bundle" if self.archive_mode()
                           else "choose a multilingual bundle in ‘Model bundle’")
                    self.show_error(warning.replace("choose a multilingual bundle", fix))
                    return None
                self.lang_combo.setCurrentText(guess)  # the bundle knows it: read the query as what it is
                lang = guess

        if self.archive_mode():
            return self._run_archive(text, lang)

        def query(bundle):
            from ..engine.search import text_query_vector

            return text_query_vector(bundle, text, lang=lang)

        return self._run(query, text)

    def _run_archive(self, text: str, lang: str) -> Optional[EngineTask]:
        """A text query over an archive folder (its own bundle and ANN index); hits carry scene and date."""
        from ..engine.archive import search_archive, write_hits

        if self._busy():
            return None
        folder = self.archive_widget.filePath().strip()
        if not folder:
            self.show_error("choose the archive folder in ‘Archive’ (one made with `rsclip archive create`)")
            return None
        top_k, dates = self.topk_spin.value(), self.dates_edit.text().strip() or None
        out_root = Path(self.out_widget.filePath() or output_root())
        final = unique_result_dir(out_root, f"archive-search-{time.strftime('%Y%m%d-%H%M%S')}")

        def job(progress):
            progress.update(0.1, f"searching the archive {Path(folder).name}…")
            hits = search_archive(folder, text, lang=lang, top_k=top_k, datetime_range=dates)
            progress.check()
            return ArchiveResult(hits, write_hits(hits, final, description=text))

        return self._start(EngineTask(f"RS-CLIP: archive search '{text}'", job,
                                      lambda r: self._archive_done(r, text), self._failed,
                                      words=lambda exc: field_message(exc, ARCHIVE_FIELDS)))

    def _busy(self) -> bool:
        """True, with the message, while a search runs: a second one (a map click in 'Find similar' stays
        possible) would reset the lists the running task fills from its thread (skipped layers, notes) and
        take over 'Cancel'."""
        if self.task is None:
            return False
        self.show_error("a search is already running; wait for it to finish, or click Cancel")
        return True

    def _start(self, task: EngineTask) -> EngineTask:
        """Run a search task with its progress and messages shown in the dock (layers and archive alike)."""
        self.task = task
        task.progressChanged.connect(lambda v: self.progress.setValue(int(v)))
        task.message.connect(self.index_label.setText)
        self.search_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.results_list.clear()
        start(task)
        return task

    def _archive_done(self, result: ArchiveResult, title: str) -> None:
        self.result = result
        self.task = None
        self.search_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)
        self.progress.setValue(100)
        scenes = sorted({h.scene for h in result.hits})
        self.index_label.setText(f"{len(result.hits)} hits for '{title}' in {len(scenes)} scene(s) of the archive")
        if not self.pin_check.isChecked():
            self.remove_previous_results()
        group = QgsProject.instance().layerTreeRoot().insertGroup(0, f"RS-CLIP search: {title}")
        hits_layer = QgsVectorLayer(str(result.gpkg_path), f"{title} – hits", "ogr")
        if hits_layer.isValid():
            style_hits(hits_layer)
            QgsProject.instance().addMapLayer(hits_layer, False)
            group.addLayer(hits_layer)
        self.hit_layers = (hits_layer, None)
        self.results_list.clear()
        for hit in result.hits:
            when = (hit.datetime or "undated")[:10]  # the date first: scene ids are long
            item = QListWidgetItem(f"#{hit.rank}  {when}  score {hit.score:.3f}  {hit.scene}")
            item.setData(Qt.UserRole, hit)
            item.setToolTip(hit.source)
            self.results_list.addItem(item)
        push_result(self.iface, f"{len(result.hits)} archive hits for '{title}'", Path(result.gpkg_path).parent)

    def show_archive_hit(self, hit) -> Optional[QgsRasterLayer]:
        """Load the hit's scene (once; a true-colour VRT over the COGs of a STAC item, /vsicurl/ when remote)
        into the search's group and zoom to the hit."""
        from ..engine.archive import display_source
        from ..engine.settings import cache_dir

        source = display_source(hit.source, cache_dir() / "archive-scenes")
        project = QgsProject.instance()
        layer = next((lyr for lyr in project.mapLayers().values()
                      if isinstance(lyr, QgsRasterLayer) and lyr.source() == source), None)
        if layer is None:
            layer = QgsRasterLayer(source, f"{hit.scene} {(hit.datetime or '')[:10]}".strip())
            if not layer.isValid():
                self.show_error(f"QGIS cannot open the scene {hit.scene} ({source}); see the RS-CLIP log")
                return None
            mark_output(layer, "archive scene")  # shown for a hit: not a search input of its own
            project.addMapLayer(layer, False)
            node = project.layerTreeRoot().findLayer(self.hit_layers[0].id()) if self.hit_layers[0] else None
            group = node.parent() if node is not None else project.layerTreeRoot()
            group.addLayer(layer)
        if self.iface is not None:
            canvas = self.iface.mapCanvas()
            wgs84 = QgsCoordinateReferenceSystem("EPSG:4326")
            x0, y0, x1, y1 = hit.lonlat
            rect = QgsRectangle(x0, y0, x1, y1)
            dest = canvas.mapSettings().destinationCrs()
            view = QgsCoordinateTransform(wgs84, dest, project).transformBoundingBox(rect) if dest.isValid() else rect
            canvas.setExtent(view.buffered(max(view.width(), view.height())))
            canvas.refresh()
            canvas.flashGeometries([QgsGeometry.fromPolygonXY([[QgsPointXY(x, y) for x, y in hit.ring]])], wgs84)
        return layer

    def find_similar_at(self, layer: QgsRasterLayer, point: QgsPointXY, crs: Optional[QgsCoordinateReferenceSystem] = None) -> Optional[EngineTask]:
        """Image query from ``layer`` at ``point`` (in ``crs``, default the layer's); may be cross-modal."""
        if crs is not None and crs != layer.crs():
            point = QgsCoordinateTransform(crs, layer.crs(), QgsProject.instance()).transform(point)
        if not layer.extent().contains(point):
            self.show_error(f"the clicked point is outside {layer.name()}; click on the example layer")
            return None
        source = layer.source().split("|")[0]
        xy = (point.x(), point.y())
        run = self.choices().run

        def query(bundle):
            from ..engine.search import image_query_vector

            return image_query_vector(bundle, raster=source, point=xy, run=run)

        return self._run(query, f"like {layer.name()} @ {xy[0]:.0f},{xy[1]:.0f}")

    def choices(self) -> SearchChoices:
        heatmap = self.heatmap_check.isChecked()
        return SearchChoices(self.topk_spin.value(), heatmap,
                             heatmap and self.dense_check.isEnabled() and self.dense_check.isChecked(),
                             RunOptions(precision=self.precision_combo.currentText()))

    def _run(self, query_fn: Callable, title: str) -> Optional[EngineTask]:
        from ..engine.bundle import load_bundle
        from ..engine.errors import InputError
        from ..engine.index import build_index
        from ..engine.search import search

        if self._busy():
            return None
        layers = self.checked_layers()
        try:
            if not layers:
                raise ValueError("tick at least one raster layer under ‘Layers to search’")
            bundle = load_bundle(self.store.resolve(self.bundle_combo.currentData() or ""))
        except Exception as exc:
            self.show_error(field_message(exc, FIELDS))
            return None
        sources = [(lyr.name(), Path(lyr.source().split("|")[0])) for lyr in layers]
        names = [(str(src), name) for name, src in sources]
        opts = self.choices()
        out_root = Path(self.out_widget.filePath() or output_root())
        final = unique_result_dir(out_root, f"search-{time.strftime('%Y%m%d-%H%M%S')}")
        self.skipped, self.notes = [], []

        def job(progress):
            qvec = query_fn(bundle)
            n = len(sources)
            indexes = []
            for i, (name, src) in enumerate(sources):
                progress.update(0.6 * i / n, f"indexing {name} (first time only; reused afterwards)…")
                sub = progress.sub(0.6 * i / n, 0.6 * (i + 1) / n)
                try:
                    try:
                        idx = build_index(src, bundle, run=opts.run, progress=sub, dense_heatmap=opts.dense_heatmap)
                    except InputError as exc:
                        if "dense_heatmap" not in exc.params:
                            raise
                        # A bundle whose other encoder is dense: this layer's encoder is not; its map stays per tile.
                        self.notes.append(f"{name}: heat map per tile ({short_reason(field_message(exc, FIELDS))})")
                        idx = build_index(src, bundle, run=opts.run, progress=sub)
                except Exception as exc:  # one odd layer must not lose the others' hits
                    if type(exc).__name__ == "Cancelled":
                        raise
                    self.skipped.append(f"{name}: {short_reason(field_message(exc, FIELDS, names))}")
                    log(f"search: skipped {name}: {exc}", Qgis.Warning)
                    continue
                indexes.append(idx)
                self.index_states[name] = "reused" if idx.reused else "built"
            if not indexes:
                raise ValueError("none of the ticked layers can be searched: " + "; ".join(self.skipped))
            progress.update(0.6, "searching…")
            # The engine stages on the folder's file system and publishes it whole (final paths returned).
            return search(indexes, qvec, final, bundle=bundle, top_k=opts.top_k, heatmap=opts.heatmap,
                          progress=progress.sub(0.6, 1.0))

        self.index_states = {}
        return self._start(EngineTask(f"RS-CLIP: search '{title}'", job, lambda r: self._done(r, title),
                                      self._failed, words=lambda exc: field_message(exc, FIELDS, names)))

    def _done(self, result, title: str) -> None:
        self.result = result
        self.task = None
        self.search_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)
        self.progress.setValue(100)
        states = ", ".join(f"{k}: index {v}" for k, v in self.index_states.items())
        lines = [f"{len(result.hits)} hits for '{title}' ({states})"]
        lines += [f"skipped {line}" for line in self.skipped] + self.notes
        self.index_label.setText("\n".join(lines))
        self.status.set_provider(getattr(result, "provider", None), precision=getattr(result, "precision", None))
        if not self.pin_check.isChecked():
            self.remove_previous_results()
        self.hit_layers = add_search_layers(result, title)
        self.results_list.clear()
        for hit in result.hits:
            item = QListWidgetItem(f"#{hit.rank}  score {hit.score:.3f}  {Path(str(hit.source)).name}")
            item.setData(Qt.UserRole, hit)
            thumb = self.thumbnail(hit)
            if thumb is not None:
                item.setIcon(QIcon(thumb))
            self.results_list.addItem(item)
        folder = Path(result.gpkg_path).parent if getattr(result, "gpkg_path", None) else None
        skipped = f"; skipped {len(self.skipped)} layer(s)" if self.skipped else ""
        push_result(self.iface, f"{len(result.hits)} hits for '{title}'{skipped}", folder,
                    level=Qgis.Info if self.skipped else Qgis.Success)

    def remove_previous_results(self) -> None:
        """Drop the previous search's group (hits and heat maps), so heat maps do not pile up over the map."""
        project = QgsProject.instance()
        root = project.layerTreeRoot()
        for lyr in self.hit_layers:
            if lyr is None:
                continue
            try:
                node = root.findLayer(lyr.id())
            except RuntimeError:  # the user removed the layer already
                continue
            group = node.parent() if node is not None else None
            if group is not None and group is not root and group.name().startswith("RS-CLIP search:"):
                project.removeMapLayers([n.layerId() for n in group.findLayers()])
                root.removeChildNode(group)
                break
            project.removeMapLayer(lyr.id())
        self.hit_layers = ()

    def _failed(self, message: str) -> None:
        self.task = None  # over: the next search may start (_busy)
        self.search_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)
        self.progress.setValue(0)
        self.index_label.setText("")
        self.show_error(message)

    # -- results ----------------------------------------------------------------------------------------
    @staticmethod
    def hit_rect(hit) -> tuple[QgsRectangle, QgsCoordinateReferenceSystem]:
        x0, y0, x1, y1 = hit.bounds
        return QgsRectangle(x0, y0, x1, y1), QgsCoordinateReferenceSystem.fromWkt(hit.crs_wkt)

    def thumbnail(self, hit) -> Optional[QPixmap]:
        """The hit's window with its own 2-98 % stretch (see thumbnails.py); None (and a log line) if unreadable."""
        try:
            rgb, valid = read_window_rgb(str(hit.source), tuple(hit.bounds))
        except Exception as exc:  # a missing thumbnail must not lose the hit itself
            log(f"no thumbnail for hit #{hit.rank} of {hit.source}: {exc}", Qgis.Info)
            return None
        img = to_qimage(rgb, valid).scaled(THUMB, THUMB, Qt.KeepAspectRatio, Qt.SmoothTransformation)
        return QPixmap.fromImage(img)

    def _item_clicked(self, item: QListWidgetItem) -> None:
        from ..engine.archive import ArchiveHit

        hit = item.data(Qt.UserRole)
        if isinstance(hit, ArchiveHit):
            self.show_archive_hit(hit)
        else:
            self.zoom_to_hit(hit)

    def zoom_to_hit(self, hit) -> None:
        if self.iface is None:
            return
        canvas = self.iface.mapCanvas()
        rect, crs = self.hit_rect(hit)
        dest = canvas.mapSettings().destinationCrs()
        view = QgsCoordinateTransform(crs, dest, QgsProject.instance()).transformBoundingBox(rect) if dest.isValid() and dest != crs else rect
        canvas.setExtent(view.buffered(max(view.width(), view.height())))
        canvas.refresh()
        canvas.flashGeometries([QgsGeometry.fromRect(rect)], crs)

    # -- find similar map tool --------------------------------------------------------------------------
    def _toggle_map_tool(self, on: bool) -> None:
        if self.iface is None:
            return
        canvas = self.iface.mapCanvas()
        if on:
            active = self.iface.activeLayer()
            if isinstance(active, QgsRasterLayer):
                self.query_layer_combo.setLayer(active)  # the example comes from the layer the user is on
            self.map_tool = QgsMapToolEmitPoint(canvas)
            self.map_tool.canvasClicked.connect(self._map_clicked)
            canvas.setMapTool(self.map_tool)
        elif self.map_tool is not None:
            canvas.unsetMapTool(self.map_tool)
            self.map_tool = None

    def _map_clicked(self, point: QgsPointXY, _button) -> None:
        layer = self.query_layer_combo.currentLayer()
        if not isinstance(layer, QgsRasterLayer):
            self.show_error("choose the layer the example comes from ('Example from')")
            return
        self.similar_btn.setChecked(False)
        self.find_similar_at(layer, point, self.iface.mapCanvas().mapSettings().destinationCrs())

    def show_error(self, message: str) -> None:
        self.index_label.setText(f"<span style='color:#b00'>{message}</span>")
        log(message, Qgis.Warning)
        if self.iface is not None:
            self.iface.messageBar().pushMessage("RS-CLIP", message, level=Qgis.Warning, duration=10)

    def cleanup(self) -> None:
        self._toggle_map_tool(False)
        for sig, slot in ((QgsProject.instance().layersAdded, self.refresh_layers),
                          (QgsProject.instance().layersRemoved, self.refresh_layers)):
            with contextlib.suppress(TypeError):
                sig.disconnect(slot)
