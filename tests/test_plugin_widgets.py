"""Option widgets driven as a user drives them (clicks, typing, the keyboard in combos, the file dialog), each
checked by what the user gets from it: the files a run writes, what the run reports, what is installed.

A widget that is set from code in a test proves nothing about its wiring; these tests never call a dialog's
method to set an option, so each fails if its widget stops reaching the job.
"""

from __future__ import annotations

import hashlib
import sqlite3
import sys
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("qgis.core")

from plugin_support import s2_crop, s2_l2a_crop
from qgis.core import QgsApplication, QgsProject, QgsRasterLayer, QgsVectorLayer
from qgis.PyQt.QtCore import Qt, QTimer
from qgis.PyQt.QtTest import QTest
from qgis.PyQt.QtWidgets import QApplication, QDialog, QFileDialog, QLineEdit
from test_plugin import click, click_run, crop, layer, ready_dialog, store  # noqa: F401  (fixtures)

pytestmark = pytest.mark.qgis


# -- what a user does -------------------------------------------------------------------------------------
def type_into(widget, text: str) -> None:
    """Click into a field, select what it holds (Ctrl+A), type ``text`` and leave it with Tab."""
    QTest.mouseClick(widget, Qt.LeftButton)
    QTest.keyClick(widget, Qt.Key_A, Qt.ControlModifier)
    QTest.keyClicks(widget, text)
    QTest.keyClick(widget, Qt.Key_Tab)


def pick(combo, text: str) -> None:
    """Choose ``text`` in a combo box with the arrow keys."""
    target = combo.findText(text)
    assert target >= 0, f"{text!r} is not offered ({[combo.itemText(i) for i in range(combo.count())]})"
    combo.setFocus()
    key = Qt.Key_Down if target > combo.currentIndex() else Qt.Key_Up
    while combo.currentIndex() != target:
        before = combo.currentIndex()
        QTest.keyClick(combo, key)
        assert combo.currentIndex() != before, "the combo does not follow the arrow keys"
    assert combo.currentText() == text


def answer_file_dialog(path: str, log: list) -> QTimer:
    """Type ``path`` into the file dialog about to open (Qt's own, as offscreen) and press Enter. A dialog
    still open after 20 s is rejected, so a test cannot hang on it. Returns the watchdog (keep a reference)."""
    def attempt(n: int = 0) -> None:
        dlg = QApplication.activeModalWidget()
        if not isinstance(dlg, QFileDialog):
            if n < 100:
                QTimer.singleShot(100, lambda: attempt(n + 1))
            else:
                log.append("no file dialog appeared")
            return
        edit = dlg.findChild(QLineEdit, "fileNameEdit")
        assert edit is not None, "the file dialog has no file name field"
        edit.setFocus()
        QTest.keyClicks(edit, path)
        QTest.keyClick(edit, Qt.Key_Return)
        log.append(f"typed {path}")

    def watchdog() -> None:
        dlg = QApplication.activeModalWidget()
        if isinstance(dlg, QDialog):
            log.append("file dialog still open: rejected")
            dlg.reject()

    QTimer.singleShot(100, attempt)
    timer = QTimer()
    timer.setSingleShot(True)
    timer.timeout.connect(watchdog)
    timer.start(20000)
    return timer


def wait_until(cond, timeout_s: float = 120.0) -> bool:
    import time

    t0 = time.monotonic()
    while not cond() and time.monotonic() - t0 < timeout_s:
        QgsApplication.processEvents()
        time.sleep(0.02)
    return bool(cond())


def _polygon_pixels(gpkg: Path) -> list[int]:
    con = sqlite3.connect(gpkg)
    try:
        return sorted(r[0] for r in con.execute('SELECT pixels FROM "classes"'))
    finally:
        con.close()


# -- classify dialog --------------------------------------------------------------------------------------
def test_classify_polygons_box_and_mapping_unit(qgis_iface, layer, store, tiny_bundle, tmp_path) -> None:  # noqa: F811
    """Unticking 'Polygons' writes no classes.gpkg and loads no polygon layer; ticking it again and typing a
    minimum mapping unit merges the patches under it (the tiny bundle's class map has patches of 2-50 px)."""
    from rs_clip_plugin.gui.tasks import wait_for

    dlg = ready_dialog(qgis_iface, store, layer, tiny_bundle, tmp_path / "out", ["forest", "river", "town"])
    dlg.show()
    try:
        assert dlg.polygons_check.isChecked()  # on by default
        assert dlg.mmu_spin.isEnabled()
        click(dlg.polygons_check)
        assert not dlg.polygons_check.isChecked() and not dlg.mmu_spin.isEnabled()  # its unit greyed out with it
        before = set(QgsProject.instance().mapLayers())
        task = click_run(dlg)
        assert task is not None and wait_for(task), dlg.message_label.text()
        folder = Path(dlg.result.labels_path).parent
        assert not (folder / "classes.gpkg").exists() and dlg.result.summary["polygons"] is None
        added = [lyr for lid, lyr in QgsProject.instance().mapLayers().items() if lid not in before]
        assert added and not any(isinstance(lyr, QgsVectorLayer) for lyr in added)

        click(dlg.polygons_check)
        type_into(dlg.mmu_spin, "0.5")
        assert dlg.mmu_spin.value() == 0.5
        task = click_run(dlg)
        assert task is not None and wait_for(task), dlg.message_label.text()
        poly = dlg.result.summary["polygons"]
        assert poly["mmu_ha"] == 0.5 and poly["mmu_pixels"] == 50  # 0.5 ha of 10 m pixels
        assert poly["sieved_pixels"] > 0  # there were patches under the unit, and they went
        pixels = _polygon_pixels(Path(dlg.result.summary["files"]["polygons"]))
        assert pixels and min(pixels) >= 50
    finally:
        dlg.close()


def test_classify_refine_edges_reaches_the_job(qgis_iface, layer, store, tiny_bundle, plain_bundle,  # noqa: F811
                                                tmp_path) -> None:
    """'Refine edges' picked with the keyboard is the refinement the run records in summary.json; the combo is
    greyed out, saying why, while Mode is 'tile' or the bundle has no dense outputs; and a run that labels per
    tile anyway (Mode auto at int8) is refused in the dialog's words, naming 'Refine edges'."""
    import json

    from rs_clip_plugin.gui.tasks import wait_for

    dlg = ready_dialog(qgis_iface, store, layer, tiny_bundle, tmp_path / "out", ["forest", "river", "town"])
    dlg.show()
    try:
        combo = dlg.refine_combo
        assert combo.objectName() == "rsclip_refine_combo" and combo.currentText() == "none" and combo.isEnabled()
        pick(dlg.mode_combo, "tile")
        assert not combo.isEnabled() and "Mode ‘tile’ gives one label per tile" in combo.toolTip()
        pick(dlg.mode_combo, "auto")
        assert combo.isEnabled() and "Not available" not in combo.toolTip()
        pick(combo, "pamr")
        pick(dlg.precision_combo, "fp32")
        task = click_run(dlg)
        assert task is not None and wait_for(task), dlg.message_label.text()
        summary = json.loads((Path(dlg.result.labels_path).parent / "summary.json").read_text())
        assert summary["mode"] == "dense"
        assert summary["refine"] == {"method": "pamr", "iterations": 10, "dilations": [1, 2]}
        # int8 labels per tile in Mode auto: the engine refuses to refine, and the dialog names its field.
        pick(dlg.precision_combo, "int8")
        task = click_run(dlg)
        if task is not None:
            assert not wait_for(task)
        assert "‘Refine edges’ pamr refines dense labels" in dlg.message_label.text(), dlg.message_label.text()
        # A bundle without dense outputs labels per tile: greyed, with the reason.
        dlg.set_bundle_path(plain_bundle)
        assert not combo.isEnabled() and "no dense outputs" in combo.toolTip()
    finally:
        dlg.close()


# -- search dock ------------------------------------------------------------------------------------------
def show_layer_on_map(iface, raster) -> None:
    """The map showing ``raster``, which is the active layer (what a user sees before clicking the map)."""
    from test_plugin import show_canvas_at

    show_canvas_at(iface.mapCanvas(), raster, raster.extent())
    iface.setActiveLayer(raster)


def click_map_for_similar(dock, iface, raster) -> None:
    """'Find similar (click map)' then a click on the map at the layer's centre (show_layer_on_map first), as a
    user asks for tiles like the one under the cursor: a real click on the canvas, through the dock's map tool."""
    from qgis.PyQt.QtCore import QPoint

    canvas = iface.mapCanvas()
    click(dock.similar_btn)
    pixel = canvas.getCoordinateTransform().transform(raster.extent().center())
    QTest.mouseClick(canvas.viewport(), Qt.LeftButton, Qt.NoModifier, QPoint(int(pixel.x()), int(pixel.y())))


def type_output_folder(dock, folder: Path, query: str = "") -> None:
    """Type the dock's output folder (and a query, when given) as a user does."""
    dock.out_widget.lineEdit().clear()
    QTest.keyClicks(dock.out_widget.lineEdit(), str(folder))
    if query:
        QTest.keyClicks(dock.query_edit, query)


def test_search_precision_is_what_the_run_reports(qgis_iface, layer, store, tiny_bundle, tmp_path) -> None:  # noqa: F811
    """Each precision picked in 'Precision' is the one the search indexes and runs at, and the panel says
    so: int8 (the tiny bundle's int8 twin), then fp32. Unwired, both runs would report the same ('auto')."""
    from rs_clip_plugin.gui.search_dock import SearchDock
    from rs_clip_plugin.gui.tasks import wait_for

    dock = SearchDock(qgis_iface, store=store)
    try:
        dock.set_bundle_path(tiny_bundle)
        type_output_folder(dock, tmp_path / "results", "a river")
        assert dock.precision_combo.isVisibleTo(dock) and dock.precision_combo.currentText() == "auto"
        for precision in ("int8", "fp32"):
            pick(dock.precision_combo, precision)
            click(dock.search_btn)
            assert dock.task is not None, dock.index_label.text()
            assert wait_for(dock.task), dock.index_label.text()
            assert dock.result.hits and dock.result.precision == precision
            assert f", {precision}" in dock.status.text()
    finally:
        dock.cleanup()


def test_a_second_search_waits_for_the_running_one(qgis_iface, layer, store, tiny_bundle, tmp_path) -> None:  # noqa: F811
    """While a search runs, a 'Find similar' map click (its button stays usable) is refused with one line saying
    what to do, so 'Cancel' and the panel stay the running search's (two at once shared the lists the task fills
    from its thread, and 'Cancel' stopped only the second); after a search ended, done or cancelled, the next
    one starts."""
    from rs_clip_plugin.gui.search_dock import SearchDock
    from rs_clip_plugin.gui.tasks import wait_for

    dock = SearchDock(qgis_iface, store=store)
    try:
        dock.set_bundle_path(tiny_bundle)
        type_output_folder(dock, tmp_path / "results", "a river")
        show_layer_on_map(qgis_iface, layer)
        click(dock.search_btn)
        first = dock.task
        assert first is not None, dock.index_label.text()
        click_map_for_similar(dock, qgis_iface, layer)
        assert "a search is already running; wait for it to finish, or click Cancel" in dock.index_label.text()
        assert dock.task is first
        assert wait_for(first), dock.index_label.text()
        assert dock.task is None and dock.result.hits
        # A search that ends cancelled leaves the dock ready for the next.
        click(dock.search_btn)
        click(dock.cancel_btn)
        if dock.task is not None:  # still winding down in its thread (else it ended during the click)
            assert not wait_for(dock.task)
        assert dock.task is None and "cancelled" in dock.index_label.text(), dock.index_label.text()
        click(dock.search_btn)
        assert dock.task is not None and wait_for(dock.task), dock.index_label.text()
        assert dock.result.hits
    finally:
        dock.cleanup()


def _heat_resolution(dock) -> str:
    """The RSCLIP_HEATMAP tag ('patch' or 'tile') of the heat map layer the dock added to the map."""
    import rasterio

    heat = dock.hit_layers[1]
    assert heat is not None and QgsProject.instance().mapLayer(heat.id()) is heat, "no heat map layer on the map"
    with rasterio.open(heat.source()) as ds:
        return ds.tags()["RSCLIP_HEATMAP"]


def test_search_heat_map_per_patch_box(qgis_iface, layer, store, tiny_bundle, plain_bundle, multimodal_bundle,  # noqa: F811
                                       major_tom_dir, tmp_path) -> None:
    """'Heat map per patch' ticked gives a heat map layer scored per patch (tagged RSCLIP_HEATMAP=patch),
    unticked one per tile; the box is greyed, saying why, until a heat map is asked for and when the bundle's
    encoders have no dense outputs (then the map is per tile even with the box left ticked). A bundle with one
    dense encoder (rgb) but not the one reading the layer (its Sentinel-2 student): per tile, and the panel says
    so instead of skipping the layer."""
    import rasterio

    from rs_clip_plugin.gui.search_dock import SearchDock
    from rs_clip_plugin.gui.tasks import wait_for

    dock = SearchDock(qgis_iface, store=store)

    def search() -> str:
        click(dock.search_btn)
        assert dock.task is not None, dock.index_label.text()
        assert wait_for(dock.task), dock.index_label.text()
        return _heat_resolution(dock)

    dock.show()  # laid out, so a click lands on the check boxes
    try:
        dock.set_bundle_path(tiny_bundle)
        type_output_folder(dock, tmp_path / "results", "a river")
        box = dock.dense_check
        assert box.objectName() == "rsclip_dense_heatmap" and box.isVisibleTo(dock)
        assert not box.isEnabled() and "heat map" in box.toolTip()  # no heat map asked for yet
        click(dock.heatmap_check)
        assert box.isEnabled() and "P x D float16 per tile" in box.toolTip()
        assert search() == "tile"
        click(box)
        assert search() == "patch"
        assert dock.result.indexes[0]["patches"]["grid"] == [8, 8]
        # A bundle without dense outputs: greyed with the reason, and the (still ticked) box asks for nothing.
        dock.set_bundle_path(plain_bundle)
        assert not box.isEnabled() and "no dense outputs" in box.toolTip() and box.isChecked()
        assert search() == "tile"
        # Its rgb encoder is dense, its Sentinel-2 student is not: the 4-band layer gets a map per patch, the
        # 12-band one (read by the student) a map per tile, and the panel says so instead of skipping it.
        l2a = QgsRasterLayer(str(s2_l2a_crop(major_tom_dir, tmp_path / "l2a.tif")), "l2a crop")
        QgsProject.instance().addMapLayer(l2a)
        dock.set_bundle_path(multimodal_bundle)
        assert box.isEnabled() and len(dock.checked_layers()) == 2
        search()
        tags = {}
        for path in dock.result.heatmap_paths:
            with rasterio.open(path) as ds:
                tags[Path(ds.tags()["SOURCE"]).name] = ds.tags()["RSCLIP_HEATMAP"]
        assert tags == {Path(layer.source()).name: "patch", "l2a.tif": "tile"}
        assert "l2a crop: heat map per tile" in dock.index_label.text(), dock.index_label.text()
        assert "‘Heat map per patch’ needs an encoder with dense outputs" in dock.index_label.text()
    finally:
        dock.cleanup()


def test_heat_map_per_patch_greys_at_int8(qgis_iface, layer, store, tiny_bundle, tmp_path) -> None:  # noqa: F811
    """'Precision' int8 picked with 'Heat map per patch' ticked: the box greys saying to set ‘Precision’ to auto or
    fp32 (patches come from the fp32 graph), and the search runs at int8 with a heat map per tile. It used to
    fail every layer with 'dense mode runs the fp32 graph' and no fix in the dock's words."""
    from rs_clip_plugin.gui.search_dock import SearchDock
    from rs_clip_plugin.gui.tasks import wait_for

    dock = SearchDock(qgis_iface, store=store)
    dock.show()  # laid out, so a click lands on the check boxes
    try:
        dock.set_bundle_path(tiny_bundle)
        type_output_folder(dock, tmp_path / "results", "a river")
        click(dock.heatmap_check)
        click(dock.dense_check)
        pick(dock.precision_combo, "int8")
        assert not dock.dense_check.isEnabled() and dock.dense_check.isChecked()
        assert "set ‘Precision’ to auto or fp32" in dock.dense_check.toolTip(), dock.dense_check.toolTip()
        click(dock.search_btn)
        assert dock.task is not None and wait_for(dock.task), dock.index_label.text()
        assert dock.result.precision == "int8" and _heat_resolution(dock) == "tile"
        pick(dock.precision_combo, "fp32")  # back: the box asks for patches again
        assert dock.dense_check.isEnabled()
    finally:
        dock.cleanup()


def test_precision_errors_name_the_docks_precision_field(qgis_iface, layer, store, plain_bundle,  # noqa: F811
                                                         tmp_path) -> None:
    """A precision the bundle lacks (int8 of a bundle exported without twins), asked in the dock's 'Precision',
    is refused naming ‘Precision’, not the command line's --precision."""
    from rs_clip_plugin.gui.search_dock import SearchDock
    from rs_clip_plugin.gui.tasks import wait_for

    dock = SearchDock(qgis_iface, store=store)
    try:
        dock.set_bundle_path(plain_bundle)
        type_output_folder(dock, tmp_path / "results")
        pick(dock.precision_combo, "int8")
        show_layer_on_map(qgis_iface, layer)
        dock.task = None
        click_map_for_similar(dock, qgis_iface, layer)
        task = dock.task
        assert task is not None and not wait_for(task)
        text = dock.index_label.text()
        assert "has no int8 graph" in text and "set ‘Precision’ to auto or fp32" in text, text
        assert "command line" not in text, text
    finally:
        dock.cleanup()


def test_search_in_an_archive_between_typed_dates(qgis_iface, major_tom_dir, store, tiny_bundle, tmp_path) -> None:  # noqa: F811
    """'Search in' picked with the keyboard switches the dock to an archive; dates typed in 'Dates' keep only
    the scene taken then (two places of the sample scene, dated 2021 and 2022: without dates both have hits)."""
    from rs_clip_plugin.engine.archive import create_archive
    from rs_clip_plugin.gui.search_dock import ARCHIVE_SCOPE, SearchDock
    from rs_clip_plugin.gui.tasks import wait_for

    scenes = []
    for day, (col, row) in (("20210603", (300, 500)), ("20220710", (700, 100))):
        scenes.append(s2_crop(major_tom_dir, tmp_path / f"S2A_MSIL2A_{day}T034541_N0300_R104_T48PUV_crop.tif",
                              col=col, row=row))
    arc = tmp_path / "archive"
    create_archive(arc, tiny_bundle).add([str(s) for s in scenes], provider="cpu")
    dock = SearchDock(qgis_iface, store=store)
    try:
        dock.set_bundle_path(tiny_bundle)
        type_output_folder(dock, tmp_path / "results")
        assert not dock.dates_edit.isVisibleTo(dock)
        pick(dock.scope_combo, ARCHIVE_SCOPE)
        assert dock.dates_edit.isVisibleTo(dock) and not dock.layers_list.isVisibleTo(dock)
        # The archive's own model and index precision are used: the dock's fields for them are not offered.
        form = dock._form
        assert not any(w.isVisibleTo(dock) for w in (dock.precision_combo, form.labelForField(dock.precision_combo),
                                                      dock.bundle_combo, form.labelForField(dock.bundle_combo)))
        dock.archive_widget.lineEdit().clear()
        QTest.keyClicks(dock.archive_widget.lineEdit(), str(arc))
        type_into(dock.topk_spin, "50")  # more than both scenes' tiles together
        type_into(dock.dates_edit, "2022-01-01/2022-12-31")
        QTest.keyClicks(dock.query_edit, "a river")
        click(dock.search_btn)
        assert dock.task is not None, dock.index_label.text()
        assert wait_for(dock.task), dock.index_label.text()
        shown = [dock.results_list.item(i).text() for i in range(dock.results_list.count())]
        assert shown and all("2022-07-10" in t for t in shown), shown
        assert {h.scene for h in dock.result.hits} == {scenes[1].stem}
        # Dates cleared: both scenes come back (the filter above was the typed dates, not the archive).
        dock.dates_edit.clear()
        click(dock.search_btn)
        assert dock.task is not None and wait_for(dock.task), dock.index_label.text()
        assert {h.scene for h in dock.result.hits} == {s.stem for s in scenes}
        # Typed dates that are not dates: refused, naming the field.
        type_into(dock.dates_edit, "last summer")
        click(dock.search_btn)
        if dock.task is not None:
            assert not wait_for(dock.task)
        assert "‘Dates’" in dock.index_label.text(), dock.index_label.text()
    finally:
        dock.cleanup()


def test_archive_mode_offers_the_archive_bundles_languages(qgis_iface, major_tom_dir, store, tiny_bundle,  # noqa: F811
                                                           tiny_multilingual_bundle, tmp_path) -> None:
    """In archive mode 'Language' lists the languages of the bundle the archive was made with (multilingual
    here), not those of 'Model bundle' (English only); a Portuguese query picked there is read by the archive's
    bundle and finds hits. Back on loaded layers, the list is the dock's bundle's again."""
    from rs_clip_plugin.engine.archive import create_archive
    from rs_clip_plugin.engine.bundle import read_manifest
    from rs_clip_plugin.gui.search_dock import ARCHIVE_SCOPE, SCOPES, SearchDock
    from rs_clip_plugin.gui.tasks import wait_for

    scene = s2_crop(major_tom_dir, tmp_path / "S2A_MSIL2A_20210603T034541_N0300_R104_T48PUV_crop.tif")
    arc = tmp_path / "archive"
    create_archive(arc, tiny_multilingual_bundle).add([str(scene)], provider="cpu")
    multi = read_manifest(tiny_multilingual_bundle).text.languages
    assert "pt" in multi and read_manifest(tiny_bundle).text.languages == ["en"]

    def offered() -> list[str]:
        return [dock.lang_combo.itemText(i) for i in range(dock.lang_combo.count())]

    dock = SearchDock(qgis_iface, store=store)
    try:
        dock.set_bundle_path(tiny_bundle)
        type_output_folder(dock, tmp_path / "results")
        assert offered() == ["en"]
        pick(dock.scope_combo, ARCHIVE_SCOPE)
        dock.archive_widget.lineEdit().clear()
        QTest.keyClicks(dock.archive_widget.lineEdit(), str(arc))
        assert offered() == multi
        pick(dock.lang_combo, "pt")
        QTest.keyClicks(dock.query_edit, "um rio")
        click(dock.search_btn)
        assert dock.task is not None, dock.index_label.text()
        assert wait_for(dock.task), dock.index_label.text()
        assert dock.result.hits and dock.lang_combo.currentText() == "pt"
        pick(dock.scope_combo, SCOPES[0])
        assert offered() == ["en"]
    finally:
        dock.cleanup()


# -- model manager ----------------------------------------------------------------------------------------
def test_model_manager_zip_button_and_sha256_field(qgis_iface, store, tiny_bundle, tmp_path) -> None:  # noqa: F811
    """'.zip…' opens a file dialog whose typed path fills the source; a wrong checksum typed in 'sha256' is
    refused, naming that field, and nothing is installed; the right one installs the bundle."""
    from rs_clip_plugin.engine.bundle import zip_bundle
    from rs_clip_plugin.gui.model_manager import ModelManagerDialog
    from rs_clip_plugin.gui.tasks import wait_for

    z = zip_bundle(tiny_bundle, tmp_path / "tiny-zipped.zip")
    good = hashlib.sha256(z.read_bytes()).hexdigest()
    dlg = ModelManagerDialog(qgis_iface, store=store)
    dlg.show()
    browse = next(b for b in dlg.findChildren(type(dlg.add_btn)) if b.objectName() == "rsclip_models_browse_zip")
    try:
        before = [b.name for b in store.installed()]
        steps: list = []
        watchdog = answer_file_dialog(str(z), steps)
        click(browse)  # modal: returns once the dialog was answered
        watchdog.stop()
        assert dlg.source_edit.text() == str(z), steps

        def add() -> None:
            dlg.task = None
            click(dlg.add_btn)
            assert dlg.task is not None, dlg.message.text()
            wait_for(dlg.task)

        type_into(dlg.sha_edit, "0" * 64)
        add()
        text = dlg.message.text()
        assert "‘sha256’" in text and good in text and "0" * 64 in text, text
        assert [b.name for b in store.installed()] == before
        type_into(dlg.sha_edit, good)
        add()
        assert "installed rsclip-tiny" in dlg.message.text(), dlg.message.text()  # the manifest's name
        assert sorted(b.name for b in store.installed()) == sorted([*before, "rsclip-tiny"])
        names = [dlg.table.item(r, 0).text() for r in range(dlg.table.rowCount())]
        assert "rsclip-tiny" in names
        # A checksum typed for a folder is not silently ignored.
        dlg.source_edit.clear()
        QTest.keyClicks(dlg.source_edit, str(tiny_bundle))
        type_into(dlg.sha_edit, good)
        dlg.task = None
        click(dlg.add_btn)
        assert dlg.task is None and "‘sha256’" in dlg.message.text()
    finally:
        dlg.close()


# -- dependency installer ---------------------------------------------------------------------------------
def _wheel(folder: Path, name: str, version: str = "1.0") -> Path:
    """A minimal pure-Python wheel (PEP 427): what `pip download` leaves in a folder for an offline machine."""
    folder.mkdir(parents=True, exist_ok=True)
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": "VALUE = 1\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: rsclip-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [f"{path},," for path in files] + [f"{info}/RECORD,,"]
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for arc, text in files.items():
            zf.writestr(arc, text)
        zf.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return path


def test_dependency_dialog_installs_from_the_typed_wheels_folder(qgis_iface, tmp_path, monkeypatch) -> None:
    """Offline install: a package RS-CLIP lacks, its wheel in a folder typed into the wheels field; Install
    runs pip from that folder only (no index: this machine has no network) and the package is there."""
    from rs_clip_plugin import deps
    from rs_clip_plugin.gui.deps_dialog import DependencyDialog

    name = "rsclip_wheel_probe"
    wanted = (*deps.ENGINE_REQUIREMENTS, deps.Requirement(name, name, "a package only the wheels folder has"))
    real_missing = deps.missing_packages
    # The requirement list gains one package this Python lacks; pip, the folder and the install are real.
    monkeypatch.setattr(deps, "missing_packages", lambda requirements=wanted: real_missing(requirements))
    monkeypatch.setenv("RSCLIP_PACKAGES", str(tmp_path / "site"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    wheels = tmp_path / "wheels"
    _wheel(wheels, name)
    dlg = DependencyDialog(qgis_iface)
    dlg.show()
    try:
        assert name in dlg.summary.text() and dlg.install_btn.isEnabled()
        QTest.keyClicks(dlg.wheels_widget.lineEdit(), str(wheels))
        click(dlg.install_btn)
        assert wait_until(lambda: dlg.process is None, 180), dlg.log_view.toPlainText()[-2000:]
        log_text = dlg.log_view.toPlainText()
        assert f"--find-links {wheels}" in log_text and "--no-index" in log_text
        assert "Installed." in dlg.outcome.text(), log_text[-2000:]
        assert (tmp_path / "site" / name / "__init__.py").is_file()
    finally:
        dlg.close()
        sys.modules.pop(name, None)

