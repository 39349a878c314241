"""Runs INSIDE the real QGIS desktop (``qgis --code driver.py``): uses RS-CLIP the way an analyst does.

It acts only through the GUI: the plugin's menu actions are triggered, dialog widgets are found by
objectName (falling back to their visible text, noted in the results so the plugin can name them),
text is typed with QTest.keyClicks, buttons are pressed with QTest.mouseClick, the map is clicked at the
pixel of a map point, file dialogs are filled in by typing into their file-name field. No dialog handler
is called directly. Layers are loaded with iface (that is the analyst's "Add Raster Layer", not the plugin).

Each scenario records ok/failed with details, the layers it saw (renderer, legend entries) and the
message-bar texts, and saves a screenshot of the whole screen. Results are written to results.json after
every scenario (so a crash still leaves the earlier ones), then QGIS quits.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import sys
import time
import traceback
from pathlib import Path

from qgis.core import QgsApplication, QgsPointXY, QgsProject, QgsRasterLayer
from qgis.PyQt.QtCore import QPoint, Qt, QTimer
from qgis.PyQt.QtTest import QTest
from qgis.PyQt.QtWidgets import (
    QAbstractButton,
    QApplication,
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDockWidget,
    QFileDialog,
    QLabel,
    QLineEdit,
    QListWidget,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTextEdit,
)
from qgis.utils import iface

CFG = json.loads(Path(os.environ["RSCLIP_ACCEPTANCE_CONFIG"]).read_text())
ART = Path(CFG["artifacts"])
ART.mkdir(parents=True, exist_ok=True)
RESULTS: dict = {"started": time.time(), "scenarios": {}, "missing_object_names": [], "log": [], "message_bar": []}
# Open for the whole QGIS session (closed in main()); every line is flushed so a crash keeps it.
LOG_FILE = open(ART / "qgis-message-log.txt", "a", encoding="utf-8")  # noqa: SIM115
TRACE_FILE = open(ART / "driver-trace.txt", "a", encoding="utf-8")  # noqa: SIM115
# If a step hangs (a modal box nobody answers, a deadlock), the stacks of every thread say where.
faulthandler.dump_traceback_later(float(CFG.get("hang_dump_s", 110)), exit=False, file=TRACE_FILE)


def trace(text: str) -> None:
    TRACE_FILE.write(f"{time.strftime('%H:%M:%S')} {text}\n")
    TRACE_FILE.flush()


class Failed(Exception):
    """A scenario's expectation did not hold (the message says what an analyst would see instead)."""


def check(cond, message: str) -> None:
    if not cond:
        raise Failed(message)


# -- what QGIS says: the message log and the message bar --------------------------------------------------
def on_log(message: str, tag: str, level) -> None:
    entry = {"tag": tag, "level": int(level), "message": message}
    RESULTS["log"].append(entry)
    LOG_FILE.write(f"[{tag}] ({int(level)}) {message}\n")
    LOG_FILE.flush()


QgsApplication.messageLog().messageReceived.connect(on_log)


def on_bar_item(_widget) -> None:
    item = iface.messageBar().currentItem()  # widgetAdded passes a plain QWidget; this is the QgsMessageBarItem
    if item is None:
        return
    text = f"{item.title()}: {item.text()}".strip(": ")
    if not item.text():  # a custom widget (e.g. with an Install… button): read its labels
        text += " " + " ".join(w.text() for w in item.findChildren(QLabel) if w.text())
    buttons = [b.objectName() or b.text() for b in item.findChildren(QPushButton)]
    RESULTS["message_bar"].append({"t": time.time(), "level": int(item.level()), "text": text, "buttons": buttons})
    trace(f"message bar: {text}")


iface.messageBar().widgetAdded.connect(on_bar_item)


SEEN_TEXTS: list[str] = []  # every panel/dialog text the scenarios read (judged by 09_gui_wording)


def bar_texts_since(t0: float) -> list[str]:
    return [m["text"] for m in RESULTS["message_bar"] if m["t"] >= t0]


def save() -> None:
    (ART / "results.json").write_text(json.dumps(RESULTS, indent=1, default=str))


def screenshot(name: str) -> str:
    QTest.qWait(200)  # let pending repaints (map canvas, dialogs) land
    canvas = iface.mapCanvas()
    wait_until(lambda: not canvas.isDrawing(), 5)
    path = ART / f"{name}.png"
    QApplication.primaryScreen().grabWindow(0).save(str(path))  # the screen: main window and dialogs on it
    iface.mainWindow().grab().save(str(ART / f"{name}-main-window.png"))  # the map, layers and docks unhidden
    return str(path)


# -- waiting -----------------------------------------------------------------------------------------------
def wait_until(pred, timeout: float, step_ms: int = 50) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        QTest.qWait(step_ms)
    return bool(pred())


TASKS_ADDED = [0]
QgsApplication.taskManager().taskAdded.connect(lambda _id: TASKS_ADDED.__setitem__(0, TASKS_ADDED[0] + 1))


def wait_tasks(before: int, timeout: float) -> bool:
    """After a click: wait for a task to have been added since ``before`` and for every task to end."""
    tm = QgsApplication.taskManager()
    started = wait_until(lambda: TASKS_ADDED[0] > before, 3.0)
    done = wait_until(lambda: tm.countActiveTasks() == 0, timeout)
    QTest.qWait(300)  # finished() callbacks add layers, fill lists
    return started and done


# -- finding things ------------------------------------------------------------------------------------------
def note_missing(object_name: str, found_by: str) -> None:
    entry = f"{object_name} (found by {found_by})"
    if entry not in RESULTS["missing_object_names"]:
        RESULTS["missing_object_names"].append(entry)


def plugin_actions() -> dict:
    """The actions of Raster > RS-CLIP, by objectName."""
    for a in iface.rasterMenu().actions():
        if a.menu() is not None and "RS-CLIP" in a.text().replace("&", ""):
            return {x.objectName(): x for x in a.menu().actions() if not x.isSeparator()}
    return {}


def action(names: tuple, text: str):
    acts = plugin_actions()
    for n in names:
        if n in acts:
            return acts[n]
    for a in acts.values():
        if text.lower() in a.text().lower():
            note_missing(names[0], f"action text {a.text()!r}, objectName {a.objectName()!r}")
            return a
    raise Failed(f"Raster > RS-CLIP has no action {names[0]} / '{text}' (has {sorted(acts)})")


def visible_dialog(name: str, title: str, timeout: float = 5.0):
    found = []

    def look():
        for w in QApplication.topLevelWidgets():
            if isinstance(w, QDialog) and w.isVisible():
                if w.objectName() == name:
                    found[:] = [w, "objectName"]
                    return True
                if title.lower() in w.windowTitle().lower():
                    found[:] = [w, f"window title {w.windowTitle()!r}"]
        return bool(found)

    if not wait_until(look, timeout):
        raise Failed(f"no dialog {name} / '{title}' opened")
    if found[1] != "objectName":
        note_missing(name, found[1])
    return found[0]


def child(parent, cls, name: str, text: str = "", pred=None):
    """A child widget by objectName, else the first of ``cls`` whose text/placeholder contains ``text``."""
    w = parent.findChild(cls, name)
    if w is not None:
        return w
    for w in parent.findChildren(cls):
        if pred is not None:
            if pred(w):
                note_missing(name, f"{cls.__name__} matching a predicate")
                return w
            continue
        label = ""
        for attr in ("text", "placeholderText", "title", "windowTitle"):
            if hasattr(w, attr):
                with contextlib.suppress(TypeError):
                    label += " " + str(getattr(w, attr)())
        if text and text.lower() in label.lower():
            note_missing(name, f"{cls.__name__} text {label.strip()!r}")
            return w
    raise Failed(f"{parent.objectName() or type(parent).__name__} has no {cls.__name__} {name} / '{text}'")


def click(button: QAbstractButton) -> None:
    trace(f"  click '{button.text()}' ({button.objectName()})")
    check(button.isVisible(), f"button '{button.text()}' is not visible")
    check(button.isEnabled(), f"button '{button.text()}' is disabled")
    QTest.mouseClick(button, Qt.LeftButton)


def choose(combo: QComboBox, text: str) -> None:
    """Pick the item whose text contains ``text`` as a user would from the drop-down (activated fires)."""
    for i in range(combo.count()):
        if text.lower() in combo.itemText(i).lower():
            combo.setCurrentIndex(i)
            combo.activated[int].emit(i)
            return
    raise Failed(f"combo {combo.objectName()!r} has no item '{text}' (has {[combo.itemText(i) for i in range(combo.count())]})")


def choose_layer(combo, layer: QgsRasterLayer) -> None:
    combo.setLayer(layer)
    check(combo.currentLayer() is not None and combo.currentLayer().id() == layer.id(),
          f"layer combo does not offer {layer.name()}")


def texts(widget) -> list[str]:
    """Every piece of text an analyst can read in a widget (labels, lists, tables, text boxes)."""
    out = []
    for w in widget.findChildren(QLabel):
        if w.isVisible() and w.text():
            out.append(w.text())
    for w in widget.findChildren(QListWidget):
        out += [w.item(i).text() for i in range(w.count())]
    for w in widget.findChildren(QTableWidget):
        for r in range(w.rowCount()):
            out.append(" | ".join(w.item(r, c).text() if w.item(r, c) else "" for c in range(w.columnCount())))
    for w in widget.findChildren((QTextEdit, QPlainTextEdit)):
        out.append(w.toPlainText())
    SEEN_TEXTS.extend(t for t in out if t and t not in SEEN_TEXTS)
    return out


# -- layers ---------------------------------------------------------------------------------------------------
def layer_info(layer) -> dict:
    info = {"name": layer.name(), "source": layer.source(), "type": type(layer).__name__}
    r = layer.renderer()
    info["renderer"] = r.type() if r is not None else None
    if r is not None and r.type() == "paletted":
        info["palette"] = [c.label for c in r.classes()]
    if r is not None and r.type() == "singlebandpseudocolor":
        shader = r.shader().rasterShaderFunction()
        info["ramp_items"] = len(shader.colorRampItemList()) if shader else 0
    node = QgsProject.instance().layerTreeRoot().findLayer(layer.id())
    if node is not None:
        model = iface.layerTreeView().layerTreeModel()
        info["legend"] = [n.data(Qt.DisplayRole) for n in model.layerLegendNodes(node)]
    return info


def new_layers(before: set) -> list:
    return [lyr for lid, lyr in QgsProject.instance().mapLayers().items() if lid not in before]


def layer_ids() -> set:
    return set(QgsProject.instance().mapLayers())


def add_raster(path: str, name: str) -> QgsRasterLayer:
    layer = iface.addRasterLayer(path, name)
    if layer is None or not layer.isValid():
        raise Failed(f"QGIS could not open {path}")
    return layer


# -- scenarios -------------------------------------------------------------------------------------------------
def scenario(name: str):
    def wrap(fn):
        def run():
            t0 = time.time()
            rec = {"ok": False, "details": {}, "t0": t0}
            RESULTS["scenarios"][name] = rec
            trace(f"scenario {name}")
            save()
            try:
                fn(rec["details"])
                rec["ok"] = True
            except Failed as exc:
                rec["error"] = str(exc)
            except Exception:  # a bug in the driver or an unexpected state: the traceback says which
                rec["error"] = "driver exception:\n" + traceback.format_exc()
            rec["message_bar"] = bar_texts_since(t0)
            trace(f"  -> {'ok' if rec['ok'] else rec.get('error', '')[:300]}")
            rec["seconds"] = round(time.time() - t0, 1)
            try:
                rec["screenshot"] = screenshot(name)
            except Exception as exc:
                rec["screenshot_error"] = str(exc)
            dismiss_modals()
            save()
        run.scenario_name = name
        return run
    return wrap


def dismiss_modals() -> None:
    """A scenario that failed may leave a modal box open; close it so the next one can run."""
    for _ in range(3):
        w = QApplication.activeModalWidget()
        if w is None:
            return
        w.reject() if isinstance(w, QDialog) else w.close()
        QTest.qWait(100)


STATE: dict = {}


@scenario("00_startup")
def startup(d: dict) -> None:
    """The plugin loaded from the profile (not from the checkout) with no dialog in the way."""
    import qgis.utils

    d["active_plugins"] = sorted(qgis.utils.active_plugins)
    check("rs_clip_plugin" in qgis.utils.plugins, f"rs_clip_plugin is not loaded (plugins: {sorted(qgis.utils.plugins)})")
    mod = sys.modules["rs_clip_plugin"]
    d["plugin_file"] = mod.__file__
    check(Path(mod.__file__).resolve().is_relative_to(Path(CFG["plugin_dir"]).resolve()),
          f"rs_clip_plugin imported from {mod.__file__}, not the installed {CFG['plugin_dir']}")
    try:
        import training  # noqa: F401  (only the checkout has it)

        d["checkout_importable"] = True
    except ImportError:
        d["checkout_importable"] = False
    check(not d["checkout_importable"], "the checkout's `training` package is importable inside QGIS")
    d["python"] = sys.executable
    d["actions"] = {k: a.text() for k, a in plugin_actions().items()}
    d["dialogs_open"] = [w.windowTitle() for w in QApplication.topLevelWidgets()
                         if isinstance(w, QDialog) and w.isVisible()]
    check(not d["dialogs_open"], f"dialogs open at start: {d['dialogs_open']}")
    check(d["actions"], "Raster > RS-CLIP has no actions")


def load_inputs() -> None:
    layers = {}
    for key, name in (("s2", "S2 crop B02-B03-B04-B08"), ("full_small", "S2 all bands crop"), ("b04", "B04"),
                      ("full", "S2 all bands scene")):
        layers[key] = add_raster(CFG["rasters"][key], name)
    STATE["layers"] = layers
    STATE["own_layers"] = []
    canvas = iface.mapCanvas()
    canvas.setExtent(layers["s2"].extent())
    canvas.refresh()
    wait_until(lambda: not canvas.isDrawing(), 10)


def open_classify() -> QDialog:
    action(("rsclip_classify",), "Classify").trigger()
    return visible_dialog("rsclip_classify_dialog", "Classify")


def classify_widgets(dlg) -> dict:
    from qgis.gui import QgsMapLayerComboBox

    return {
        "layer": child(dlg, QgsMapLayerComboBox, "rsclip_layer_combo", pred=lambda w: True),
        "preset": child(dlg, QComboBox, "rsclip_preset_combo",
                        pred=lambda w: any(w.itemText(i) == "EuroSAT" for i in range(w.count()))),
        "bundle": child(dlg, QComboBox, "rsclip_bundle_combo",
                        pred=lambda w: any("default" in w.itemText(i) or "none installed" in w.itemText(i)
                                           or "bundle" in w.itemText(i).lower() for i in range(w.count()))),
        "load": child(dlg, QPushButton, "rsclip_load_preset", "Load preset"),
        "run": child(dlg, QPushButton, "rsclip_classify_run", pred=lambda w: w.text().replace("&", "") == "Classify"),
        "cancel": child(dlg, QPushButton, "rsclip_classify_cancel", pred=lambda w: w.text().replace("&", "") == "Cancel"),
        "classes": child(dlg, QTableWidget, "rsclip_classes_table",  # (class, colour); the area table has 3 columns
                         pred=lambda w: w.columnCount() == 2),
    }


def table_names(table: QTableWidget) -> list[str]:
    return [table.item(r, 0).text() for r in range(table.rowCount()) if table.item(r, 0) and table.item(r, 0).text()]


@scenario("01_classify_first_click")
def classify_first_click(d: dict) -> None:
    """Open the dialog, choose the layer, load the EuroSAT preset, press Classify ONCE: a run starts."""
    load_inputs()
    iface.layerTreeView().setCurrentLayer(STATE["layers"]["s2"])  # selected in the Layers panel
    dlg = open_classify()
    w = classify_widgets(dlg)
    STATE["classify"] = (dlg, w)
    d["layer_at_open"] = w["layer"].currentLayer().name() if w["layer"].currentLayer() else None
    d["bundle_combo"] = [w["bundle"].itemText(i) for i in range(w["bundle"].count())]
    d["bundle_current"] = w["bundle"].currentText()
    d["bundle_current_path"] = w["bundle"].currentData()
    d["preset_current_at_open"] = w["preset"].currentText()
    d["classes_at_open"] = table_names(w["classes"])
    choose_layer(w["layer"], STATE["layers"]["s2"])
    choose(w["preset"], "EuroSAT")
    click(w["load"])
    d["classes"] = table_names(w["classes"])
    check(d["classes"] == CFG["eurosat_en"], f"'Load preset' filled {d['classes']}, expected {CFG['eurosat_en']}")
    # Issue 10 item 11: the preset combo must not show EuroSAT over an empty (or different) class table.
    check(d["preset_current_at_open"] != "EuroSAT" or d["classes_at_open"] == CFG["eurosat_en"],
          f"at open the preset combo shows EuroSAT but the class table holds {d['classes_at_open']}")
    before, t_before, t0 = layer_ids(), TASKS_ADDED[0], time.time()
    click(w["run"])
    wait_until(lambda: TASKS_ADDED[0] > t_before or bar_texts_since(t0), 3.0)
    d["message_bar_after_click"] = bar_texts_since(t0)
    d["task_started"] = TASKS_ADDED[0] > t_before
    check(not any("xMinimum" in t for t in d["message_bar_after_click"]),
          f"first click on Classify failed: {d['message_bar_after_click']}")
    check(d["task_started"], f"first click on Classify started no task; message bar: {d['message_bar_after_click']}")
    STATE["first_run"] = (before, t_before)
    STATE["first_run_t0"] = t0


def check_class_layers(d: dict, before: set, dlg) -> list:
    """The layers a finished dialog run added: a paletted class map whose legend is the class names, and a
    confidence layer drawn with a colour ramp."""
    layers = new_layers(before)
    d["layers"] = [layer_info(lyr) for lyr in layers]
    d["dialog_texts"] = [t for t in texts(dlg) if t][-12:]
    check(layers, f"no layer was added after the run; message bar: {RESULTS['message_bar'][-1:]}")
    paletted = [i for i in d["layers"] if i["renderer"] == "paletted"]
    check(paletted, f"no paletted layer among {[(i['name'], i['renderer']) for i in d['layers']]}")
    legend = paletted[0].get("legend", [])
    missing = [c for c in CFG["eurosat_en"] if c not in legend]
    check(not missing, f"class layer legend lacks {missing}; legend: {legend[:15]}")
    check(len(legend) <= len(CFG["eurosat_en"]) + 1, f"class layer legend has {len(legend)} entries (expected the classes)")
    conf = [i for i in d["layers"] if i["renderer"] != "paletted" and i["type"] == "QgsRasterLayer"]
    d["confidence"] = conf
    check(conf and conf[0]["renderer"] == "singlebandpseudocolor",
          f"confidence layer is not drawn with a colour ramp: {[(i['name'], i['renderer']) for i in conf]}")
    return layers


@scenario("02_classify_result_layer")
def classify_result(d: dict) -> None:
    """The run of scenario 1 (4-band B02,B03,B04,B08 crop) ends with a paletted class layer with class names."""
    check("first_run" in STATE, "scenario 1 did not start a run")
    dlg, _w = STATE["classify"]
    before, t_before = STATE["first_run"]
    d["task_finished"] = wait_tasks(t_before, 90)
    layers = check_class_layers(d, before, dlg)
    STATE["own_layers"] += [lyr.id() for lyr in layers]
    # Issue 10 item 7: written to a visible folder (the dialog's output folder), said with a link to open it.
    from qgis.gui import QgsFileWidget

    out_root = Path(child(dlg, QgsFileWidget, "rsclip_output_folder", pred=lambda f: True).filePath())
    source = Path(layers[0].source().split("|")[0])
    d["output_folder"], d["written_to"] = str(out_root), str(source)
    check(source.is_relative_to(out_root), f"the class map {source} is not in the output folder {out_root}")
    hidden = [p for p in source.relative_to(Path.home()).parts if p.startswith(".")] if source.is_relative_to(
        Path.home()) else []
    check(not hidden, f"the class map is written under a hidden folder: {source}")
    bars = [m for m in RESULTS["message_bar"] if m["t"] >= STATE["first_run_t0"]]
    d["message_bar_buttons"] = [m["buttons"] for m in bars]
    check(any("rsclip_open_folder" in m["buttons"] for m in bars),
          f"no message with an 'Open folder' button after the run: {[m['text'] for m in bars]}")


@scenario("02b_classify_all_bands")
def classify_all_bands(d: dict) -> None:
    """The same clicks on a 12-band L2A stack (what the default bundle's Sentinel-2 encoder reads)."""
    dlg, w = STATE.get("classify") or (None, None)
    check(dlg is not None, "the classify dialog never opened")
    if not dlg.isVisible():
        dlg = open_classify()
        w = classify_widgets(dlg)
    choose_layer(w["layer"], STATE["layers"]["full_small"])
    if table_names(w["classes"]) != CFG["eurosat_en"]:
        choose(w["preset"], "EuroSAT")
        click(w["load"])
    before, t_before, t0 = layer_ids(), TASKS_ADDED[0], time.time()
    click(w["run"])
    d["task_finished"] = wait_tasks(t_before, 90)
    d["seconds_to_result"] = round(time.time() - t0, 1)
    layers = check_class_layers(d, before, dlg)
    STATE["own_layers"] += [lyr.id() for lyr in layers]


@scenario("03_classify_cancel")
def classify_cancel(d: dict) -> None:
    """Press Classify on a large raster, then Cancel: no layer and no result folder is left."""
    dlg, w = STATE.get("classify") or (None, None)
    check(dlg is not None, "the classify dialog never opened")
    if not dlg.isVisible():
        dlg = open_classify()
        w = classify_widgets(dlg)
    choose_layer(w["layer"], STATE["layers"]["full"])
    if not table_names(w["classes"]):
        choose(w["preset"], "EuroSAT")
        click(w["load"])
    from qgis.gui import QgsFileWidget

    out_root = Path(child(dlg, QgsFileWidget, "rsclip_output_folder", pred=lambda f: True).filePath())
    d["output_folder"] = str(out_root)
    folders_before = set(os.listdir(out_root)) if out_root.is_dir() else set()
    before, t_before, t0 = layer_ids(), TASKS_ADDED[0], time.time()
    click(w["run"])
    check(wait_until(lambda: TASKS_ADDED[0] > t_before, 3.0), f"Classify started no task: {bar_texts_since(t0)}")
    tm = QgsApplication.taskManager()
    # Cancel once the run is visibly under way (progress moved), as an analyst would after a glance.
    bar = child(dlg, QProgressBar, "rsclip_classify_progress", pred=lambda b: True)
    wait_until(lambda: 0 < bar.value() < 100 or tm.countActiveTasks() == 0, 10, step_ms=20)
    d["progress_when_cancelling"] = bar.value()
    d["active_when_cancelling"] = tm.countActiveTasks()
    check(d["active_when_cancelling"] > 0, "the run ended before Cancel could be pressed (raster too small)")
    click(w["cancel"])
    d["stopped"] = wait_until(lambda: tm.countActiveTasks() == 0, 30)
    QTest.qWait(300)
    check(d["stopped"], "the task still runs 30 s after Cancel")
    d["new_layers"] = [lyr.name() for lyr in new_layers(before)]
    d["new_folders"] = sorted(set(os.listdir(out_root)) - folders_before) if out_root.is_dir() else []
    d["dialog_texts"] = [t for t in texts(dlg) if t][-6:]
    d["message_bar_now"] = bar_texts_since(t0)
    check(not d["new_layers"], f"layers added after Cancel: {d['new_layers']}")
    check(any("cancel" in t.lower() for t in d["message_bar_now"] + d["dialog_texts"]),
          f"nothing tells the analyst the run was cancelled: {d['message_bar_now']}")
    check(not d["new_folders"], f"folders left after Cancel: {d['new_folders']}")
    check(w["run"].isEnabled(), "Classify stays disabled after Cancel")
    screenshot("03_classify_cancel_dialog")
    dlg.close()
    # The analyst removes the whole-scene layer again (keeps the later searches to the small layers).
    QgsProject.instance().removeMapLayer(STATE["layers"].pop("full").id())


@scenario("04_processing_styled")
def processing_styled(d: dict) -> None:
    """processing.runAndLoadResults('rsclip:classify'): the loaded layers are styled."""
    import processing
    from qgis.core import QgsProcessingException

    out = Path(CFG["processing_out"])
    out.mkdir(parents=True, exist_ok=True)
    before = layer_ids()
    try:  # as typed in the Python console; the 12-band crop, so styling is tested whatever the band mapping
        res = processing.runAndLoadResults("rsclip:classify", {
            "INPUT": STATE["layers"]["full_small"].id(),
            "PRESET": 1,  # EuroSAT
            "OUTPUT": str(out / "classes.tif"),
            "CONFIDENCE": str(out / "confidence.tif"),
        })
    except QgsProcessingException as exc:
        raise Failed(f"rsclip:classify raised: {exc}") from exc
    QTest.qWait(500)
    d["result"] = {k: str(v) for k, v in (res or {}).items()}
    layers = new_layers(before)
    d["layers"] = [layer_info(lyr) for lyr in layers]
    STATE["own_layers"] += [lyr.id() for lyr in layers]
    cls = [i for i in d["layers"] if "classes.tif" in i["source"]]
    conf = [i for i in d["layers"] if "confidence.tif" in i["source"]]
    check(cls and conf, f"runAndLoadResults loaded {[(i['name'], i['source']) for i in d['layers']]}")
    check(cls[0]["renderer"] == "paletted", f"class map loaded as {cls[0]['renderer']}, not paletted")
    legend = cls[0].get("legend", [])
    missing = [c for c in CFG["eurosat_en"] if c not in legend]
    check(not missing, f"class map legend lacks {missing}: {legend[:12]} ... ({len(legend)} entries)")
    check(len(legend) <= len(CFG["eurosat_en"]) + 1, f"class map legend has {len(legend)} entries")
    check(conf[0]["renderer"] == "singlebandpseudocolor",
          f"confidence loaded as {conf[0]['renderer']} (grey), not with a colour ramp")


def open_search():
    act = action(("rsclip_search", "rsclip_map"), "search")
    dock = iface.mainWindow().findChild(QDockWidget, "RSClipSearchDock")
    if dock is None or not dock.isVisible():
        act.trigger()
    found = []

    def look():
        for name in ("RSClipSearchDock", "rsclip_search_dock"):
            w = iface.mainWindow().findChild(QDockWidget, name)
            if w is not None and w.isVisible():
                found[:] = [w, name]
                return True
        return False

    check(wait_until(look, 5), "the search dock did not open")
    return found[0]


def search_widgets(dock) -> dict:
    lists = dock.findChildren(QListWidget)
    return {
        "query": child(dock, QLineEdit, "rsclip_search_query", "describe"),
        "run": child(dock, QPushButton, "rsclip_search_run", pred=lambda b: b.text().replace("&", "") == "Search"),
        "layers": child(dock, QListWidget, "rsclip_search_layers",
                        pred=lambda lw: lw is (lists[0] if lists else None)),
        "results": child(dock, QListWidget, "rsclip_search_results",
                         pred=lambda lw: lw is (lists[-1] if len(lists) > 1 else None)),
        "similar": child(dock, QPushButton, "rsclip_find_similar", "Find similar"),
    }


@scenario("05_search_all_ticked")
def search_all(d: dict) -> None:
    """Every raster ticked (a 1-band B04 among them): hits, B04 reported, no plugin output listed."""
    dock = open_search()
    w = search_widgets(dock)
    STATE["search"] = (dock, w)
    lw = w["layers"]
    listed = [(lw.item(i).text(), lw.item(i).data(Qt.UserRole)) for i in range(lw.count())]
    d["listed"] = [n for n, _ in listed]
    d["ticked_by_default"] = [lw.item(i).text() for i in range(lw.count()) if lw.item(i).checkState() == Qt.Checked]
    own = set(STATE.get("own_layers", []))
    own_listed = [n for n, lid in listed if lid in own]
    STATE["before_search"] = layer_ids()
    for i in range(lw.count()):  # the analyst clicks every box they can; greyed ones must not take a tick
        item = lw.item(i)
        lw.scrollToItem(item)
        rect = lw.visualItemRect(item)
        if item.checkState() != Qt.Checked:
            QTest.mouseClick(lw.viewport(), Qt.LeftButton, Qt.NoModifier, QPoint(rect.left() + 10, rect.center().y()))
        if not item.flags() & Qt.ItemIsUserCheckable:
            check(item.checkState() != Qt.Checked, f"the greyed layer {item.text()!r} was ticked")
    QTest.qWait(100)
    w["query"].setFocus()
    w["query"].clear()
    QTest.keyClicks(w["query"], "a river")
    t_before, t0 = TASKS_ADDED[0], time.time()
    click(w["run"])
    d["task_finished"] = wait_tasks(t_before, 90)
    d["hits"] = [w["results"].item(i).text() for i in range(w["results"].count())]
    d["panel"] = [t for t in texts(dock) if t]
    d["message_bar_now"] = bar_texts_since(t0)
    check(not own_listed, f"the plugin's own outputs are listed as search layers: {own_listed}")
    check(d["hits"], f"no hits; panel says {d['panel'][-4:]}, message bar {d['message_bar_now']}")
    skipped = dock.findChild(QLabel, "rsclip_search_skipped")
    if skipped is not None:
        reported = [skipped.text()] if "B04" in skipped.text() and skipped.isVisible() else []
    else:
        note_missing("rsclip_search_skipped", "any panel text naming B04")
        reported = [t for t in d["panel"] if "B04" in t and t not in d["listed"] and "#" not in t]
    d["b04_reported"] = reported
    check(reported, "the 1-band B04 layer is not reported in the panel")


def search_layers(before: set) -> list[str]:
    """Layers the searches added (hits, heat maps), by name."""
    own = set(STATE.get("own_layers", []))
    return sorted(lyr.name() for lid, lyr in QgsProject.instance().mapLayers().items() if lid not in before | own)


@scenario("05b_search_again_replaces")
def search_again(d: dict) -> None:
    """With the heat map ticked, the same search twice: the second result replaces the first on the map."""
    check("search" in STATE, "the search dock never opened")
    dock, w = STATE["search"]
    before = STATE["before_search"]
    heat = child(dock, QCheckBox, "rsclip_search_heatmap", "heat map")
    if not heat.isChecked():
        click(heat)
    runs, t0 = [], time.time()
    for _ in range(2):
        t_before = TASKS_ADDED[0]
        click(w["run"])
        wait_tasks(t_before, 90)
        runs.append(search_layers(before))
    d["layers_after_each_search"] = runs
    d["message_bar_now"] = bar_texts_since(t0)
    finished = [t for t in d["message_bar_now"] if " hits for " in t]
    check(len(finished) == 2, f"expected two finished searches, the message bar says {d['message_bar_now']}")
    d["hits"] = [w["results"].item(i).text() for i in range(w["results"].count())]
    check(any("similarity" in n.lower() or "heat" in n.lower() for n in runs[0]),
          f"no heat map layer after a search with the heat map ticked: {runs[0]}")
    check(len(runs[1]) == len(runs[0]), f"the second search stacked its layers on the first: {runs}")
    click(heat)  # untick again for the next scenarios


@scenario("06_find_similar_map_click")
def find_similar(d: dict) -> None:
    """'Find similar', then a click on the map inside the S2 crop: a new list of hits."""
    from qgis.gui import QgsMapLayerComboBox

    check("search" in STATE, "the search dock never opened")
    dock, w = STATE["search"]
    example = child(dock, QgsMapLayerComboBox, "rsclip_example_layer", pred=lambda c: True)
    layer = STATE["layers"]["full_small"]
    iface.layerTreeView().setCurrentLayer(layer)  # the analyst selects the layer in the Layers panel
    canvas = iface.mapCanvas()
    canvas.setExtent(layer.extent())
    canvas.refresh()
    wait_until(lambda: not canvas.isDrawing(), 10)
    click(w["similar"])
    d["example_from_after_toggle"] = example.currentLayer().name() if example.currentLayer() else None
    # Issue 10 item 11: "Example from" defaults to the active layer, not the first one.
    check(d["example_from_after_toggle"] == layer.name(),
          f"'Example from' shows {d['example_from_after_toggle']!r}, not the selected layer {layer.name()!r}")
    d["map_tool"] = type(canvas.mapTool()).__name__ if canvas.mapTool() else None
    centre = layer.extent().center()
    pix = canvas.getCoordinateTransform().transform(QgsPointXY(centre.x(), centre.y()))
    pos = QPoint(int(pix.x()), int(pix.y()))
    d["clicked_pixel"] = [pos.x(), pos.y()]
    before_hits = [w["results"].item(i).text() for i in range(w["results"].count())]
    t_before, t0 = TASKS_ADDED[0], time.time()
    QTest.mouseClick(canvas.viewport(), Qt.LeftButton, Qt.NoModifier, pos)
    d["task_finished"] = wait_tasks(t_before, 90)
    d["hits"] = [w["results"].item(i).text() for i in range(w["results"].count())]
    d["panel"] = [t for t in texts(dock) if t][-6:]
    d["message_bar_now"] = bar_texts_since(t0)
    check(TASKS_ADDED[0] > t_before, f"the map click started no search; message bar: {d['message_bar_now']}")
    check(d["hits"] and d["hits"] != before_hits, f"no new hits after the map click; panel: {d['panel']}")


def fill_file_dialog(path: str, log: list) -> None:
    """Type ``path`` into the (Qt, non-native) file dialog that is about to open, and press Enter."""
    def attempt(n=0):
        dlg = QApplication.activeModalWidget()
        if not isinstance(dlg, QFileDialog):
            if n < 60:
                QTimer.singleShot(100, lambda: attempt(n + 1))
            else:
                log.append("no QFileDialog appeared")
            return
        edit = dlg.findChild(QLineEdit, "fileNameEdit")
        if edit is None:
            log.append("QFileDialog without fileNameEdit")
            dlg.reject()
            return
        edit.setFocus()
        edit.clear()
        QTest.keyClicks(edit, path)
        QTest.keyClick(edit, Qt.Key_Return)
        log.append(f"typed {path}")
        if dlg.isVisible():  # getExistingDirectory: Enter opens the folder; "Choose" accepts it
            box = dlg.findChild(QDialogButtonBox)
            if box is not None and box.button(QDialogButtonBox.Open) is not None:
                QTimer.singleShot(200, lambda: QTest.mouseClick(box.button(QDialogButtonBox.Open), Qt.LeftButton))
    QTimer.singleShot(200, attempt)


def answer_message_box(button, log: list) -> None:
    def attempt(n=0):
        box = QApplication.activeModalWidget()
        if not isinstance(box, QMessageBox):
            if n < 60:
                QTimer.singleShot(100, lambda: attempt(n + 1))
            return
        log.append(f"message box: {box.text()}")
        QTest.mouseClick(box.button(button), Qt.LeftButton)
    QTimer.singleShot(200, attempt)


def manager_rows(table: QTableWidget) -> list[str]:
    return [table.item(r, 0).text() for r in range(table.rowCount()) if table.item(r, 0)]


def row_is(text: str, name: str) -> bool:
    """A manager row names the bundle ``name`` (not one whose name merely starts with it)."""
    return text == name or text.startswith(name + " ")


@scenario("07_model_manager_add_remove")
def model_manager(d: dict) -> None:
    """Model manager: add a bundle folder (browsed in the file dialog) and a bundle .zip (path typed), remove both."""
    action(("rsclip_models", "rsclip_model"), "Model manager").trigger()
    dlg = visible_dialog("rsclip_model_manager", "Model manager")
    table = child(dlg, QTableWidget, "rsclip_models_table", pred=lambda t: True)
    d["rows_at_open"] = manager_rows(table)
    d["texts_at_open"] = [t for t in texts(dlg) if t]
    STATE["manager_texts"] = d["texts_at_open"]
    name = CFG["tiny_bundle_name"]
    installed = Path(CFG["profile_dir"]) / "rsclip" / "bundles"
    source = child(dlg, QLineEdit, "rsclip_models_source", "bundle folder")
    add = child(dlg, QPushButton, "rsclip_models_add", pred=lambda b: b.text().replace("&", "") == "Add")
    steps: list = []
    d["steps"] = steps
    for kind, path in (("folder", CFG["tiny_bundle_dir"]), ("zip", CFG["tiny_bundle_zip"])):
        if kind == "folder":  # browse: the file dialog fills the field
            fill_file_dialog(path, steps)
            click(child(dlg, QPushButton, "rsclip_models_browse_folder", "Folder"))
            wait_until(lambda path=path: source.text() == path, 5)
            check(source.text() == path, f"the folder dialog did not fill the source field ({source.text()!r}; {steps})")
        else:  # typed, as power users paste paths
            source.setFocus()
            source.clear()
            QTest.keyClicks(source, path)
        t_before = TASKS_ADDED[0]
        click(add)
        wait_tasks(t_before, 60)
        rows = manager_rows(table)
        steps.append(f"after add {kind}: {rows}")
        check(any(row_is(r, name) for r in rows),
              f"add {kind}: {name} not listed after the install ({rows}; {texts(dlg)[-2:]})")
        check((installed / name / "manifest.json").is_file(), f"add {kind}: nothing installed in {installed}")
        row = next(r for r in range(table.rowCount()) if row_is(table.item(r, 0).text(), name))
        rect = table.visualItemRect(table.item(row, 0))
        QTest.mouseClick(table.viewport(), Qt.LeftButton, Qt.NoModifier, rect.center())
        answer_message_box(QMessageBox.Yes, steps)
        click(child(dlg, QPushButton, "rsclip_models_remove", "Remove"))
        QTest.qWait(500)
        rows = manager_rows(table)
        left = sorted(p.name for p in installed.iterdir() if not p.name.startswith(".")) if installed.is_dir() else []
        steps.append(f"after remove {kind}: {rows}; folders left: {left}")
        check(not any(row_is(r, name) for r in rows), f"remove {kind}: {name} still listed ({rows})")
        check(name not in left, f"remove {kind}: {installed / name} still on disk")
    screenshot("07_model_manager_dialog")  # the dialog itself; the scenario's own shot comes after it closes
    dlg.close()


@scenario("08_default_bundle_offline")
def default_bundle(d: dict) -> None:
    """The zip's own default model is the one offered and used: nothing built, downloaded or taken from HOME."""
    plugin_dir = Path(CFG["plugin_dir"]).resolve()
    dlg, w = STATE.get("classify") or (None, None)
    if dlg is None:
        dlg = open_classify()
        w = classify_widgets(dlg)
    combo = w["bundle"]
    d["bundle_items"] = [(combo.itemText(i), combo.itemData(i)) for i in range(combo.count())]
    check(not any("none installed" in t for t, _ in d["bundle_items"]), f"bundle combo says {d['bundle_items']}")
    default = [p for t, p in d["bundle_items"] if "default" in t.lower()] or [combo.currentData()]
    check(default and default[0], f"no default bundle offered: {d['bundle_items']}")
    check(Path(default[0]).resolve().is_relative_to(plugin_dir),
          f"the default bundle {default[0]} is not the one inside the installed plugin ({plugin_dir})")
    home = Path(os.environ["RSCLIP_DEFAULT_BUNDLE_HOME"])
    d["default_bundle_home"] = sorted(str(p.relative_to(home)) for p in home.rglob("manifest.json")) if home.exists() else []
    check(not d["default_bundle_home"], f"a default bundle was built/copied under {home}: {d['default_bundle_home']}")
    manager = " ".join(STATE.get("manager_texts", []))
    d["manager_says_demonstration"] = "demonstrat" in manager.lower()
    check(d["manager_says_demonstration"], "the model manager does not say the built-in model is a demonstration")
    runs = {k: RESULTS["scenarios"].get(k, {}).get("ok") for k in
            ("02_classify_result_layer", "02b_classify_all_bands", "05_search_all_ticked")}
    d["runs_with_default_bundle"] = runs
    check(runs["05_search_all_ticked"] and (runs["02_classify_result_layer"] or runs["02b_classify_all_bands"]),
          f"no classify and search run succeeded with the zip's default bundle: {runs}")


@scenario("09_gui_wording")
def gui_wording(d: dict) -> None:
    """What the analyst read during the run names GUI fields and devices, not CLI flags or ONNX Runtime ids."""
    import re

    seen = [m["text"] for m in RESULTS["message_bar"]] + SEEN_TEXTS
    rules = {
        "a CLI flag (--sensor, --bands, --overwrite ...)": re.compile(r"(?<![\w-])--[a-z][a-z-]+"),
        "an ONNX Runtime provider id": re.compile(r"\w+ExecutionProvider"),
        "'Azure' (means nothing to an analyst)": re.compile(r"\bAzure\b"),
        "a code-style parameter name instead of a field label": re.compile(r"`[a-z_]+`"),
    }
    bad = {}
    for what, rx in rules.items():
        hits = [t for t in seen if rx.search(t)]
        if hits:
            bad[what] = sorted({rx.search(t).group(0) for t in hits}), hits[:2]
    d["texts_checked"] = len(seen)
    d["bad"] = {k: v[0] for k, v in bad.items()}
    check(not bad, "; ".join(f"{k}: {v[0]} e.g. {v[1][0][:200]!r}" for k, v in bad.items()))


def python_errors() -> list[str]:
    """Python errors QGIS shows: the message log's 'Python error' tab, tracebacks anywhere in the log."""
    out = [e["message"] for e in RESULTS["log"]
           if e["tag"] == "Python error" or "Traceback (most recent call last)" in e["message"]]
    # Messages logged before this driver started (plugin import, initGui) only live in the log panel.
    from qgis.gui import QgsMessageLogViewer

    for viewer in iface.mainWindow().findChildren(QgsMessageLogViewer):
        for edit in viewer.findChildren((QPlainTextEdit, QTextEdit)):
            text = edit.toPlainText()
            if "Traceback (most recent call last)" in text and text not in out:
                out.append(text)
    return out


def main() -> None:
    # Xvfb has no window manager, so "maximised" means nothing: fill the screen explicitly.
    iface.mainWindow().setGeometry(QApplication.primaryScreen().availableGeometry())
    QTest.qWait(300)
    for fn in (startup, classify_first_click, classify_result, classify_all_bands, classify_cancel,
               processing_styled, search_all, search_again, find_similar, model_manager, default_bundle,
               gui_wording):
        fn()
    RESULTS["python_errors"] = python_errors()
    RESULTS["finished"] = time.time()
    save()
    LOG_FILE.close()
    QgsProject.instance().setDirty(False)
    QgsApplication.exit(0)


QTimer.singleShot(0, main)
