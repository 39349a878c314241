"""STAC items as rasters: assets mapped to the engine's band names, radiometry from the item's properties.

A STAC Item (a JSON file, or a URL) is one scene: each single-band raster asset (COG/GeoTIFF/JP2) is one
band, named through

1. its ``eo:bands`` (STAC 1.0) or ``bands`` (STAC 1.1) entry's ``name`` when that is an engine band
   name (``B04``, ``VV``),
2. else the entry's common name (``red``, ``nir08``, ``swir16``) through :data:`bands.S2_COMMON_NAMES`
   for a Sentinel-2 item, or the asset key itself (Earth Search keys assets by common name),
3. else, for a non-Sentinel item, ``red``/``green``/``blue`` as an RGB raster.

Multi-band assets (``visual`` true colour), thumbnails and metadata are not bands. When a band is offered
as both a COG and a JP2, the COG wins (windowed reads over HTTP). Hrefs become GDAL paths
(``https://`` -> ``/vsicurl/https://``, ``s3://`` -> ``/vsis3/``), relative hrefs are resolved against the
item's own location. Sentinel-2 DN offsets come from the asset's ``raster:bands`` offset/scale when given
(offset -0.1 at scale 1e-4 = 1000 DN), else 0 when Earth Search says the offset was already applied, else
from ``s2:processing_baseline`` (>= 04.00: 1000). The level comes from ``s2:product_type`` /
``processing:level`` / the collection id.

Items are read with ``pystac`` and API searches run through ``pystac-client`` (the ``archive`` extra);
the plugin's core does not need them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Optional, Union

from .bands import RGB_BANDS, S1_BANDS, S2_BANDS, S2_COMMON_NAMES, canonical_band
from .errors import InputError

_RASTER_TYPES = ("tiff", "jp2", "geotiff")
_NOT_DATA_ROLES = {"thumbnail", "overview", "metadata", "visual"}
_SAFE_ID = re.compile(r"[^A-Za-z0-9_.-]+")
STAC_HELP = "give a STAC Item or ItemCollection (JSON file or URL) whose assets are single-band rasters"


class StacError(InputError):
    """A STAC document that cannot be used as a raster; the message names it and the fix."""


@dataclass
class StacScene:
    """What the engine needs from one item: its bands as GDAL paths and its radiometric metadata."""

    id: str
    href: str  # where the item itself lives ("" when it came from an API response)
    datetime: Optional[str]  # ISO 8601, UTC
    bbox: Optional[list[float]]
    collection: Optional[str]
    bands: dict[str, str]  # engine band name -> GDAL path
    level: Optional[str]  # "s2-l1c" | "s2-l2a" | None
    baseline: Optional[str]
    offsets_dn: Optional[dict[str, float]]


def _pystac():
    try:
        import pystac
    except ImportError as exc:  # the archive extra
        raise StacError("reading STAC needs pystac: pip install 'rs-clip[archive]' (or pip install pystac)") from exc
    return pystac


def is_stac_json(path: Union[str, Path]) -> bool:
    """Whether ``path`` names a JSON document (a STAC item or collection by extension; checked on load)."""
    return str(path).lower().split("?", 1)[0].endswith(".json")


def _href_of(path: Union[str, Path]) -> str:
    """What pystac reads: a URL as given (never through pathlib), a local path resolved."""
    from .sources import gdal_path

    g = gdal_path(path)
    if g is not None:
        return g.url if g.startswith("/vsicurl/") else str(g)
    return str(Path(path).resolve())


def load_items(path: Union[str, Path]) -> list:
    """The pystac Items of an Item, ItemCollection or FeatureCollection at a path or URL."""
    pystac = _pystac()
    href = _href_of(path)
    try:
        d = pystac.StacIO.default().read_json(href)
    except Exception as exc:  # urllib / json / OS errors all mean the same to the user
        raise StacError(f"{href}: cannot read the STAC document ({exc}); {STAC_HELP}") from exc
    kind = d.get("type") if isinstance(d, dict) else None
    try:
        if kind == "Feature":
            return [pystac.Item.from_dict(d, href=href, preserve_dict=False)]
        if kind == "FeatureCollection":
            items = pystac.ItemCollection.from_dict(d, preserve_dict=False).items
            for it in items:  # relative hrefs resolve against the collection document
                if it.get_self_href() is None:
                    it.set_self_href(href.rsplit("/", 1)[0] + f"/{_SAFE_ID.sub('_', it.id)}.json")
            return list(items)
    except Exception as exc:
        raise StacError(f"{href}: not a valid STAC document ({exc}); {STAC_HELP}") from exc
    raise StacError(f"{href}: a JSON document of type {kind!r}, not a STAC Item or ItemCollection; {STAC_HELP}")


def search_items(url: str, *, collections: Optional[list[str]] = None, bbox: Optional[list[float]] = None,
                 datetime: Optional[str] = None, max_items: int = 10, query: Optional[dict] = None) -> list:
    """Items from a STAC API search (``pystac-client``), at most ``max_items``."""
    try:
        from pystac_client import Client
    except ImportError as exc:
        raise StacError("--stac-api needs pystac-client: pip install 'rs-clip[archive]'") from exc
    try:
        client = Client.open(url)
        found = client.search(collections=collections, bbox=bbox, datetime=datetime, max_items=max_items, query=query)
        return list(found.items())
    except Exception as exc:
        raise StacError(f"{url}: the STAC API search failed ({exc}); check the address, --collections and --bbox") from exc


def _band_entries(asset) -> list[dict]:
    f = asset.extra_fields
    return list(f.get("eo:bands") or f.get("bands") or [])


def _is_raster(asset) -> bool:
    roles = set(asset.roles or [])
    if roles & _NOT_DATA_ROLES and "data" not in roles:
        return False
    mt = (asset.media_type or "").lower()
    if mt:
        return any(t in mt for t in _RASTER_TYPES)
    return asset.href.lower().split("?", 1)[0].endswith((".tif", ".tiff", ".jp2"))


def _is_sentinel2(item) -> bool:
    p = item.properties
    text = " ".join(str(v) for v in (p.get("platform"), p.get("constellation"), item.collection_id) if v).lower()
    return "sentinel-2" in text or "sentinel2" in text or any(canonical_band(k) in S2_BANDS for k in item.assets)


def asset_band(key: str, asset, sentinel2: bool) -> Optional[str]:
    """The engine band an asset holds, or None (multi-band, not a raster, or not a band the engine knows)."""
    if not _is_raster(asset):
        return None
    entries = _band_entries(asset)
    if len(entries) > 1:
        return None  # a multi-band asset (true-colour 'visual'): the single bands are used instead
    e = entries[0] if entries else {}
    names = [e.get("name"), e.get("common_name") or e.get("eo:common_name"), key.split("-")[0]]
    for n in filter(None, names):
        c = canonical_band(str(n))
        if c in S2_BANDS or c in S1_BANDS:
            return c
        if sentinel2 and str(n).lower() in S2_COMMON_NAMES:
            return S2_COMMON_NAMES[str(n).lower()]
    if not sentinel2:
        for n in filter(None, names):
            c = canonical_band(str(n))
            if c in RGB_BANDS:
                return c
    return None


def _offset_dn(asset) -> Optional[float]:
    """DN offset from ``raster:bands`` (physical = DN * scale + offset): -offset / scale."""
    rb = asset.extra_fields.get("raster:bands") or []
    if len(rb) == 1 and rb[0].get("offset") is not None and rb[0].get("scale"):
        return -float(rb[0]["offset"]) / float(rb[0]["scale"])
    return None


def _level(item) -> Optional[str]:
    p = item.properties
    text = " ".join(str(v) for v in (p.get("s2:product_type"), p.get("processing:level"), item.collection_id) if v).upper()
    if "L1C" in text or "1C" in str(p.get("s2:product_type", "")).upper():
        return "s2-l1c"
    if "L2A" in text or "2A" in str(p.get("s2:product_type", "")).upper():
        return "s2-l2a"
    return None


def gdal_href(href: str) -> str:
    """An asset href as GDAL opens it: URLs through the virtual file systems, local paths as they are."""
    from .sources import gdal_path

    if href.startswith("file://"):
        return href[len("file://"):]
    g = gdal_path(href)
    return str(g) if g is not None else href


def item_scene(item) -> StacScene:
    """Map one pystac Item to a StacScene; raises StacError when no asset is a band the engine knows."""
    s2 = _is_sentinel2(item)
    chosen: dict[str, tuple[bool, str, Any]] = {}  # band -> (is COG, href, asset)
    for key, asset in item.assets.items():
        band = asset_band(key, asset, s2)
        if band is None:
            continue
        href = asset.get_absolute_href() or asset.href
        cog = "tiff" in (asset.media_type or "").lower() or href.lower().split("?", 1)[0].endswith((".tif", ".tiff"))
        if band not in chosen or (cog and not chosen[band][0]):
            chosen[band] = (cog, href, asset)
    if not chosen:
        raise StacError(f"STAC item {item.id}: no single-band raster asset maps to a band (assets: "
                        f"{', '.join(item.assets)}); {STAC_HELP}")
    offsets: dict[str, float] = {}
    baseline = item.properties.get("s2:processing_baseline")
    if s2:
        applied = item.properties.get("earthsearch:boa_offset_applied")
        for band, (_, _, asset) in chosen.items():
            off = _offset_dn(asset)
            if off is not None:
                offsets[band] = off
            elif applied is True:
                offsets[band] = 0.0
    dt = item.datetime or (item.common_metadata.start_datetime if item.common_metadata else None)
    return StacScene(
        id=item.id,
        href=item.get_self_href() or "",
        datetime=_iso(dt),
        bbox=list(item.bbox) if item.bbox else None,
        collection=item.collection_id,
        bands={b: gdal_href(h) for b, (_, h, _) in chosen.items()},
        level=_level(item) if s2 else None,
        baseline=str(baseline) if baseline is not None else None,
        # Only when every band has one; otherwise the baseline decides for all (one rule per scene).
        offsets_dn=offsets if s2 and offsets and len(offsets) == len(chosen) else None,
    )


def _iso(dt: Optional[datetime]) -> Optional[str]:
    if dt is None:
        return None
    from datetime import timezone

    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def load_scene(path: Union[str, Path]) -> StacScene:
    """The one scene of a STAC Item at ``path`` (an ItemCollection must be split into items first)."""
    items = load_items(path)
    if len(items) != 1:
        raise StacError(f"{path}: an ItemCollection of {len(items)} items is several scenes; add it to an archive "
                        "(rsclip archive add) or give one item")
    return item_scene(items[0])


def write_item(item, path: Path) -> Path:
    """Save an item as standalone JSON with absolute hrefs (so it can be read from anywhere)."""
    item = item.clone()
    if item.get_self_href() is not None:  # API responses have none: their hrefs are absolute already
        item.make_asset_hrefs_absolute()
    d = item.to_dict(include_self_link=False, transform_hrefs=False)
    from .atomic import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(d, indent=1) + "\n")
    return path


def safe_id(text: str) -> str:
    return _SAFE_ID.sub("_", text)[:120]


def discover_stac(path: Union[str, Path]):
    """sources.Discovered for a STAC Item: a per-band layout whose bands are the item's assets."""
    from .sources import BandRef, Discovered, _ordered

    scene = load_scene(path)
    bands = _ordered([BandRef(b, uri) for b, uri in scene.bands.items()])
    return Discovered(path, "stac", bands, name_hints=[scene.id], level=scene.level,  # type: ignore[arg-type]
                      baseline=scene.baseline, offsets_dn=scene.offsets_dn)
