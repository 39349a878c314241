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

from rs_clip_plugin.engine.classify import classify_raster
from rs_clip_plugin.engine.cli import main
from rs_clip_plugin.engine.errors import InputError
from rs_clip_plugin.engine.polygons import mmu_pixels, polygonise

CLASSES = "forest|woodland;river;annual crop;town"


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
    extent = scene_extent(major_tom_dir)
    probe = classify_raster(major_tom_dir, CLASSES, tmp_path_factory.mktemp("probe"), bundle=bundle, extent=extent,
                            provider="cpu")
    with rasterio.open(probe.confidence_path) as ds:
        threshold = float(np.median(ds.read(1)))
    out = {}

    def run(mmu: float):
        return classify_raster(major_tom_dir, CLASSES, tmp_path_factory.mktemp("poly"), bundle=bundle, extent=extent,
                               provider="cpu", threshold=threshold, polygons=True, mmu_ha=mmu)

    out[0.0] = run(0.0)
    # The tiny bundle's random weights make a new map each session, sometimes of a few large patches only: the
    # unit is 0.5 ha or, when every patch is larger, just above the smallest one, so that it always has
    # something to merge.
    smallest = min(r["area_ha"] for r in _rows(Path(out[0.0].summary["files"]["polygons"])))
    out["mmu_ha"] = max(0.5, round(smallest + 0.01, 2))
    out["mmu"] = run(out["mmu_ha"])
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
    assert poly["mmu_pixels"] == mmu_pixels(runs["mmu_ha"], 100.0) > 1 and runs[0.0].summary["polygons"]["mmu_pixels"] == 0
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


@pytest.mark.parametrize("block_rows", [None, 4])  # the whole raster in one block; 15 blocks of 4 rows
@pytest.mark.parametrize(("mmu_ha", "n_polygons", "min_px"), [(0.0, 8, 1), (0.05, 3, 9), (0.1, 2, 56 * 30)])
def test_sieve_merges_regions_under_the_mapping_unit(tmp_path: Path, mmu_ha, n_polygons, min_px, block_rows) -> None:
    lab, conf, labels = _label_raster(tmp_path)
    names = ["no data", "a", "b", "c"]
    res = polygonise(lab, conf, tmp_path / "classes.gpkg", names, np.full(60, 100.0), mmu_ha, block_rows=block_rows)
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


def _polygons(gpkg: Path) -> list[tuple[int, int, float, float]]:
    """(value, pixels, pixels the geometry covers, mean confidence) per polygon, sorted: the geometry's own
    area (shoelace, holes subtracted) in 10 m pixels ties the attributes to the shape they describe."""
    from rs_clip_plugin.engine.gpkg import parse_gpkg_geometry

    def ring_area(ring) -> float:
        xy = np.asarray(ring)
        xy = xy - xy[0]  # UTM coordinates are ~1e6: shoelace products of those lose the last pixel's digits
        return 0.5 * abs(float(np.dot(xy[:-1, 0], xy[1:, 1]) - np.dot(xy[1:, 0], xy[:-1, 1])))

    con = sqlite3.connect(gpkg)
    try:
        out = []
        for value, pixels, conf, blob in con.execute('SELECT value, pixels, mean_confidence, geom FROM "classes"'):
            rings = parse_gpkg_geometry(blob)[1]
            area = ring_area(rings[0]) - sum(ring_area(r) for r in rings[1:])
            out.append((value, pixels, round(area / 100.0, 3), conf))
        return sorted(out)
    finally:
        con.close()


def _gdal_reference(labels_path: Path, min_px: int) -> list[tuple[int, int]]:
    """(value, pixels) per polygon of the whole-raster path: GDAL's sieve and polygoniser on the whole array."""
    from rasterio import features

    with rasterio.open(labels_path) as ds:
        labels = ds.read(1)
    valid = labels != 0
    if min_px > 1:
        labels = features.sieve(labels, size=min_px, connectivity=4, mask=valid)
    out = []
    for geom, v in features.shapes(labels, mask=valid, connectivity=4):
        rings = [np.asarray(r) for r in geom["coordinates"]]
        area = sum((1 if i == 0 else -1) * 0.5 * abs(float(np.dot(r[:-1, 0], r[1:, 1]) - np.dot(r[1:, 0], r[:-1, 1])))
                   for i, r in enumerate(rings))
        out.append((int(v), round(area)))
    return sorted(out)


def _ndvi_classes(scene: Path, tmp: Path) -> tuple[Path, Path]:
    """A label map with a real landscape's structure: NDVI of a 300x260 crop of the Sentinel-2 sample in 5
    classes (fields, roads, speckle), a no-data notch cut into the top; its confidence the scaled NDVI."""
    from rasterio.windows import Window

    win = Window(500, 600, 300, 260)
    with rasterio.open(scene / "B04.tif") as red_ds, rasterio.open(scene / "B08.tif") as nir_ds:
        red, nir = red_ds.read(1, window=win).astype(np.float32), nir_ds.read(1, window=win).astype(np.float32)
        transform, crs = red_ds.window_transform(win), red_ds.crs
    ndvi = (nir - red) / np.maximum(nir + red, 1.0)
    labels = (np.digitize(ndvi, np.quantile(ndvi, [0.2, 0.4, 0.6, 0.8])) + 1).astype(np.uint8)
    labels[:30, 100:180] = 0
    prof = {"driver": "GTiff", "width": 300, "height": 260, "count": 1, "crs": crs, "transform": transform}
    with rasterio.open(tmp / "labels.tif", "w", dtype="uint8", nodata=0, **prof) as ds:
        ds.write(labels, 1)
    with rasterio.open(tmp / "confidence.tif", "w", dtype="float32", **prof) as ds:
        ds.write(((ndvi + 1) / 2).astype(np.float32), 1)
    return tmp / "labels.tif", tmp / "confidence.tif"


@pytest.mark.parametrize("mmu_ha", [0.0, 0.05, 0.5])
def test_streamed_blocks_match_the_whole_raster(major_tom_dir: Path, tmp_path: Path, mmu_ha: float) -> None:
    """Row blocks of 7 (37 seams) and of 64 give the polygons of one block holding the whole raster, attribute
    for attribute, and the polygons of GDAL's sieve and polygoniser run on the whole array."""
    lab, conf = _ndvi_classes(major_tom_dir, tmp_path)
    names = ["no data", "bare", "sparse", "grass", "crops", "forest"]
    area = np.full(260, 100.0)
    got = {}
    for rows in (7, 64, 260):
        res = polygonise(lab, conf, tmp_path / f"b{rows}.gpkg", names, area, mmu_ha, block_rows=rows)
        got[rows] = (_polygons(tmp_path / f"b{rows}.gpkg"), res)
    whole, res = got[260]
    assert len(whole) > 150  # a real landscape: hundreds of patches, many across block borders
    for rows in (7, 64):
        assert got[rows][0] == whole
        assert got[rows][1] == res
    assert [(px, gpx) for _v, px, gpx, _c in whole if px != gpx] == []  # attributes describe their polygon
    reference = _gdal_reference(lab, res["mmu_pixels"])
    assert [(v, px) for v, px, _g, _c in whole] == reference
    if mmu_ha:
        assert res["sieved_pixels"] > 0 and min(px for _v, px, _g, _c in whole) >= res["mmu_pixels"]


def test_streamed_blocks_match_the_whole_raster_on_a_classify_run(runs, tmp_path: Path) -> None:
    """The same on the label map of a classify run (its 'unknown' speckle included)."""
    res0 = runs[0.0]
    names = [c["name"] for c in sorted(res0.summary["classes"], key=lambda c: c["value"])]
    names = ["no data", *names, "unknown"]
    with rasterio.open(res0.labels_path) as ds:
        h = ds.height
    area = np.full(h, 100.0)
    for mmu in (0.0, 0.5):
        a = polygonise(res0.labels_path, res0.confidence_path, tmp_path / "a.gpkg", names, area, mmu, block_rows=3)
        b = polygonise(res0.labels_path, res0.confidence_path, tmp_path / "b.gpkg", names, area, mmu, block_rows=h)
        assert a == b and _polygons(tmp_path / "a.gpkg") == _polygons(tmp_path / "b.gpkg")
        assert [(v, px) for v, px, _g, _c in _polygons(tmp_path / "a.gpkg")] == _gdal_reference(res0.labels_path,
                                                                                                   a["mmu_pixels"])


@pytest.mark.parametrize("min_px", [2, 3, 10, 70])
def test_speckle_ties_and_no_data_holes_match_gdal(tmp_path: Path, min_px: int) -> None:
    """The hard cases of GDAL's sieve: 3 % one-pixel speckle (many equal-sized neighbours: ties broken by scan
    order), no-data pixels scattered inside regions, chains of small regions; 11-row blocks give GDAL's result."""
    rng = np.random.default_rng(min_px)
    cells = rng.integers(1, 5, (40, 40)).astype(np.uint8)
    labels = np.repeat(np.repeat(cells, 8, 0), 8, 1)[:300, :300].copy()
    speckle = rng.random(labels.shape) < 0.03
    labels[speckle] = rng.integers(1, 5, int(speckle.sum()))
    labels[rng.random(labels.shape) < 0.002] = 0
    prof = {"driver": "GTiff", "width": 300, "height": 300, "count": 1, "crs": "EPSG:32633",
            "transform": from_origin(500000, 6000000, 10, 10)}
    with rasterio.open(tmp_path / "labels.tif", "w", dtype="uint8", nodata=0, **prof) as ds:
        ds.write(labels, 1)
    with rasterio.open(tmp_path / "confidence.tif", "w", dtype="float32", **prof) as ds:
        ds.write(rng.random(labels.shape).astype(np.float32), 1)
    res = polygonise(tmp_path / "labels.tif", tmp_path / "confidence.tif", tmp_path / "c.gpkg", list("nabcd"),
                     np.full(300, 100.0), mmu_ha=min_px / 100 - 0.005, block_rows=11)
    assert res["mmu_pixels"] == min_px and res["sieved_pixels"] > 0
    got = _polygons(tmp_path / "c.gpkg")
    assert [(v, px) for v, px, _g, _c in got] == _gdal_reference(tmp_path / "labels.tif", min_px)
    assert [(px, gpx) for _v, px, gpx, _c in got if px != gpx] == []


def test_a_region_across_block_seams_stays_one_polygon(tmp_path: Path) -> None:
    """A U whose arms meet only in its bottom block, a ring around an island, both cut by 3-row blocks: each
    is one polygon (the ring with its hole), whatever the blocks saw of them."""
    labels = np.ones((20, 24), np.uint8)
    labels[2:18, 2:4] = 2  # U: left arm
    labels[2:18, 8:10] = 2  # right arm
    labels[16:18, 2:10] = 2  # joined at the bottom only (rows 16-17: the sixth block)
    labels[3:15, 13:22] = 3  # ring of 3 ...
    labels[6:12, 16:19] = 1  # ... around an island of 1
    prof = {"driver": "GTiff", "width": 24, "height": 20, "count": 1, "crs": "EPSG:32633",
            "transform": from_origin(500000, 6000000, 10, 10)}
    with rasterio.open(tmp_path / "labels.tif", "w", dtype="uint8", nodata=0, **prof) as ds:
        ds.write(labels, 1)
    with rasterio.open(tmp_path / "confidence.tif", "w", dtype="float32", **prof) as ds:
        ds.write(np.where(labels == 2, 0.8, 0.4).astype(np.float32), 1)
    res = polygonise(tmp_path / "labels.tif", tmp_path / "confidence.tif", tmp_path / "c.gpkg",
                     ["no data", "a", "u", "ring"], np.full(20, 100.0), block_rows=3)
    assert res["per_class"] == {"a": 2, "u": 1, "ring": 1}  # a: the background and the island
    polys = _polygons(tmp_path / "c.gpkg")
    u = [p for p in polys if p[0] == 2]
    assert u == [(2, int(np.count_nonzero(labels == 2)), float(np.count_nonzero(labels == 2)), 0.8)]
    ring = [p for p in polys if p[0] == 3]
    assert ring[0][1] == ring[0][2] == 12 * 9 - 6 * 3  # its hole cut out of the geometry too


@pytest.mark.parametrize("mmu_ha", [0.0, 0.05])
def test_blocks_of_only_no_data_at_the_bottom(tmp_path: Path, mmu_ha: float) -> None:
    """A scene whose last row blocks are all no data (outside the swath) and one with no labelled pixel at all:
    the last blocks have no components of their own, so their first id is past the end of the region table."""
    labels = np.ones((20, 24), np.uint8)
    labels[5:8, 3:6] = 2
    labels[12:] = 0  # blocks 4 and 5 of 4 rows: no data only
    prof = {"driver": "GTiff", "width": 24, "height": 20, "count": 1, "crs": "EPSG:32633",
            "transform": from_origin(500000, 6000000, 10, 10)}
    with rasterio.open(tmp_path / "confidence.tif", "w", dtype="float32", **prof) as ds:
        ds.write(np.full((20, 24), 0.5, np.float32), 1)
    for case, expected in (("bottom", {"a": 1, "b": 1}), ("empty", {})):
        if case == "empty":
            labels[:] = 0
        with rasterio.open(tmp_path / "labels.tif", "w", dtype="uint8", nodata=0, **prof) as ds:
            ds.write(labels, 1)
        res = polygonise(tmp_path / "labels.tif", tmp_path / "confidence.tif", tmp_path / f"{case}.gpkg",
                         ["no data", "a", "b"], np.full(20, 100.0), mmu_ha, block_rows=4)
        assert res["per_class"] == expected
        assert sum(r["pixels"] for r in _rows(tmp_path / f"{case}.gpkg")) == int(np.count_nonzero(labels))


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
    # The R-tree answers a rectangle query like a full scan does. OGR returns the polygons that intersect the
    # rectangle, not those whose bounding box does (an L-shaped patch's box can reach in where it does not).
    e = lyr.extent()
    # Corners off the pixel grid: a box edge on a polygon's edge counts as touching for one side and not the other.
    box = qgis_core.QgsRectangle(e.xMinimum(), e.yMinimum(), e.xMinimum() + 0.5037 * e.width(),
                                 e.yMinimum() + 0.5037 * e.height())
    req = qgis_core.QgsFeatureRequest().setFilterRect(box)
    got = {f.id() for f in lyr.getFeatures(req)}
    want = {f.id() for f in lyr.getFeatures() if f.geometry().intersects(box)}
    assert got == want and got


def test_cli_polygons_and_mmu_validation(bundle, major_tom_dir: Path, tmp_path: Path, tiny_bundle: Path,
                                         capsys) -> None:
    ext = scene_extent(major_tom_dir, size_m=640.0)
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
