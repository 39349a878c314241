"""Hostile .zip archives built in the test, fast: zip bombs whose declared sizes may lie."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path


def zero_deflate(n_mib: int) -> bytes:
    """A raw deflate stream inflating to ``n_mib`` MiB of zeros (~1 KB per MiB), built without compressing
    them all: after a full flush the compressor's output for the same input repeats byte for byte."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    mib = bytes(1 << 20)
    first = c.compress(mib) + c.flush(zlib.Z_FULL_FLUSH)
    again = c.compress(mib) + c.flush(zlib.Z_FULL_FLUSH)
    assert again == c.compress(mib) + c.flush(zlib.Z_FULL_FLUSH)
    return first + again * (n_mib - 1) + c.flush(zlib.Z_FINISH)


def deflate(data: bytes) -> bytes:
    c = zlib.compressobj(1, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def raw_zip(path: Path, entries: list[tuple[str, bytes, int]]) -> Path:
    """A zip of (name, raw deflate stream, DECLARED inflated size) entries, written by hand so the sizes may lie
    (CRCs are left 0: a hostile archive's would not help either)."""
    local, central = b"", b""
    for name, data, declared in entries:
        n = name.encode()
        header = struct.pack("<HHHHHIIIHH", 20, 0, 8, 0, 0, 0, len(data), declared, len(n), 0)
        central += (struct.pack("<IH", 0x02014B50, 20) + header
                    + struct.pack("<HHHII", 0, 0, 0, 0o100644 << 16, len(local)) + n)
        local += struct.pack("<I", 0x04034B50) + header + n + data
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(central), len(local), 0)
    path.write_bytes(local + central + end)
    return path


def tree_bytes(root: Path) -> int:
    """Bytes of all files under root (0 when it does not exist)."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.exists() else 0
