"""`rsclip`: the engine's command line. Each subcommand lives in its own module under ``commands/``.

A subcommand module exposes ``add_parser(subparsers)`` (registering itself with ``func=run``) and
``run(args) -> int``. Failures the user can fix raise ``UserError`` (or BundleError/FileNotFoundError/
ValueError) and come out as one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from typing import Optional

from .errors import InputError, RSClipError, cli_names

SUBCOMMANDS = ("info", "index", "classify", "search", "demo", "bench", "archive")


class UserError(InputError):
    """A bad command line: the message tells the user what is wrong and how to fix it."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rsclip", description="Zero-shot labelling and search of Sentinel-1/2 rasters.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"rs_clip_plugin.engine.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"rs_clip_plugin.engine.commands.{name}":
                raise
            continue
        module.add_parser(sub)
    return parser


def emit(args: argparse.Namespace, result: dict, text: str) -> None:
    """Print the result as JSON with --json, else as the human-readable text."""
    if getattr(args, "json", False):
        print(json.dumps(result, indent=2, ensure_ascii=False, default=str))
    else:
        print(text)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except RSClipError as exc:
        print(f"rsclip {args.command}: error: {exc.render(cli_names(exc.params))}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:  # file system errors, and engine checks not yet typed
        print(f"rsclip {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rsclip {args.command}: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
