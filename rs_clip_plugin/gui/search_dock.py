"""The map search dock: text queries and 'find similar' clicks over chosen raster layers.

Indexes are built (once, in the background) by the engine's ``build_index`` and reused by every later
search; the dock says which layer is being indexed. Results: a list (rank, score, thumbnail) where a click
zooms to and flashes the place, a hits layer and an optional similarity heat map.
"""

from __future__ import annotations

import contextlib
import time
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
)
from qgis.gui import QgsDockWidget, QgsMapLayerComboBox, QgsMapToolEmitPoint
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

from ..models import ModelStore
from .bundle_combo import fill_bundle_combo, select_bundle
from .classify_dialog import results_root, unique_result_dir
from .layers import add_search_layers
from .status import ProviderStatusLabel
from .tasks import EngineTask, log, start
from .thumbnails import read_window_rgb, to_qimage

THUMB = 72


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
        self.query_edit.setPlaceholderText("describe what to find, e.g. a river, um rio, ein Hafen")
        self.query_edit.returnPressed.connect(self.search_text)
        self.search_btn = QPushButton("Search")
        self.search_btn.clicked.connect(self.search_text)
        row.addWidget(self.query_edit, 1)
        row.addWidget(self.search_btn)
        root.addLayout(row)
        form = QFormLayout()
        self.lang_combo = QComboBox()
        form.addRow("Language", self.lang_combo)
        self.topk_spin = QSpinBox()
        self.topk_spin.setRange(1, 500)
        self.topk_spin.setValue(10)
        form.addRow("Top k", self.topk_spin)
        self.heatmap_check = QCheckBox("add a similarity heat map")
        form.addRow("", self.heatmap_check)
        self.bundle_combo = QComboBox()
        self.bundle_combo.currentIndexChanged.connect(self._bundle_changed)
        form.addRow("Model bundle", self.bundle_combo)
        root.addLayout(form)
        root.addWidget(QLabel("Layers to search:"))
        self.layers_list = QListWidget()
        self.layers_list.setMaximumHeight(90)
        root.addWidget(self.layers_list)
        row = QHBoxLayout()
        self.query_layer_combo = QgsMapLayerComboBox()
        self.query_layer_combo.setFilters(QgsMapLayerProxyModel.RasterLayer)
        self.similar_btn = QPushButton("Find similar (click map)")
        self.similar_btn.setCheckable(True)
        self.similar_btn.toggled.connect(self._toggle_map_tool)
        row.addWidget(QLabel("Example from"))
        row.addWidget(self.query_layer_combo, 1)
        root.addLayout(row)
        root.addWidget(self.similar_btn)
        self.index_label = QLabel("")
        self.index_label.setWordWrap(True)
        root.addWidget(self.index_label)
        row = QHBoxLayout()
        self.progress = QProgressBar()
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.cancel_btn.clicked.connect(lambda: self.task and self.task.cancel())
        row.addWidget(self.progress, 1)
        row.addWidget(self.cancel_btn)
        root.addLayout(row)
        self.status = ProviderStatusLabel()
        root.addWidget(self.status)
        self.results_list = QListWidget()
        self.results_list.setIconSize(QSize(THUMB, THUMB))
        self.results_list.itemClicked.connect(self._item_clicked)
        root.addWidget(self.results_list, 1)
        self.setWidget(w)

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
        from ..engine.bundle import BundleError, read_manifest

        self.lang_combo.clear()
        path = self.bundle_combo.currentData()
        langs = ["en"]
        if path:
            try:
                root = Path(path)
                if root.is_dir():
                    langs = read_manifest(root).text.languages or ["en"]
            except BundleError:
                pass
        self.lang_combo.addItems(langs)

    def refresh_layers(self, *_args) -> None:
        checked = set(self.checked_layer_ids())
        self.layers_list.clear()
        for lyr in QgsProject.instance().mapLayers().values():
            if isinstance(lyr, QgsRasterLayer) and lyr.providerType() == "gdal" and not lyr.name().startswith(("RS-CLIP", )):
                if "similarity" in lyr.name() or "– classes" in lyr.name() or "– confidence" in lyr.name():
                    continue  # our own results are not search targets
                item = QListWidgetItem(lyr.name())
                item.setData(Qt.UserRole, lyr.id())
                item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
                item.setCheckState(Qt.Checked if (not checked or lyr.id() in checked) else Qt.Unchecked)
                self.layers_list.addItem(item)

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
    def search_text(self) -> Optional[EngineTask]:
        text = self.query_edit.text().strip()
        if not text:
            self.show_error("type what to look for, e.g. 'a river'")
            return None
        lang = self.lang_combo.currentText() or "en"

        def query(bundle):
            from ..engine.search import text_query_vector

            return text_query_vector(bundle, text, lang=lang)

        return self._run(query, text)

    def find_similar_at(self, layer: QgsRasterLayer, point: QgsPointXY, crs: Optional[QgsCoordinateReferenceSystem] = None) -> Optional[EngineTask]:
        """Image query from ``layer`` at ``point`` (in ``crs``, default the layer's); may be cross-modal."""
        if crs is not None and crs != layer.crs():
            point = QgsCoordinateTransform(crs, layer.crs(), QgsProject.instance()).transform(point)
        if not layer.extent().contains(point):
            self.show_error(f"the clicked point is outside {layer.name()}; click on the example layer")
            return None
        source = layer.source().split("|")[0]
        xy = (point.x(), point.y())

        def query(bundle):
            from ..engine.search import image_query_vector

            return image_query_vector(bundle, raster=source, point=xy)

        return self._run(query, f"like {layer.name()} @ {xy[0]:.0f},{xy[1]:.0f}")

    def _run(self, query_fn: Callable, title: str) -> Optional[EngineTask]:
        from ..engine.bundle import load_bundle
        from ..engine.index import build_index
        from ..engine.search import search

        layers = self.checked_layers()
        try:
            if not layers:
                raise ValueError("tick at least one raster layer to search")
            bundle = load_bundle(self.store.resolve(self.bundle_combo.currentData() or ""))
        except Exception as exc:
            self.show_error(str(exc))
            return None
        sources = [(lyr.name(), Path(lyr.source().split("|")[0])) for lyr in layers]
        top_k, heatmap = self.topk_spin.value(), self.heatmap_check.isChecked()
        out_root = results_root()
        final = unique_result_dir(out_root, f"search-{time.strftime('%Y%m%d-%H%M%S')}")

        def job(progress):
            qvec = query_fn(bundle)
            n = len(sources)
            indexes = []
            for i, (name, src) in enumerate(sources):
                progress.update(0.6 * i / n, f"indexing {name} (first time only; reused afterwards)…")
                indexes.append(build_index(src, bundle, progress=progress.sub(0.6 * i / n, 0.6 * (i + 1) / n)))
                self.index_states[name] = "reused" if indexes[-1].reused else "built"
            progress.update(0.6, "searching…")
            # The engine stages on the folder's file system and publishes it whole (final paths returned).
            return search(indexes, qvec, final, bundle=bundle, top_k=top_k, heatmap=heatmap,
                          progress=progress.sub(0.6, 1.0))

        self.task = EngineTask(f"RS-CLIP: search '{title}'", job, lambda r: self._done(r, title), self._failed)
        self.task.progressChanged.connect(lambda v: self.progress.setValue(int(v)))
        self.task.message.connect(self.index_label.setText)
        self.search_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.results_list.clear()
        start(self.task)
        return self.task

    def _done(self, result, title: str) -> None:
        self.result = result
        self.search_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)
        self.progress.setValue(100)
        states = ", ".join(f"{k}: index {v}" for k, v in self.index_states.items())
        self.index_label.setText(f"{len(result.hits)} hits for '{title}' ({states})")
        self.status.set_provider(getattr(result, "provider", None))
        self.hit_layers = add_search_layers(result, title)
        self.results_list.clear()
        for hit in result.hits:
            item = QListWidgetItem(f"#{hit.rank}  score {hit.score:.3f}  {Path(str(hit.source)).name}")
            item.setData(Qt.UserRole, hit)
            thumb = self.thumbnail(hit)
            if thumb is not None:
                item.setIcon(QIcon(thumb))
            self.results_list.addItem(item)

    def _failed(self, message: str) -> None:
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
        self.zoom_to_hit(item.data(Qt.UserRole))

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
