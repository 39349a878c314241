"""Zero-shot labelling of a raster by class prompts: the engine behind ``rsclip classify``.

Per tile, logits = logit_scale * cos(tile embedding, class embedding); per pixel, the logits of every tile
covering it are averaged (overlap smooths tile edges), then softmax gives the label (argmax) and its
confidence (max probability). The logit columns are the K classes then the background prompts (SegEarth-OV):
a pixel a background prompt wins, or whose confidence is below ``threshold``, gets K+1. A class with synonyms
is one vector (mean) or the max of one logit per synonym (text.synonym_merge is the rule, text.PromptHead the
mechanism; merged per tile, before overlaps are averaged, so memory stays K + background planes).
Output, on the input's working grid restricted to the extent:

- ``labels.tif``: uint8, classes 1..K, K+1 = unknown (below ``threshold``) or background / unknown (with
  ``background``; classes.unknown_name; only when either is given), 0 = no data (the nodata value, transparent); colour
  table, category names (``labels.tif.aux.xml`` when osgeo is present) and name tags (see writers.py);
- ``confidence.tif``: float32 max softmax probability, NaN where no label (both Cloud-Optimised GeoTIFFs with
  overviews: writers.make_cog);
- ``labels.qml``: QGIS paletted style; ``summary.json``: area per class, provider, timings, tiling;
- ``classes.gpkg`` (only with ``polygons=True``): the label map as polygons per class with area and mean
  confidence, speckles under ``mmu_ha`` merged into their largest neighbour (engine/polygons.py).

Outputs are written strip by strip into a staging folder on ``out_dir``'s file system and published as one
unit when everything succeeded (engine/atomic.py: OutputFolder); on an error or a cancel nothing of the run
is left in ``out_dir``. A labelled area that holds no data at all still gives (all-0) maps, with a warning
in ``summary.json["warnings"]`` that the CLI prints: the maps are true, and a batch over many extents
should not stop at an empty one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
from rasterio.windows import Window

from .atomic import Final, final_path, open_outputs
from .bundle import Bundle, EncoderSpec
from .classes import (
    NODATA,
    NODATA_COLOUR,
    UNKNOWN_COLOUR,
    ClassesInput,
    ClassSpec,
    class_colours,
    parse_background,
    parse_classes,
    unknown_name,
)
from .default_bundle import as_bundle
from .errors import InputError, OutputExistsError  # noqa: F401  (OutputExistsError: re-exported, long-standing)
from .options import (
    SYNONYM_MERGES,
    JobOptions,
    RasterOptions,
    RunOptions,
    TilingOptions,
    optional_choice,
    split_options,
)
from .pipeline import TileStats, embed_tiles, plan_tiles, resize_hw
from .progress import Progress
from .raster import RasterSource
from .refine import REFINE_METHODS, pamr, refine_summary
from .runtime import TEXT_ROLE, DenseEmbeddings, EncoderSession
from .text import PromptHead, check_language, prompt_head, synonym_merge, templates_for
from .tiling import LogitAccumulator, TileGrid
from .writers import (
    AUX_SUFFIX,
    geotiff_profile,
    make_cog,
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
POLYGONS = "classes.gpkg"
OUTPUT_FILES = (LABELS, LABELS + AUX_SUFFIX, CONFIDENCE, QML, SUMMARY, POLYGONS)
# Authalic Earth radius (m): the sphere with the WGS84 ellipsoid's area, for areas on geographic grids.
EARTH_RADIUS_M = 6_371_007.2
# Averaged logits of one output strip (K planes); softmax needs about two more of the same size.
STRIP_BUDGET_BYTES = 96 << 20
# SegEarth-OV's "global bias alleviation": patch logits = p.t - GLOBAL_BIAS_LAMBDA * c.t, c the class token of
# the modified last block (what every patch shares with it is taken off; 0.3 is the paper's value).
GLOBAL_BIAS_LAMBDA = 0.3


def label_mode(spec: EncoderSpec, requested: Optional[str], bundle: Bundle, precision: str = "auto") -> str:
    """'dense' or 'tile' for the chosen encoder: the one asked for, else dense when the encoder has dense
    outputs and the precision asked for is not int8 (the int8 twin serves tile mode only, see
    EncoderSession). Dense asked of an encoder without them is an InputError naming the fix."""
    if requested is None:
        return "dense" if spec.dense and precision != "int8" else "tile"
    if requested == "dense" and not spec.dense:
        raise InputError(
            f"{{mode}} dense needs an encoder with dense outputs, and the {spec.modality!r} encoder of bundle "
            f"{bundle.manifest.name!r} has none; use {{mode}} tile (or auto), or re-export the bundle with "
            "rsclip-train export or run (open_clip ViTs and the recipe's ViT students get dense outputs by default)"
        )
    return requested


def dense_tile_logits(patches: np.ndarray, cls: np.ndarray, head: Union[PromptHead, np.ndarray], scale: float,
                      grid: tuple[int, int], height: int, width: int) -> np.ndarray:
    """(C, height, width) logits of one tile from its normalised patch [P, D] and dense class-token [D]
    embeddings: scale * (p.t - GLOBAL_BIAS_LAMBDA * c.t) per patch and prompt vector, merged per column
    (PromptHead.merge; plain class vectors [K, D] are one column each), upsampled bilinearly to the tile's pixels."""
    head = head if isinstance(head, PromptHead) else PromptHead.of(head)
    gh, gw = grid
    vecs = head.vectors
    per_patch = head.merge(patches @ vecs.T - np.float32(GLOBAL_BIAS_LAMBDA) * (cls @ vecs.T)[None, :])
    maps = (np.float32(scale) * per_patch).T.reshape(head.n_columns, gh, gw)
    return resize_hw(np.ascontiguousarray(maps, dtype=np.float32), height, width)


@dataclass
class ClassifyResult:
    labels_path: Path
    confidence_path: Path
    qml_path: Path
    summary_path: Path
    summary: dict


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


def _softmax_label(logits: np.ndarray, threshold: Optional[float],
                   n_classes: Optional[int] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels uint8 1..K, K+1 where a background column wins or below ``threshold``, 0 uncovered; confidence
    float32; covered mask) from (C, h, w) averaged logits (NaN = no tile): the first ``n_classes`` (default
    all) columns are the classes, the rest background prompts; the softmax runs over all C.

    Only the winning probability is needed: max softmax = 1 / sum_k exp(x_k - max_k x), accumulated plane by
    plane so no second (K, h, w) array is made.
    """
    covered = ~np.isnan(logits[0])
    x = np.nan_to_num(logits, nan=0.0)
    top = x.max(axis=0)
    k = x.shape[0] if n_classes is None else n_classes
    # Any background column (index >= k) is K+1, folded before the uint8 cast: with 254 classes and background
    # prompts a column index + 1 would pass 255 and wrap round to 0 (no data).
    labels = np.minimum(x.argmax(axis=0), k).astype(np.uint8) + np.uint8(1)
    total = np.zeros(top.shape, np.float32)
    plane = np.empty(top.shape, np.float32)
    for c in range(x.shape[0]):
        np.subtract(x[c], top, out=plane)
        np.exp(plane, out=plane)
        total += plane
    conf = np.reciprocal(total, out=total)
    if threshold is not None:
        labels[conf < threshold] = k + 1  # unknown: a value of its own, in the legend
    labels[~covered] = 0
    conf[~covered] = np.nan
    return labels, conf, covered


@dataclass(frozen=True)
class ClassifyJob:
    """What one classification needs besides the raster and the output folder (built by classify_raster)."""

    specs: tuple[ClassSpec, ...]
    bundle: Bundle
    lang: str = "en"
    threshold: Optional[float] = None
    options: JobOptions = field(default_factory=JobOptions)
    # classes.gpkg: the label map polygonised, regions under mmu_ha hectares merged into a neighbour (0 = off).
    polygons: bool = False
    mmu_ha: float = 0.0
    # Background prompts (extra logit columns; winning one makes a pixel K+1) and the synonym merge
    # (None = text.synonym_merge's default).
    background: tuple[ClassSpec, ...] = ()
    synonyms: Optional[str] = None
    # Refinement of each tile's upsampled dense logits by its image (refine.REFINE_METHODS; None = off).
    refine: Optional[str] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "synonyms", optional_choice(self.synonyms, "synonyms", SYNONYM_MERGES))
        object.__setattr__(self, "refine", optional_choice(self.refine, "refine", REFINE_METHODS, off="none"))
        mmu = self.mmu_ha
        if not (isinstance(mmu, (int, float)) and np.isfinite(mmu) and mmu >= 0):
            raise InputError(f"{{mmu_ha}} must be an area in hectares >= 0 (0 = off), got {mmu}; e.g. 0.5")

    @property
    def has_unknown(self) -> bool:
        """Whether label value K+1 can occur (a threshold, or background prompts, were given)."""
        return self.threshold is not None or bool(self.background)

    @property
    def unknown_name(self) -> str:
        return unknown_name(bool(self.background))


def classify_raster(
    source_path: Union[str, os.PathLike],
    classes: ClassesInput,
    out_dir: Union[str, os.PathLike, Mapping[str, Path]],
    *,
    bundle: Union[Bundle, str, os.PathLike, None] = None,
    lang: str = "en",
    threshold: Optional[float] = None,
    raster: Optional[RasterOptions] = None,
    tiling: Optional[TilingOptions] = None,
    run: Optional[RunOptions] = None,
    progress: Optional[Progress] = None,
    overwrite: bool = False,
    polygons: bool = False,
    mmu_ha: float = 0.0,
    background: Union[str, list, None] = None,
    synonyms: Optional[str] = None,
    refine: Optional[str] = None,
    **options: Any,
) -> ClassifyResult:
    """Label every pixel of a raster with one of ``classes`` (see the module docstring for the outputs).

    How the raster is read, tiled and run: ``raster``, ``tiling``, ``run`` (engine/options.py); the earlier
    individual keywords (``sensor=``, ``overlap=``, ``provider=``, ``workers=``, ...) are still accepted.
    ``out_dir`` is the final folder (or, for QGIS Processing, a mapping of the file names above to paths of
    their own): the files are staged on its file system and published as one unit (engine/atomic.py), so on
    an error or a cancel nothing of this run is left there. ``polygons`` adds classes.gpkg, with regions
    smaller than ``mmu_ha`` hectares merged into their largest neighbour. ``background``: prompts
    ("cloud;shadow") whose winning pixels become background / unknown (K+1); ``synonyms``: 'mean', 'max' or
    None/'auto' (text.DEFAULT_SYNONYM_MERGE, max: measured better in both modes). ``refine='pamr'`` (dense mode
    only) refines each tile's logits along the image's edges (engine/refine.py).
    """
    t_start = time.perf_counter()
    progress = progress or Progress()
    opts = split_options(raster, tiling, run, options, where="classify_raster")
    specs = tuple(parse_classes(classes))
    back = parse_background(background, specs)
    if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
        raise InputError(f"{{threshold}} {threshold} is not a probability; give a value between 0 and 1")
    with open_outputs(out_dir, OUTPUT_FILES, overwrite=overwrite) as out:  # refuses a conflict before any work
        b = as_bundle(bundle)
        check_language(b, lang)
        progress.check()
        job = ClassifyJob(specs, b, lang, threshold, opts, bool(polygons), mmu_ha, back, synonyms, refine)
        res = classify_into(source_path, job, out.path, out.destination, progress, t_start)
        progress.check()
        out.publish()
    progress.update(1.0, "done")
    return res


def classify_into(source_path: Union[str, os.PathLike], job: ClassifyJob, write_dir: Path, final_dir: Final,
                  progress: Progress, t_start: Optional[float] = None) -> ClassifyResult:
    """Write the outputs of ``job`` into ``write_dir`` (a staging folder); paths in the result and in
    summary.json are the final ones (atomic.final_path: in the folder ``final_dir``, or each at its own path
    when it maps names to paths), where the caller publishes them."""
    t_start = time.perf_counter() if t_start is None else t_start
    with job.options.raster.open(source_path) as source:
        return _classify_open(source, job, write_dir, final_dir, progress, t_start)


def _classify_open(source: RasterSource, job: ClassifyJob, tmp: Path, final_dir: Final, progress: Progress,
                   t_start: float) -> ClassifyResult:
    b, specs, tiling, run = job.bundle, job.specs, job.options.tiling, job.options.run
    spec, grid = plan_tiles(b, source, tiling)

    mode = label_mode(spec, tiling.mode, b, run.precision)
    dense = mode == "dense"
    if job.refine and not dense:
        # Why this run is per tile (label_mode's three ways), so the message names the setting to change.
        if tiling.mode == "tile":
            why, fix = "{mode} tile was asked for", "{mode} dense or auto"
        elif spec.dense:
            why, fix = f"{{precision}} {run.precision} runs the int8 graph, which has no dense outputs", \
                "{precision} fp32 or auto"
        else:
            why = f"the {spec.modality!r} encoder of bundle {b.manifest.name!r} has no dense outputs"
            fix = "a bundle whose encoder has dense outputs (rsclip-train export)"
        raise InputError(
            f"{{refine}} {job.refine} refines dense labels, and this run labels per tile ({why}); leave {{refine}} "
            f"off, or label densely ({fix})")
    merge = synonym_merge(job.synonyms)
    t0 = time.perf_counter()
    text_session = EncoderSession(b, TEXT_ROLE, provider=run.provider)
    head = prompt_head(b, specs, job.lang, merge, job.background, session=text_session)
    t_text = time.perf_counter() - t0
    progress.update(0.02, "class prompts encoded")

    session = EncoderSession(b, spec.modality, provider=run.provider, precision=run.precision, dense=dense)
    n_cols = head.n_columns
    acc = LogitAccumulator(grid, n_cols, strip_rows=strip_rows_for(n_cols, grid.out_shape[1]))
    stats = TileStats(keep_masks=True)
    scale = np.float32(b.manifest.logit_scale)

    def encode_dense(x: np.ndarray) -> tuple[np.ndarray, DenseEmbeddings]:
        return x, session.embed_dense(x)  # the batch's encoder input rides along: PAMR's affinities come from it

    t_refine = 0.0
    try:
        t0 = time.perf_counter()
        for indices, emb in embed_tiles(source, b, spec.modality, grid, session=session, batch_size=run.batch_size,
                                        progress=progress.sub(0.02, 0.9), workers=run.threads, stats=stats,
                                        encode=encode_dense if dense else None):
            if dense:
                x, emb = emb
                # Per-pixel maps: the accumulator sums them (in RAM or a temporary memmap) and averages overlaps.
                for j, i in enumerate(indices):
                    win = grid.windows[i]
                    h, w = int(win.height), int(win.width)
                    logits = dense_tile_logits(emb.patches[j], emb.cls[j], head, scale, spec.dense_grid, h, w)
                    if job.refine:
                        t1 = time.perf_counter()
                        logits = pamr(resize_hw(np.asarray(x[j], np.float32), h, w), logits)
                        t_refine += time.perf_counter() - t1
                    acc.add(win, logits)
                continue
            logits = scale * head.merge(emb @ head.vectors.T)
            for i, row in zip(indices, logits):
                acc.add(grid.windows[i], row)
        t_tiles = time.perf_counter() - t0
        progress.check()
        t0 = time.perf_counter()
        counts = _write_rasters(tmp, grid, acc, stats, job, progress.sub(0.9, 0.99))
        names = [s.name for s in specs]
        colours = class_colours(specs)
        entries = [(k + 1, colours[k], names[k]) for k in range(len(specs))]
        if job.has_unknown:
            entries.append((len(specs) + 1, UNKNOWN_COLOUR, job.unknown_name))
        write_qml(tmp / QML, entries)
        poly = None
        if job.polygons:
            from .polygons import polygonise

            progress.update(0.99, "polygonising")
            h, w = grid.out_shape
            poly = polygonise(tmp / LABELS, tmp / CONFIDENCE, tmp / POLYGONS,
                              [NODATA, *names, *([job.unknown_name] if job.has_unknown else [])],
                              pixel_areas_m2(grid, Window(0, 0, w, h)), job.mmu_ha)
        t_write = time.perf_counter() - t0
        summary = _summary(source, job, session, grid, stats, colours, counts, spec, mode, merge, {
            "text_s": t_text,
            "tiles_s": t_tiles,
            "read_s": stats.read_s,
            "read_wait_s": stats.wait_s,
            "inference_s": stats.inference_s,
            **({"refine_s": t_refine} if job.refine else {}),
            "write_s": t_write,
        }, t_start)
        final = {n: final_path(final_dir, n) for n in (LABELS, CONFIDENCE, QML, SUMMARY, POLYGONS)}
        summary["files"] = {k: str(final[n]) for k, n in
                            (("labels", LABELS), ("confidence", CONFIDENCE), ("qml", QML), ("summary", SUMMARY))}
        if poly is not None:
            summary["files"]["polygons"] = str(final[POLYGONS])
        summary["polygons"] = poly
        write_json(tmp / SUMMARY, summary)
    finally:
        acc.close()
    return ClassifyResult(final[LABELS], final[CONFIDENCE], final[QML], final[SUMMARY], summary)


def _write_rasters(tmp: Path, grid: TileGrid, acc: LogitAccumulator, stats: TileStats, job: ClassifyJob,
                   progress: Progress) -> dict:
    h, w = grid.out_shape
    specs, threshold = job.specs, job.threshold
    names = [NODATA, *(s.name for s in specs)]
    colours = [NODATA_COLOUR, *class_colours(specs)]
    if job.has_unknown:
        names, colours = [*names, job.unknown_name], [*colours, UNKNOWN_COLOUR]
    k = len(specs)
    pixels = np.zeros(k + 2, np.int64)  # per label value over valid pixels (k + 1 = unknown; 0 never valid)
    area = np.zeros(k + 2, np.float64)
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
            labels, conf, covered = _softmax_label(acc.averaged(strip), threshold, k)
            nd = _nodata_mask(grid, stats, strip)
            valid = covered if nd is None else covered & ~nd
            labels[~valid] = 0
            conf[~valid] = np.nan
            lab_ds.write(labels, 1, window=strip)
            conf_ds.write(conf, 1, window=strip)
            row_area = pixel_areas_m2(grid, strip)
            # One pass: counts per (row, label value) of valid pixels, the last column counts invalid ones.
            rows_idx = np.arange(labels.shape[0], dtype=np.int64)[:, None]
            code = np.where(valid, labels.astype(np.int64), k + 2) + rows_idx * (k + 3)
            per_row = np.bincount(code.ravel(), minlength=labels.shape[0] * (k + 3)).reshape(-1, k + 3)
            pixels += per_row[:, : k + 2].sum(axis=0)
            nodata_px += int(per_row[:, k + 2].sum())
            if row_area is not None:
                weighted = row_area @ per_row
                area += weighted[: k + 2]
                nodata_area += float(weighted[k + 2])
            progress.update((n + 1) / len(strips), "writing")
    # Cloud-Optimised GeoTIFFs with overviews, so a full-tile map opens fast: mode keeps labels categorical.
    make_cog(tmp / LABELS, "mode")
    make_cog(tmp / CONFIDENCE, "average")
    set_category_names(tmp / LABELS, names)
    return {"pixels": pixels, "area_m2": area if has_area else None, "nodata_px": nodata_px,
            "nodata_m2": nodata_area if has_area else None}


def _ha(m2: Optional[float]) -> Optional[float]:
    return None if m2 is None else round(float(m2) / 1e4, 4)


def no_data_warning(source: RasterSource, valid_px: int) -> Optional[str]:
    """The warning for a labelled area that holds no data at all (every pixel no data or NaN)."""
    if valid_px:
        return None
    return (f"{source.path} holds no data in the labelled area (every pixel is no data or NaN), so every label "
            "is 0 (no data); check the extent, the raster's nodata value and its bands")


def _summary(source: RasterSource, job: ClassifyJob, session: EncoderSession, grid: TileGrid, stats: TileStats,
             colours, counts, spec: EncoderSpec, mode: str, merge: str, timings: dict, t_start) -> dict:
    b, specs, tiling = job.bundle, job.specs, job.options.tiling
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
        "modality": spec.modality,
        # Which labelling ran: "dense" (patch logits, see dense_tile_logits) or "tile" (one vector per tile).
        "mode": mode,
        "dense": ({"variant": spec.dense.get("variant"), "grid": list(spec.dense_grid or ()),
                   "bias_lambda": GLOBAL_BIAS_LAMBDA} if mode == "dense" and spec.dense else None),
        # PAMR refinement of the dense logits (engine/refine.py), or None.
        "refine": refine_summary(job.refine),
        "bundle": {"name": b.manifest.name, "digest": b.digest, "path": str(b.root)},
        "provider": session.provider_used,
        "precision": session.precision_used,
        "device": session.device,
        "device_description": session.device_description,
        "provider_fallback": session.fallback_message,
        "lang": job.lang,
        "prompt_templates": len(templates_for(b, job.lang)),
        "threshold": job.threshold,
        # Background prompts (each a logit column; a pixel one wins is background / unknown), as typed.
        "background": ["|".join(s.phrases) for s in job.background],
        # How each class's synonyms were merged: 'mean' (one vector) or 'max' (max of one logit per synonym).
        "synonyms": merge,
        "classes": classes,
        "unknown": {"value": len(job.specs) + 1, "name": job.unknown_name, "color": UNKNOWN_COLOUR,
                    "pixels": int(pixels[-1]),
                    "area_ha": _ha(area[-1]) if area is not None else None},
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
            "requested_tile_size_m": tiling.tile_size_m,
            "stride_px": grid.stride_px,
            "overlap": tiling.overlap,
            **stats.as_dict(),
        },
        "timings": timings,
        "warnings": [w for w in (no_data_warning(source, valid_px),) if w],
    }
