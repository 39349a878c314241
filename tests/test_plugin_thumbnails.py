"""Search-hit thumbnails (own 2-98 % stretch, S2 true colour, S1 false colour) and cross-modal search in the dock."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from plugin_support import s2_crop, ssl4eo_s1_s2

pytest.importorskip("qgis.core")

from qgis.core import QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsProject, QgsRasterLayer
from qgis.PyQt.QtCore import Qt

from rs_clip_plugin.gui.thumbnails import composite_bands, false_colour, read_window_rgb, stretch, to_qimage
from rs_clip_plugin.installed_bundles import MemorySettings, ModelStore

pytestmark = pytest.mark.qgis


def test_stretch_uses_the_windows_own_percentiles() -> None:
    rng = np.random.default_rng(0)
    dark = rng.uniform(0.01, 0.05, size=(3, 40, 40)).astype(np.float32)  # a dark window: reflectance < 5 %
    dark[:, 0, 0] = np.nan
    rgb, valid = stretch(dark)
    assert rgb.dtype == np.uint8 and not valid[0, 0] and valid.sum() == 40 * 40 - 1
    for ch in rgb:
        v = ch[valid]
        assert np.percentile(v, 1) <= 5 and np.percentile(v, 99) >= 250  # spread over the full range
        assert 90 < v.mean() < 165
    # One range for all three channels keeps hues: a pixel twice as red as green stays redder than green.
    green = rng.uniform(0.01, 0.1, size=(40, 40)).astype(np.float32)
    joint, _ = stretch(np.stack([2 * green, green, green]), per_channel=False)
    assert (joint[0].astype(int) >= joint[1]).all() and (joint[1] == joint[2]).all()
    assert joint[0].max() == 255 and joint[1].max() < 200
    flat, _ = stretch(np.full((3, 4, 4), 0.2, dtype=np.float32))
    assert (flat == 128).all()
    empty, none_valid = stretch(np.full((3, 4, 4), np.nan, dtype=np.float32))
    assert not none_valid.any() and (empty == 0).all()


def test_composite_bands_and_s1_false_colour() -> None:
    assert composite_bands("s2-l2a", ["B02", "B03", "B04", "B08"]) == ["B04", "B03", "B02"]
    assert composite_bands("s1-grd", ["VH", "VV"]) == ["VV", "VH"]
    assert composite_bands("rgb", ["Red", "Green", "Blue", "Alpha"]) == ["Red", "Green", "Blue"]
    with pytest.raises(ValueError, match="B02"):
        composite_bands("s2-l2a", ["B03", "B04", "B08"])
    vv, vh = np.full((2, 2), -8.0, np.float32), np.full((2, 2), -15.0, np.float32)
    out = false_colour("s1-grd", np.stack([vv, vh]), "db")
    assert out.shape == (3, 2, 2) and np.allclose(out[2], 7.0)  # VV/VH ratio in dB
    lin = false_colour("s1-grd", np.stack([10 ** (vv / 10), 10 ** (vh / 10)]), "linear")
    assert np.allclose(lin, out, atol=1e-4)


def test_thumbnail_of_a_real_s2_window_is_not_black(tmp_path: Path, major_tom_dir: Path, qgis_app) -> None:
    crop = s2_crop(major_tom_dir, tmp_path / "s2.tif")
    from rs_clip_plugin.engine.raster import open_source

    with open_source(crop) as src:
        x0, _, _, y1 = src.bounds
    box = (x0, y1 - 640, x0 + 640, y1)  # a 64 x 64 px hit
    rgb, valid = read_window_rgb(str(crop), box)
    assert rgb.shape == (3, 64, 64) and valid.all()
    assert 60 < rgb.mean() < 200 and rgb.std() > 30
    img = to_qimage(rgb, valid)
    assert (img.width(), img.height()) == (64, 64)
    px = img.pixelColor(10, 20)
    assert (px.red(), px.green(), px.blue(), px.alpha()) == (rgb[0, 20, 10], rgb[1, 20, 10], rgb[2, 20, 10], 255)


@pytest.fixture
def s1_s2_layers(tmp_path: Path, data_dir: Path, qgis_new_project) -> tuple[QgsRasterLayer, QgsRasterLayer]:
    s1_tif, s2_tif = ssl4eo_s1_s2(data_dir, tmp_path / "ssl4eo")
    s1 = QgsRasterLayer(str(s1_tif), "Sentinel-1 VV VH")
    s2 = QgsRasterLayer(str(s2_tif), "Sentinel-2 L2A")
    assert s1.isValid() and s2.isValid()
    QgsProject.instance().addMapLayers([s1, s2])
    return s1, s2


def test_find_similar_from_s1_layer_hits_s2_layer(qgis_iface, s1_s2_layers, multimodal_bundle, tmp_path) -> None:
    from rs_clip_plugin.engine.index import build_index
    from rs_clip_plugin.engine.search import image_query_vector
    from rs_clip_plugin.gui.search_dock import SearchDock
    from rs_clip_plugin.gui.tasks import wait_for

    s1, s2 = s1_s2_layers
    canvas = qgis_iface.mapCanvas()
    mercator = QgsCoordinateReferenceSystem("EPSG:3857")  # the map shows another CRS than the layers
    canvas.setDestinationCrs(mercator)
    dock = SearchDock(qgis_iface, store=ModelStore(tmp_path / "models", MemorySettings()))
    try:
        dock.set_bundle_path(multimodal_bundle)
        for i in range(dock.layers_list.count()):  # search only the Sentinel-2 layer
            item = dock.layers_list.item(i)
            item.setCheckState(Qt.Checked if item.data(Qt.UserRole) == s2.id() else Qt.Unchecked)
        assert dock.checked_layers() == [s2]
        dock.topk_spin.setValue(3)
        dock.query_layer_combo.setLayer(s1)
        dock.similar_btn.setChecked(True)  # arms the map tool, as a user would before clicking
        assert canvas.mapTool() is dock.map_tool

        centre = s1.extent().center()
        click = QgsCoordinateTransform(s1.crs(), mercator, QgsProject.instance()).transform(centre)
        dock._map_clicked(click, Qt.LeftButton)
        assert not dock.similar_btn.isChecked() and dock.map_tool is None
        task = dock.task
        assert task is not None, dock.index_label.text()
        assert wait_for(task), dock.index_label.text()

        res = dock.result
        assert len(res.hits) == 3
        assert {Path(h.source).resolve() for h in res.hits} == {Path(s2.source()).resolve()}
        assert [i["modality"] for i in res.indexes] == ["s2-l2a"]
        assert list(dock.index_states) == ["Sentinel-2 L2A"]  # the S1 example layer was not indexed
        # The query is the S1 encoder's embedding of the clicked tile, not an S2 one.
        q_s1 = image_query_vector(multimodal_bundle, raster=s1.source(), point=(centre.x(), centre.y()), provider="cpu")
        q_s2 = image_query_vector(multimodal_bundle, raster=s2.source(), point=(centre.x(), centre.y()), provider="cpu")
        best = res.hits[0].score
        s2_index = build_index(Path(s2.source()), multimodal_bundle, provider="cpu")
        assert float(s2_index.scores(q_s1).max()) == pytest.approx(best, abs=1e-3)
        assert float(s2_index.scores(q_s2).max()) == pytest.approx(1.0, abs=5e-3)
        assert best < 0.99  # so a same-modality (S2) query would have ranked differently
        assert dock.results_list.count() == 3
        assert all(not dock.results_list.item(i).icon().isNull() for i in range(3))
    finally:
        dock.cleanup()


def test_s1_thumbnail_is_false_colour(s1_s2_layers) -> None:
    s1, _ = s1_s2_layers
    e = s1.extent()
    rgb, valid = read_window_rgb(s1.source(), (e.xMinimum(), e.yMinimum(), e.xMaximum(), e.yMaximum()))
    assert valid.all() and rgb.shape[0] == 3
    # Red (VV), green (VH) and blue (VV-VH) carry different information, each stretched over its own range.
    assert not np.array_equal(rgb[0], rgb[1]) and not np.array_equal(rgb[0], rgb[2])
    assert all(ch.max() >= 250 and ch.min() <= 5 for ch in rgb)
