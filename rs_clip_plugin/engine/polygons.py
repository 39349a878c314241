"""``classes.gpkg``: a label map polygonised per class (``rsclip classify --polygons``).

GDAL does the raster-to-vector work (rasterio.features): ``sieve`` first merges connected regions smaller
than the minimum mapping unit into their largest neighbour (4-connected, as the polygons are), then
``shapes`` traces one polygon (with holes) per connected region of one label value. Each polygon's
area and mean confidence come from the pixels it covers: the polygons are burnt back into a component-id
raster (``rasterize``; shapes' polygons follow pixel edges, so this is exact) and confidence and pixel area
are summed per id with one ``bincount``.

Label value 0 (no data) is not polygonised; 'unknown' (below the threshold or won by a background prompt, value
K+1) is its own class, named as the caller's legend names it (classes.unknown_name), so the layer covers
everything that was labelled. The whole label raster is read at once
(uint8 labels + int32 component ids + float32 confidence: 9 bytes a pixel, ~1.1 GB for a full 10980 px
Sentinel-2 tile): GDAL's sieve and polygoniser need the whole band to join regions across any strip border.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np
import rasterio
from rasterio import features

from .gpkg import Feature, Layer, write_gpkg

LAYER = "classes"
FIELDS = {"class": str, "value": int, "area_ha": float, "mean_confidence": float, "pixels": int}


def mmu_pixels(mmu_ha: float, pixel_area_m2: Optional[float]) -> int:
    """Pixels in ``mmu_ha`` hectares (0 when off or when the grid has no known units)."""
    if not mmu_ha or not pixel_area_m2:
        return 0
    return int(np.ceil(mmu_ha * 1e4 / pixel_area_m2))


def polygonise(labels_path: Path, confidence_path: Path, out_path: Path, names: Sequence[str],
               row_area_m2: Optional[np.ndarray], mmu_ha: float = 0.0) -> dict:
    """Write ``out_path`` (GeoPackage, layer 'classes') from the label and confidence rasters.

    ``names[v]`` is the class name of label value v (names[0], no data, is skipped); ``row_area_m2`` the
    pixel area of each row (engine/classify.pixel_areas_m2) or None when the grid has no units. Returns
    counts for summary.json: polygons per class, pixels sieved, the minimum mapping unit in pixels."""
    with rasterio.open(labels_path) as ds:
        labels = ds.read(1)
        transform, crs = ds.transform, ds.crs
    valid = labels != 0
    mean_px_area = float(row_area_m2.mean()) if row_area_m2 is not None and len(row_area_m2) else None
    min_px = mmu_pixels(mmu_ha, mean_px_area)
    sieved_px = 0
    if min_px > 1:
        # Mask = valid: no-data regions are neither merged away nor grown into.
        sieved = features.sieve(labels, size=min_px, connectivity=4, mask=valid)
        sieved_px = int(np.count_nonzero(sieved != labels))
        labels = sieved
    shapes = [(geom, int(v)) for geom, v in features.shapes(labels, mask=valid, connectivity=4, transform=transform)]
    comp = features.rasterize(((g, i + 1) for i, (g, _) in enumerate(shapes)), out_shape=labels.shape,
                              transform=transform, fill=0, dtype="int32") if shapes else np.zeros(labels.shape, np.int32)
    del labels
    n = len(shapes) + 1
    with rasterio.open(confidence_path) as ds:
        conf = ds.read(1)
    ids = comp.ravel()
    px = np.bincount(ids, minlength=n)
    conf_sum = np.bincount(ids, weights=np.nan_to_num(conf, nan=0.0).ravel(), minlength=n)
    del conf
    area = None
    if row_area_m2 is not None:
        area = np.bincount(ids, weights=np.broadcast_to(row_area_m2[:, None], comp.shape).ravel(), minlength=n)
    del comp, ids
    feats, per_class = [], {}
    for i, (geom, v) in enumerate(shapes, start=1):
        name = names[v] if v < len(names) else str(v)
        per_class[name] = per_class.get(name, 0) + 1
        feats.append(Feature(geom["coordinates"], {
            "class": name,
            "value": v,
            "area_ha": round(float(area[i]) / 1e4, 6) if area is not None else None,
            "mean_confidence": round(float(conf_sum[i] / px[i]), 6) if px[i] else None,
            "pixels": int(px[i]),
        }))
    write_gpkg(out_path, [Layer(LAYER, crs.to_wkt() if crs else "", FIELDS, feats,
                                description="RS-CLIP label map polygonised per class")], overwrite=True)
    return {"layer": LAYER, "polygons": len(feats), "per_class": per_class, "mmu_ha": mmu_ha,
            "mmu_pixels": min_px, "sieved_pixels": sieved_px}
