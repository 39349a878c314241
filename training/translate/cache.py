"""On-disk translation cache: append-only JSONL keyed by (backend, model, language, text).

Each finished batch is appended and fsync'ed, so an interrupted run loses at most the batch in flight; a
torn last line (killed mid-write) is skipped on reading. Re-running the same job translates only what
is not cached yet: that is the resume.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Optional

CACHE_FILE = "translations.jsonl"


def cache_key(backend: str, model_id: str, lang: str, text: str) -> str:
    return hashlib.sha256(json.dumps([backend, model_id, lang, text], ensure_ascii=False).encode("utf-8")).hexdigest()


class TranslationCache:
    def __init__(self, directory: os.PathLike | str) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / CACHE_FILE
        self._table: dict[str, str] = {}
        self.torn_lines = 0
        if self.path.is_file():
            self._load()

    def _load(self) -> None:
        raw = self.path.read_bytes()
        for line in raw.split(b"\n"):
            if not line.strip():
                continue
            try:
                row = json.loads(line.decode("utf-8"))
                self._table[row["k"]] = row["t"]
            except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
                self.torn_lines += 1
        if raw and not raw.endswith(b"\n"):
            # Terminate a torn tail so the next append starts on its own line.
            with open(self.path, "ab") as f:
                f.write(b"\n")

    def __len__(self) -> int:
        return len(self._table)

    def get(self, key: str) -> Optional[str]:
        return self._table.get(key)

    def put_many(self, items: Iterable[tuple[str, str]]) -> None:
        """Append (key, translation) pairs durably (one write + fsync per batch)."""
        items = list(items)
        if not items:
            return
        data = "".join(json.dumps({"k": k, "t": t}, ensure_ascii=False) + "\n" for k, t in items).encode("utf-8")
        with open(self.path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self._table.update(items)
