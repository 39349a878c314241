"""classes.gpkg (rsclip classify --polygons): polygons per class, minimum mapping unit, spatial index."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import rasterio
from plugin_support import scene_extent
from rasterio.transform import from_origin

from rs_clip_plugin.engine.bundle import load_bundle
from rs_clip_plugin.engine.classify import classify_raster
from rs_clip_plugin.engine.cli import main
from rs_clip_plugin.engine.errors import InputError
from rs_clip_plugin.engine.polygons import polygonise

CLASSES = "forest|woodland;river;annual crop;town"


@pytest.fixture(scope="module")
def bundle(tiny_bundle: Path):
    return load_bundle(tiny_bundle)


_crop = scene_extent


def _rows(gpkg: Path) -> list[dict]:
    con = sqlite3.connect(gpkg)
    try:
        cur = con.execute('SELECT fid, class, value, area_ha, mean_confidence, pixels FROM "classes"')
        return [dict(zip(("fid", "class", "value", "area_ha", "mean_confidence", "pixels"), r)) for r in cur]
    finally:
        con.close()


@pytest.fixture(scope="module")
def runs(bundle, major_tom_dir: Path, tmp_path_factory) -> dict:
    """The same crop classified with polygons, without and with a minimum mapping unit. The tiny test bundle
    gives one class nearly everywhere, so the threshold is the median confidence of a first run: about half the
    pixels become 'unknown', in the speckled pattern a minimum mapping unit is for."""
    extent = _crop(major_tom_dir)
    probe = classify_raster(major_tom_dir, CLASSES, tmp_path_factory.mktemp("probe"), bundle=bundle, extent=extent,
                            provider="cpu")
    with rasterio.open(probe.confidence_path) as ds:
        threshold = float(np.median(ds.read(1)))
    out = {}

    def run(mmu: float):
        return classify_raster(major_tom_dir, CLASSES, tmp_path_factory.mktemp("poly"), bundle=bundle, extent=extent,
                               provider="cpu", threshold=threshold, polygons=True, mmu_ha=mmu)

    out[0.0] = run(0.0)
    out["mmu"] = run(0.5)
    return out


def test_polygons_per_class_cover_the_labelled_area(runs) -> None:
    res = runs[0.0]
    gpkg = Path(res.summary["files"]["polygons"])
    assert gpkg.name == "classes.gpkg" and gpkg.exists()
    rows = _rows(gpkg)
    s = res.summary
    names = {c["value"]: c["name"] for c in s["classes"]} | {s["unknown"]["value"]: "unknown"}
    assert rows and all(names[r["value"]] == r["class"] for r in rows)  # names follow values; no 'no data'
    assert s["polygons"]["polygons"] == len(rows)
    with rasterio.open(res.labels_path) as ds:
        labels = ds.read(1)
    for value, name in names.items():
        px = int(np.count_nonzero(labels == value))
        got = [r for r in rows if r["value"] == value]
        assert bool(got) == bool(px), name
        # Without a minimum mapping unit the polygons hold exactly the class's pixels, and its area.
        assert sum(r["pixels"] for r in got) == px
        area = next((c["area_ha"] for c in s["classes"] if c["value"] == value), s["unknown"]["area_ha"])
        assert sum(r["area_ha"] for r in got) == pytest.approx(area, rel=1e-4, abs=1e-3)
    assert all(0.0 <= r["mean_confidence"] <= 1.0 for r in rows)
    assert all(r["area_ha"] > 0 for r in rows)


def test_minimum_mapping_unit_on_a_classify_run(runs) -> None:
    before, after = _rows(Path(runs[0.0].summary["files"]["polygons"])), _rows(Path(runs["mmu"].summary["files"]["polygons"]))
    poly = runs["mmu"].summary["polygons"]
    assert poly["mmu_pixels"] == 50 and runs[0.0].summary["polygons"]["mmu_pixels"] == 0  # 0.5 ha of 10 m pixels
    assert len(after) < len(before)  # the unit merged patches away (a no-op would keep the count)
    # Merging moves pixels between classes, never loses any: the labelled area is the same.
    assert sum(r["pixels"] for r in after) == sum(r["pixels"] for r in before)


def _label_raster(tmp: Path) -> tuple[Path, Path, np.ndarray]:
    """A 60x60 label map of 10 m pixels (UTM 33N): class 1 left, class 2 right, 5 one-pixel speckles of 2 in
    the left half, a 3x3 block of 3 (9 px) in the right half, a no-data band along the top; confidence
    0.5 on class 1, 0.9 elsewhere."""
    labels = np.ones((60, 60), np.uint8)
    labels[:, 30:] = 2
    for r, c in ((10, 5), (20, 10), (30, 15), (40, 20), (50, 25)):
        labels[r, c] = 2
    labels[40:43, 40:43] = 3
    labels[:4, :] = 0
    conf = np.where(labels == 1, 0.5, 0.9).astype(np.float32)
    conf[labels == 0] = np.nan
    prof = {"driver": "GTiff", "width": 60, "height": 60, "count": 1, "crs": "EPSG:32633",
            "transform": from_origin(500000, 6000000, 10, 10)}
    with rasterio.open(tmp / "labels.tif", "w", dtype="uint8", nodata=0, **prof) as ds:
        ds.write(labels, 1)
    with rasterio.open(tmp / "confidence.tif", "w", dtype="float32", **prof) as ds:
        ds.write(conf, 1)
    return tmp / "labels.tif", tmp / "confidence.tif", labels


@pytest.mark.parametrize(("mmu_ha", "n_polygons", "min_px"), [(0.0, 8, 1), (0.05, 3, 9), (0.1, 2, 56 * 30)])
def test_sieve_merges_regions_under_the_mapping_unit(tmp_path: Path, mmu_ha, n_polygons, min_px) -> None:
    lab, conf, labels = _label_raster(tmp_path)
    names = ["no data", "a", "b", "c"]
    res = polygonise(lab, conf, tmp_path / "classes.gpkg", names, np.full(60, 100.0), mmu_ha)
    rows = _rows(tmp_path / "classes.gpkg")
    assert res["polygons"] == len(rows) == n_polygons
    assert min(r["pixels"] for r in rows) == min_px
    assert sum(r["pixels"] for r in rows) == int(np.count_nonzero(labels))  # no data stays out, nothing lost
    assert {r["class"] for r in rows} <= {"a", "b", "c"}
    a = [r for r in rows if r["class"] == "a"]
    if mmu_ha:  # speckles gone: class a is its whole half again, confidence 0.5 plus the 5 merged 0.9 pixels
        assert len(a) == 1 and a[0]["pixels"] == 56 * 30
        assert a[0]["mean_confidence"] == pytest.approx((0.5 * (56 * 30 - 5) + 0.9 * 5) / (56 * 30))
        assert a[0]["area_ha"] == pytest.approx(56 * 30 * 100 / 1e4)
    else:
        assert a[0]["mean_confidence"] == pytest.approx(0.5)


def test_gpkg_has_a_spatial_index_and_opens_in_qgis(runs) -> None:
    gpkg = Path(runs["mmu"].summary["files"]["polygons"])
    con = sqlite3.connect(gpkg)
    try:
        ext = con.execute("SELECT table_name, column_name, extension_name FROM gpkg_extensions").fetchall()
        assert ("classes", "geom", "gpkg_rtree_index") in ext
        n_rtree = con.execute('SELECT COUNT(*) FROM "rtree_classes_geom"').fetchone()[0]
        n = con.execute('SELECT COUNT(*) FROM "classes"').fetchone()[0]
    finally:
        con.close()
    assert n_rtree == n > 0
    qgis_core = pytest.importorskip("qgis.core")
    lyr = qgis_core.QgsVectorLayer(f"{gpkg}|layername=classes", "classes", "ogr")
    assert lyr.isValid() and lyr.featureCount() == n
    assert lyr.hasSpatialIndex() == qgis_core.QgsFeatureSource.SpatialIndexPresent
    assert {f.name() for f in lyr.fields()} >= {"class", "value", "area_ha", "mean_confidence"}
    # The R-tree answers a bounding-box query like a full scan does.
    e = lyr.extent()
    # Corners off the pixel grid: a box edge on a polygon's edge counts as touching for one side and not the other.
    box = qgis_core.QgsRectangle(e.xMinimum(), e.yMinimum(), e.xMinimum() + 0.5037 * e.width(),
                                 e.yMinimum() + 0.5037 * e.height())
    req = qgis_core.QgsFeatureRequest().setFilterRect(box)
    got = {f.id() for f in lyr.getFeatures(req)}
    # OGR tests a rectangle filter against the geometry itself (GEOS), not only its bounding box.
    want = {f.id() for f in lyr.getFeatures() if f.geometry().intersects(box)}
    assert got == want and got


def test_cli_polygons_and_mmu_validation(bundle, major_tom_dir: Path, tmp_path: Path, tiny_bundle: Path,
                                         capsys) -> None:
    ext = _crop(major_tom_dir, size_m=640.0)
    out = tmp_path / "cli"
    rc = main(["classify", str(major_tom_dir), "--classes", CLASSES, "--out", str(out), "--bundle", str(tiny_bundle),
               "--extent", ",".join(str(v) for v in ext), "--polygons", "--mmu-ha", "0.5", "--json"])
    assert rc == 0
    s = json.loads(capsys.readouterr().out)
    assert (out / "classes.gpkg").exists() and s["polygons"]["mmu_pixels"] == 50
    # Off by default: no file, no entry.
    res = classify_raster(major_tom_dir, CLASSES, tmp_path / "off", bundle=bundle, extent=ext, provider="cpu")
    assert not (tmp_path / "off" / "classes.gpkg").exists() and res.summary["polygons"] is None
    with pytest.raises(InputError, match="mmu_ha"):
        classify_raster(major_tom_dir, CLASSES, tmp_path / "bad", bundle=bundle, extent=ext, polygons=True, mmu_ha=-1)


def _cog_errors(path: Path) -> list[str]:
    v = pytest.importorskip("osgeo_utils.samples.validate_cloud_optimized_geotiff")
    _warnings, errors, _details = v.validate(str(path), full_check=True)
    return errors


def test_make_cog_tiles_overviews_and_keeps_the_legend(tmp_path: Path) -> None:
    """writers.make_cog on a 700x600 label map: a valid COG (GDAL's validator), tiled, with mode overviews,
    its colour table, tags, nodata and category names (.aux.xml) intact."""
    from rs_clip_plugin.engine.writers import (
        geotiff_profile,
        make_cog,
        open_geotiff,
        read_class_legend,
        set_category_names,
        write_class_legend,
    )

    path = tmp_path / "labels.tif"
    labels = np.ones((600, 700), np.uint8)
    labels[:, 350:] = 2
    labels[:100] = 0
    with open_geotiff(path, geotiff_profile(700, 600, from_origin(500000, 6000000, 10, 10), "EPSG:32633", "uint8", 0)) as ds:
        write_class_legend(ds, ["no data", "a", "b"], ["#000000", "#ff0000", "#00ff00"])
        for r in range(0, 600, 100):  # window by window, as classify writes
            ds.write(labels[r:r + 100], 1, window=rasterio.windows.Window(0, r, 700, 100))
    make_cog(path, "mode")
    set_category_names(path, ["no data", "a", "b"])
    assert sorted(p.name for p in tmp_path.iterdir()) in (["labels.tif"], ["labels.tif", "labels.tif.aux.xml"])
    with rasterio.open(path) as ds:
        assert ds.profile["tiled"] and ds.block_shapes[0] == (256, 256)
        assert ds.overviews(1) == [2, 4]
        assert ds.nodata == 0 and ds.colormap(1)[1][:3] == (255, 0, 0)
        assert np.array_equal(ds.read(1), labels)
        ov = ds.read(1, out_shape=(150, 175))  # served from the factor-4 overview
        assert set(np.unique(ov)) == {0, 1, 2}  # mode: no blended, invented values
    assert read_class_legend(path)["names"] == ["no data", "a", "b"]
    assert _cog_errors(path) == []


def test_classify_rasters_are_cogs(runs) -> None:
    res = runs[0.0]
    for p in (res.labels_path, res.confidence_path):
        assert _cog_errors(p) == [], p
    assert not [p for p in res.labels_path.parent.iterdir() if p.name.startswith(".")]


@pytest.mark.qgis
def test_processing_polygons_loaded_and_styled(provider, qgis_iface, major_tom_dir: Path, tiny_bundle: Path,
                                               tmp_path: Path) -> None:
    """rsclip:classify with POLYGONS and MMU_HA: the GeoPackage is written, loaded by QGIS and styled by
    class with the class map's colours (the post-processor); without POLYGONS no GeoPackage is written."""
    import processing
    from plugin_support import s2_crop
    from qgis.core import QgsProject

    from rs_clip_plugin.styling import is_rsclip_output

    crop = s2_crop(major_tom_dir, tmp_path / "s2_crop.tif")
    gpkg = tmp_path / "polys.gpkg"
    res = processing.runAndLoadResults(
        "rsclip:classify",
        {"INPUT": str(crop), "CLASSES": "forest;water;town", "BUNDLE": str(tiny_bundle), "PROVIDER": 1,
         "OUTPUT": str(tmp_path / "classes.tif"), "POLYGONS": str(gpkg), "MMU_HA": 0.5},
    )
    assert Path(res["POLYGONS"]) == gpkg and gpkg.is_file()
    summary = json.loads(Path(res["SUMMARY"]).read_text())
    assert summary["polygons"]["mmu_pixels"] == 50 and summary["files"]["polygons"] == str(gpkg)
    lyr = next(lyr for lyr in QgsProject.instance().mapLayers().values()
               if Path(lyr.source().split("|")[0]).name == "polys.gpkg")
    assert lyr.isValid() and lyr.featureCount() == summary["polygons"]["polygons"]
    assert lyr.renderer().type() == "categorizedSymbol" and lyr.renderer().classAttribute() == "class"
    colours = {c["name"]: c["color"] for c in summary["classes"]}
    cats = {c.value(): c.symbol().color().name() for c in lyr.renderer().categories()}
    assert cats == colours and is_rsclip_output(lyr)
    out2 = tmp_path / "nopoly"
    out2.mkdir()
    processing.run("rsclip:classify", {"INPUT": str(crop), "CLASSES": "forest;water;town", "BUNDLE": str(tiny_bundle),
                                       "PROVIDER": 1, "OUTPUT": str(out2 / "classes.tif")})
    assert not list(out2.glob("*.gpkg"))
