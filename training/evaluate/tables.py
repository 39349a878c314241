"""Result tables written twice: JSON for machines, Markdown for people (both atomically)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from rs_clip_plugin.engine.bundle import atomic_write_text


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


def markdown_table(rows: Sequence[dict], columns: Optional[Sequence[str]] = None, title: str = "") -> str:
    if not rows:
        raise ValueError("no rows for the table")
    cols = list(columns or dict.fromkeys(k for r in rows for k in r))
    lines = [f"## {title}", ""] if title else []
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "|".join("---" for _ in cols) + "|")
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def write_table(rows: Sequence[dict], stem: Path, title: str = "", columns: Optional[Sequence[str]] = None) -> tuple[Path, Path]:
    """``stem``.json and ``stem``.md; returns both paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    js, md = stem.with_suffix(".json"), stem.with_suffix(".md")
    atomic_write_text(js, json.dumps({"title": title, "rows": list(rows)}, indent=2, default=str) + "\n")
    atomic_write_text(md, markdown_table(rows, columns, title))
    return js, md
