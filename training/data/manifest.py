"""A generic dataset manifest: CSV or Parquet, one column per modality path, labels or captions, split.

Columns: any of ``rgb``, ``s2-l1c``, ``s2-l2a``, ``s1-grd`` (paths, relative to the manifest's folder or
absolute), ``label`` (one class name) or ``labels`` (names joined by ``|``), ``caption``, ``split``.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Optional

from rs_clip_plugin.engine.bands import MODALITIES

from .readers import DataError

TEXT_COLUMNS = ("label", "labels", "caption", "split")


def read_manifest_table(path: Path, split: Optional[str] = None, check_files: bool = True) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: manifest not found; give a .csv or .parquet file")
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    elif path.suffix.lower() == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow), or convert it to CSV") from exc
        rows = pq.read_table(path).to_pylist()
    else:
        raise DataError(f"{path}: unknown manifest type {path.suffix!r}; use .csv or .parquet")
    if not rows:
        raise DataError(f"{path}: the manifest has no rows")
    columns = list(rows[0])
    modal = [c for c in columns if c in MODALITIES]
    if not modal:
        raise DataError(f"{path}: no modality column; name path columns after modalities: {', '.join(MODALITIES)}")
    unknown = [c for c in columns if c not in MODALITIES and c not in TEXT_COLUMNS]
    if unknown:
        raise DataError(f"{path}: unknown columns {unknown}; allowed: {', '.join((*MODALITIES, *TEXT_COLUMNS))}")
    out = []
    for i, row in enumerate(rows, start=2):
        if split is not None and row.get("split") != split:
            continue
        rec: dict = {}
        for c in modal:
            if row.get(c):
                p = Path(row[c])
                # Normalised ('dir/../x' -> 'x'): one image, one path, whichever folder the manifest names it from.
                p = Path(os.path.normpath(p if p.is_absolute() else path.parent / p))
                if check_files and not p.exists():
                    raise DataError(f"{path}: row {i}: {c} file {p} does not exist")
                rec[c] = p
        if not rec:
            raise DataError(f"{path}: row {i} has no file in any modality column")
        if row.get("labels"):
            rec["labels"] = [s.strip() for s in str(row["labels"]).split("|") if s.strip()]
        if row.get("label"):
            rec["label"] = str(row["label"]).strip()
        if row.get("caption"):
            rec["caption"] = str(row["caption"])
        rec["split"] = row.get("split")
        out.append(rec)
    if not out:
        raise DataError(f"{path}: no rows with split {split!r}")
    return out
