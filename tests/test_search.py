"""Search: text / image / cross-modal queries, NMS, GeoPackage and heat-map outputs, the CLI; real rasters."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from rs_clip_plugin.engine.bundle import load_bundle
from rs_clip_plugin.engine.classes import ClassSpec
from rs_clip_plugin.engine.cli import main
from rs_clip_plugin.engine.index import build_index
from rs_clip_plugin.engine.nms import box_iou, nms
from rs_clip_plugin.engine.search import (
    image_query_vector,
    search,
    split_negatives,
    text_query_vector,
)
from rs_clip_plugin.engine.text import spec_embeddings


@pytest.fixture(scope="session")
def s1_dir(data_dir: Path) -> Path:
    return sorted((data_dir / "ssl4eo_s12" / "s1" / "0000200").iterdir())[0]


@pytest.fixture(scope="session")
def s2_dirs(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "ssl4eo_s12" / "s2a" / "0000200").iterdir())


def _extent(scene: Path, tiles: int = 5) -> tuple[float, float, float, float]:
    with rasterio.open(scene / "B04.tif") as ds:
        b = ds.bounds
    return (b.left, b.top - tiles * 640.0, b.left + tiles * 640.0, b.top)


def _ogr_features(path: Path):
    ogr = pytest.importorskip("osgeo.ogr")
    ds = ogr.Open(str(path))
    assert ds is not None, f"OGR cannot open {path}"
    lyr = ds.GetLayerByName("hits")
    feats = [(f.GetField("rank"), f.GetField("score"), f.GetField("source"), f.GetGeometryRef().GetEnvelope()) for f in lyr]
    srs = lyr.GetSpatialRef()
    srs.AutoIdentifyEPSG()
    return feats, srs.GetAuthorityCode(None)


# --- units -------------------------------------------------------------------------------------------
def test_split_negatives() -> None:
    assert split_negatives("harbour -ships") == ("harbour", ["ships"])
    assert split_negatives("built-up area -cargo ships -oil") == ("built-up area", ["cargo ships", "oil"])
    assert split_negatives("a river") == ("a river", [])


def test_nms_keeps_distinct_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 0, 30, 10], [0, 0, 10, 10.5]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.95])
    keep = nms(boxes, scores, 0.3)
    assert list(keep) == [3, 2]  # box 0 overlaps 3 almost fully, box 1 overlaps 3 with IoU 0.32
    assert list(nms(boxes, scores, 1.0)) == [3, 0, 1, 2]
    assert list(nms(boxes, scores, 0.3, limit=1)) == [3]
    assert box_iou(boxes[0], boxes[1:2])[0] == pytest.approx(50 / 150)


def test_text_query_vector_negatives(tiny_bundle: Path) -> None:
    plain = text_query_vector(tiny_bundle, "a river")
    neg = text_query_vector(tiny_bundle, "a river -a city")
    same = text_query_vector(tiny_bundle, "a river", negative=["a city"])
    assert plain.shape == (64,) and np.linalg.norm(plain) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(neg, same, atol=1e-6)
    city = text_query_vector(tiny_bundle, "a city")
    assert float(neg @ city) < float(plain @ city)  # pushed away from the negative term
    with pytest.raises(ValueError, match="positive term"):
        text_query_vector(tiny_bundle, "-ships")


def test_text_query_is_a_phrase_not_a_class_list(tiny_bundle: Path) -> None:
    """A query is one phrase: ';' and '|' are text, 'unknown' and a repeated word are allowed (the label-map
    rules of class lists do not apply)."""
    b = load_bundle(tiny_bundle)
    phrase = "river; lake"
    want = spec_embeddings(b, [ClassSpec(phrase)])[0]
    np.testing.assert_allclose(text_query_vector(tiny_bundle, phrase), want, atol=1e-6)
    assert float(text_query_vector(tiny_bundle, "river") @ want) < 0.9999  # not just its first part
    assert text_query_vector(tiny_bundle, "unknown").shape == (64,)
    assert text_query_vector(tiny_bundle, "harbour -Harbour boats").shape == (64,)


# --- search on real rasters -----------------------------------------------------------------------------
def test_text_search_writes_k_distinct_features(tiny_bundle: Path, major_tom_dir: Path, tmp_path: Path) -> None:
    q = text_query_vector(tiny_bundle, "a river")
    res = search([major_tom_dir], q, tmp_path / "out", bundle=tiny_bundle, top_k=6, overlap=0.5,
                 extent=_extent(major_tom_dir, 6), provider="cpu", nms_iou=0.3)
    assert len(res.hits) == 6 and res.provider == "CPUExecutionProvider"
    feats, epsg = _ogr_features(res.gpkg_path)
    assert epsg == "32648"
    assert [f[0] for f in feats] == [1, 2, 3, 4, 5, 6]
    scores = [f[1] for f in feats]
    assert scores == sorted(scores, reverse=True)
    # Scores are the cosine of the query with the hit tiles' stored embeddings.
    idx = build_index(major_tom_dir, tiny_bundle, overlap=0.5, extent=_extent(major_tom_dir, 6), provider="cpu")
    assert idx.reused
    s = idx.scores(q)
    for h in res.hits:
        assert h.score == pytest.approx(float(s[h.tile]), abs=1e-6)
    assert res.hits[0].score == pytest.approx(float(s.max()), abs=1e-6)
    # Distinct places: with half-tile overlap neighbours have IoU 1/3 > 0.3 and must not both appear.
    boxes = np.array([f[3] for f in feats])[:, [0, 2, 1, 3]]  # OGR envelope is (minx, maxx, miny, maxy)
    for i in range(len(boxes)):
        assert (box_iou(boxes[i], np.delete(boxes, i, axis=0)) <= 0.3 + 1e-9).all()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["hits.gpkg"]


def test_point_query_finds_its_own_tile(tiny_bundle: Path, major_tom_dir: Path, tmp_path: Path) -> None:
    ext = _extent(major_tom_dir, 4)
    idx = build_index(major_tom_dir, tiny_bundle, extent=ext, provider="cpu")
    target = 6
    xmin, ymin, xmax, ymax = idx.tile_bounds(target)
    q = image_query_vector(tiny_bundle, raster=major_tom_dir, point=((xmin + xmax) / 2, (ymin + ymax) / 2), provider="cpu")
    res = search([idx], q, tmp_path / "out", bundle=tiny_bundle, top_k=3)
    assert res.hits[0].tile == target
    assert res.hits[0].score == pytest.approx(1.0, abs=5e-3)  # same pixels, same preprocessing, same encoder
    with pytest.raises(ValueError, match="outside the raster"):
        image_query_vector(tiny_bundle, raster=major_tom_dir, point=(0.0, 0.0))


def test_image_file_query(tiny_bundle: Path, major_tom_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    jpg = sorted((data_dir / "eurosat_rgb_small" / "River").glob("*.jpg"))[0]
    q = image_query_vector(tiny_bundle, image_file=jpg, provider="cpu")
    assert q.shape == (64,) and np.linalg.norm(q) == pytest.approx(1.0, abs=1e-5)
    other = image_query_vector(tiny_bundle, image_file=sorted((data_dir / "eurosat_rgb_small" / "Forest").glob("*.jpg"))[0])
    assert float(q @ other) < 0.99999  # different pictures, different vectors
    res = search([major_tom_dir], q, tmp_path / "out", bundle=tiny_bundle, top_k=4, extent=_extent(major_tom_dir, 4))
    assert len(res.hits) == 4


def test_cross_modal_s1_to_s2_and_back(multimodal_bundle: Path, s1_dir: Path, s2_dirs: list[Path], tmp_path: Path) -> None:
    with rasterio.open(s1_dir / "VV.tif") as ds:
        b = ds.bounds
    centre = ((b.left + b.right) / 2, (b.bottom + b.top) / 2)
    q_s1 = image_query_vector(multimodal_bundle, raster=s1_dir, point=centre, provider="cpu")
    # The query came from the s1-grd encoder: it equals that tile embedded by the S1 index.
    s1_index = build_index(s1_dir, multimodal_bundle, provider="cpu")
    assert s1_index.modality == "s1-grd"
    assert float(s1_index.scores(q_s1).max()) == pytest.approx(1.0, abs=5e-3)

    res = search(s2_dirs, q_s1, tmp_path / "s1_to_s2", bundle=multimodal_bundle, top_k=3, provider="cpu")
    assert {i["modality"] for i in res.indexes} == {"s2-l2a"}
    assert len(res.hits) == 3 and all(Path(h.source) in [p.resolve() for p in s2_dirs] for h in res.hits)

    q_s2 = image_query_vector(multimodal_bundle, raster=s2_dirs[0], point=centre, provider="cpu")
    back = search([s1_dir], q_s2, tmp_path / "s2_to_s1", bundle=multimodal_bundle, top_k=2, provider="cpu")
    assert back.indexes[0]["modality"] == "s1-grd" and len(back.hits) == 2
    assert not np.allclose(q_s1, q_s2)


def test_several_rasters_one_ranked_list(multimodal_bundle: Path, major_tom_dir: Path, s2_dirs: list[Path],
                                          tmp_path: Path) -> None:
    q = text_query_vector(multimodal_bundle, "farmland")
    idx_mt = build_index(major_tom_dir, multimodal_bundle, extent=_extent(major_tom_dir, 4), provider="cpu")
    res = search([idx_mt, *s2_dirs], q, tmp_path / "out", bundle=multimodal_bundle, top_k=40, heatmap=True, provider="cpu")
    feats, epsg = _ogr_features(res.gpkg_path)
    assert epsg == "32648"  # one layer in the first source's CRS; EPSG:4326 hits reprojected into it
    assert len(feats) == len(res.hits) and [f[0] for f in feats] == list(range(1, len(feats) + 1))
    sources = {Path(f[2]).name for f in feats}
    assert major_tom_dir.name in sources and sources & {p.name for p in s2_dirs}
    scores = [f[1] for f in feats]
    assert scores == sorted(scores, reverse=True)
    # The two SSL4EO dates cover the same ground: NMS keeps one hit per place across rasters.
    boxes = np.array([f[3] for f in feats])[:, [0, 2, 1, 3]]
    for i in range(len(boxes)):
        assert (box_iou(boxes[i], np.delete(boxes, i, axis=0)) <= 0.3 + 1e-9).all()
    assert len(res.heatmap_paths) == 3 and all(p.is_file() for p in res.heatmap_paths)


def test_heatmap_georeferencing(tiny_bundle: Path, major_tom_dir: Path, tmp_path: Path) -> None:
    ext = _extent(major_tom_dir, 4)
    q = text_query_vector(tiny_bundle, "a town")
    res = search([major_tom_dir], q, tmp_path / "out", bundle=tiny_bundle, top_k=3, extent=ext, heatmap=True)
    assert res.heatmap_path == tmp_path / "out" / "heatmap.tif"
    with rasterio.open(res.heatmap_path) as hm, rasterio.open(major_tom_dir / "B04.tif") as src:
        assert hm.crs == src.crs and hm.dtypes[0] == "float32"
        assert hm.res == src.res and (hm.width, hm.height) == (256, 256)
        assert (hm.bounds.left, hm.bounds.bottom, hm.bounds.right, hm.bounds.top) == pytest.approx(ext)
        heat = hm.read(1)
        for h in res.hits:  # each hit tile's pixels hold its score
            xmin, ymin, xmax, ymax = h.bounds
            r, c = hm.index((xmin + xmax) / 2, (ymin + ymax) / 2)
            assert heat[r, c] == pytest.approx(h.score, abs=1e-5)
        assert np.nanmax(heat) == pytest.approx(res.hits[0].score, abs=1e-5)


def test_heatmap_is_a_tagged_cog(tiny_bundle: Path, major_tom_dir: Path, tmp_path: Path) -> None:
    """Heat maps are Cloud-Optimised GeoTIFFs with averaged overviews (as the class map), tagged as RS-CLIP
    outputs so no front end offers them as search inputs."""
    from osgeo import gdal

    from rs_clip_plugin.engine.writers import OUTPUT_TAG

    validate = pytest.importorskip("osgeo_utils.samples.validate_cloud_optimized_geotiff").validate
    q = text_query_vector(tiny_bundle, "a town")
    res = search([major_tom_dir], q, tmp_path / "out", bundle=tiny_bundle, top_k=3, extent=_extent(major_tom_dir, 5),
                 heatmap=True)
    with rasterio.open(res.heatmap_path) as hm:
        assert (hm.width, hm.height) == (320, 320) and hm.overviews(1) == [2]
        assert hm.tags()[OUTPUT_TAG] == "heatmap"
    assert gdal.Open(str(res.heatmap_path)).GetMetadataItem("LAYOUT", "IMAGE_STRUCTURE") == "COG"
    assert validate(str(res.heatmap_path), full_check=True)[1] == []
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["heatmap.tif", "hits.gpkg"]  # no leftovers


# --- CLI ---------------------------------------------------------------------------------------------
def test_cli_search_and_errors(tiny_bundle: Path, major_tom_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli"
    rc = main(["search", str(major_tom_dir), "--query", "a river -city", "--top-k", "5", "--out", str(out),
               "--bundle", str(tiny_bundle), "--provider", "cpu", "--json"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["hits"]) == 5 and result["query"]["negative"] == []
    feats, _ = _ogr_features(out / "hits.gpkg")
    assert len(feats) == 5

    # Refuses to overwrite, and leaves the earlier result as it was.
    rc = main(["search", str(major_tom_dir), "--query", "a river", "--out", str(out), "--bundle", str(tiny_bundle)])
    assert rc == 2 and "already holds" in capsys.readouterr().err

    readme = Path(__file__)
    bad_out = tmp_path / "bad"
    rc = main(["search", str(readme), "--query", "a river", "--out", str(bad_out), "--bundle", str(tiny_bundle)])
    err = capsys.readouterr().err
    assert rc == 2 and "not a raster" in err and len(err.strip().splitlines()) == 1
    assert not bad_out.exists()

    rc = main(["index", str(major_tom_dir), "--bundle", str(tiny_bundle), "--extent", ",".join(map(str, _extent(major_tom_dir, 2))),
               "--json"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["tiles"] == 4
