"""STAC items as rasters: assets -> engine bands, S2 offset from the item, hrefs served over real HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rs_clip_plugin.engine.index import build_index
from rs_clip_plugin.engine.raster import open_source
from rs_clip_plugin.engine.stac import StacError, load_items, load_scene
from tests.http_support import make_cogs, serve, stac_item

BANDS = ["B02", "B03", "B04", "B08", "B05", "B11"]


@pytest.fixture(scope="module")
def cog_dir(major_tom_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("stac")
    make_cogs(major_tom_dir, root, BANDS, (128, 128, 128, 128), "scene")
    return root


def test_earth_search_item_maps_common_names_and_offset(cog_dir: Path, tmp_path: Path) -> None:
    files = {b: f"scene/{b}.tif" for b in BANDS}  # relative hrefs: resolved against the item's location
    item = stac_item("S2B_TEST_1", "2023-05-01T03:30:00Z", files, bounds_from=cog_dir / "scene/B04.tif",
                     properties={"s2:processing_baseline": "05.09"})
    item["assets"]["red-jp2"] = {"href": "scene/B04.jp2", "type": "image/jp2", "roles": ["data"],
                                 "eo:bands": [{"name": "red", "common_name": "red"}]}
    item["assets"]["visual"] = {"href": "scene/tci.tif", "type": "image/tiff", "roles": ["visual"],
                                "eo:bands": [{"name": "red"}, {"name": "green"}, {"name": "blue"}]}
    p = cog_dir / "item.json"
    p.write_text(json.dumps(item))
    s = load_scene(p)
    assert s.id == "S2B_TEST_1" and s.datetime == "2023-05-01T03:30:00Z" and s.level == "s2-l2a"
    assert sorted(s.bands) == sorted(BANDS)
    assert s.bands["B04"] == str(cog_dir / "scene/B04.tif")  # the COG, not the JP2
    with open_source(p) as src:
        assert src.sensor == "s2-l2a" and set(src.band_names) == set(BANDS)
        assert src.s2_offset_dn == 1000.0  # baseline 05.09
    # raster:bands offset/scale (here: none) wins over the baseline.
    for a in item["assets"].values():
        a["raster:bands"] = [{"scale": 0.0001, "offset": 0}]
    p.write_text(json.dumps(item))
    with open_source(p) as src:
        assert src.s2_offset_dn == 0.0


def test_item_over_http_indexes_like_the_local_band_folder(multimodal_bundle: Path, cog_dir: Path) -> None:
    local = build_index(cog_dir / "scene", multimodal_bundle, modality="rgb", provider="cpu")
    with serve(cog_dir) as srv:
        files = {b: srv.href(cog_dir / f"scene/{b}.tif") for b in BANDS}
        item = stac_item("S2B_HTTP", "2020-02-23T03:27:39Z", files, style="planetary", bounds_from=cog_dir / "scene/B04.tif")
        (cog_dir / "http_item.json").write_text(json.dumps(item))
        url = srv.href(cog_dir / "http_item.json")
        assert [i.id for i in load_items(url)] == ["S2B_HTTP"]
        with open_source(url) as src:
            assert src.band_names[:3] == ["B02", "B03", "B04"] and str(src.path).startswith("/vsicurl/http://127.0.0.1")
        remote = build_index(url, multimodal_bundle, modality="rgb", provider="cpu")
        np.testing.assert_array_equal(np.asarray(remote.embeddings), np.asarray(local.embeddings))
        assert any(r.startswith("bytes=") for m, path, r in srv.requests if path.endswith("B04.tif"))


def test_not_a_stac_item(tmp_path: Path) -> None:
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"type": "Catalog", "id": "c"}))
    with pytest.raises(StacError, match="not a STAC Item"):
        load_items(p)
    p.write_text(json.dumps(stac_item("empty", "2020-01-01T00:00:00Z", {})))
    with pytest.raises(StacError, match="no single-band raster asset"):
        open_source(p)
