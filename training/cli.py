"""`rsclip-train`: training, evaluation, translation and export. Each subcommand is a module in ``commands/``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Optional

SUBCOMMANDS = ("run", "data", "eval", "export", "translate", "import-checkpoint")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rsclip-train", description="Train, evaluate and export RS-CLIP models.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        modname = f"training.commands.{name.replace('-', '_')}"
        try:
            module = importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            if exc.name != modname:
                raise
            continue
        module.add_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    from rs_clip_plugin.engine.bundle import BundleError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (BundleError, FileNotFoundError, ValueError) as exc:
        print(f"rsclip-train {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
