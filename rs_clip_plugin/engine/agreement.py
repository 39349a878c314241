"""How far a reduced-precision graph (int8, fp16) departs from the fp32 one, measured on real tiles.

Used by the exporter, which records the figures in the manifest (``EncoderSpec.int8_agreement``) for the
runtime's automatic choice and for ``rsclip bench`` to report:

- ``real_tiles(spec)``: encoder inputs cut from the real sample rasters (``sample_data_dir()``) that the
  encoder can read, through the engine's own reader and preprocessing (``RasterSource.encoder_input`` +
  ``read_tile_batch``), so they are exactly what inference sees;
- ``agreement(ref, cand, classes)``: min and mean cosine of the embeddings to fp32, and the fraction of
  tiles whose zero-shot label (argmax over class text embeddings, EuroSAT names by default) is unchanged.

Random-input cosines say little about labels: a graph can keep cosine 0.999 and still flip the argmax of
close classes, which is what a user sees. Hence labels on real tiles.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .bundle import EncoderSpec
from .settings import sample_data_dir

# Tiles per measurement: one label flip in 128 still leaves agreement 0.992 (>= the 0.99 auto threshold),
# one in 64 would not; small enough that a ViT-B-32 measures both graphs in under a minute on 2 cores.
DEFAULT_TILES = 128
CLASS_SET = "eurosat"
_RASTER_SUFFIXES = (".tif", ".tiff", ".jpg", ".jpeg", ".png")
# A file holding one band of a per-band folder: its name ends in the band (B04.tif, ..._B8A.tif, ..._VV.tif).
_BAND_FILE = re.compile(r"(^|_)(B\d\d|B8A|VV|VH)$", re.IGNORECASE)
_NOT_IMAGES = ("mask", "thumbnail", "reference_map")


def sample_rasters(data_dir: Optional[Path] = None) -> list[Path]:
    """Every raster of the sample data, in a fixed order: single image files, and folders of per-band files
    (a folder is one raster when it holds band files and no sub-folders)."""
    root = Path(data_dir) if data_dir is not None else sample_data_dir()
    if not root.is_dir():
        return []
    out: list[Path] = []
    for d in sorted(p for p in root.rglob("*") if p.is_dir()):
        files = [f for f in d.iterdir() if f.is_file() and f.suffix.lower() in _RASTER_SUFFIXES]
        if not files or any(c.is_dir() for c in d.iterdir()):
            continue
        if any(_BAND_FILE.search(f.stem) for f in files):
            out.append(d)  # per-band files: the folder is the raster
        else:
            out.extend(sorted(f for f in files if not any(w in f.stem.lower() for w in _NOT_IMAGES)))
    return out


def real_tiles(spec: EncoderSpec, limit: int = DEFAULT_TILES, data_dir: Optional[Path] = None) -> tuple[np.ndarray, list[str]]:
    """Up to ``limit`` preprocessed encoder inputs [N, C, S, S] from the sample rasters ``spec`` can read,
    spread over the rasters (a few tiles from each, in turn), and the rasters they came from."""
    from .errors import RSClipError
    from .pipeline import read_tile_batch
    from .raster import open_source
    from .tiling import make_grid, tile_size_px_for

    per_raster: list[tuple[Path, Callable, list, list[int]]] = []
    opened = []
    try:
        for path in sample_rasters(data_dir):
            try:
                src = open_source(path)
                opened.append(src)
                src.check_mapping(spec)
                grid = make_grid(src, tile_size_px_for(spec, src))
            except (RSClipError, ValueError, OSError):
                continue  # a raster this encoder cannot read (other sensor, other bands)
            per_raster.append((path, src.encoder_input(spec), grid.windows, list(range(len(grid.windows)))))
        if not per_raster:
            return np.zeros((0, len(spec.bands), spec.input_size, spec.input_size), np.float32), []
        each = max(1, math.ceil(limit / len(per_raster)))
        batches, used = [], []
        for path, read, windows, idx in per_raster:
            step = max(1, len(idx) // each)
            pick = idx[::step][:each]  # spread over the raster, not its first row
            kept, batch, _, _ = read_tile_batch(read, windows, pick, spec)
            if len(kept):
                batches.append(batch)
                used.append(str(path))
        tiles = np.concatenate(batches)[:limit] if batches else np.zeros((0, len(spec.bands), spec.input_size, spec.input_size), np.float32)
        return tiles, used
    finally:
        for s in opened:
            s.close()


def agreement(reference: np.ndarray, candidate: np.ndarray, class_embeddings: Optional[np.ndarray] = None) -> dict:
    """min/mean cosine of ``candidate`` rows to ``reference`` rows and, with class embeddings [K, D], the
    fraction of rows whose argmax class is the same (``label_agreement``; None without classes or rows)."""
    a = np.asarray(reference, np.float64)
    b = np.asarray(candidate, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"embedding shapes differ: {a.shape} vs {b.shape}")
    if a.shape[0] == 0:
        return {"min_cosine": None, "mean_cosine": None, "label_agreement": None, "tiles": 0}
    an = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    bn = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    cos = (an * bn).sum(1)
    labels = None
    if class_embeddings is not None and len(class_embeddings):
        c = np.asarray(class_embeddings, np.float64)
        labels = float(np.mean((an @ c.T).argmax(1) == (bn @ c.T).argmax(1)))
    return {
        "min_cosine": round(float(cos.min()), 6),
        "mean_cosine": round(float(cos.mean()), 6),
        "label_agreement": None if labels is None else round(labels, 4),
        "tiles": int(a.shape[0]),
    }


def run_graph(path: Path, inputs: np.ndarray, threads: Optional[int] = None, batch: int = 16) -> np.ndarray:
    """Raw outputs of an ONNX image graph on the CPU for ``inputs``, batch by batch."""
    from .bundle import EMBEDDING_OUTPUT, IMAGE_INPUT
    from .runtime import _create, default_threads

    sess = _create(Path(path), ["CPUExecutionProvider"], threads or default_threads())
    outs = [sess.run([EMBEDDING_OUTPUT], {IMAGE_INPUT: np.ascontiguousarray(inputs[i : i + batch])})[0]
            for i in range(0, len(inputs), batch)]
    return np.concatenate(outs).astype(np.float32) if outs else np.zeros((0, 0), np.float32)


def zero_shot_classes(bundle, names: Optional[Sequence[str]] = None) -> tuple[np.ndarray, list[str]]:
    """Class text embeddings [K, D] (the engine's prompt ensembling) for ``names`` (default: EuroSAT's), in
    English when the bundle has it, else its first language."""
    from .resources import classnames
    from .text import class_embeddings

    langs = bundle.manifest.text.languages
    lang = "en" if "en" in langs else langs[0]
    if names is None:
        try:
            names = classnames(CLASS_SET, lang)
        except ValueError:
            names = classnames(CLASS_SET, "en")
    return class_embeddings(bundle, list(names), lang=lang, provider="cpu"), list(names)
