"""The sqlite3 GeoPackage writer, read back by GDAL/OGR and by QGIS."""

from __future__ import annotations

from pathlib import Path

import pytest
from rasterio.crs import CRS

from rs_clip_plugin.engine.gpkg import (
    Feature,
    Layer,
    box_ring,
    gpkg_geometry,
    parse_gpkg_geometry,
    write_gpkg,
)

UTM48 = CRS.from_epsg(32648).to_wkt()
# A CRS with no EPSG code: must get a private srs_id and keep its WKT.
CUSTOM = CRS.from_proj4("+proj=tmerc +lat_0=0 +lon_0=101.3 +k=0.9996 +x_0=500000 +y_0=0 +datum=WGS84 +units=m").to_wkt()


def _hits_layer(name: str, crs_wkt: str, n: int = 3) -> Layer:
    feats = [
        Feature([box_ring(600000 + 1000 * i, 1500000, 600640 + 1000 * i, 1500640)],
                {"rank": i + 1, "score": 0.9 - 0.1 * i, "source": f"scene_{i}.tif"})
        for i in range(n)
    ]
    return Layer(name, crs_wkt, {"rank": int, "score": float, "source": str}, feats)


def test_geometry_blob_round_trip() -> None:
    ring = box_ring(1.0, 2.0, 3.0, 5.0)
    srs, rings = parse_gpkg_geometry(gpkg_geometry([ring], 32648))
    assert srs == 32648
    assert rings == [ring]


def test_ogr_reads_layers_fields_crs(tmp_path: Path) -> None:
    ogr = pytest.importorskip("osgeo.ogr")
    path = write_gpkg(tmp_path / "hits.gpkg", [_hits_layer("hits", UTM48, 3), _hits_layer("other", CUSTOM, 2)])
    ds = ogr.Open(str(path))
    assert ds is not None and ds.GetDriver().GetName() == "GPKG"
    assert ds.GetLayerCount() == 2
    lyr = ds.GetLayerByName("hits")
    assert lyr.GetFeatureCount() == 3
    assert lyr.GetGeomType() == ogr.wkbPolygon
    srs = lyr.GetSpatialRef()
    srs.AutoIdentifyEPSG()
    assert srs.GetAuthorityCode(None) == "32648"
    defn = lyr.GetLayerDefn()
    fields = {defn.GetFieldDefn(i).GetName(): defn.GetFieldDefn(i).GetTypeName() for i in range(defn.GetFieldCount())}
    assert fields == {"rank": "Integer", "score": "Real", "source": "String"}
    feats = list(lyr)
    assert [f.GetField("rank") for f in feats] == [1, 2, 3]
    assert feats[1].GetField("score") == pytest.approx(0.8)
    env = feats[0].GetGeometryRef().GetEnvelope()
    assert env == pytest.approx((600000, 600640, 1500000, 1500640))
    assert feats[0].GetGeometryRef().GetArea() == pytest.approx(640 * 640)
    other = ds.GetLayerByName("other")
    assert other.GetFeatureCount() == 2
    # Private CRS: same projection parameters after the round trip.
    assert other.GetSpatialRef().GetProjParm("central_meridian") == pytest.approx(101.3)


def test_passes_gdal_conformance_checker(tmp_path: Path) -> None:
    validate = pytest.importorskip("osgeo_utils.samples.validate_gpkg")
    path = write_gpkg(tmp_path / "hits.gpkg", [_hits_layer("hits", UTM48, 3), _hits_layer("other", CUSTOM, 2)])
    validate.check(str(path), abort_at_first_error=True, extra_checks=True)  # raises GPKGCheckException on a violation


def test_overwrite_and_atomicity(tmp_path: Path) -> None:
    path = write_gpkg(tmp_path / "a.gpkg", [_hits_layer("hits", UTM48)])
    with pytest.raises(FileExistsError):
        write_gpkg(path, [_hits_layer("hits", UTM48)])
    with pytest.raises(ValueError, match="field name"):
        write_gpkg(tmp_path / "b.gpkg", [Layer("hits", UTM48, {"bad name": int}, [])])
    assert not (tmp_path / "b.gpkg").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gpkg"]  # no temporary left behind


@pytest.mark.qgis
def test_qgis_reads_it(tmp_path: Path, qgis_app) -> None:
    from qgis.core import QgsVectorLayer, QgsWkbTypes

    path = write_gpkg(tmp_path / "hits.gpkg", [_hits_layer("hits", UTM48, 4)])
    layer = QgsVectorLayer(f"{path}|layername=hits", "hits", "ogr")
    assert layer.isValid()
    assert layer.featureCount() == 4
    assert layer.crs().authid() == "EPSG:32648"
    assert QgsWkbTypes.geometryType(layer.wkbType()) == QgsWkbTypes.PolygonGeometry
    assert {"rank", "score", "source"} <= set(layer.fields().names())
    ranks = sorted(f["rank"] for f in layer.getFeatures())
    assert ranks == [1, 2, 3, 4]
