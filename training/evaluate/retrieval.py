"""Cross-modal retrieval metrics: Recall@K for text->image and image->text, mean recall, per language.

The remote-sensing captioning literature (RSICD, RSITMD, UCM-Captions, RS-M-CLIP) reports R@1/5/10 in
percent for both directions and their mean ("mR"). Ties are counted against the query (pessimistic): a
model that scores everything alike gets no credit for the gallery's order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Union

import numpy as np

Positives = Union[Sequence[Iterable[int]], np.ndarray]
DEFAULT_KS = (1, 5, 10)


def _positive_sets(positives: Positives, n_queries: int, n_gallery: int) -> list[set[int]]:
    if isinstance(positives, np.ndarray) and positives.ndim == 1 and np.issubdtype(positives.dtype, np.integer):
        sets = [{int(p)} for p in positives]
    else:
        sets = [{int(p) for p in ([pos] if isinstance(pos, (int, np.integer)) else pos)} for pos in positives]
    if len(sets) != n_queries:
        raise ValueError(f"positives has {len(sets)} entries but the similarity matrix has {n_queries} queries; give one per query")
    for q, s in enumerate(sets):
        if not s:
            raise ValueError(f"query {q} has no positive gallery item; every query needs at least one")
        bad = [p for p in s if not 0 <= p < n_gallery]
        if bad:
            raise ValueError(f"query {q}: positive indices {bad} are outside the gallery (size {n_gallery})")
    return sets


def ranks_of_first_positive(similarity: np.ndarray, positives: Positives) -> np.ndarray:
    """0-based rank of each query's best-scoring positive; ties with negatives rank the positive last."""
    sim = np.asarray(similarity, dtype=np.float64)
    if sim.ndim != 2:
        raise ValueError(f"similarity must be a [queries, gallery] matrix, got shape {sim.shape}")
    sets = _positive_sets(positives, *sim.shape)
    ranks = np.empty(len(sets), dtype=np.int64)
    for q, pos in enumerate(sets):
        row = sim[q]
        mask = np.zeros(row.shape[0], dtype=bool)
        mask[list(pos)] = True
        best = row[mask].max()
        ranks[q] = int(np.count_nonzero(row[~mask] >= best))
    return ranks


def recall_at_k(similarity: np.ndarray, positives: Positives, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """{"R@k": percent of queries with a positive among their top k} for each k.

    ``similarity`` is [Q, G] (higher is closer); ``positives`` is an int array [Q] (one positive each) or a
    list of sets of gallery indices (several captions per image).
    """
    ranks = ranks_of_first_positive(similarity, positives)
    return {f"R@{k}": float(100.0 * np.mean(ranks < k)) if len(ranks) else 0.0 for k in ks}


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _as_sets(text_images: Sequence) -> list[set[int]]:
    return [{int(i)} if isinstance(i, (int, np.integer)) else {int(j) for j in i} for i in text_images]


def retrieval_metrics(
    image_emb: np.ndarray, text_emb: np.ndarray, text_images: Sequence, ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float]:
    """Both directions: keys "t2i_R@k", "i2t_R@k" and "mean_recall" (the mean of all of them, the papers' mR).

    ``text_images[j]`` is the index of the image caption j describes, or a set of them (a caption made from
    a class name describes every image of that class). Embeddings are L2-normalised here.
    """
    img, txt = _normalise(image_emb), _normalise(text_emb)
    sets = _as_sets(text_images)
    if txt.shape[0] != len(sets):
        raise ValueError(f"{txt.shape[0]} text embeddings but {len(sets)} caption->image entries")
    sim = txt @ img.T  # [T, I]
    t2i = recall_at_k(sim, sets, ks)
    # Image->text: only images that some caption describes are queries.
    captions_of: dict[int, set[int]] = {}
    for j, images in enumerate(sets):
        for i in images:
            captions_of.setdefault(i, set()).add(j)
    queries = sorted(captions_of)
    i2t = recall_at_k(sim.T[queries], [captions_of[i] for i in queries], ks)
    out = {f"t2i_{k}": v for k, v in t2i.items()}
    out.update({f"i2t_{k}": v for k, v in i2t.items()})
    out["mean_recall"] = float(np.mean(list(t2i.values()) + list(i2t.values())))
    return out


def retrieval_by_language(
    image_emb: np.ndarray,
    text_emb: np.ndarray,
    text_images: Sequence,
    text_lang: Sequence[str],
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, dict[str, float]]:
    """``retrieval_metrics`` per caption language, each with "R@k" (text->image, the headline) as well."""
    langs = np.asarray(list(text_lang))
    sets = _as_sets(text_images)
    text_emb = np.asarray(text_emb)
    out: dict[str, dict[str, float]] = {}
    for lang in dict.fromkeys(langs.tolist()):
        sel = langs == lang
        m = retrieval_metrics(image_emb, text_emb[sel], [s for s, keep in zip(sets, sel) if keep], ks)
        m.update({f"R@{k}": m[f"t2i_R@{k}"] for k in ks})
        out[str(lang)] = m
    return out
