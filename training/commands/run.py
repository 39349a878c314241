"""`rsclip-train run CONFIG.yaml --out DIR [--dry-run] [--set key=value ...]`: run a training recipe.

The YAML's ``method:`` names the package ``training.methods.<method>``, whose ``recipe.run_recipe(config,
out_dir, dry_run=...)`` does the work and returns the metrics (also written to DIR/metrics.json).
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
from pathlib import Path
from typing import Any


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a training recipe (YAML) end to end")
    p.add_argument("config", type=Path, help="recipe YAML, e.g. training/configs/smoke/modality_gap.yaml")
    p.add_argument("--out", type=Path, required=True, help="output directory (metrics.json, checkpoints, bundle)")
    p.add_argument("--dry-run", action="store_true", help="build everything and run one step on synthetic tensors")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value by dotted key (value parsed as YAML), e.g. stage1.steps=5")  # fmt: skip
    p.set_defaults(func=run)


def load_config(path: Path) -> dict:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: recipe not found; give a YAML file such as training/configs/smoke/modality_gap.yaml")
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: a recipe is a YAML mapping with a 'method:' key")
    return cfg


def apply_override(cfg: dict, item: str) -> None:
    """``a.b.0.c=value``: walk mappings by key and lists by index, set the leaf to the YAML-parsed value."""
    import yaml

    if "=" not in item:
        raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. stage1.steps=5")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    node: Any = cfg
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list) and re.fullmatch(r"\d+", part):
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            raise ValueError(f"--set {key}: {'.'.join(parts[: i + 1])} is not a mapping or list")
    leaf = parts[-1]
    value = yaml.safe_load(raw)
    if isinstance(node, list):
        node[int(leaf)] = value
    else:
        node[leaf] = value


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    for item in args.overrides:
        apply_override(cfg, item)
    method = cfg.get("method")
    if not method or not re.fullmatch(r"[a-z_][a-z0-9_]*", str(method)):
        raise ValueError(f"{args.config}: 'method:' must name a package in training/methods (e.g. modality_gap), got {method!r}")
    try:
        module = importlib.import_module(f"training.methods.{method}.recipe")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith(f"training.methods.{method}"):
            raise ValueError(f"{args.config}: unknown method {method!r}: no training/methods/{method}/recipe.py") from exc
        raise
    from training.evaluate.paper_tables import TABLES, paper_table, render, write_paper_table

    has_table = method in TABLES and cfg.get("paper_table", True)
    if has_table:  # what this recipe will produce, beside the paper's numbers (ours empty until the run)
        print(render(*paper_table(method)), flush=True)
    metrics = module.run_recipe(cfg, args.out, dry_run=args.dry_run)
    if has_table and metrics and not args.dry_run:
        print(write_paper_table(method, metrics, args.out), flush=True)
    summary = {k: v for k, v in metrics.items() if k in ("stage1", "alignment", "bundle", "seconds", "dry_run")}
    print(json.dumps(summary, indent=2, default=str))
    return 0
