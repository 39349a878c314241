"""`rsclip-train data CONFIG [--json] [--hash]`: what a recipe will train and evaluate on, before renting a GPU.

Per dataset and split: images, captions per language and duplicate images (the same file reached twice,
by resolved path; with ``--hash`` also the same bytes under another name), images that sit in several splits,
and the training length the recipe derives from them. The records are the ones the recipe builds
(``build_records``), so a duplicate here is a duplicate in training. Exit status 1 when duplicates are found.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="images, captions per language and duplicates a recipe will train on")
    p.add_argument("config", type=Path, help="recipe YAML, e.g. training/configs/rs_m_clip.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value by dotted key, as for `run`")  # fmt: skip
    p.add_argument("--hash", action="store_true", help="also find identical image files under different paths (reads every image)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def _sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _duplicates(keys: list[str]) -> int:
    return sum(n - 1 for n in Counter(keys).values() if n > 1)


def caption_report(records: list, languages: list[str], content: bool = False) -> dict[str, Any]:
    """{datasets: {name: {split: counts}}, total: {split: counts}, images_in_several_splits}; counts are
    {images, captions: {lang: n}, duplicate_images[, duplicate_content]}."""
    hashes = {r.key: _sha1(r.image) for r in records} if content else {}

    def counts(recs: list) -> dict[str, Any]:
        caps = {lang: sum(len(r.captions.get(lang, [])) for r in recs) for lang in languages}
        extra = sorted({lang for r in recs for lang in r.captions} - set(languages))
        out: dict[str, Any] = {"images": len(recs), "captions": caps, "duplicate_images": _duplicates([r.key for r in recs])}
        if extra:
            out["other_languages"] = extra  # captions the recipe's language list leaves out
        if content:
            out["duplicate_content"] = _duplicates([hashes[r.key] for r in recs])
        return out

    by: dict[str, dict[str, list]] = {}
    for r in records:
        by.setdefault(r.source or "?", {}).setdefault(r.split, []).append(r)
    splits: dict[str, list] = {}
    for r in records:
        splits.setdefault(r.split, []).append(r)
    keys_per_split = {s: {r.key for r in recs} for s, recs in splits.items()}
    several = Counter(k for ks in keys_per_split.values() for k in ks)
    return {
        "datasets": {name: {split: counts(recs) for split, recs in sorted(parts.items())} for name, parts in sorted(by.items())},
        "total": {split: counts(recs) for split, recs in sorted(splits.items())},
        "images_in_several_splits": sum(1 for n in several.values() if n > 1),
    }


def rs_m_clip_report(cfg: dict, content: bool = False) -> dict[str, Any]:
    from training.evaluate.multilingual import LANGUAGES
    from training.length import plan_steps
    from training.methods.rs_m_clip.recipe import build_records

    languages = list(cfg.get("languages") or LANGUAGES)
    train_cfg = cfg.get("train", {}) or {}
    train, val = build_records(cfg.get("data", {}) or {}, languages, int(train_cfg.get("seed", 0)))
    report = {"method": "rs_m_clip", "languages": languages, **caption_report(train + val, languages, content)}
    report["length"] = plan_steps(len(train), int(train_cfg.get("batch_size", 64)), epochs=train_cfg.get("epochs"),
                                  samples_seen=train_cfg.get("samples_seen"), steps=train_cfg.get("steps"),
                                  accum_steps=int(train_cfg.get("accum_steps", 1)))  # fmt: skip
    return report


def _text(report: dict[str, Any]) -> str:
    langs = report["languages"]
    head = ["dataset", "split", "images", "duplicates", *langs]
    rows = [head, ["---"] * len(head)]
    for name, parts in [*report["datasets"].items(), ("TOTAL", report["total"])]:
        for split, c in parts.items():
            dup = str(c["duplicate_images"]) + (f" (+{c['duplicate_content']} same bytes)" if c.get("duplicate_content") else "")
            rows.append([name, split, str(c["images"]), dup, *(str(c["captions"][lang]) for lang in langs)])
    lines = ["| " + " | ".join(r) + " |" for r in rows]
    lines.append(f"\nimages in several splits: {report['images_in_several_splits']}")
    if report.get("length"):
        from training.length import describe

        lines.append(describe(report["length"], "training length"))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from .run import apply_override, load_config

    cfg = load_config(args.config)
    for item in args.overrides:
        apply_override(cfg, item)
    method = cfg.get("method")
    if method != "rs_m_clip":
        raise ValueError(f"{args.config}: `data` reports caption recipes (method: rs_m_clip); {method!r} is not one yet")
    report = rs_m_clip_report(cfg, content=args.hash)
    print(json.dumps(report, indent=2, ensure_ascii=False) if args.json else _text(report))
    dups = sum(c["duplicate_images"] + c.get("duplicate_content", 0) for c in report["total"].values())
    return 1 if dups or report["images_in_several_splits"] else 0
