"""Zero-shot labelling end to end on real Sentinel-2 samples with the tiny bundle (random weights, real graphs)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import rasterio
from plugin_support import s2_crop, s2_vrt, scene_extent
from rasterio.transform import from_origin
from rasterio.windows import Window

from rs_clip_plugin.engine.classify import OutputExistsError, classify_raster, pixel_areas_m2
from rs_clip_plugin.engine.cli import main
from rs_clip_plugin.engine.errors import cli_names
from rs_clip_plugin.engine.pipeline import preprocess_tile
from rs_clip_plugin.engine.progress import Cancelled, Progress
from rs_clip_plugin.engine.raster import open_source
from rs_clip_plugin.engine.runtime import CPU, EncoderSession
from rs_clip_plugin.engine.text import class_embeddings
from rs_clip_plugin.engine.tiling import TileGrid
from rs_clip_plugin.engine.writers import read_class_legend

CLASSES = "forest|woodland;river;annual crop;town"


def _files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_classify_major_tom_crop(bundle, major_tom_dir: Path, tmp_path: Path) -> None:
    extent = scene_extent(major_tom_dir)
    out = tmp_path / "out"
    res = classify_raster(major_tom_dir, CLASSES, out, bundle=bundle, extent=extent, provider="cpu")
    assert _files(out) == ["confidence.tif", "labels.qml", "labels.tif", "labels.tif.aux.xml", "summary.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left
    with rasterio.open(major_tom_dir / "B04.tif") as src, rasterio.open(res.labels_path) as lab, \
            rasterio.open(res.confidence_path) as conf:
        # Same CRS, same pixel size, pixel-aligned with the input, bounds = the extent snapped outward.
        assert lab.crs == src.crs == conf.crs
        assert lab.transform.a == src.transform.a and lab.transform.e == src.transform.e
        col, row = ~src.transform * (lab.transform.c, lab.transform.f)
        assert abs(col - round(col)) < 1e-6 and abs(row - round(row)) < 1e-6
        lb = lab.bounds
        assert lb.left <= extent[0] < lb.left + 10 and lb.right - 10 < extent[2] <= lb.right
        assert lb.bottom <= extent[1] < lb.bottom + 10 and lb.top - 10 < extent[3] <= lb.top
        assert (lab.width, lab.height) == (129, 129) and conf.transform == lab.transform
        assert lab.dtypes[0] == "uint8" and lab.nodata == 0 and conf.dtypes[0] == "float32" and np.isnan(conf.nodata)
        labels, confidence = lab.read(1), conf.read(1)
        cmap = lab.colormap(1)
    assert labels.min() >= 1 and labels.max() <= 4  # all valid, no threshold
    assert np.all((confidence > 0.25 - 1e-6) & (confidence <= 1.0))  # max of a 4-class softmax
    legend = read_class_legend(res.labels_path)
    assert legend["names"] == ["no data", "forest", "river", "annual crop", "town"]  # no threshold: no 'unknown'
    assert legend["colors"][1:] == [c["color"] for c in res.summary["classes"]]
    assert cmap[0][3] == 0 and cmap[1][3] == 255
    gdal = pytest.importorskip("osgeo.gdal")
    info = gdal.Info(str(res.labels_path), format="json")
    assert info["bands"][0]["categories"] == legend["names"]
    # QGIS style: a paletted renderer with one entry per class.
    root = ET.parse(res.qml_path).getroot()
    renderer = root.find("pipe/rasterrenderer")
    assert renderer is not None and renderer.get("type") == "paletted"
    entries = [(e.get("value"), e.get("label"), e.get("color")) for e in renderer.iter("paletteEntry")]
    assert entries == [(str(c["value"]), c["name"], c["color"]) for c in res.summary["classes"]]
    # Summary: provider, areas summing to the valid area, pixel counts matching the raster.
    s = json.loads(res.summary_path.read_text())
    assert s == json.loads(json.dumps(res.summary))
    assert s["provider"] == CPU and s["modality"] == "rgb" and s["sensor"] == "s2-l2a"
    for c in s["classes"]:
        assert c["pixels"] == int((labels == c["value"]).sum())
        assert c["area_ha"] == pytest.approx(c["pixels"] * 100 / 1e4)
    total = sum(c["area_ha"] for c in s["classes"]) + s["unknown"]["area_ha"]
    assert total == pytest.approx(s["valid_area_ha"]) and s["valid_area_ha"] == pytest.approx(129 * 129 * 0.01)
    assert s["nodata"]["pixels"] == 0 and s["tiling"]["tiles"] == 9 and s["tiling"]["tile_px"] == 64
    assert {"read_s", "inference_s", "write_s", "total_s"} <= set(s["timings"])
    assert s["bundle"]["digest"] == bundle.digest


def test_overlap_averages_logits_of_covering_tiles(bundle, major_tom_dir: Path, tmp_path: Path) -> None:
    extent = scene_extent(major_tom_dir, size_m=1280.0, dx=5000.0, dy=5000.0)
    # fp32: recomputed below in other batches, and int8's dynamic activation scale is per batch.
    # Tile mode: this checks the per-tile logit vectors (dense mode has its own tests in test_dense.py); synonyms
    # averaged (mean), as class_embeddings gives them below.
    res = classify_raster(major_tom_dir, CLASSES, tmp_path / "o", bundle=bundle, extent=extent, overlap=0.5,
                          provider="cpu", batch_size=5, precision="fp32", mode="tile", synonyms="mean")
    s = res.summary
    assert s["tiling"]["stride_px"] == 32 and s["tiling"]["tiles"] == 9  # 128 px: starts 0, 32, 64
    # Recompute by hand the pixel (row 40, col 40) of the output: tiles starting at 0 and 32 cover it in
    # both directions, so four tile logit vectors are averaged before the softmax.
    src = open_source(major_tom_dir)
    spec = bundle.manifest.encoder("rgb")
    with rasterio.open(res.confidence_path) as ds:
        conf = ds.read(1)
        col0, row0 = (round(v) for v in ~src.transform * (ds.transform.c, ds.transform.f))
    with rasterio.open(res.labels_path) as ds:
        labels = ds.read(1)
    sess = EncoderSession(bundle, "rgb", provider="cpu", precision="fp32")
    tiles = [preprocess_tile(src.read_for(spec, Window(col0 + c, row0 + r, 64, 64)), spec) for r in (0, 32) for c in (0, 32)]
    emb = sess.embed(np.stack(tiles))
    logits = bundle.manifest.logit_scale * emb @ class_embeddings(bundle, CLASSES).T
    mean = logits.mean(axis=0)
    p = np.exp(mean - mean.max())
    p /= p.sum()
    assert conf[40, 40] == pytest.approx(float(p.max()), abs=1e-4)
    assert labels[40, 40] == int(p.argmax()) + 1
    src.close()


def test_eurosat_ms_tif_and_threshold_unknown(bundle, data_dir: Path, tmp_path: Path) -> None:
    tif = data_dir / "eurosat_ms" / "Forest" / "Forest_1.tif"
    res = classify_raster(tif, "forest;sea or lake;annual crop", tmp_path / "a", bundle=bundle, provider="cpu",
                          tile_size_m=320)
    with rasterio.open(tif) as src, rasterio.open(res.labels_path) as lab, rasterio.open(res.confidence_path) as cf:
        assert lab.crs == src.crs and lab.transform == src.transform and lab.shape == src.shape
        conf = cf.read(1)
    assert res.summary["sensor"] == "s2-l1c" and res.summary["tiling"]["tiles"] == 4
    thr = float(np.median(conf))
    res2 = classify_raster(tif, "forest;sea or lake;annual crop", tmp_path / "b", bundle=bundle, provider="cpu",
                           tile_size_m=320, threshold=thr)
    with rasterio.open(res2.labels_path) as lab, rasterio.open(res2.confidence_path) as cf:
        labels, conf2 = lab.read(1), cf.read(1)
    np.testing.assert_allclose(conf2, conf)  # confidence is kept for unknown pixels
    # Unknown has a value of its own (K+1), named and coloured in the legend and the style; 0 stays no data.
    assert np.all(labels[conf2 < thr] == 4) and np.all((labels[conf2 >= thr] >= 1) & (labels[conf2 >= thr] <= 3))
    legend = read_class_legend(res2.labels_path)
    assert legend["names"] == ["no data", "forest", "sea or lake", "annual crop", "unknown"]
    assert 'value="4"' in res2.qml_path.read_text() and 'label="unknown"' in res2.qml_path.read_text()
    s = res2.summary
    assert s["unknown"]["value"] == 4
    assert s["unknown"]["pixels"] == int((conf2 < thr).sum()) > 0
    assert sum(c["pixels"] for c in s["classes"]) + s["unknown"]["pixels"] == s["valid_pixels"] == 64 * 64
    assert sum(c["area_ha"] for c in s["classes"]) + s["unknown"]["area_ha"] == pytest.approx(s["valid_area_ha"])


def test_nodata_pixels_and_skipped_tiles(bundle, tmp_path: Path) -> None:
    data = np.random.default_rng(3).integers(1, 255, size=(3, 128, 128), dtype=np.uint8)
    data[:, :, :72] = 0  # tiles of column 0 are skipped; column 1 holds 8 px of no data
    path = tmp_path / "rgb.tif"
    with rasterio.open(path, "w", driver="GTiff", width=128, height=128, count=3, dtype="uint8", nodata=0,
                       crs="EPSG:32633", transform=from_origin(500000, 5000000, 10, 10)) as ds:
        ds.write(data)
    res = classify_raster(path, "a;b", tmp_path / "o", bundle=bundle, provider="cpu")
    with rasterio.open(res.labels_path) as lab, rasterio.open(res.confidence_path) as cf:
        labels, conf = lab.read(1), cf.read(1)
    assert np.all(labels[:, :72] == 0) and np.all(np.isnan(conf[:, :72]))
    assert np.all(labels[:, 72:] > 0) and np.all(np.isfinite(conf[:, 72:]))
    s = res.summary
    assert s["tiling"]["skipped_nodata"] == 2 and s["tiling"]["embedded"] == 2
    assert s["nodata"]["pixels"] == 72 * 128 and s["valid_pixels"] == 56 * 128
    assert s["nodata"]["area_ha"] == pytest.approx(72 * 128 * 0.01)


def test_raster_smaller_than_a_tile_is_labelled(bundle, major_tom_dir: Path, tmp_path: Path, capsys) -> None:
    """A 40 x 40 px (400 m) crop under the bundle's 640 m tile (issue 15, item 4): one tile of real pixels
    is encoded (resized up to the encoder's input), not a padded tile skipped as no data."""
    small = s2_crop(major_tom_dir, tmp_path / "small.tif", size=40)
    res = classify_raster(small, CLASSES, tmp_path / "out", bundle=bundle, provider="cpu")
    t = res.summary["tiling"]
    assert (t["tiles"], t["embedded"], t["skipped_nodata"], t["tile_px"]) == (1, 1, 0, 40)
    assert res.summary["valid_pixels"] == 1600 and res.summary["nodata"]["pixels"] == 0
    with rasterio.open(res.labels_path) as lab:
        labels = lab.read(1)
    assert labels.shape == (40, 40) and (labels > 0).all()
    # Tile sizes the raster cannot hold, or that are not numbers, are one-line errors naming the option.
    for bad, said in (("nan", "got nan"), ("inf", "got inf"), ("-640", "got -640"), ("1e9", "larger than the whole raster")):
        rc = main(["classify", str(small), "--classes", CLASSES, "--out", str(tmp_path / "o2"),
                   "--bundle", str(bundle.root), "--provider", "cpu", f"--tile-size-m={bad}"])
        err = capsys.readouterr().err
        assert rc == 2 and "--tile-size-m" in err and said in err and "Traceback" not in err, err
        assert not (tmp_path / "o2").exists()


def test_true_colour_vrt_runs_with_the_rgb_encoder(multimodal_bundle: Path, major_tom_dir: Path, tmp_path: Path,
                                                   capsys) -> None:
    """Issue 10, defect 5: a 4-band VRT B04, B03, B02, B08 with a bundle holding s2-l2a (12 bands) and rgb
    encoders: picked automatically, and with --sensor rgb, the rgb encoder labels it (it was refused)."""
    vrt = s2_vrt(major_tom_dir, tmp_path / "rgbn.vrt", size=64)
    auto = classify_raster(vrt, CLASSES, tmp_path / "auto", bundle=multimodal_bundle, provider="cpu")
    assert (auto.summary["sensor"], auto.summary["modality"]) == ("s2-l2a", "rgb")
    assert auto.summary["valid_pixels"] == 64 * 64
    rc = main(["classify", str(vrt), "--classes", CLASSES, "--out", str(tmp_path / "cli"), "--bundle",
               str(multimodal_bundle), "--provider", "cpu", "--sensor", "rgb", "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert summary["modality"] == "rgb" and summary["classes"] == auto.summary["classes"]
    # The raw provider stays; the device in words comes beside it.
    assert summary["provider"] == "CPUExecutionProvider" and summary["device_description"].startswith("CPU (")
    rc = main(["classify", str(vrt), "--classes", CLASSES, "--out", str(tmp_path / "cli"), "--bundle",
               str(multimodal_bundle), "--provider", "cpu", "--sensor", "rgb", "--overwrite"])
    out = capsys.readouterr().out
    assert rc == 0 and "(rgb encoder) on CPU (" in out and "ExecutionProvider" not in out


def test_geographic_pixel_area() -> None:
    from affine import Affine
    from rasterio.crs import CRS

    grid = TileGrid([], 1, 1, Window(0, 0, 1, 2), Affine(1.0, 0, 10.0, 0, -1.0, 1.0), CRS.from_epsg(4326))
    areas = pixel_areas_m2(grid, Window(0, 0, 1, 2))
    # A 1 x 1 degree cell at the equator is about 12,364 km2; the row from 0 to -1 deg has the same area.
    assert areas[0] == pytest.approx(1.2364e10, rel=2e-3) and areas[1] == pytest.approx(areas[0])


def test_cancel_leaves_nothing(bundle, major_tom_dir: Path, tmp_path: Path) -> None:
    calls = {"n": 0}

    def cancelled() -> bool:
        calls["n"] += 1
        return calls["n"] > 4

    out = tmp_path / "sub" / "out"
    with pytest.raises(Cancelled):
        classify_raster(major_tom_dir, CLASSES, out, bundle=bundle, extent=scene_extent(major_tom_dir, 2560), provider="cpu",
                        batch_size=2, progress=Progress(is_cancelled=cancelled))
    assert not out.exists() and _files(tmp_path) == []
    # Cancelled while writing (every tile encoded, files half made in the staging folder) is cleaned up too.
    state = {"cancel": False}

    def on_update(fraction: float, message: str) -> None:
        if message == "writing":
            state["cancel"] = True

    with pytest.raises(Cancelled):
        classify_raster(major_tom_dir, CLASSES, out, bundle=bundle, extent=scene_extent(major_tom_dir, 640), provider="cpu",
                        progress=Progress(on_update, lambda: state["cancel"]))
    assert state["cancel"] and not out.exists() and _files(tmp_path) == []


def test_overwrite_refusal(bundle, major_tom_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    extent = scene_extent(major_tom_dir, 640)
    classify_raster(major_tom_dir, "a;b", out, bundle=bundle, extent=extent, provider="cpu")
    before = {n: (out / n).stat().st_mtime_ns for n in _files(out)}
    with pytest.raises(OutputExistsError, match=r"labels\.tif.*overwrite") as err:
        classify_raster(major_tom_dir, "a;b;c", out, bundle=bundle, extent=extent, provider="cpu")
    assert "pass --overwrite" in err.value.render(cli_names(err.value.params))
    assert {n: (out / n).stat().st_mtime_ns for n in _files(out)} == before
    res = classify_raster(major_tom_dir, "a;b;c", out, bundle=bundle, extent=extent, provider="cpu", overwrite=True)
    assert [c["name"] for c in res.summary["classes"]] == ["a", "b", "c"]
    assert read_class_legend(res.labels_path)["names"] == ["no data", "a", "b", "c"]


def test_cli_classify_json(tiny_bundle: Path, major_tom_dir: Path, tmp_path: Path, capsys) -> None:
    ext = ",".join(f"{v:.3f}" for v in scene_extent(major_tom_dir, 640))
    classes = tmp_path / "classes.txt"
    classes.write_text("# test\nforest|woodland\nriver\n", encoding="utf-8")
    out = tmp_path / "out"
    rc = main(["classify", str(major_tom_dir), "--classes-file", str(classes), "--out", str(out), "--bundle",
               str(tiny_bundle), "--extent", ext, "--provider", "cpu", "--json"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result["provider"] == CPU
    assert [c["name"] for c in result["classes"]] == ["forest", "river"]
    assert Path(result["labels"]) == out / "labels.tif" and (out / "confidence.tif").is_file()


def test_cli_errors_leave_no_file(tiny_bundle: Path, data_dir: Path, tmp_path: Path, capsys) -> None:
    not_raster = tmp_path / "notes.tif"
    not_raster.write_text("this is not a raster\n")
    s1 = next(next((data_dir / "bigearthnet_v1" / "BigEarthNet-S1").iterdir()).iterdir())
    tif = data_dir / "eurosat_ms" / "Forest" / "Forest_1.tif"
    cases = [
        ([str(not_raster), "--classes", "a;b"], "not a raster"),
        ([str(s1), "--classes", "a;b"], "expects bands"),
        ([str(tif), "--classes", " ; "], "no classes given"),
    ]
    for args, reason in cases:
        out = tmp_path / "out"
        rc = main(["classify", *args, "--out", str(out), "--bundle", str(tiny_bundle), "--provider", "cpu"])
        err = capsys.readouterr().err.strip()
        assert rc != 0
        assert len(err.splitlines()) == 1 and reason in err and err.startswith("rsclip classify: error:")
        assert not out.exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.tif"]


@pytest.mark.qgis
def test_qml_applies_in_qgis(bundle, major_tom_dir: Path, tmp_path: Path, qgis_app) -> None:
    from qgis.core import QgsRasterLayer

    res = classify_raster(major_tom_dir, CLASSES, tmp_path / "o", bundle=bundle, extent=scene_extent(major_tom_dir, 640),
                          provider="cpu")
    layer = QgsRasterLayer(str(res.labels_path), "labels")
    assert layer.isValid()
    _, ok = layer.loadNamedStyle(str(res.qml_path))
    assert ok and layer.renderer().type() == "paletted"
    got = [(int(c.value), c.label, c.color.name()) for c in layer.renderer().classes()]
    assert got == [(c["value"], c["name"], c["color"]) for c in res.summary["classes"]]


def test_cli_radiometry_overrides_reach_the_reader(tiny_bundle: Path, major_tom_dir: Path, tmp_path: Path,
                                                   capsys) -> None:
    """The product is N9999 (no offset); --s2-offset 1000 must be applied, and change what the encoder sees."""
    ext = ",".join(f"{v:.3f}" for v in scene_extent(major_tom_dir, 640))
    confs = {}
    for offset in (None, 1000):
        out = tmp_path / f"o{offset}"
        extra = ["--s2-offset", str(offset)] if offset is not None else []
        rc = main(["classify", str(major_tom_dir), "--classes", "forest;river", "--out", str(out), "--bundle",
                   str(tiny_bundle), "--extent", ext, "--provider", "cpu", *extra])
        assert rc == 0, capsys.readouterr().err
        summary = json.loads((out / "summary.json").read_text())
        assert summary["radiometry"]["s2_offset_dn"] == (offset or 0)
        with rasterio.open(out / "confidence.tif") as ds:
            confs[offset] = ds.read(1)
    assert not np.allclose(confs[None], confs[1000])
