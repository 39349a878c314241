"""The table each paper recipe produces, with the paper's published number beside ours.

``paper_table(method, metrics)`` lists the rows (task, dataset, metric, paper, ours, protocol note); ``ours`` is
read from a run's metrics.json (None before the run, or where this recipe does not compute that figure yet).
Paper values are those collected in ../shared/docs/research.md with their source; a figure research.md does not
hold is None ("not transcribed"), never guessed. ``rsclip-train run`` prints the table before training (ours
empty) and writes ``paper_table.{json,md}`` after it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

Getter = Callable[[dict], Optional[float]]


def _at(*path: str) -> Getter:
    def get(m: dict) -> Optional[float]:
        node: Any = m
        for p in path:
            if not isinstance(node, dict) or p not in node:
                return None
            node = node[p]
        return float(node) if isinstance(node, (int, float)) else None

    return get


def _patching_gain(dataset_prefix: str) -> Getter:
    """Held-out score at the teacher's alpha minus the zero-shot score (alpha 0), from the patching table."""

    def get(m: dict) -> Optional[float]:
        p = m.get("patching") or {}
        rows = {r.get("alpha"): r for r in p.get("table", [])}
        a, z = rows.get(p.get("teacher_alpha")), rows.get(0.0)
        if not a or not z:
            return None
        key = next((k for k in a if k.startswith(dataset_prefix)), None)
        return None if key is None or key not in z else float(a[key]) - float(z[key])

    return get


_A_REVIEW = "third-party review quoted in research.md, unverified (ViT-L-14)"
_A_ABSTRACT = "paper abstract (gain from patching)"
_NOT_COMPUTED = "not computed by this recipe yet"

# (task, dataset, metric, paper value, paper source, our getter, protocol note)
PAPER_A: list[tuple[str, str, str, Optional[float], str, Optional[Getter], str]] = [
    ("patching gain", "BigEarthNet-19", "macro mAP", 56.86, _A_ABSTRACT, _patching_gain("bigearthnet19"),
     "ours: held-out patches (every k-th), not the official test split"),
    ("patching gain", "BigEarthNet-5", "macro mAP", 39.76, _A_ABSTRACT, None, _NOT_COMPUTED),
    ("patching gain", "BigEarthNet-43", "macro mAP", 28.43, _A_ABSTRACT, None, _NOT_COMPUTED),
    ("patching gain", "SEN12MS", "macro mAP", 20.61, _A_ABSTRACT, None, _NOT_COMPUTED),
    ("patching gain", "EuroSAT", "accuracy", 5.98, _A_ABSTRACT, _patching_gain("eurosat"), "ours: a control set when configured"),
    ("zero-shot, patched RGB", "EuroSAT", "accuracy", 69.70, _A_REVIEW, None, _NOT_COMPUTED),
    ("zero-shot, aligned MS student", "EuroSAT-MS", "accuracy", 42.11, _A_REVIEW, _at("zero_shot", "eurosat-ms", "ms_student"),
     "ours: stage2.zero_shot entry named eurosat-ms"),
    ("zero-shot, aligned MS student", "BigEarthNet-19", "macro mAP", None, "not in research.md",
     _at("zero_shot", "bigearthnet19", "ms_student"), "ours: stage2.zero_shot entry named bigearthnet19"),
    ("retrieval RGB->MS", "BigEarthNet", "R@1", 24.86, _A_REVIEW, _at("retrieval", "rgb_to_ms", "R@1"),
     "ours: held-out patches, not the official test split"),
    ("retrieval MS->RGB", "BigEarthNet", "R@1", 6.14, _A_REVIEW, _at("retrieval", "ms_to_rgb", "R@1"),
     "ours: held-out patches, not the official test split"),
    *[(f"retrieval {d}", "BigEarthNet", f"R@{k}", None, "not in research.md", _at("retrieval", key, f"R@{k}"),
       "ours: held-out patches") for d, key in (("RGB->MS", "rgb_to_ms"), ("MS->RGB", "ms_to_rgb")) for k in (5, 10, 20, 50)],
]  # fmt: skip

_B_SOURCE = "Silva et al. 2024 (arXiv 2410.23370); not transcribed in research.md"
PAPER_B = [
    *[("retrieval (5 captions/image, mean recall)", ds, f"mean recall {lang}", None, _B_SOURCE,
       _at("retrieval_test", ds, lang, "mean_recall"), "ours: the dataset's test split, per language")
      for ds in ("RSICD", "RSITMD", "UCM-Captions") for lang in ("en", "mean")],
    *[("zero-shot", ds, f"top-1 {lang}", None, _B_SOURCE, None, _NOT_COMPUTED)
      for ds in ("EuroSAT", "RESISC45") for lang in ("en", "mean")],
]  # fmt: skip

TABLES = {"modality_gap": ("Paper A (Mind the Modality Gap)", PAPER_A), "rs_m_clip": ("Paper B (RS-M-CLIP)", PAPER_B)}


def paper_table(method: str, metrics: Optional[dict] = None) -> tuple[str, list[dict[str, Any]]]:
    """(title, rows) of ``method``'s paper table; ``ours`` filled from ``metrics`` where the recipe computes it."""
    if method not in TABLES:
        raise ValueError(f"no paper table for method {method!r}; known: {sorted(TABLES)}")
    title, spec = TABLES[method]
    rows = []
    for task, dataset, metric, paper, source, get, note in spec:
        ours = get(metrics) if (get is not None and metrics) else None
        rows.append({"task": task, "dataset": dataset, "metric": metric, "paper": paper,
                     "ours": None if ours is None else round(ours, 2), "paper_source": source, "note": note})  # fmt: skip
    return title, rows


def render(title: str, rows: list[dict[str, Any]]) -> str:
    from training.evaluate.tables import markdown_table

    shown = [{**r, "paper": "—" if r["paper"] is None else r["paper"], "ours": "" if r["ours"] is None else r["ours"]} for r in rows]
    return markdown_table(shown, ["task", "dataset", "metric", "paper", "ours", "paper_source", "note"], title)


def write_paper_table(method: str, metrics: dict, out_dir: Path) -> str:
    """out_dir/paper_table.{json,md}; returns the Markdown."""
    import json

    from rs_clip_plugin.engine.bundle import atomic_write_text

    title, rows = paper_table(method, metrics)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "paper_table.json", json.dumps({"title": title, "rows": rows}, indent=2) + "\n")
    md = render(title, rows)  # empty cells, not "None", where a figure is unknown or not computed
    atomic_write_text(out / "paper_table.md", md)
    return md
