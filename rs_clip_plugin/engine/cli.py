"""`rsclip`: the engine's command line. Each subcommand lives in its own module under ``commands/``.

A subcommand module exposes ``add_parser(subparsers)`` (registering itself with ``func=run``) and
``run(args) -> int``. Failures the user can fix raise ``UserError`` (or BundleError/FileNotFoundError/
ValueError) and come out as one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Optional

from .atomic import PUBLISHED
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


class _HeldLog(logging.Handler):
    """GDAL's messages (through rasterio's logger), held while a command runs: when the command fails with an
    error the user can fix, its one line says it all and they are dropped; otherwise they are shown."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def _held_native_stderr() -> Iterator[Optional[Path]]:
    """C libraries (GDAL, libtiff, two copies of them: rasterio's and osgeo's) print some failures straight to
    file descriptor 2 before Python sees an exception (e.g. "_tiffWriteProc: No space left on device.").
    While a command runs, descriptor 2 goes to a file and Python's own stderr to the terminal; the file is
    shown afterwards unless the command ended with its one-line error. Only when stderr is the process's
    descriptor 2 (not under a test's capture)."""
    try:
        sys.stderr.flush()
        real = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        real = False
    if not real:
        yield None
        return
    saved = os.dup(2)
    py_stderr = sys.stderr
    state = {"show": True}
    with tempfile.TemporaryFile() as hold, open(os.dup(saved), "w", encoding=py_stderr.encoding or "utf-8",
                                               errors="backslashreplace", buffering=1) as terminal:
        sys.stderr = terminal
        os.dup2(hold.fileno(), 2)
        try:
            yield state  # type: ignore[misc]
        finally:
            terminal.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sys.stderr = py_stderr
            if state["show"]:
                hold.seek(0)
                native = hold.read().decode("utf-8", "replace")
                if native:
                    sys.stderr.write(native)
                    sys.stderr.flush()


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    gdal_log, held = logging.getLogger("rasterio"), _HeldLog()
    propagate = gdal_log.propagate
    gdal_log.addHandler(held)
    gdal_log.propagate = False
    rc = 1
    with _held_native_stderr() as native:
        try:
            rc = _run(args)
        finally:
            gdal_log.removeHandler(held)
            gdal_log.propagate = propagate
            if native is not None:
                native["show"] = rc != 2
    if rc != 2:
        for record in held.records:
            gdal_log.handle(record)
    return rc


def _run(args: argparse.Namespace) -> int:
    published_before = len(PUBLISHED)
    try:
        return int(args.func(args) or 0)
    except RSClipError as exc:
        print(f"rsclip {args.command}: error: {exc.render(cli_names(exc.params))}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:  # file system errors, and engine checks not yet typed
        print(f"rsclip {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Outputs are published as one unit (atomic.py): either a run's folder is complete, or nothing of it is there.
        done = [str(p) for p in PUBLISHED[published_before:]]
        what = f"complete outputs were written to {', '.join(done)}" if done else "nothing was written"
        print(f"rsclip {args.command}: interrupted; {what}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
