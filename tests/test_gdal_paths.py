"""GDAL virtual paths as rasters: COGs served over real HTTP (range requests) on 127.0.0.1, /vsizip/."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from rs_clip_plugin.engine.errors import ReadError
from rs_clip_plugin.engine.index import build_index
from rs_clip_plugin.engine.raster import open_source
from rs_clip_plugin.engine.sources import GdalPath, gdal_path, source_id
from tests.http_support import rgb_cog, serve

RGB = ["B04", "B03", "B02"]


def test_gdal_path_keeps_urls_intact() -> None:
    assert gdal_path("https://example.org/a/b.tif") == "/vsicurl/https://example.org/a/b.tif"
    assert gdal_path("s3://bucket/key/x.tif") == "/vsis3/bucket/key/x.tif"
    g = gdal_path("/vsicurl/https://example.org/a/T33_B04.tif?sig=1")
    assert isinstance(g, GdalPath) and g.name == "T33_B04.tif" and g.suffix == ".tif"
    assert g.url == "https://example.org/a/T33_B04.tif?sig=1"
    assert gdal_path("/tmp/x.tif") is None and gdal_path(Path("/tmp/x.tif")) is None
    assert source_id("/vsicurl/https://example.org/a.tif") == "/vsicurl/https://example.org/a.tif"


def test_cog_over_http_indexes_like_the_local_file(tiny_bundle: Path, major_tom_dir: Path, tmp_path: Path) -> None:
    cog = rgb_cog(major_tom_dir, tmp_path)
    local = build_index(cog, tiny_bundle, provider="cpu")
    with serve(tmp_path) as srv:
        url = srv.href(cog)
        for given in (url, "/vsicurl/" + url):  # a bare URL and the explicit GDAL path
            with open_source(given) as src:
                assert str(src.path) == "/vsicurl/" + url  # never 'http:/'
                assert src.band_names == RGB
            remote = build_index(given, tiny_bundle, provider="cpu", force=True)
            assert remote.meta["source"] == "/vsicurl/" + url
            np.testing.assert_array_equal(np.asarray(remote.embeddings), np.asarray(local.embeddings))
            np.testing.assert_array_equal(remote.tiles, local.tiles)
        ranges = [r for m, p, r in srv.requests if m == "GET" and p.endswith("rgb.tif")]
    assert ranges and all(r.startswith("bytes=") for r in ranges)  # windowed reads, never the whole file


def test_network_failure_names_the_url(tmp_path: Path) -> None:
    with serve(tmp_path) as srv:
        url = f"{srv.url}/missing/scene.tif"
        with pytest.raises(ReadError) as err:
            open_source(url)
    msg = str(err.value)
    assert msg.startswith(url + ":") and "http:/1" not in msg and "/vsicurl/" in msg


def test_vsizip_path_is_a_raster(tiny_bundle: Path, major_tom_dir: Path, tmp_path: Path) -> None:
    cog = rgb_cog(major_tom_dir, tmp_path)
    z = tmp_path / "scene.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.write(cog, "inner/rgb.tif")
    with open_source(f"/vsizip/{z}/inner/rgb.tif") as src:
        assert src.band_names == RGB and src.width == 192
