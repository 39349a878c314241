"""Write-then-rename helpers: readers see the old content or the new one, never half of either."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Optional


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same directory, then rename: readers never see half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_dir(tmp: Path, final: Path, *, complete: Optional[Callable[[Path], bool]] = None) -> None:
    """Rename the finished directory ``tmp`` to ``final``, replacing whatever ``final`` held.

    The previous ``final`` is moved aside first and deleted only once the new one is in place; if the
    rename fails it is put back. ``complete(final)`` says whether another process has just put a finished
    result of the same build there (the rename then fails because ``final`` is not empty): ``tmp`` is
    discarded instead of raising. ``tmp`` must be on the same file system as ``final`` (a sibling).
    """
    tmp, final = Path(tmp), Path(final)
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException as exc:
        if isinstance(exc, OSError) and complete is not None and complete(final):
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished the same build first
        else:
            if old is not None and not final.exists():
                os.replace(old, final)
                old = None
            raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
