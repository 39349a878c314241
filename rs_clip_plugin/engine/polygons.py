"""``classes.gpkg``: a label map polygonised per class (``rsclip classify --polygons``), streamed in row blocks.

What it computes is GDAL's: ``sieve`` (regions smaller than the minimum mapping unit take the value of their
largest neighbour, 4-connected, no-data neither merged nor grown into) then ``shapes`` (one polygon, with holes,
per 4-connected region of one label value), with each polygon's pixel count, area and mean confidence. How it
computes it keeps memory bounded by a block of rows plus the map's complexity (its regions and their
neighbours), not by its pixel count; reading the whole raster at once cost 9 bytes a pixel (~1.1 GB for a
10980 px Sentinel-2 tile):

1. Label: each block of rows is cut into runs (same value along a row), runs touching vertically with the same
   value are joined (a vectorised union-find) into the block's components, and each component's value, pixels,
   confidence sum and area are counted. Components of consecutive blocks that touch across the seam with the
   same value are joined globally: a region crossing any number of block borders is one region.
2. Sieve (with a minimum mapping unit): GDAL's rule on the region graph. Each region's largest neighbour (ties:
   the neighbour met first in row-major scan order, as GDALSieveFilter meets it); a small region follows the
   chain of largest neighbours to the first that is large enough and takes its value (none found: kept). Then
   touching regions with the same value are joined again.
3. Polygonise: the final region ids are written block by block to a temporary int32 GeoTIFF and GDAL's
   polygoniser traces them from the file, scanline by scanline; each polygon's value is its region id, so its
   attributes are the region's sums (no burning back, no second raster in memory).

Label value 0 (no data) is not polygonised; 'unknown' (below the threshold or won by a background prompt, value
K+1) is its own class, named as the caller's legend names it (classes.unknown_name), so the layer covers
everything that was labelled.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import rasterio
from rasterio import features
from rasterio.windows import Window

from .gpkg import Feature, Layer, write_gpkg

LAYER = "classes"
FIELDS = {"class": str, "value": int, "area_ha": float, "mean_confidence": float, "pixels": int}
# Pixels per row block: ~40 bytes of working arrays a pixel (run and component ids, confidence), so ~80 MB a
# block whatever the raster's size.
BLOCK_PIXELS = 1 << 21


def mmu_pixels(mmu_ha: float, pixel_area_m2: Optional[float]) -> int:
    """Pixels in ``mmu_ha`` hectares (0 when off or when the grid has no known units)."""
    if not mmu_ha or not pixel_area_m2:
        return 0
    return int(np.ceil(mmu_ha * 1e4 / pixel_area_m2))


def connected(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Root (the smallest member) of each of ``n`` nodes joined by the edges ``a[i]``-``b[i]``.

    Union-find in whole-array steps: every edge whose ends have different roots hooks the larger root under the
    smaller one, then pointer jumping flattens the forest; repeated until no edge joins two roots."""
    parent = np.arange(n, dtype=np.int64)
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    while a.size:
        pa, pb = parent[a], parent[b]
        keep = pa != pb
        if not keep.any():
            break
        a, b, pa, pb = a[keep], b[keep], pa[keep], pb[keep]  # joined edges stay joined: drop them
        np.minimum.at(parent, np.maximum(pa, pb), np.minimum(pa, pb))
        while True:
            up = parent[parent]
            if np.array_equal(up, parent):
                break
            parent = up
    return parent


@dataclass
class _Block:
    """One row block's components: per pixel (``comp``, -1 on no data) and per component."""

    comp: np.ndarray  # int64, block shape
    value: np.ndarray  # uint8 per component
    pixels: np.ndarray  # int64
    conf: np.ndarray  # float64 confidence sums
    area: np.ndarray  # float64 m², zeros without units


def _label_block(lab: np.ndarray, conf: Optional[np.ndarray], row_area: Optional[np.ndarray]) -> _Block:
    """4-connected components of one block (no-data pixels belong to none)."""
    h, w = lab.shape
    starts = np.ones((h, w), bool)
    starts[:, 1:] = lab[:, 1:] != lab[:, :-1]
    run = np.cumsum(starts.ravel(), dtype=np.int64).reshape(h, w) - 1
    first = np.flatnonzero(starts)
    n_runs = first.size
    run_value = lab.ravel()[first]
    # Runs above each other with the same value touch; every such overlap begins where one of the two starts.
    touch = (lab[1:] == lab[:-1]) & (lab[1:] != 0) & (starts[1:] | starts[:-1])
    root = connected(n_runs, run[:-1][touch], run[1:][touch])
    valid_run = run_value != 0
    roots, run_comp = np.unique(root, return_inverse=True)
    run_comp = run_comp.astype(np.int64)
    # No-data runs form their own (never joined) roots: drop them and renumber the rest densely.
    keep = np.zeros(roots.size, bool)
    keep[run_comp[valid_run]] = True
    renum = np.cumsum(keep) - 1
    run_comp = np.where(valid_run, renum[run_comp], -1)
    k = int(keep.sum())
    run_len = np.diff(np.append(first, h * w))
    ok = run_comp >= 0
    value = np.zeros(k, np.uint8)
    value[run_comp[ok]] = run_value[ok]
    pixels = np.bincount(run_comp[ok], weights=run_len[ok], minlength=k).astype(np.int64)
    area = np.zeros(k)
    if row_area is not None:
        area = np.bincount(run_comp[ok], weights=run_len[ok] * row_area[first[ok] // w], minlength=k)
    comp = run_comp[run]
    conf_sum = np.zeros(k)
    if conf is not None:
        c = comp.ravel()
        sel = c >= 0
        conf_sum = np.bincount(c[sel], weights=np.nan_to_num(conf.ravel()[sel], nan=0.0), minlength=k)
    return _Block(comp, value, pixels, conf_sum, area)


def _pairs(a: np.ndarray, b: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unordered pairs (a, b), each once, with its smallest key."""
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    if lo.size == 0:
        return lo, hi, key
    order = np.lexsort((key, hi, lo))
    lo, hi, key = lo[order], hi[order], key[order]
    first = np.ones(lo.size, bool)
    first[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    return lo[first], hi[first], key[first]


def _neighbours(lab: np.ndarray, comp: np.ndarray, row0: int, width: int) -> tuple[np.ndarray, ...]:
    """Touching components of different values in a block (rows ``row0``...), keyed by where a row-major scan
    first meets them: 2 * pixel index, +1 for the left neighbour (GDAL compares up, then left)."""
    both = (lab != 0)
    up = (lab[1:] != lab[:-1]) & both[1:] & both[:-1]  # pixel (r + 1, c) and the one above it
    rr, cc = np.nonzero(up)
    key_up = ((row0 + rr + 1).astype(np.int64) * width + cc) * 2
    left = (lab[:, 1:] != lab[:, :-1]) & both[:, 1:] & both[:, :-1]  # pixel (r, c + 1) and the one left of it
    rl, cl = np.nonzero(left)
    key_left = ((row0 + rl).astype(np.int64) * width + cl + 1) * 2 + 1
    return _pairs(np.concatenate([comp[1:][up], comp[:, 1:][left]]),
                  np.concatenate([comp[:-1][up], comp[:, :-1][left]]),
                  np.concatenate([key_up, key_left]))


@dataclass
class _Regions:
    """All blocks' components (numbered globally, block after block) and how they join."""

    value: list = field(default_factory=list)
    pixels: list = field(default_factory=list)
    conf: list = field(default_factory=list)
    area: list = field(default_factory=list)
    offsets: list = field(default_factory=list)  # first global id of each block
    join_a: list = field(default_factory=list)  # same value across a seam
    join_b: list = field(default_factory=list)
    nb_a: list = field(default_factory=list)  # different values touching (only kept for a sieve)
    nb_b: list = field(default_factory=list)
    nb_key: list = field(default_factory=list)


def _blocks(ds, block_rows: int) -> Iterator[tuple[int, int]]:
    for r0 in range(0, ds.height, block_rows):
        yield r0, min(block_rows, ds.height - r0)


def _scan(labels_ds, conf_ds, row_area: Optional[np.ndarray], block_rows: int, sieve: bool) -> _Regions:
    """Pass 1: label each block, join components across seams, collect neighbours when sieving."""
    w = labels_ds.width
    reg = _Regions()
    offset = 0
    prev_lab = prev_comp = None
    for r0, h in _blocks(labels_ds, block_rows):
        win = Window(0, r0, w, h)
        lab = labels_ds.read(1, window=win)
        conf = conf_ds.read(1, window=win) if conf_ds is not None else None
        blk = _label_block(lab, conf, row_area[r0:r0 + h] if row_area is not None else None)
        del conf
        comp = np.where(blk.comp >= 0, blk.comp + offset, -1)
        reg.offsets.append(offset)
        reg.value.append(blk.value)
        reg.pixels.append(blk.pixels)
        reg.conf.append(blk.conf)
        reg.area.append(blk.area)
        if prev_lab is not None:  # the seam: the previous block's last row above this block's first
            top, up = lab[0], prev_lab
            both = (top != 0) & (up != 0)
            same = both & (top == up)
            a, b, _ = _pairs(comp[0][same], prev_comp[same], np.zeros(int(same.sum()), np.int64))
            reg.join_a.append(a)
            reg.join_b.append(b)
            if sieve:
                diff = both & (top != up)
                cols = np.flatnonzero(diff)
                a, b, key = _pairs(comp[0][diff], prev_comp[diff], (np.int64(r0) * w + cols) * 2)
                reg.nb_a.append(a)
                reg.nb_b.append(b)
                reg.nb_key.append(key)
        if sieve:
            a, b, key = _neighbours(lab, comp, r0, w)
            reg.nb_a.append(a)
            reg.nb_b.append(b)
            reg.nb_key.append(key)
        prev_lab, prev_comp = lab[-1].copy(), comp[-1].copy()
        offset += blk.value.size
        del lab, comp, blk
    reg.offsets.append(offset)
    return reg


def _cat(parts: list, dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)


def _sieve_values(size: np.ndarray, value: np.ndarray, a: np.ndarray, b: np.ndarray, key: np.ndarray,
                  min_px: int) -> np.ndarray:
    """The value each region has after GDAL's sieve (see the module's docstring, step 2)."""
    n = size.size
    # Both ends of a touch see each other at the same moment of GDAL's scan.
    src, dst, k = np.concatenate([a, b]), np.concatenate([b, a]), np.concatenate([key, key])
    order = np.lexsort((k, -size[dst], src))  # per region: the largest neighbour, ties to the first met
    src, dst = src[order], dst[order]
    first = np.ones(src.size, bool)
    first[1:] = src[1:] != src[:-1]
    big = np.arange(n)
    small = size < min_px
    best = np.full(n, -1)
    best[src[first]] = dst[first]
    step = np.where(small & (best >= 0), best, big)  # large regions and isolated small ones stay put
    # Follow the chains of largest neighbours (pointer doubling): each ends on a large region, on an isolated
    # small one, or loops among small ones; only the first merges.
    for _ in range(max(1, int(np.ceil(np.log2(max(n, 2)))) + 1)):
        nxt = step[step]
        if np.array_equal(nxt, step):
            break
        step = nxt
    target = np.where(small & (size[step] >= min_px), step, big)
    return value[target]


def polygonise(labels_path: Path, confidence_path: Path, out_path: Path, names: Sequence[str],
               row_area_m2: Optional[np.ndarray], mmu_ha: float = 0.0, block_rows: Optional[int] = None) -> dict:
    """Write ``out_path`` (GeoPackage, layer 'classes') from the label and confidence rasters.

    ``names[v]`` is the class name of label value v (names[0], no data, is skipped); ``row_area_m2`` the
    pixel area of each row (engine/classify.pixel_areas_m2) or None when the grid has no units;
    ``block_rows`` the rows read at a time (default: about BLOCK_PIXELS pixels, whole tiles of the file).
    Returns counts for summary.json: polygons per class, pixels sieved, the minimum mapping unit in pixels."""
    mean_px_area = float(row_area_m2.mean()) if row_area_m2 is not None and len(row_area_m2) else None
    min_px = mmu_pixels(mmu_ha, mean_px_area)
    sieve = min_px > 1
    with rasterio.open(labels_path) as lab_ds, rasterio.open(confidence_path) as conf_ds:
        transform, crs, height, width = lab_ds.transform, lab_ds.crs, lab_ds.height, lab_ds.width
        if block_rows is None:
            tile_h = lab_ds.block_shapes[0][0]
            block_rows = max(tile_h, (BLOCK_PIXELS // max(width, 1)) // tile_h * tile_h)
        reg = _scan(lab_ds, conf_ds, row_area_m2, max(1, int(block_rows)), sieve)

        n = reg.offsets[-1]
        value = _cat(reg.value, np.uint8)
        comp = connected(n, _cat(reg.join_a, np.int64), _cat(reg.join_b, np.int64))
        # Components -> regions (dense ids), with their sums.
        _, region = np.unique(comp, return_inverse=True)
        m = int(region.max()) + 1 if n else 0
        r_value = np.zeros(m, np.uint8)
        r_value[region] = value
        r_px = np.bincount(region, weights=_cat(reg.pixels, np.int64), minlength=m).astype(np.int64)
        r_conf = np.bincount(region, weights=_cat(reg.conf, np.float64), minlength=m)
        r_area = np.bincount(region, weights=_cat(reg.area, np.float64), minlength=m)
        sieved_px = 0
        if sieve and m:
            a, b, key = _pairs(region[_cat(reg.nb_a, np.int64)], region[_cat(reg.nb_b, np.int64)],
                               _cat(reg.nb_key, np.int64))
            new_value = _sieve_values(r_px, r_value, a, b, key, min_px)
            sieved_px = int(r_px[new_value != r_value].sum())
            # Regions that now touch with the same value are one region.
            same = new_value[a] == new_value[b]
            merged = connected(m, a[same], b[same])
            _, final = np.unique(merged, return_inverse=True)
            k = int(final.max()) + 1
            f_value = np.zeros(k, np.uint8)
            f_value[final] = new_value
            r_px, r_conf, r_area = (np.bincount(final, weights=x, minlength=k) for x in (r_px, r_conf, r_area))
            r_px = r_px.astype(np.int64)
            region, r_value = final[region], f_value
            del a, b, key, new_value, merged, final
        del comp, value
        # Pass 2: the region id of every pixel (0 = no data), written for GDAL's polygoniser to trace.
        with tempfile.TemporaryDirectory(prefix=".rsclip-polygons-", dir=Path(out_path).parent) as tmp:
            ids_path = Path(tmp) / "regions.tif"
            profile = {"driver": "GTiff", "width": width, "height": height, "count": 1, "dtype": "int32",
                       "crs": crs, "transform": transform, "compress": "deflate", "zlevel": 1, "tiled": False}
            with rasterio.open(ids_path, "w", **profile) as out:
                for i, (r0, h) in enumerate(_blocks(lab_ds, max(1, int(block_rows)))):
                    lab = lab_ds.read(1, window=Window(0, r0, width, h))
                    blk = _label_block(lab, None, None)
                    # Only labelled pixels are looked up: a block without components (rows of no data at the
                    # bottom of a scene) starts at offset n, past the end of ``region``.
                    ids = np.zeros(lab.shape, np.int32)
                    sel = blk.comp >= 0
                    ids[sel] = region[blk.comp[sel] + reg.offsets[i]] + 1
                    out.write(ids, 1, window=Window(0, r0, width, h))
                    del lab, blk, ids
            del reg
            feats, per_class = [], {}
            with rasterio.open(ids_path) as ids_ds:
                for geom, rid in features.shapes(rasterio.band(ids_ds, 1), connectivity=4, transform=transform):
                    i = int(rid) - 1
                    if i < 0:
                        continue  # no data
                    v = int(r_value[i])
                    name = names[v] if v < len(names) else str(v)
                    per_class[name] = per_class.get(name, 0) + 1
                    px = int(r_px[i])
                    feats.append(Feature(geom["coordinates"], {
                        "class": name,
                        "value": v,
                        "area_ha": round(float(r_area[i]) / 1e4, 6) if row_area_m2 is not None else None,
                        "mean_confidence": round(float(r_conf[i] / px), 6) if px else None,
                        "pixels": px,
                    }))
    write_gpkg(out_path, [Layer(LAYER, crs.to_wkt() if crs else "", FIELDS, feats,
                                description="RS-CLIP label map polygonised per class")], overwrite=True)
    return {"layer": LAYER, "polygons": len(feats), "per_class": per_class, "mmu_ha": mmu_ha,
            "mmu_pixels": min_px, "sieved_pixels": sieved_px}
