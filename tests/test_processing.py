"""Processing provider rsclip: algorithms through processing.run and through qgis_process (subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from plugin_support import s2_crop

pytest.importorskip("qgis.core")

from qgis.core import QgsRasterLayer, QgsVectorLayer

pytestmark = pytest.mark.qgis
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def crop(tmp_path_factory, major_tom_dir: Path) -> Path:
    return s2_crop(major_tom_dir, tmp_path_factory.mktemp("proc") / "s2_crop.tif")


def test_classify_through_processing_run(provider, crop, tiny_bundle, tmp_path) -> None:
    import processing

    out = tmp_path / "labels.tif"
    res = processing.run(
        "rsclip:classify",
        {"INPUT": str(crop), "CLASSES": "forest;water;town", "BUNDLE": str(tiny_bundle), "PROVIDER": 1, "OUTPUT": str(out)},
    )
    assert res["OUTPUT"] == str(out)
    assert res["EXECUTION_PROVIDER"] == "CPUExecutionProvider"
    assert out.with_suffix(".qml").is_file()
    summary = json.loads(Path(res["SUMMARY"]).read_text())
    assert [c["name"] for c in summary["classes"]] == ["forest", "water", "town"]
    # The sidecar .qml styles the layer as soon as QGIS opens it: paletted, with the class names.
    layer = QgsRasterLayer(str(out), "labels")
    assert layer.renderer().type() == "paletted"
    assert [c.label for c in layer.renderer().classes()][:3] == ["forest", "water", "town"]
    assert not list(tmp_path.glob(".*partial"))


def test_loaded_results_are_styled(provider, qgis_iface, crop, tiny_bundle, tmp_path) -> None:
    """runAndLoadResults (what the toolbox's Run and models do): QGIS loads the outputs itself, ignoring the
    .qml beside them; the algorithms' post-processors must style them (issue 10, defect 3)."""
    import processing
    from qgis.core import QgsProject

    from rs_clip_plugin.styling import is_rsclip_output

    res = processing.runAndLoadResults(
        "rsclip:classify",
        {"INPUT": str(crop), "CLASSES": "forest;water;town", "BUNDLE": str(tiny_bundle), "PROVIDER": 1,
         "OUTPUT": str(tmp_path / "classes.tif"), "CONFIDENCE": str(tmp_path / "confidence.tif")},
    )
    # This run's layers by their full paths (an earlier test may have loaded a classes.tif of its own).
    layers = {Path(lyr.source()): lyr for lyr in QgsProject.instance().mapLayers().values()}
    labels, confidence = layers[tmp_path / "classes.tif"], layers[tmp_path / "confidence.tif"]
    assert Path(res["OUTPUT"]).name == "classes.tif"
    assert labels.renderer().type() == "paletted"
    # Exactly the classes, named: not a 256-entry 0..255 legend with black beyond the last class.
    assert [c.label for c in labels.renderer().classes()] == ["forest", "water", "town"]
    assert confidence.renderer().type() == "singlebandpseudocolor"
    assert is_rsclip_output(labels) and is_rsclip_output(confidence)
    res = processing.runAndLoadResults(
        "rsclip:heatmap", {"LAYERS": [str(crop)], "QUERY": "a river", "BUNDLE": str(tiny_bundle), "PROVIDER": 1,
                           "OUTPUT": str(tmp_path / "heat.tif")},
    )
    heat = next(lyr for lyr in QgsProject.instance().mapLayers().values() if Path(lyr.source()) == tmp_path / "heat.tif")
    assert heat.renderer().type() == "singlebandpseudocolor"
    assert heat.opacity() < 1.0


def test_classify_a_raster_without_crs(provider, data_dir, tiny_bundle, tmp_path) -> None:
    """A plain photo (UC Merced, no georeferencing) has no ground area: the report gives pixels instead."""
    import processing

    photo = sorted((data_dir / "ucmerced" / "forest").glob("*.tif"))[0]
    res = processing.run(
        "rsclip:classify",
        {"INPUT": str(photo), "CLASSES": "forest;water", "BUNDLE": str(tiny_bundle), "PROVIDER": 1,
         "OUTPUT": str(tmp_path / "labels.tif")},
    )
    summary = json.loads(Path(res["SUMMARY"]).read_text())
    assert all(c["area_ha"] is None for c in summary["classes"]) and Path(res["OUTPUT"]).is_file()


def test_classify_preset_and_errors(provider, crop, tiny_bundle, tmp_path) -> None:
    import processing
    from qgis.core import QgsProcessingException

    out = tmp_path / "eurosat.tif"
    res = processing.run(
        "rsclip:classify", {"INPUT": str(crop), "PRESET": 1, "BUNDLE": str(tiny_bundle), "OUTPUT": str(out)}
    )
    summary = json.loads(Path(res["SUMMARY"]).read_text())
    assert len(summary["classes"]) == 10 and summary["classes"][1]["name"] == "forest"
    # The tiny bundle's text encoder speaks English only: the engine's refusal reaches the user verbatim.
    with pytest.raises(QgsProcessingException, match="does not support prompts in 'pt'"):
        processing.run("rsclip:classify", {"INPUT": str(crop), "PRESET": 1, "LANG": "pt", "BUNDLE": str(tiny_bundle),
                                           "OUTPUT": str(tmp_path / "pt.tif")})
    with pytest.raises(QgsProcessingException, match="CLASSES is empty"):
        processing.run("rsclip:classify", {"INPUT": str(crop), "BUNDLE": str(tiny_bundle), "OUTPUT": str(tmp_path / "x.tif")})
    with pytest.raises(QgsProcessingException, match="no such bundle folder"):
        processing.run("rsclip:classify", {"INPUT": str(crop), "CLASSES": "a;b", "BUNDLE": str(tmp_path / "nope"),
                                           "OUTPUT": str(tmp_path / "y.tif")})
    # The class names' side-car travels with the class map (it used to be left in a staging folder).
    assert {p.name for p in tmp_path.iterdir()} == {"eurosat.tif", "eurosat.tif.aux.xml", "eurosat.qml",
                                                    "eurosat_confidence.tif", "eurosat_summary.json"}


def test_classify_mode_background_and_synonyms(provider, crop, tiny_bundle, tmp_path) -> None:
    """MODE, BACKGROUND and SYNONYMS reach the engine: the Processing run writes what the engine writes with the
    same options, the legend calls K+1 'background / unknown', and an engine error names BACKGROUND."""
    import processing
    import rasterio
    from qgis.core import QgsProcessingException

    from rs_clip_plugin.engine.classes import BACKGROUND_UNKNOWN
    from rs_clip_plugin.engine.classify import classify_raster
    from rs_clip_plugin.engine.writers import read_class_legend

    out = tmp_path / "dense.tif"
    res = processing.run(
        "rsclip:classify",
        {"INPUT": str(crop), "CLASSES": "forest|woodland;water;town", "BACKGROUND": "a cloud;shadow", "MODE": 1,
         "SYNONYMS": 1, "BUNDLE": str(tiny_bundle), "PROVIDER": 1, "OUTPUT": str(out)},
    )
    s = json.loads(Path(res["SUMMARY"]).read_text())
    assert s["mode"] == "dense" and s["synonyms"] == "mean" and s["background"] == ["a cloud", "shadow"]
    assert read_class_legend(out)["names"] == ["no data", "forest", "water", "town", BACKGROUND_UNKNOWN]
    same = classify_raster(crop, "forest|woodland;water;town", tmp_path / "engine", bundle=tiny_bundle,
                           provider="cpu", mode="dense", synonyms="mean", background="a cloud;shadow")
    with rasterio.open(out) as a, rasterio.open(same.labels_path) as b:
        assert (a.read(1) == b.read(1)).all()
    layer = QgsRasterLayer(str(out), "labels")
    assert [c.label for c in layer.renderer().classes()][-1] == BACKGROUND_UNKNOWN
    res = processing.run(
        "rsclip:classify",
        {"INPUT": str(crop), "CLASSES": "forest;water", "MODE": 2, "BUNDLE": str(tiny_bundle), "PROVIDER": 1,
         "OUTPUT": str(tmp_path / "tile.tif")},
    )
    s = json.loads(Path(res["SUMMARY"]).read_text())
    assert s["mode"] == "tile" and s["synonyms"] == "max" and s["background"] == []
    with pytest.raises(QgsProcessingException, match="BACKGROUND prompt 'water' is also one of the classes"):
        processing.run("rsclip:classify", {"INPUT": str(crop), "CLASSES": "forest;water", "BACKGROUND": "water",
                                           "BUNDLE": str(tiny_bundle), "OUTPUT": str(tmp_path / "clash.tif")})


def test_classify_refine(provider, crop, tiny_bundle, tmp_path) -> None:
    """REFINE reaches the engine: REFINE 1 records the PAMR refinement in the summary (0, the default, none);
    with MODE tile the engine's refusal is one line naming REFINE and MODE."""
    import processing
    from qgis.core import QgsProcessingException

    from rs_clip_plugin.processing.classify_alg import ClassifyAlgorithm

    assert ClassifyAlgorithm.REFINE == "REFINE"
    params = {"INPUT": str(crop), "CLASSES": "forest;water;town", "BUNDLE": str(tiny_bundle), "PROVIDER": 1}
    res = processing.run("rsclip:classify", {**params, "REFINE": 1, "OUTPUT": str(tmp_path / "pamr.tif")})
    s = json.loads(Path(res["SUMMARY"]).read_text())
    assert s["mode"] == "dense" and s["refine"] == {"method": "pamr", "iterations": 10, "dilations": [1, 2]}
    res = processing.run("rsclip:classify", {**params, "OUTPUT": str(tmp_path / "plain.tif")})
    assert json.loads(Path(res["SUMMARY"]).read_text())["refine"] is None
    with pytest.raises(QgsProcessingException) as err:
        processing.run("rsclip:classify", {**params, "REFINE": 1, "MODE": 2, "OUTPUT": str(tmp_path / "tile.tif")})
    message = str(err.value)
    assert "\n" not in message and message.startswith("REFINE pamr refines dense labels"), message
    assert "MODE tile was asked for" in message and "leave REFINE off" in message, message


def test_index_search_heatmap(provider, crop, tiny_bundle, tmp_path) -> None:
    import processing

    idx = processing.run("rsclip:index", {"INPUT": str(crop), "BUNDLE": str(tiny_bundle)})
    assert idx["TILES"] == 9  # 192 px at 10 m in tiles of the bundle's 64 px
    again = processing.run("rsclip:index", {"INPUT": str(crop), "BUNDLE": str(tiny_bundle)})
    assert again["INDEX"] == idx["INDEX"]

    hits = processing.run(
        "rsclip:search",
        {"LAYERS": [str(crop)], "QUERY": "a river", "TOP_K": 4, "BUNDLE": str(tiny_bundle), "OUTPUT": str(tmp_path / "hits.gpkg")},
    )
    layer = QgsVectorLayer(hits["OUTPUT"], "hits", "ogr")
    assert layer.isValid() and layer.featureCount() == 4
    assert "score" in layer.fields().names()

    heat = processing.run(
        "rsclip:heatmap",
        {"LAYERS": [str(crop)], "QUERY": "a river", "BUNDLE": str(tiny_bundle), "OUTPUT": str(tmp_path / "heat.tif")},
    )
    hl = QgsRasterLayer(heat["OUTPUT"], "heat")
    assert hl.isValid() and hl.width() > 0

    # Find similar: an example point of the same raster.
    c = QgsRasterLayer(str(crop), "c").extent().center()
    sim = processing.run(
        "rsclip:search",
        {"LAYERS": [str(crop)], "QUERY_LAYER": str(crop), "QUERY_POINT": f"{c.x()},{c.y()} [EPSG:32648]", "TOP_K": 1,
         "BUNDLE": str(tiny_bundle), "OUTPUT": str(tmp_path / "similar.gpkg")},
    )
    best = next(QgsVectorLayer(sim["OUTPUT"], "s", "ogr").getFeatures())
    assert best.geometry().boundingBox().contains(c)  # the example's own tile is the most similar


def test_heatmap_at_patch_resolution(provider, crop, tiny_bundle, tmp_path) -> None:
    """DENSE_HEATMAP: the heat map scores patches (it varies inside a tile), tagged as such."""
    import numpy as np
    import processing
    import rasterio

    maps = {}
    for dense in (False, True):
        res = processing.run("rsclip:heatmap", {"LAYERS": [str(crop)], "QUERY": "a river", "BUNDLE": str(tiny_bundle),
                                                "PROVIDER": 1, "DENSE_HEATMAP": dense,
                                                "OUTPUT": str(tmp_path / f"heat_{dense}.tif")})
        with rasterio.open(res["OUTPUT"]) as ds:
            maps[dense] = (ds.read(1), ds.tags()["RSCLIP_HEATMAP"])
    assert maps[False][1] == "tile" and maps[True][1] == "patch"
    assert np.ptp(maps[False][0][:64, :64]) == 0 and np.ptp(maps[True][0][:64, :64]) > 0


def test_qgis_process_script(crop, tiny_bundle, tmp_path) -> None:
    """The documented command line: scripts/qgis_process.sh run rsclip:classify -- INPUT=.. CLASSES=.. OUTPUT=.."""
    out = tmp_path / "qp" / "labels.tif"
    env = dict(os.environ, RSCLIP_BUNDLE=str(tiny_bundle), RSCLIP_QGIS_HOME=str(tmp_path / "qgis-home"))
    cmd = [str(REPO / "scripts" / "qgis_process.sh"), "--json", "run", "rsclip:classify", "--",
           f"INPUT={crop}", "CLASSES=forest;water", f"OUTPUT={out}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert result["results"]["OUTPUT"] == str(out)
    assert result["results"]["EXECUTION_PROVIDER"] == "CPUExecutionProvider"
    assert out.is_file() and out.with_suffix(".qml").is_file()
