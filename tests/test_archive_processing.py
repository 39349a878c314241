"""rsclip:archive_add and rsclip:archive_search through processing.run."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

pytest.importorskip("qgis.core")

from qgis.core import QgsVectorLayer

from tests.http_support import make_cogs

pytestmark = pytest.mark.qgis


def test_archive_add_and_search_algorithms(provider, major_tom_dir: Path, tiny_bundle: Path, tmp_path: Path) -> None:
    import processing

    scenes = []
    for i, win in enumerate([(0, 0, 192, 192), (500, 500, 192, 192)]):
        name = f"S2B_MSIL2A_2020022{i}T032739_N9999_R018_T48QUE_x{i}"
        make_cogs(major_tom_dir, tmp_path / "scenes", ["B02", "B03", "B04"], win, name)
        scenes.append(str(tmp_path / "scenes" / name))
    arc = tmp_path / "arc"
    res = processing.run("rsclip:archive_add", {"ARCHIVE": str(arc), "SOURCES": "\n".join([*scenes, str(tmp_path / "nope.tif")]),
                                                "BUNDLE": str(tiny_bundle), "PROVIDER": 1})
    assert res["ADDED"] == 2 and res["FAILED"] == 1 and res["N_VECTORS"] > 0 and res["INDEX"] == "flat"
    again = processing.run("rsclip:archive_add", {"ARCHIVE": str(arc), "SOURCES": scenes[0], "PROVIDER": 1})
    assert again["ADDED"] == 0 and again["N_VECTORS"] == res["N_VECTORS"]
    out = tmp_path / "hits.gpkg"
    hits = processing.run("rsclip:archive_search", {"ARCHIVE": str(arc), "QUERY": "a river", "TOP_K": 3,
                                                    "DATETIME": "2020-02-21/2020-02-21", "OUTPUT": str(out)})
    assert hits["OUTPUT"] == str(out)
    layer = QgsVectorLayer(str(out), "hits")
    assert layer.isValid() and layer.featureCount() == 3 and layer.crs().authid() == "EPSG:4326"
    with sqlite3.connect(out) as con:
        assert {r[0] for r in con.execute("SELECT scene FROM hits")} == {Path(scenes[1]).name}
        assert {r[0] for r in con.execute("SELECT datetime FROM hits")} == {"2020-02-21T03:27:39Z"}


def test_vsicurl_layer_indexes_through_processing(provider, major_tom_dir: Path, tiny_bundle: Path, tmp_path: Path) -> None:
    """A QGIS layer on a /vsicurl/ COG (what QGIS's STAC browser adds) is read by the engine, URL intact."""
    import processing
    from qgis.core import QgsRasterLayer

    from tests.http_support import rgb_cog, serve

    cog = rgb_cog(major_tom_dir, tmp_path)
    with serve(tmp_path) as srv:
        url = "/vsicurl/" + srv.href(cog)
        layer = QgsRasterLayer(url, "remote")
        assert layer.isValid()
        res = processing.run("rsclip:index", {"INPUT": layer, "BUNDLE": str(tiny_bundle)})
    assert res["TILES"] > 0
