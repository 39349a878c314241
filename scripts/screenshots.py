"""`make screenshots`: render the classify dialog, the search dock and the styled class map to PNG, offscreen.

Runs the real jobs (engine through the plugin's QgsTasks) on a crop of the sample Sentinel-2 scene and
writes docs/screenshots/{classify_dialog,search_dock,class_map}.png. The bundle is --bundle, else
$RSCLIP_BUNDLE / the model manager's default, else a tiny bundle exported on the spot (random weights:
the pictures show the interface, not a good model).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def _bundle(arg: str | None, work: Path) -> Path:
    if arg:
        return Path(arg)
    from rs_clip_plugin.engine.bundle import BundleError
    from rs_clip_plugin.installed_bundles import MemorySettings, ModelStore

    try:
        return ModelStore(settings=MemorySettings()).resolve("")
    except BundleError:
        from training.export.exporter import export_model

        out = work / "rsclip-tiny"
        export_model("rsclip-tiny", out_dir=out)
        return out


def _render_layer(layer, path: Path, size: int = 420) -> None:
    from qgis.core import QgsMapRendererCustomPainterJob, QgsMapSettings
    from qgis.PyQt.QtCore import QSize
    from qgis.PyQt.QtGui import QColor, QImage, QPainter

    settings = QgsMapSettings()
    settings.setLayers([layer])
    settings.setDestinationCrs(layer.crs())
    settings.setExtent(layer.extent())
    settings.setOutputSize(QSize(size, size))
    img = QImage(size, size, QImage.Format_ARGB32_Premultiplied)
    img.fill(QColor("white"))
    painter = QPainter(img)
    QgsMapRendererCustomPainterJob(settings, painter).renderSynchronously()
    painter.end()
    img.save(str(path))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    ap.add_argument("--bundle", help="bundle folder or .zip (default: see module docstring)")
    args = ap.parse_args(argv)

    from qgis.core import QgsApplication, QgsProject, QgsRasterLayer

    app = QgsApplication([], True)
    app.setPrefixPath("/usr", True)
    app.initQgis()
    work = Path(tempfile.mkdtemp(prefix="rsclip-shots-"))
    try:
        from plugin_support import s2_crop

        from rs_clip_plugin.engine.settings import require_sample
        from rs_clip_plugin.gui.classify_dialog import ClassifyDialog
        from rs_clip_plugin.gui.search_dock import SearchDock
        from rs_clip_plugin.gui.tasks import wait_for
        from rs_clip_plugin.installed_bundles import MemorySettings, ModelStore
        from rs_clip_plugin.presets import preset_classes

        bundle = _bundle(args.bundle, work)
        scene = next(p for p in sorted(require_sample("major_tom_s2l2a").iterdir()) if p.is_dir())
        crop = s2_crop(scene, work / "s2_crop.tif", size=384, col=200, row=300)
        layer = QgsRasterLayer(str(crop), "Sentinel-2 L2A crop")
        QgsProject.instance().addMapLayer(layer)
        store = ModelStore(work / "models", MemorySettings())
        args.out.mkdir(parents=True, exist_ok=True)

        dlg = ClassifyDialog(None, store=store)
        dlg.layer_combo.setLayer(layer)
        dlg.set_bundle_path(bundle)
        dlg.set_classes(preset_classes("EuroSAT", "en"))
        dlg.out_widget.setFilePath(str(work / "out"))
        task = dlg.run()
        if task is None or not wait_for(task):
            raise SystemExit(f"classify failed: {dlg.message_label.text()}")
        dlg.resize(820, 1000)
        dlg.show()
        app.processEvents()
        dlg.grab().save(str(args.out / "classify_dialog.png"))
        _render_layer(dlg.result_layers[0], args.out / "class_map.png")

        dock = SearchDock(None, store=store)
        dock.set_bundle_path(bundle)
        dock.query_edit.setText("a river")
        dock.topk_spin.setValue(5)
        dock.heatmap_check.setChecked(True)
        task = dock.search_text()
        if task is None or not wait_for(task):
            raise SystemExit(f"search failed: {dock.index_label.text()}")
        dock.resize(430, 940)
        dock.show()
        app.processEvents()
        dock.grab().save(str(args.out / "search_dock.png"))
        dock.cleanup()
        for name in ("classify_dialog.png", "search_dock.png", "class_map.png"):
            p = args.out / name
            print(f"{p} ({p.stat().st_size / 1e3:.0f} kB)")
    finally:
        from plugin_support import release_qgis_objects

        QgsProject.instance().clear()
        release_qgis_objects()
        app.exitQgis()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
