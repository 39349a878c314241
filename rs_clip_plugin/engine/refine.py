"""PAMR: pixel-adaptive mask refinement of class logits (``rsclip classify --refine pamr``, dense mode).

Araslanov & Roth (2020, "Single-stage semantic segmentation from image labels"), used by NACLIP on the
upsampled logits of training-free dense CLIP. Per pixel, an affinity to each of its 8 neighbours at every
dilation is computed from the image: -|x_i - x_j| / (0.1 * local std of x_i), averaged over the image's
channels and soft-maxed over the neighbours; then the logits are, ``iterations`` times, replaced by the
affinity-weighted average of their neighbours' logits. Labels thus move to where the image changes (field
and river edges) instead of where the patch grid's bilinear ramps put them.

Applied per tile (the tile's encoder input, its normalised bands resized to the tile's pixels, gives the
affinities) before overlaps are averaged, so memory is a few planes of one tile: affinities
(8 x len(dilations)) + the logits and one padded copy, whatever the raster's size; a large tile is refined in
row strips (PAMR_MAX_BYTES, see pamr) with the same result. Replicate padding at the
tile's edges, as the reference implementation. NumPy only (no torch at run time).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

REFINE_METHODS = ("pamr",)
# NACLIP's settings: 10 iterations over neighbours at dilations 1 and 2.
PAMR_ITERATIONS = 10
PAMR_DILATIONS = (1, 2)
# Working memory of one strip of a tile (affinities, logits, their padded copy, temporaries): a large tile
# (an RGB tile may be ~4700 px) is refined in row strips, each with a halo the iterations cannot cross.
PAMR_MAX_BYTES = 128 << 20
_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def _shift(padded: np.ndarray, dy: int, dx: int, pad: int, h: int, w: int) -> np.ndarray:
    """The (…, h, w) view of an edge-padded array moved by (dy, dx): value at (y, x) is that of (y+dy, x+dx)."""
    return padded[..., pad + dy : pad + dy + h, pad + dx : pad + dx + w]


def pamr_affinity(image: np.ndarray, dilations: tuple[int, ...] = PAMR_DILATIONS) -> np.ndarray:
    """(8 * len(dilations), h, w) float32 neighbour weights (summing to 1 per pixel) from a (C, h, w) image."""
    image = np.asarray(image, np.float32)
    _, h, w = image.shape
    pad = max(dilations)
    xp = np.pad(image, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
    # Local standard deviation per channel over the 3x3 neighbourhood (centre included) at every dilation:
    # 9 * len(dilations) samples, unbiased, two passes (one pass in float32 loses flat areas to cancellation).
    offsets = [(dy * d, dx * d) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    mean = sum(_shift(xp, dy, dx, pad, h, w) for dy, dx in offsets) / np.float32(len(offsets))
    var = sum(np.square(_shift(xp, dy, dx, pad, h, w) - mean) for dy, dx in offsets) / np.float32(len(offsets) - 1)
    scale = np.float32(1e-8) + np.float32(0.1) * np.sqrt(var)
    aff = np.empty((len(_NEIGHBOURS) * len(dilations), h, w), np.float32)
    k = 0
    for d in dilations:
        for dy, dx in _NEIGHBOURS:
            aff[k] = (-np.abs(image - _shift(xp, dy * d, dx * d, pad, h, w)) / scale).mean(axis=0)
            k += 1
    aff -= aff.max(axis=0, keepdims=True)  # softmax over the neighbours
    np.exp(aff, out=aff)
    aff /= aff.sum(axis=0, keepdims=True)
    return aff


def pamr(image: np.ndarray, logits: np.ndarray, iterations: int = PAMR_ITERATIONS,
         dilations: tuple[int, ...] = PAMR_DILATIONS, affinity: Optional[np.ndarray] = None) -> np.ndarray:
    """Refined (K, h, w) logits: ``iterations`` rounds of the affinity-weighted mean of each pixel's
    neighbours (``image`` (C, h, w) on the same pixels gives the affinities, see pamr_affinity).

    A tile whose working memory would exceed PAMR_MAX_BYTES is refined in row strips: a pixel's result depends
    only on pixels within max(dilations) * (iterations + 1) rows (the affinity's neighbourhood, then one step
    per iteration), so each strip is computed with that many rows of halo and the halo dropped: the same
    values as the whole tile, in a bounded amount of memory."""
    k_, h, w = logits.shape
    if image.shape[1:] != (h, w):
        raise ValueError(f"PAMR needs the image on the logits' pixels: image {image.shape[1:]} vs logits {(h, w)}")
    pad = max(dilations)
    if affinity is None:
        # float32 planes per row: image and its padded copy and mean/var temporaries, the affinities, the
        # logits, their padded copy, the sum and one product.
        per_row = 4 * (w + 2 * pad) * (4 * image.shape[0] + len(_NEIGHBOURS) * len(dilations) + 4 * k_)
        halo = pad * (iterations + 1)
        rows = max(halo, PAMR_MAX_BYTES // per_row - 2 * halo)  # strips of fewer rows would be mostly halo
        if rows < h:
            out = np.empty((k_, h, w), np.float32)
            for r0 in range(0, h, rows):
                r1 = min(h, r0 + rows)
                a0, a1 = max(0, r0 - halo), min(h, r1 + halo)
                part = _pamr_whole(image[:, a0:a1], logits[:, a0:a1], iterations, dilations, None)
                out[:, r0:r1] = part[:, r0 - a0 : r1 - a0]
            return out
    return _pamr_whole(image, logits, iterations, dilations, affinity)


def _pamr_whole(image: np.ndarray, logits: np.ndarray, iterations: int, dilations: tuple[int, ...],
                affinity: Optional[np.ndarray]) -> np.ndarray:
    k_, h, w = logits.shape
    aff = pamr_affinity(image, dilations) if affinity is None else affinity
    pad = max(dilations)
    m = np.asarray(logits, np.float32)
    for _ in range(iterations):
        mp = np.pad(m, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
        out = np.zeros((k_, h, w), np.float32)
        k = 0
        for d in dilations:
            for dy, dx in _NEIGHBOURS:
                out += aff[k] * _shift(mp, dy * d, dx * d, pad, h, w)
                k += 1
        m = out
    return m


def refine_summary(method: Optional[str]) -> Optional[dict]:
    """What summary.json records of a refinement (None when none ran)."""
    if method is None:
        return None
    return {"method": method, "iterations": PAMR_ITERATIONS, "dilations": list(PAMR_DILATIONS)}
