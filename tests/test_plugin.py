"""The QGIS plugin, offscreen: loading through classFactory, the classify task, the search dock."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from plugin_support import s2_crop

pytest.importorskip("qgis.core")

from qgis.core import (
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsPalettedRasterRenderer,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QPoint, Qt
from qgis.PyQt.QtTest import QTest

from rs_clip_plugin.installed_bundles import MemorySettings, ModelStore

pytestmark = pytest.mark.qgis
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def crop(tmp_path: Path, major_tom_dir: Path) -> Path:
    return s2_crop(major_tom_dir, tmp_path / "data" / "s2_crop.tif")


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models", MemorySettings())


@pytest.fixture
def layer(crop: Path, qgis_new_project) -> QgsRasterLayer:
    lyr = QgsRasterLayer(str(crop), "s2 crop")
    assert lyr.isValid()
    QgsProject.instance().addMapLayer(lyr)
    return lyr


def test_package_imports_without_qgis() -> None:
    code = "import sys; sys.modules['qgis'] = None; import rs_clip_plugin, rs_clip_plugin.engine.bundle; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_plugin_loads_and_unloads(qgis_iface) -> None:
    import rs_clip_plugin

    plugin = rs_clip_plugin.classFactory(qgis_iface)
    plugin.initGui()
    try:
        provider = QgsApplication.processingRegistry().providerById("rsclip")
        assert provider is not None
        assert sorted(a.name() for a in provider.algorithms()) == ["archive_add", "archive_search", "classify", "heatmap", "index", "search"]
        assert [a.text() for a in plugin.actions][:2] == ["Classify layer by prompt…", "Map search panel"]
        # Two tools, two icons: the toolbar buttons must not look identical (issue 10, #11).
        shown = [a.icon().pixmap(32, 32).toImage() for a in plugin.toolbar.actions()]
        assert len(shown) == 2 and shown[0] != shown[1]
        dock = plugin.toggle_search()
        assert dock is not None and dock.widget() is not None
    finally:
        plugin.unload()
    assert QgsApplication.processingRegistry().providerById("rsclip") is None
    assert plugin.dock is None


def _new_layers(before: set) -> list:
    return [lyr for lid, lyr in QgsProject.instance().mapLayers().items() if lid not in before]


def click(button) -> None:
    """A real mouse click on a button (what a user does; never the handler behind it)."""
    assert button.isEnabled(), f"{button.text()} is disabled"
    QTest.mouseClick(button, Qt.LeftButton)


def click_run(dlg):
    """Click Classify; the task it started (None when the dialog refused, with its message)."""
    dlg.task = None
    click(dlg.run_btn)
    return dlg.task


def ready_dialog(iface, store, layer, bundle: Path, out: Path, classes: list[str]):
    """The classify dialog with a layer, a bundle, classes and an output folder chosen, ready to click."""
    from rs_clip_plugin.gui.classify_dialog import ClassifyDialog

    dlg = ClassifyDialog(iface, store=store)
    dlg.layer_combo.setLayer(layer)
    dlg.set_bundle_path(bundle)
    dlg.set_classes(classes)
    dlg.out_widget.setFilePath(str(out))
    return dlg


def show_canvas_at(canvas, layer, rect: QgsRectangle) -> None:
    canvas.resize(400, 400)
    canvas.setDestinationCrs(layer.crs())
    canvas.setExtent(rect)
    canvas.refresh()
    QgsApplication.processEvents()


def test_classify_task_adds_styled_layers(qgis_iface, layer, store, tiny_bundle, tmp_path) -> None:
    from rs_clip_plugin.gui.classify_dialog import EXTENTS, ClassifyDialog
    from rs_clip_plugin.gui.tasks import wait_for

    # A small extent (2x2 tiles of the bundle's 640 m) keeps the test fast: the user zooms there first.
    e = layer.extent()
    show_canvas_at(qgis_iface.mapCanvas(), layer, QgsRectangle(e.xMinimum(), e.yMaximum() - 1280,
                                                              e.xMinimum() + 1280, e.yMaximum()))
    dlg = ClassifyDialog(qgis_iface, store=store)
    dlg.layer_combo.setLayer(layer)
    assert "s2-l2a" in dlg.detected_label.text() and "B04" in dlg.detected_label.text()
    dlg.set_bundle_path(tiny_bundle)
    dlg.set_classes(["forest", "river", "town"], ["#00aa00", "#0000ff", "#ff0000"])
    dlg.out_widget.setFilePath(str(tmp_path / "out"))
    dlg.extent_combo.setCurrentIndex(EXTENTS.index("Current map canvas"))
    before = set(QgsProject.instance().mapLayers())
    task = click_run(dlg)  # failed on every click before: Qt's 'checked' flag reached run(extent_override)
    assert task is not None, dlg.message_label.text()
    assert wait_for(task), dlg.message_label.text()

    added = _new_layers(before)
    # classes.gpkg (on by default in the dialog): the polygons with names, in the chosen colours.
    polygons = next(lyr for lyr in added if lyr.name().endswith("polygons"))
    assert isinstance(polygons, QgsVectorLayer) and polygons.featureCount() > 0
    assert {f["class"] for f in polygons.getFeatures()} <= {"forest", "river", "town"}
    assert polygons.renderer().type() == "categorizedSymbol"
    assert {c.value(): c.symbol().color().name() for c in polygons.renderer().categories()}["river"] == "#0000ff"
    labels = next(lyr for lyr in added if lyr.name().endswith("classes"))
    conf = next(lyr for lyr in added if lyr.name().endswith("confidence"))
    renderer = labels.renderer()
    assert isinstance(renderer, QgsPalettedRasterRenderer)
    assert [c.label for c in renderer.classes()] == ["forest", "river", "town"]
    assert [c.color.name() for c in renderer.classes()] == ["#00aa00", "#0000ff", "#ff0000"]
    assert conf.renderer().type() == "singlebandpseudocolor"
    assert dlg.area_table.rowCount() >= 3
    assert "CPU (" in dlg.status.text() and "thread" in dlg.status.text()
    assert "ExecutionProvider" not in dlg.status.text()
    outs = list((tmp_path / "out").iterdir())
    assert len(outs) == 1 and not outs[0].name.startswith(".")
    assert {p.name for p in outs[0].iterdir()} >= {"labels.tif", "confidence.tif", "labels.qml", "summary.json"}
    # The dialog passes its result folder to the engine: summary.json names the files where they are (it used
    # to name a staging folder that no longer existed).
    files = json.loads((outs[0] / "summary.json").read_text())["files"]
    assert all(Path(f).is_file() and Path(f).parent == outs[0] for f in files.values()), files


def test_classify_canvas_extent(qgis_iface, layer, store, tiny_bundle, tmp_path) -> None:
    """'Current map canvas': the canvas extent (in the map's CRS) becomes the classified area in the layer's CRS."""
    import rasterio

    from rs_clip_plugin.gui.classify_dialog import EXTENTS
    from rs_clip_plugin.gui.tasks import wait_for

    canvas = qgis_iface.mapCanvas()
    mercator = QgsCoordinateReferenceSystem("EPSG:3857")
    canvas.setDestinationCrs(mercator)
    e = layer.extent()
    to_map = QgsCoordinateTransform(layer.crs(), mercator, QgsProject.instance())
    want = QgsRectangle(e.xMinimum() + 300, e.yMaximum() - 700, e.xMinimum() + 700, e.yMaximum() - 300)
    canvas.setExtent(to_map.transformBoundingBox(want))
    dlg = ready_dialog(qgis_iface, store, layer, tiny_bundle, tmp_path / "out", ["forest", "water"])
    dlg.extent_combo.setCurrentIndex(EXTENTS.index("Current map canvas"))

    x0, y0, x1, y1 = dlg.extent(layer)
    # The canvas widens the extent to its own aspect ratio; the dialog clips what it shows to the layer.
    shown = QgsCoordinateTransform(mercator, layer.crs(), QgsProject.instance()).transformBoundingBox(canvas.extent())
    shown = shown.intersect(e)
    assert (x0, y0, x1, y1) == pytest.approx(
        (shown.xMinimum(), shown.yMinimum(), shown.xMaximum(), shown.yMaximum()), abs=1e-3)
    assert (x1 - x0) * (y1 - y0) < e.width() * e.height() / 2  # a part of the layer, not all of it

    task = click_run(dlg)
    assert task is not None, dlg.message_label.text()
    assert wait_for(task), dlg.message_label.text()
    with rasterio.open(dlg.result.labels_path) as ds:
        b = ds.bounds
    # The class map covers the canvas area (tiles may round it out by one tile), not the whole layer.
    assert b.left <= x0 + 1 and b.top >= y1 - 1 and b.right >= x1 - 1 and b.bottom <= y0 + 1
    assert (b.right - b.left) * (b.top - b.bottom) < e.width() * e.height()

    canvas.setExtent(to_map.transformBoundingBox(QgsRectangle(e.xMaximum() + 5000, e.yMinimum(),
                                                              e.xMaximum() + 6000, e.yMinimum() + 1000)))
    # What the user sees when the map shows somewhere else: Classify refuses and says why, nothing runs.
    assert click_run(dlg) is None
    assert "does not overlap" in dlg.message_label.text()


def test_classify_dialog_keeps_class_table_tall(qgis_iface, layer, store) -> None:
    """With the area table shown the class table still shows >= 6 rows (the dialog scrolls / splits instead)."""
    from rs_clip_plugin.gui.classify_dialog import MIN_CLASS_ROWS, ClassifyDialog, table_height

    dlg = ClassifyDialog(qgis_iface, store=store)
    dlg.set_classes([f"class {i}" for i in range(10)])
    dlg.fill_area_table({"classes": [{"name": f"class {i}", "pixels": 10, "area_ha": 1.0} for i in range(10)],
                         "valid_pixels": 100})
    dlg.resize(620, 600)  # shorter than the content: it must scroll, not squeeze
    dlg.show()
    QgsApplication.processEvents()
    try:
        assert dlg.area_table.isVisible()
        # Rows the user actually sees, counted from the viewport (not the dialog's own constants).
        assert dlg.classes_table.viewport().height() // dlg.classes_table.rowHeight(0) >= 6
        assert dlg.classes_table.height() >= table_height(dlg.classes_table, MIN_CLASS_ROWS)
        assert dlg.area_table.height() >= table_height(dlg.area_table, 3)
    finally:
        dlg.close()


def test_cancelled_classify_leaves_nothing(qgis_iface, store, tiny_bundle, major_tom_dir, tmp_path) -> None:
    import time

    from rs_clip_plugin.gui.tasks import wait_for

    # The whole scene (289 tiles), so that Cancel lands while the engine embeds tiles, not on a queued task.
    scene = QgsRasterLayer(str(s2_crop(major_tom_dir, tmp_path / "data" / "scene.tif", size=1068, col=0, row=0)),
                           "whole scene")
    QgsProject.instance().addMapLayer(scene)
    dlg = ready_dialog(qgis_iface, store, scene, tiny_bundle, tmp_path / "out", ["forest", "water"])
    before = set(QgsProject.instance().mapLayers())
    task = click_run(dlg)
    deadline = time.monotonic() + 60
    while task.progress() < 5 and time.monotonic() < deadline:  # the engine reports progress per batch of tiles
        QgsApplication.processEvents()
        time.sleep(0.005)
    assert 5 <= task.progress() < 90, task.progress()
    click(dlg.cancel_btn)
    assert not wait_for(task)
    assert _new_layers(before) == []
    out = tmp_path / "out"
    assert not out.exists() or list(out.iterdir()) == []
    assert "cancelled" in dlg.message_label.text()


def test_search_dock_returns_hits_and_zooms(qgis_iface, layer, store, tiny_bundle) -> None:
    from rs_clip_plugin.gui.search_dock import SearchDock
    from rs_clip_plugin.gui.tasks import wait_for

    canvas = qgis_iface.mapCanvas()
    canvas.setDestinationCrs(layer.crs())
    canvas.setExtent(layer.extent())
    dock = SearchDock(qgis_iface, store=store)
    try:
        dock.set_bundle_path(tiny_bundle)
        assert dock.checked_layers() == [layer]
        QTest.keyClicks(dock.query_edit, "a river")
        dock.topk_spin.setValue(3)
        dock.heatmap_check.setChecked(True)
        before = set(QgsProject.instance().mapLayers())
        click(dock.search_btn)
        task = dock.task
        assert task is not None, dock.index_label.text()
        assert wait_for(task), dock.index_label.text()
        assert len(dock.result.hits) == 3
        assert dock.results_list.count() == 3
        assert not dock.results_list.item(0).icon().isNull()  # thumbnail rendered from the layer
        added = _new_layers(before)
        hits = [lyr for lyr in added if isinstance(lyr, QgsVectorLayer)]
        assert len(hits) == 1 and hits[0].featureCount() == 3
        assert any(isinstance(lyr, QgsRasterLayer) and "similarity" in lyr.name() for lyr in added)
        assert "index built" in dock.index_label.text()

        canvas.setExtent(QgsRectangle(0, 0, 1000, 1000))  # somewhere else, so the zoom must move the map
        old = QgsRectangle(canvas.extent())
        rect = dock.results_list.visualItemRect(dock.results_list.item(0))
        dock.results_list.resize(300, 400)
        QTest.mouseClick(dock.results_list.viewport(), Qt.LeftButton, Qt.NoModifier, rect.center())
        new = canvas.extent()
        assert new != old
        x0, y0, x1, y1 = dock.result.hits[0].bounds
        assert new.contains(QgsRectangle(x0, y0, x1, y1))

        # Second search: the index is reused, and a find-similar query from a map click works.
        show_canvas_at(canvas, layer, layer.extent())
        qgis_iface.setActiveLayer(layer)
        click(dock.similar_btn)
        assert dock.query_layer_combo.currentLayer() == layer  # 'Example from' follows the active layer
        pixel = canvas.getCoordinateTransform().transform(layer.extent().center())
        dock.task = None
        QTest.mouseClick(canvas.viewport(), Qt.LeftButton, Qt.NoModifier, QPoint(int(pixel.x()), int(pixel.y())))
        task = dock.task
        assert task is not None, dock.index_label.text()
        assert wait_for(task), dock.index_label.text()
        assert dock.result.hits and "index reused" in dock.index_label.text()
    finally:
        dock.cleanup()


def _one_band(crop: Path, out: Path) -> Path:
    """A 1-band raster (B04 alone): no bundle encoder can read it."""
    import rasterio

    with rasterio.open(crop) as src:
        profile = src.profile.copy()
        profile.update(count=1)
        with rasterio.open(out, "w", **profile) as dst:
            dst.write(src.read(3), 1)
            dst.set_band_description(1, "B04")
    return out


def test_search_skips_unreadable_layers_and_replaces_results(qgis_iface, layer, crop, store, tiny_bundle, tmp_path) -> None:
    """One odd layer must not abort a search (issue 10, #4); RS-CLIP's own outputs are never candidates; a new
    search replaces the previous one's layers unless pinned (#8)."""
    from rs_clip_plugin.gui.search_dock import SearchDock
    from rs_clip_plugin.gui.tasks import wait_for

    band = QgsRasterLayer(str(_one_band(crop, tmp_path / "B04.tif")), "B04 only")
    QgsProject.instance().addMapLayer(band)
    dock = SearchDock(qgis_iface, store=store)
    try:
        dock.set_bundle_path(tiny_bundle)
        dock.out_widget.setFilePath(str(tmp_path / "results"))
        items = {dock.layers_list.item(i).data(Qt.UserRole): dock.layers_list.item(i)
                 for i in range(dock.layers_list.count())}
        assert items[layer.id()].checkState() == Qt.Checked
        assert items[band.id()].checkState() == Qt.Unchecked  # listed, greyed, with its reason
        assert "B04 only" in dock.skipped_label.text()

        def search(text: str):
            dock.query_edit.clear()
            QTest.keyClicks(dock.query_edit, text)
            dock.heatmap_check.setChecked(True)
            click(dock.search_btn)
            assert dock.task is not None, dock.index_label.text()
            assert wait_for(dock.task), dock.index_label.text()

        search("a river")
        assert dock.result.hits
        groups = lambda: [g.name() for g in QgsProject.instance().layerTreeRoot().children()  # noqa: E731
                          if g.name().startswith("RS-CLIP search:")]
        assert len(groups()) == 1
        # Our own heat map is never offered as a search input.
        listed = {dock.layers_list.item(i).data(Qt.UserRole) for i in range(dock.layers_list.count())}
        assert not any("similarity" in QgsProject.instance().mapLayer(lid).name() for lid in listed)
        assert listed == {layer.id(), band.id()}
        search("a town")
        assert len(groups()) == 1, "the previous search's heat map stayed under the new one"
        dock.pin_check.setChecked(True)
        search("a field")
        assert len(groups()) == 2
        outs = [p for p in (tmp_path / "results").iterdir() if not p.name.startswith(".")]
        assert len(outs) == 3  # written where the user chose, one folder per search
    finally:
        dock.cleanup()


def test_search_goes_on_when_a_ticked_layer_fails(qgis_iface, layer, store, tiny_bundle, tmp_path) -> None:
    """A layer that breaks while indexing (a truncated file) is skipped with one line; the others are searched."""
    from rs_clip_plugin.gui.search_dock import SearchDock
    from rs_clip_plugin.gui.tasks import wait_for

    dock = SearchDock(qgis_iface, store=store)
    try:
        dock.set_bundle_path(tiny_bundle)
        dock.out_widget.setFilePath(str(tmp_path / "results"))
        broken = tmp_path / "broken.tif"
        broken.write_bytes(Path(layer.source()).read_bytes())
        lyr = QgsRasterLayer(str(broken), "broken copy")
        QgsProject.instance().addMapLayer(lyr)
        with open(broken, "r+b") as f:  # truncated after QGIS opened it, as a failing disk or download would
            f.truncate(broken.stat().st_size // 3)
        dock.refresh_layers()
        for i in range(dock.layers_list.count()):  # tick it even if the list greyed it: the job must cope
            it = dock.layers_list.item(i)
            if it.data(Qt.UserRole) == lyr.id():
                it.setFlags(it.flags() | Qt.ItemIsUserCheckable | Qt.ItemIsEnabled)
                it.setCheckState(Qt.Checked)
        QTest.keyClicks(dock.query_edit, "a river")
        click(dock.search_btn)
        assert dock.task is not None, dock.index_label.text()
        assert wait_for(dock.task), dock.index_label.text()
        assert dock.result.hits
        assert "skipped broken copy" in dock.index_label.text()
    finally:
        dock.cleanup()


def test_classify_dialog_starts_ready(qgis_iface, layer, crop, store) -> None:
    """The class table shows the preset the combo shows; the layer is the active one (issue 10, #11)."""
    from rs_clip_plugin.gui.classify_dialog import ClassifyDialog
    from rs_clip_plugin.presets import preset_classes

    other = QgsRasterLayer(str(crop), "second layer")
    QgsProject.instance().addMapLayer(other)
    qgis_iface.setActiveLayer(other)
    dlg = ClassifyDialog(qgis_iface, store=store)
    try:
        assert dlg.layer_combo.currentLayer() == other
        assert [n for n, _ in dlg.classes()] == preset_classes(dlg.preset_combo.currentText(), "en")
        dlg.preset_combo.setCurrentIndex(1)
        assert [n for n, _ in dlg.classes()] == preset_classes(dlg.preset_combo.currentText(), "en")
        assert dlg.bundle_combo.currentText() != ""
    finally:
        dlg.close()


def test_search_refuses_a_language_the_bundle_does_not_know(qgis_iface, layer, store, tiny_bundle) -> None:
    """An English-only bundle must not silently read 'ein Hafen' as English (issue 10, #11)."""
    from rs_clip_plugin.gui.search_dock import SearchDock

    dock = SearchDock(qgis_iface, store=store)
    try:
        dock.set_bundle_path(tiny_bundle)
        QTest.keyClicks(dock.query_edit, "ein Hafen")
        dock.task = None
        click(dock.search_btn)
        assert dock.task is None
        assert "German" in dock.index_label.text() and "Model bundle" in dock.index_label.text()
    finally:
        dock.cleanup()


def test_classify_errors_name_the_dialog_fields(qgis_iface, layer, store, tiny_bundle, tmp_path) -> None:
    """Errors speak the dialog's words: the field to change and the layer's name, never a CLI flag or a long
    path (issue 10, #6)."""
    from rs_clip_plugin.gui.classify_dialog import ClassifyDialog
    from rs_clip_plugin.gui.tasks import wait_for

    dlg = ClassifyDialog(qgis_iface, store=store)
    dlg.layer_combo.setLayer(layer)
    dlg.set_bundle_path(tiny_bundle)
    dlg.out_widget.setFilePath(str(tmp_path / "out"))
    dlg.sensor_combo.setCurrentText("s1-grd")  # wrong for a Sentinel-2 crop
    task = click_run(dlg)
    if task is not None:
        assert not wait_for(task)
    text = dlg.message_label.text()
    assert "‘Sensor’" in text and "s1-grd" in text
    assert "--" not in text and layer.source() not in text and f"‘{layer.name()}’" in text


def test_output_folder_is_remembered(qgis_iface, layer, store, tmp_path) -> None:
    """A folder chosen once is where the next run of either tool writes (QGIS remembers it; issue 10, #7)."""
    from qgis.core import QgsSettings

    from rs_clip_plugin.gui.classify_dialog import ClassifyDialog
    from rs_clip_plugin.gui.outputs import OUTPUT_KEY
    from rs_clip_plugin.gui.search_dock import SearchDock

    QgsSettings().remove(OUTPUT_KEY)
    dlg = ClassifyDialog(qgis_iface, store=store)
    assert ".cache" not in dlg.out_widget.filePath()  # never a hidden folder
    chosen = tmp_path / "my results"
    dlg.out_widget.lineEdit().clear()
    QTest.keyClicks(dlg.out_widget.lineEdit(), str(chosen))
    dlg.close()
    dock = SearchDock(qgis_iface, store=store)
    try:
        assert dock.out_widget.filePath() == str(chosen)
    finally:
        dock.cleanup()
        QgsSettings().remove(OUTPUT_KEY)


def test_unknown_is_in_the_legend_and_the_area_table(qgis_iface, layer, store, tiny_bundle, tmp_path) -> None:
    """With a threshold, 'unknown' is a value of its own: listed in the legend like in the area table (#11)."""
    from rs_clip_plugin.gui.tasks import wait_for

    dlg = ready_dialog(qgis_iface, store, layer, tiny_bundle, tmp_path / "out", ["forest", "water"])
    dlg.threshold_check.setChecked(True)
    dlg.threshold_spin.setValue(0.99)  # a random-weight bundle is never that sure: mostly unknown
    task = click_run(dlg)
    assert task is not None and wait_for(task), dlg.message_label.text()
    labels = dlg.result_layers[0]
    assert [c.label for c in labels.renderer().classes()] == ["forest", "water", "unknown"]
    table = [dlg.area_table.item(r, 0).text() for r in range(dlg.area_table.rowCount())]
    assert table[-1] == "unknown"


def test_background_field_makes_background_unknown(qgis_iface, layer, crop, store, tiny_bundle, tmp_path) -> None:
    """Typing background prompts in 'Background' (and picking 'max' in 'Synonyms'): the pixels they win are
    'background / unknown', in the legend and the area table; a prompt that is also a class is refused in the
    dialog's words."""
    import numpy as np
    import rasterio

    from rs_clip_plugin.engine.classes import BACKGROUND_UNKNOWN
    from rs_clip_plugin.engine.classify import classify_raster
    from rs_clip_plugin.gui.tasks import wait_for

    candidates = ["forest", "water", "town", "annual crop"]
    probe = classify_raster(crop, candidates, tmp_path / "probe", bundle=tiny_bundle, provider="cpu")
    with rasterio.open(probe.labels_path) as ds:
        values, counts = np.unique(ds.read(1), return_counts=True)
    back = candidates[int(values[counts.argmax()]) - 1]  # wins pixels whatever the random weights
    classes = [c for c in candidates if c != back]
    dlg = ready_dialog(qgis_iface, store, layer, tiny_bundle, tmp_path / "out", classes)
    QTest.keyClicks(dlg.background_edit, f"{back};a cloud")
    dlg.synonyms_combo.setFocus()
    QTest.keyClicks(dlg.synonyms_combo, "max")
    assert dlg.synonyms_combo.currentText() == "max"
    task = click_run(dlg)
    assert task is not None and wait_for(task), dlg.message_label.text()
    s = dlg.result.summary
    assert s["background"] == [back, "a cloud"] and s["synonyms"] == "max"
    assert [c.label for c in dlg.result_layers[0].renderer().classes()] == [*classes, BACKGROUND_UNKNOWN]
    table = [dlg.area_table.item(r, 0).text() for r in range(dlg.area_table.rowCount())]
    assert table[-1] == BACKGROUND_UNKNOWN and s["unknown"]["pixels"] > 0
    dlg.background_edit.clear()
    QTest.keyClicks(dlg.background_edit, classes[0])
    task = click_run(dlg)
    if task is not None:
        assert not wait_for(task)
    text = dlg.message_label.text()
    assert "‘Background’" in text and "also one of the classes" in text and "--" not in text


def test_search_dock_searches_an_archive(qgis_iface, crop, store, tiny_bundle, tmp_path) -> None:
    """'Search in: An archive folder': a text query over an archive's ANN index; hits name scene and date; a
    click loads the scene and zooms to the hit (issue 13, plugin part)."""
    from rs_clip_plugin.engine.archive import create_archive
    from rs_clip_plugin.gui.search_dock import ARCHIVE_SCOPE, SCOPES, SearchDock
    from rs_clip_plugin.gui.tasks import wait_for

    scene = tmp_path / "S2A_MSIL2A_20210603T034541_N0300_R104_T48PUV_crop.tif"
    scene.write_bytes(crop.read_bytes())
    arc = tmp_path / "archive"
    create_archive(arc, tiny_bundle).add([str(scene)], provider="cpu")
    canvas = qgis_iface.mapCanvas()
    canvas.resize(400, 400)
    dock = SearchDock(qgis_iface, store=store)
    try:
        dock.set_bundle_path(tiny_bundle)
        dock.out_widget.setFilePath(str(tmp_path / "results"))
        dock.scope_combo.setCurrentIndex(SCOPES.index(ARCHIVE_SCOPE))
        assert dock.archive_widget.isVisibleTo(dock) and not dock.layers_list.isVisibleTo(dock)
        dock.archive_widget.lineEdit().clear()  # QGIS remembers the last archive: the user types a new one
        QTest.keyClicks(dock.archive_widget.lineEdit(), str(arc))
        QTest.keyClicks(dock.query_edit, "a river")
        dock.topk_spin.setValue(3)
        click(dock.search_btn)
        assert dock.task is not None, dock.index_label.text()
        assert wait_for(dock.task), dock.index_label.text()
        assert dock.results_list.count() == 3
        assert "2021-06-03" in dock.results_list.item(0).text()  # the scene's date from its product name
        before = set(QgsProject.instance().mapLayers())
        dock.results_list.resize(300, 400)
        rect = dock.results_list.visualItemRect(dock.results_list.item(0))
        QTest.mouseClick(dock.results_list.viewport(), Qt.LeftButton, Qt.NoModifier, rect.center())
        added = _new_layers(before)
        assert len(added) == 1 and Path(added[0].source()) == scene
        hit = dock.result.hits[0]
        wgs84 = QgsCoordinateReferenceSystem("EPSG:4326")
        to_map = QgsCoordinateTransform(wgs84, canvas.mapSettings().destinationCrs(), QgsProject.instance())
        assert canvas.extent().contains(to_map.transformBoundingBox(QgsRectangle(*hit.lonlat)))
        assert (tmp_path / "results").is_dir() and list((tmp_path / "results").glob("*/hits.gpkg"))
    finally:
        dock.cleanup()


def test_classify_mode_and_precision_fields(qgis_iface, layer, store, tiny_bundle, tmp_path) -> None:
    """Mode and Precision are the dialog's fields for the engine's options; what ran is said with the device."""
    from rs_clip_plugin.gui.tasks import wait_for

    dlg = ready_dialog(qgis_iface, store, layer, tiny_bundle, tmp_path / "out", ["forest", "water"])
    dlg.mode_combo.setCurrentText("tile")
    dlg.precision_combo.setCurrentText("fp32")
    task = click_run(dlg)
    assert task is not None and wait_for(task), dlg.message_label.text()
    assert dlg.result.summary["mode"] == "tile" and dlg.result.summary["precision"] == "fp32"
    assert "fp32, tile mode" in dlg.status.text()
    dlg.mode_combo.setCurrentText("dense")
    dlg.precision_combo.setCurrentText("int8")  # the int8 twin serves tile mode only: refused, in the dialog's words
    task = click_run(dlg)
    if task is not None:
        assert not wait_for(task)
    assert "‘Mode’" in dlg.message_label.text() or "‘Precision’" in dlg.message_label.text()
