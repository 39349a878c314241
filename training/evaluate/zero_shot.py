"""Zero-shot classification figures: top-1 accuracy (single-label) and macro mean average precision (multi-label)."""

from __future__ import annotations

import numpy as np


def normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def zero_shot_logits(image_emb: np.ndarray, class_emb: np.ndarray, logit_scale: float = 1.0) -> np.ndarray:
    """[N, C] cosine similarities (times ``logit_scale``) of images to class embeddings."""
    return logit_scale * normalise(image_emb) @ normalise(class_emb).T


def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent."""
    scores = np.asarray(scores)
    labels = np.asarray(labels).astype(np.int64)
    if scores.shape[0] != labels.shape[0]:
        raise ValueError(f"{scores.shape[0]} score rows but {labels.shape[0]} labels")
    if labels.size == 0:
        raise ValueError("no samples to score")
    return float(100.0 * np.mean(scores.argmax(axis=1) == labels))


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """AP of one class: mean over the positives of the precision at their rank (ties broken by order)."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    hits = np.asarray(positives, dtype=bool)[order]
    if not hits.any():
        raise ValueError("average precision of a class without positives is undefined")
    cum = np.cumsum(hits)
    ranks = np.arange(1, len(hits) + 1)
    return float(np.mean((cum / ranks)[hits]))


def macro_map(scores: np.ndarray, targets: np.ndarray) -> float:
    """Macro mAP in percent over the classes that have at least one positive."""
    scores = np.asarray(scores)
    targets = np.asarray(targets)
    if scores.shape != targets.shape:
        raise ValueError(f"scores {scores.shape} and multi-hot targets {targets.shape} differ in shape")
    aps = [average_precision(scores[:, c], targets[:, c]) for c in range(targets.shape[1]) if targets[:, c].any()]
    if not aps:
        raise ValueError("no class has a positive sample")
    return float(100.0 * np.mean(aps))
