"""A minimal OGC GeoPackage (1.2) polygon writer on the standard library's sqlite3.

The plugin's runtime has numpy, rasterio and onnxruntime but neither osgeo.ogr nor fiona, so search
results are written here by hand, following OGC 12-128r15:

- ``application_id`` 'GPKG' and ``user_version`` 10200 in the SQLite header;
- ``gpkg_spatial_ref_sys`` with the three rows the spec requires (-1, 0, 4326) plus the layer's CRS:
  its EPSG code as ``srs_id`` when it has one, else a private id >= 100000 with organisation 'NONE',
  and its WKT (GDAL's WKT1, which is what ``definition`` holds) either way;
- ``gpkg_contents`` and ``gpkg_geometry_columns`` describing the one feature table;
- geometries as "GP" blobs: the standard header (version 0, little-endian, xy envelope) then ISO WKB.

A spatial index per layer: the ``gpkg_rtree_index`` extension (an SQLite R*Tree ``rtree_<table>_geom`` filled
here from the envelopes, registered in ``gpkg_extensions``, with the spec's triggers; the triggers call
ST_* functions that plain sqlite3 lacks, so they are created after the rows are in; GDAL/QGIS, which
define those functions, keep the index current on later edits). The file is written to a temporary name and renamed into place, so a reader never sees
half a GeoPackage.
"""

from __future__ import annotations

import re
import sqlite3
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Union

from .atomic import atomic_write

GPKG_APPLICATION_ID = 0x47504B47  # "GPKG"
GPKG_USER_VERSION = 10200  # GeoPackage 1.2
WKB_POLYGON = 3
PRIVATE_SRS_BASE = 100000
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# MEDIUMINT is the 32-bit integer of the spec: OGR reads it as Integer, INTEGER as Integer64.
_SQL_TYPES = {int: "MEDIUMINT", float: "DOUBLE", str: "TEXT"}

Ring = Sequence[tuple[float, float]]
FieldValue = Union[int, float, str, None]


@dataclass
class Feature:
    """One polygon (exterior ring, optionally holes) and its attribute values by field name."""

    rings: list[Ring]
    properties: dict[str, FieldValue] = field(default_factory=dict)


def box_ring(xmin: float, ymin: float, xmax: float, ymax: float) -> list[tuple[float, float]]:
    """Closed, counter-clockwise exterior ring of an axis-aligned box (the orientation the spec recommends)."""
    return [(xmin, ymin), (xmax, ymin), (xmax, ymax), (xmin, ymax), (xmin, ymin)]


def polygon_wkb(rings: Sequence[Ring]) -> bytes:
    """ISO WKB (little-endian) for a 2-D polygon; rings are closed here if the caller did not close them."""
    parts = [struct.pack("<BII", 1, WKB_POLYGON, len(rings))]
    for ring in rings:
        pts = [(float(x), float(y)) for x, y in ring]
        if len(pts) < 3:
            raise ValueError(f"a polygon ring needs at least 3 points, got {len(pts)}")
        if pts[0] != pts[-1]:
            pts.append(pts[0])
        parts.append(struct.pack("<I", len(pts)))
        parts.append(struct.pack(f"<{2 * len(pts)}d", *(c for p in pts for c in p)))
    return b"".join(parts)


def gpkg_geometry(rings: Sequence[Ring], srs_id: int) -> bytes:
    """GeoPackage binary: 'GP', version 0, flags (xy envelope, little-endian), srs_id, envelope, WKB."""
    xs = [float(x) for ring in rings for x, _ in ring]
    ys = [float(y) for ring in rings for _, y in ring]
    flags = 0b0000_0011  # bit 0: little-endian; bits 1-3 = 1: envelope [minx, maxx, miny, maxy]
    header = struct.pack("<2sBBi4d", b"GP", 0, flags, srs_id, min(xs), max(xs), min(ys), max(ys))
    return header + polygon_wkb(rings)


def parse_gpkg_geometry(blob: bytes) -> tuple[int, list[list[tuple[float, float]]]]:
    """(srs_id, rings) of a polygon blob written by :func:`gpkg_geometry` (for tests and round trips)."""
    magic, _version, flags, srs_id = struct.unpack_from("<2sBBi", blob, 0)
    if magic != b"GP":
        raise ValueError("not a GeoPackage geometry blob (no 'GP' magic)")
    env_len = {0: 0, 1: 32, 2: 48, 3: 48, 4: 64}[(flags >> 1) & 0b111]
    off = 8 + env_len
    _order, gtype, nrings = struct.unpack_from("<BII", blob, off)
    if gtype != WKB_POLYGON:
        raise ValueError(f"geometry type {gtype} is not a polygon")
    off += 9
    rings = []
    for _ in range(nrings):
        (n,) = struct.unpack_from("<I", blob, off)
        off += 4
        coords = struct.unpack_from(f"<{2 * n}d", blob, off)
        off += 16 * n
        rings.append(list(zip(coords[0::2], coords[1::2])))
    return srs_id, rings


def crs_identity(crs_wkt: str) -> tuple[Optional[int], str, str]:
    """(EPSG code or None, WKT1 definition, name) of a CRS given as WKT, via rasterio (GDAL's PROJ)."""
    from rasterio.crs import CRS

    crs = CRS.from_wkt(crs_wkt) if crs_wkt else None
    if crs is None:
        return None, "undefined", "undefined"
    epsg = crs.to_epsg()
    try:
        wkt1 = crs.to_wkt()  # rasterio's default is GDAL's WKT1, the form gpkg_spatial_ref_sys.definition expects
    except Exception:  # a CRS PROJ cannot express as WKT1 keeps its original text
        wkt1 = crs_wkt
    name_match = re.match(r'^\s*\w+\["([^"]*)"', wkt1)
    return epsg, wkt1, name_match.group(1) if name_match else "unnamed"


_SCHEMA = """
CREATE TABLE gpkg_spatial_ref_sys (
  srs_name TEXT NOT NULL, srs_id INTEGER NOT NULL PRIMARY KEY, organization TEXT NOT NULL,
  organization_coordsys_id INTEGER NOT NULL, definition TEXT NOT NULL, description TEXT);
CREATE TABLE gpkg_contents (
  table_name TEXT NOT NULL PRIMARY KEY, data_type TEXT NOT NULL, identifier TEXT UNIQUE, description TEXT DEFAULT '',
  last_change DATETIME NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
  min_x DOUBLE, min_y DOUBLE, max_x DOUBLE, max_y DOUBLE, srs_id INTEGER,
  CONSTRAINT fk_gc_r_srs_id FOREIGN KEY (srs_id) REFERENCES gpkg_spatial_ref_sys(srs_id));
CREATE TABLE gpkg_geometry_columns (
  table_name TEXT NOT NULL, column_name TEXT NOT NULL, geometry_type_name TEXT NOT NULL, srs_id INTEGER NOT NULL,
  z TINYINT NOT NULL, m TINYINT NOT NULL,
  CONSTRAINT pk_geom_cols PRIMARY KEY (table_name, column_name),
  CONSTRAINT uk_gc_table_name UNIQUE (table_name),
  CONSTRAINT fk_gc_tn FOREIGN KEY (table_name) REFERENCES gpkg_contents(table_name),
  CONSTRAINT fk_gc_srs FOREIGN KEY (srs_id) REFERENCES gpkg_spatial_ref_sys (srs_id));
CREATE TABLE gpkg_extensions (
  table_name TEXT, column_name TEXT, extension_name TEXT NOT NULL, definition TEXT NOT NULL, scope TEXT NOT NULL,
  CONSTRAINT ge_tce UNIQUE (table_name, column_name, extension_name));
"""

# The spec's (GeoPackage 1.2, annex F.3) R-tree maintenance triggers for table {t}, geometry column geom.
_RTREE_TRIGGERS = """
CREATE TRIGGER "rtree_{t}_geom_insert" AFTER INSERT ON "{t}" WHEN (new.geom NOT NULL AND NOT ST_IsEmpty(NEW.geom))
BEGIN INSERT OR REPLACE INTO "rtree_{t}_geom" VALUES (NEW.fid, ST_MinX(NEW.geom), ST_MaxX(NEW.geom),
  ST_MinY(NEW.geom), ST_MaxY(NEW.geom)); END;
CREATE TRIGGER "rtree_{t}_geom_update1" AFTER UPDATE OF geom ON "{t}" WHEN OLD.fid = NEW.fid AND
  (NEW.geom NOTNULL AND NOT ST_IsEmpty(NEW.geom))
BEGIN INSERT OR REPLACE INTO "rtree_{t}_geom" VALUES (NEW.fid, ST_MinX(NEW.geom), ST_MaxX(NEW.geom),
  ST_MinY(NEW.geom), ST_MaxY(NEW.geom)); END;
CREATE TRIGGER "rtree_{t}_geom_update2" AFTER UPDATE OF geom ON "{t}" WHEN OLD.fid = NEW.fid AND
  (NEW.geom ISNULL OR ST_IsEmpty(NEW.geom))
BEGIN DELETE FROM "rtree_{t}_geom" WHERE id = OLD.fid; END;
CREATE TRIGGER "rtree_{t}_geom_update3" AFTER UPDATE ON "{t}" WHEN OLD.fid != NEW.fid AND
  (NEW.geom NOTNULL AND NOT ST_IsEmpty(NEW.geom))
BEGIN DELETE FROM "rtree_{t}_geom" WHERE id = OLD.fid; INSERT OR REPLACE INTO "rtree_{t}_geom" VALUES (NEW.fid,
  ST_MinX(NEW.geom), ST_MaxX(NEW.geom), ST_MinY(NEW.geom), ST_MaxY(NEW.geom)); END;
CREATE TRIGGER "rtree_{t}_geom_update4" AFTER UPDATE ON "{t}" WHEN OLD.fid != NEW.fid AND
  (NEW.geom ISNULL OR ST_IsEmpty(NEW.geom))
BEGIN DELETE FROM "rtree_{t}_geom" WHERE id IN (OLD.fid, NEW.fid); END;
CREATE TRIGGER "rtree_{t}_geom_delete" AFTER DELETE ON "{t}" WHEN old.geom NOT NULL
BEGIN DELETE FROM "rtree_{t}_geom" WHERE id = OLD.fid; END;
"""

_WGS84_WKT = (
    'GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563,AUTHORITY["EPSG","7030"]],'
    'AUTHORITY["EPSG","6326"]],PRIMEM["Greenwich",0,AUTHORITY["EPSG","8901"]],UNIT["degree",0.0174532925199433,'
    'AUTHORITY["EPSG","9122"]],AXIS["Latitude",NORTH],AXIS["Longitude",EAST],AUTHORITY["EPSG","4326"]]'
)


@dataclass
class Layer:
    """One feature table: name, CRS (WKT), field names with Python types (int/float/str), features."""

    name: str
    crs_wkt: str
    fields: dict[str, type]
    features: list[Feature]
    description: str = ""


def write_gpkg(path: Path, layers: Sequence[Layer], overwrite: bool = False) -> Path:
    """Write polygon layers to a new GeoPackage at ``path`` (atomically: temp file, then rename)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; choose another output folder or allow overwriting")
    if not layers:
        raise ValueError("a GeoPackage needs at least one layer")
    names = [lyr.name for lyr in layers]
    if len(set(names)) != len(names):
        raise ValueError(f"layer names must be unique, got {names}")
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        con = sqlite3.connect(tmp)
        try:
            _write(con, layers)
            con.commit()
        finally:
            con.close()

    return atomic_write(path, write)


def _write(con: sqlite3.Connection, layers: Sequence[Layer]) -> None:
    con.execute(f"PRAGMA application_id = {GPKG_APPLICATION_ID}")
    con.execute(f"PRAGMA user_version = {GPKG_USER_VERSION}")
    con.executescript(_SCHEMA)
    srs_rows = {
        -1: ("Undefined cartesian SRS", -1, "NONE", -1, "undefined", "undefined cartesian coordinate reference system"),
        0: ("Undefined geographic SRS", 0, "NONE", 0, "undefined", "undefined geographic coordinate reference system"),
        4326: ("WGS 84 geodetic", 4326, "EPSG", 4326, _WGS84_WKT, "longitude/latitude coordinates in decimal degrees"),
    }
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    private = PRIVATE_SRS_BASE
    for layer in layers:
        if not _IDENT.match(layer.name):
            raise ValueError(f"layer name {layer.name!r}: use letters, digits and '_' only")
        epsg, wkt1, crs_name = crs_identity(layer.crs_wkt)
        if epsg is not None:
            srs_id = epsg
            srs_rows.setdefault(epsg, (crs_name, epsg, "EPSG", epsg, wkt1, None))
        elif wkt1 == "undefined":
            srs_id = -1
        else:
            srs_id = next((k for k, row in srs_rows.items() if row[4] == wkt1), None)
            if srs_id is None:
                srs_id, private = private, private + 1
                srs_rows[srs_id] = (crs_name, srs_id, "NONE", srs_id, wkt1, None)
        for fname, ftype in layer.fields.items():
            if not _IDENT.match(fname) or fname.lower() in ("fid", "geom"):
                raise ValueError(f"field name {fname!r}: use letters, digits and '_', not 'fid' or 'geom'")
            if ftype not in _SQL_TYPES:
                raise ValueError(f"field {fname!r}: type {ftype} not supported; use int, float or str")
        cols = ", ".join(f'"{f}" {_SQL_TYPES[t]}' for f, t in layer.fields.items())
        con.execute(
            f'CREATE TABLE "{layer.name}" (fid INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, geom POLYGON'
            + (f", {cols}" if cols else "")
            + ")"
        )
        xs = [float(x) for f in layer.features for ring in f.rings for x, _ in ring]
        ys = [float(y) for f in layer.features for ring in f.rings for _, y in ring]
        bbox = (min(xs), min(ys), max(xs), max(ys)) if xs else (None, None, None, None)
        # srs rows must exist before contents reference them (foreign keys), so insert them now.
        for row in srs_rows.values():
            con.execute("INSERT OR IGNORE INTO gpkg_spatial_ref_sys VALUES (?, ?, ?, ?, ?, ?)", row)
        con.execute(
            "INSERT INTO gpkg_contents (table_name, data_type, identifier, description, last_change, "
            "min_x, min_y, max_x, max_y, srs_id) VALUES (?, 'features', ?, ?, ?, ?, ?, ?, ?, ?)",
            (layer.name, layer.name, layer.description, now, *bbox, srs_id),
        )
        con.execute(
            "INSERT INTO gpkg_geometry_columns VALUES (?, 'geom', 'POLYGON', ?, 0, 0)", (layer.name, srs_id)
        )
        names = list(layer.fields)
        placeholders = ", ".join("?" for _ in range(len(names) + 1))
        col_list = ", ".join(["geom", *(f'"{n}"' for n in names)])
        con.executemany(
            f'INSERT INTO "{layer.name}" ({col_list}) VALUES ({placeholders})',
            [
                (gpkg_geometry(f.rings, srs_id), *(_coerce(f.properties.get(n), layer.fields[n]) for n in names))
                for f in layer.features
            ],
        )
        _add_rtree(con, layer.name)


def _add_rtree(con: sqlite3.Connection, table: str) -> None:
    """The layer's spatial index (gpkg_rtree_index), filled from the rows' envelopes (bytes 8..40 of each blob:
    minx, maxx, miny, maxy, as gpkg_geometry writes them)."""
    rt = f"rtree_{table}_geom"
    con.execute(f'CREATE VIRTUAL TABLE "{rt}" USING rtree(id, minx, maxx, miny, maxy)')
    rows = ((fid, *struct.unpack_from("<4d", blob, 8)) for fid, blob in con.execute(f'SELECT fid, geom FROM "{table}"'))
    con.executemany(f'INSERT INTO "{rt}" VALUES (?, ?, ?, ?, ?)', list(rows))
    con.execute("INSERT INTO gpkg_extensions VALUES (?, 'geom', 'gpkg_rtree_index', "
                "'http://www.geopackage.org/spec120/#extension_rtree', 'write-only')", (table,))
    con.executescript(_RTREE_TRIGGERS.format(t=table))


def _coerce(value: FieldValue, ftype: type) -> FieldValue:
    return None if value is None else ftype(value)
