"""Non-maximum suppression over scored boxes, so that search hits are distinct places.

Tiles of an overlapping grid (and tiles of several rasters of the same area) describe the same place
several times; greedy NMS keeps the best-scoring box and drops every lower-scoring box whose
intersection-over-union with a kept one exceeds ``iou_threshold``. Boxes are (xmin, ymin, xmax, ymax)
in one common CRS.
"""

from __future__ import annotations

from typing import Optional

import numpy as np


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box [4] with each of boxes [N, 4] (0 for disjoint or degenerate boxes)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    ix = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = ix * iy
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return iou


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.3, limit: Optional[int] = None) -> np.ndarray:
    """Indices of the kept boxes, best score first; stops after ``limit`` kept boxes.

    iou_threshold 0 keeps only boxes that do not overlap at all; 1 keeps everything (no suppression).
    """
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"NMS IoU threshold must be within [0, 1], got {iou_threshold}")
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if boxes.shape[0] != scores.shape[0]:
        raise ValueError(f"{boxes.shape[0]} boxes but {scores.shape[0]} scores")
    # Stable sort: equal scores keep their input order, so results are reproducible.
    order = np.argsort(-scores, kind="stable")
    kept: list[int] = []
    kept_boxes = np.empty((0, 4), np.float64)
    for i in order:
        if limit is not None and len(kept) >= limit:
            break
        if kept and (box_iou(boxes[i], kept_boxes) > iou_threshold).any():
            continue
        kept.append(int(i))
        kept_boxes = np.vstack([kept_boxes, boxes[i]])
    return np.asarray(kept, dtype=np.int64)
