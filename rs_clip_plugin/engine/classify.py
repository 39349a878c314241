"""Zero-shot labelling of a raster by class prompts: the engine behind ``rsclip classify``.

Per tile, logits = logit_scale * cos(tile embedding, class embedding); per pixel, the logits of every tile
covering it are averaged (overlap smooths tile edges), then softmax gives the label (argmax) and its
confidence (max probability). Output, on the input's working grid restricted to the extent:

- ``labels.tif``: uint8, 0 = nodata or unknown (below ``threshold``), classes 1..K; nodata value 0; colour
  table, category names (``labels.tif.aux.xml`` when osgeo is present) and name tags (see writers.py);
- ``confidence.tif``: float32 max softmax probability, NaN where no label;
- ``labels.qml``: QGIS paletted style; ``summary.json``: area per class, provider, timings, tiling.

Outputs are written strip by strip into a temporary sibling folder and moved into ``out_dir`` only when
everything succeeded; on an error or a cancel nothing is left in ``out_dir``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
from rasterio.windows import Window

from .bundle import Bundle
from .classes import UNKNOWN, UNKNOWN_COLOUR, ClassesInput, class_colours, parse_classes
from .default_bundle import as_bundle
from .errors import OutputExistsError
from .pipeline import TileStats, choose_modality, embed_tiles
from .progress import Progress
from .raster import RasterSource, open_source
from .runtime import TEXT_ROLE, EncoderSession
from .text import check_language, class_embeddings, templates_for
from .tiling import LogitAccumulator, TileGrid, check_tile_size_m, make_grid, stride_for, tile_size_px_for
from .writers import (
    AUX_SUFFIX,
    geotiff_profile,
    open_geotiff,
    set_category_names,
    write_class_legend,
    write_json,
    write_qml,
)

LABELS = "labels.tif"
CONFIDENCE = "confidence.tif"
QML = "labels.qml"
SUMMARY = "summary.json"
OUTPUT_FILES = (LABELS, LABELS + AUX_SUFFIX, CONFIDENCE, QML, SUMMARY)
# Authalic Earth radius (m): the sphere with the WGS84 ellipsoid's area, for areas on geographic grids.
EARTH_RADIUS_M = 6_371_007.2
# Averaged logits of one output strip (K planes); softmax needs about two more of the same size.
STRIP_BUDGET_BYTES = 96 << 20


@dataclass
class ClassifyResult:
    labels_path: Path
    confidence_path: Path
    qml_path: Path
    summary_path: Path
    summary: dict


def check_outputs(out_dir: Path, overwrite: bool) -> None:
    existing = [out_dir / n for n in OUTPUT_FILES if (out_dir / n).exists()]
    if existing and not overwrite:
        raise OutputExistsError(
            f"{', '.join(str(p) for p in existing)} already exist; pass --overwrite (overwrite=True) to replace them "
            "or choose another --out folder"
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExistsError(f"{out_dir} is a file, not a folder; give a folder for the outputs with --out")


def pixel_areas_m2(grid: TileGrid, rows: Window) -> Optional[np.ndarray]:
    """Area in m² of one pixel of each row of ``rows`` (output grid); None when the grid has no known units."""
    crs, t = grid.crs, grid.out_transform
    n = int(rows.height)
    if crs is None:
        return None
    if crs.is_geographic:
        # Pixel between latitudes phi1, phi2 and longitudes dlon apart on the authalic sphere.
        r0 = int(rows.row_off)
        edges = t.f + t.e * np.arange(r0, r0 + n + 1, dtype=np.float64)
        lat = np.deg2rad(np.clip(edges, -90.0, 90.0))
        dlon = np.deg2rad(abs(t.a))
        return EARTH_RADIUS_M**2 * dlon * np.abs(np.diff(np.sin(lat)))
    factor = crs.linear_units_factor[1] if crs.linear_units_factor else 1.0
    return np.full(n, abs(t.a * t.e - t.b * t.d) * factor * factor, np.float64)


def strip_rows_for(n_classes: int, width: int, budget_bytes: int = STRIP_BUDGET_BYTES) -> int:
    """Rows per written strip: 256 (one row of GeoTIFF blocks) unless K logit planes of that size exceed the budget."""
    rows = 256
    while rows > 16 and n_classes * rows * width * 4 > budget_bytes:
        rows //= 2
    return rows


def _nodata_mask(grid: TileGrid, stats: TileStats, strip: Window) -> Optional[np.ndarray]:
    """Pixels of an output strip that embedded (partly empty) tiles saw as no data."""
    if not stats.partial_masks:
        return None
    c0, r0 = int(grid.out_window.col_off), int(grid.out_window.row_off) + int(strip.row_off)
    h, w = int(strip.height), int(strip.width)
    mask = np.zeros((h, w), bool)
    for i, m in stats.partial_masks.items():
        win = grid.windows[i]
        tr0, tc0 = int(win.row_off) - r0, int(win.col_off) - c0
        a0, a1 = max(tr0, 0), min(tr0 + m.shape[0], h)
        b0, b1 = max(tc0, 0), min(tc0 + m.shape[1], w)
        if a1 > a0 and b1 > b0:
            mask[a0:a1, b0:b1] |= m[a0 - tr0 : a1 - tr0, b0 - tc0 : b1 - tc0]
    return mask


def _softmax_label(logits: np.ndarray, threshold: Optional[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels uint8 1..K / 0, confidence float32, covered mask) from (K, h, w) averaged logits (NaN = no tile).

    Only the winning probability is needed: max softmax = 1 / sum_k exp(x_k - max_k x), accumulated plane by
    plane so no second (K, h, w) array is made.
    """
    covered = ~np.isnan(logits[0])
    x = np.nan_to_num(logits, nan=0.0)
    top = x.max(axis=0)
    labels = (x.argmax(axis=0) + 1).astype(np.uint8)
    total = np.zeros(top.shape, np.float32)
    plane = np.empty(top.shape, np.float32)
    for k in range(x.shape[0]):
        np.subtract(x[k], top, out=plane)
        np.exp(plane, out=plane)
        total += plane
    conf = np.reciprocal(total, out=total)
    if threshold is not None:
        labels[conf < threshold] = 0
    labels[~covered] = 0
    conf[~covered] = np.nan
    return labels, conf, covered


def _staging(out_dir: Path) -> tuple[Path, list[Path]]:
    """A temporary sibling of out_dir (same filesystem, so moving files is a rename) and the parents made for it."""
    made: list[Path] = []
    parent = out_dir.parent
    missing = []
    p = parent
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir()
        made.append(d)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.rsclip-", dir=parent))
    return tmp, made


def _publish(tmp: Path, out_dir: Path, names: Sequence[str], overwrite: bool) -> None:
    created = not out_dir.exists()
    out_dir.mkdir(exist_ok=True)
    try:
        for n in OUTPUT_FILES:
            if n not in names and (out_dir / n).exists() and overwrite:
                (out_dir / n).unlink()  # a stale side-car of an earlier run would mislabel the new raster
        for n in names:
            os.replace(tmp / n, out_dir / n)
    except BaseException:
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise


def classify_raster(
    source_path: Union[str, os.PathLike],
    classes: ClassesInput,
    out_dir: Union[str, os.PathLike],
    *,
    bundle: Union[Bundle, str, os.PathLike, None] = None,
    modality: Optional[str] = None,
    sensor: Optional[str] = None,
    bands: Optional[Sequence[str]] = None,
    s2_offset: Optional[float] = None,
    sar_units: Optional[str] = None,
    lang: str = "en",
    threshold: Optional[float] = None,
    tile_size_m: Optional[float] = None,
    overlap: float = 0.0,
    extent: Optional[Sequence[float]] = None,
    provider: str = "auto",
    batch_size: Optional[int] = None,
    progress: Optional[Progress] = None,
    overwrite: bool = False,
    workers: Optional[int] = None,
) -> ClassifyResult:
    """Label every pixel of a raster with one of ``classes`` (see the module docstring for the outputs)."""
    t_start = time.perf_counter()
    progress = progress or Progress()
    out_dir = Path(out_dir)
    specs = parse_classes(classes)
    if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold {threshold} is not a probability; give a value between 0 and 1")
    stride_for(1, overlap)  # validate before anything is opened
    if tile_size_m is not None:
        check_tile_size_m(tile_size_m)
    check_outputs(out_dir, overwrite)
    b = as_bundle(bundle)
    check_language(b, lang)
    progress.check()
    source = open_source(source_path, sensor=sensor, bands=bands, s2_offset=s2_offset, sar_units=sar_units)
    with source:
        return _classify_open(source, specs, out_dir, b, modality, lang, threshold, tile_size_m, overlap, extent,
                              provider, batch_size, progress, overwrite, workers, t_start)


def _classify_open(source: RasterSource, specs, out_dir: Path, b: Bundle, modality, lang, threshold, tile_size_m,
                   overlap, extent, provider, batch_size, progress: Progress, overwrite, workers, t_start) -> ClassifyResult:
    modality = modality or choose_modality(source, b)
    spec = b.manifest.encoder(modality)
    source.check_mapping(spec)
    tile_px = tile_size_px_for(spec, source, tile_size_m)
    stride = stride_for(tile_px, overlap)
    grid = make_grid(source, tile_px, stride, extent)

    t0 = time.perf_counter()
    text_session = EncoderSession(b, TEXT_ROLE, provider=provider)
    class_vecs = class_embeddings(b, specs, lang=lang, session=text_session)
    t_text = time.perf_counter() - t0
    progress.update(0.02, "class prompts encoded")

    session = EncoderSession(b, modality, provider=provider)
    acc = LogitAccumulator(grid, len(specs), strip_rows=strip_rows_for(len(specs), grid.out_shape[1]))
    stats = TileStats(keep_masks=True)
    scale = np.float32(b.manifest.logit_scale)
    try:
        t0 = time.perf_counter()
        for indices, emb in embed_tiles(source, b, modality, grid, session=session, batch_size=batch_size,
                                        progress=progress.sub(0.02, 0.9), workers=workers, stats=stats):
            logits = scale * (emb @ class_vecs.T)
            for i, row in zip(indices, logits):
                acc.add(grid.windows[i], row)
        t_tiles = time.perf_counter() - t0
        progress.check()
        t0 = time.perf_counter()
        tmp, made = _staging(out_dir)
        try:
            counts = _write_rasters(tmp, grid, acc, stats, specs, threshold, progress.sub(0.9, 0.99))
            names = [s.name for s in specs]
            colours = class_colours(specs)
            write_qml(tmp / QML, [(k + 1, colours[k], names[k]) for k in range(len(specs))])
            t_write = time.perf_counter() - t0
            summary = _summary(source, b, session, grid, stats, specs, colours, counts, modality, lang, threshold,
                               overlap, tile_size_m, {
                                   "text_s": t_text,
                                   "tiles_s": t_tiles,
                                   "read_s": stats.read_s,
                                   "read_wait_s": stats.wait_s,
                                   "inference_s": stats.inference_s,
                                   "write_s": t_write,
                               }, t_start)
            summary["files"] = {k: str(out_dir / n) for k, n in
                                (("labels", LABELS), ("confidence", CONFIDENCE), ("qml", QML), ("summary", SUMMARY))}
            write_json(tmp / SUMMARY, summary)
            progress.check()
            produced = [n for n in OUTPUT_FILES if (tmp / n).exists()]
            _publish(tmp, out_dir, produced, overwrite)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            for d in reversed(made):
                if d.exists() and not any(d.iterdir()):
                    d.rmdir()
    finally:
        acc.close()
    progress.update(1.0, "done")
    return ClassifyResult(out_dir / LABELS, out_dir / CONFIDENCE, out_dir / QML, out_dir / SUMMARY, summary)


def _write_rasters(tmp: Path, grid: TileGrid, acc: LogitAccumulator, stats: TileStats, specs, threshold,
                   progress: Progress) -> dict:
    h, w = grid.out_shape
    names = [UNKNOWN, *(s.name for s in specs)]
    colours = [UNKNOWN_COLOUR, *class_colours(specs)]
    k = len(specs)
    pixels = np.zeros(k + 1, np.int64)  # per label value over valid pixels (0 = unknown)
    area = np.zeros(k + 1, np.float64)
    nodata_px, nodata_area = 0, 0.0
    has_area = grid.crs is not None
    lab_profile = geotiff_profile(w, h, grid.out_transform, grid.crs, "uint8", 0)
    conf_profile = geotiff_profile(w, h, grid.out_transform, grid.crs, "float32", float("nan"))
    with open_geotiff(tmp / LABELS, lab_profile) as lab_ds, open_geotiff(tmp / CONFIDENCE, conf_profile) as conf_ds:
        write_class_legend(lab_ds, names, colours)
        conf_ds.set_band_description(1, "confidence (max softmax probability)")
        strips = list(acc.strips())
        for n, strip in enumerate(strips):
            progress.check()
            labels, conf, covered = _softmax_label(acc.averaged(strip), threshold)
            nd = _nodata_mask(grid, stats, strip)
            valid = covered if nd is None else covered & ~nd
            labels[~valid] = 0
            conf[~valid] = np.nan
            lab_ds.write(labels, 1, window=strip)
            conf_ds.write(conf, 1, window=strip)
            row_area = pixel_areas_m2(grid, strip)
            # One pass: counts per (row, label value) of valid pixels, the last column counts invalid ones.
            rows_idx = np.arange(labels.shape[0], dtype=np.int64)[:, None]
            code = np.where(valid, labels.astype(np.int64), k + 1) + rows_idx * (k + 2)
            per_row = np.bincount(code.ravel(), minlength=labels.shape[0] * (k + 2)).reshape(-1, k + 2)
            pixels += per_row[:, : k + 1].sum(axis=0)
            nodata_px += int(per_row[:, k + 1].sum())
            if row_area is not None:
                weighted = row_area @ per_row
                area += weighted[: k + 1]
                nodata_area += float(weighted[k + 1])
            progress.update((n + 1) / len(strips), "writing")
    set_category_names(tmp / LABELS, names)
    return {"pixels": pixels, "area_m2": area if has_area else None, "nodata_px": nodata_px,
            "nodata_m2": nodata_area if has_area else None}


def _ha(m2: Optional[float]) -> Optional[float]:
    return None if m2 is None else round(float(m2) / 1e4, 4)


def _summary(source: RasterSource, b: Bundle, session: EncoderSession, grid: TileGrid, stats: TileStats, specs,
             colours, counts, modality, lang, threshold, overlap, tile_size_m, timings: dict, t_start) -> dict:
    pixels, area = counts["pixels"], counts["area_m2"]
    valid_px = int(pixels.sum())
    classes = []
    for k, s in enumerate(specs, start=1):
        classes.append({
            "value": k,
            "name": s.name,
            "synonyms": list(s.synonyms),
            "color": colours[k - 1],
            "pixels": int(pixels[k]),
            "area_ha": _ha(area[k]) if area is not None else None,
            "fraction": round(int(pixels[k]) / valid_px, 6) if valid_px else 0.0,
        })
    res = source.res_m
    timings = {k: round(v, 3) for k, v in timings.items()}
    timings["total_s"] = round(time.perf_counter() - t_start, 3)
    h, w = grid.out_shape
    return {
        "source": str(source.path),
        "sensor": source.sensor,
        "radiometry": {"s2_offset_dn": source.s2_offset_dn, "sar_units": source.sar_units},
        "modality": modality,
        "bundle": {"name": b.manifest.name, "digest": b.digest, "path": str(b.root)},
        "provider": session.provider_used,
        "device": session.device,
        "device_description": session.device_description,
        "provider_fallback": session.fallback_message,
        "lang": lang,
        "prompt_templates": len(templates_for(b, lang)),
        "threshold": threshold,
        "classes": classes,
        "unknown": {"value": 0, "pixels": int(pixels[0]), "area_ha": _ha(area[0]) if area is not None else None},
        "nodata": {"value": 0, "pixels": counts["nodata_px"], "area_ha": _ha(counts["nodata_m2"])},
        "valid_pixels": valid_px,
        "valid_area_ha": _ha(area.sum()) if area is not None else None,
        "grid": {
            "crs": grid.crs.to_string() if grid.crs else None,
            "width": w,
            "height": h,
            "transform": list(grid.out_transform)[:6],
            "bounds": list(grid.extent),
        },
        "tiling": {
            "tile_px": grid.tile_px,
            "tile_size_m": round(grid.tile_px * res, 3) if res else None,
            "requested_tile_size_m": tile_size_m,
            "stride_px": grid.stride_px,
            "overlap": overlap,
            **stats.as_dict(),
        },
        "timings": timings,
    }
