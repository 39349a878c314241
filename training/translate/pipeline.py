"""Translate a caption set's English captions into other languages: batched, cached, resumable.

Output per target language: ``<out>/captions.<lang>.jsonl`` (the generic manifest layout: image, caption,
lang, split), plus ``<out>/captions.all.jsonl`` with English and every translation, which
``training.data.captions.load_captions`` reads back as multilingual records. Files are written atomically
only when a language is complete; the cache (``<out>/cache/``) carries finished batches across runs.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from rs_clip_plugin.engine.bundle import atomic_write_text
from rs_clip_plugin.engine.progress import Progress
from training.data.captions import CaptionedImage, write_manifest_jsonl

from .backends import Translator
from .cache import TranslationCache, cache_key

PROGRESS_FILE = "progress.json"


def translate_texts(
    translator: Translator,
    texts: Sequence[str],
    lang: str,
    cache: TranslationCache,
    *,
    batch_size: int = 16,
    progress: Optional[Progress] = None,
) -> tuple[dict[str, str], dict[str, int]]:
    """{text: translation} for unique ``texts``; only uncached ones go to the model, batch by batch."""
    progress = progress or Progress()
    model_id = translator.model_id(lang)
    unique = list(dict.fromkeys(texts))
    keys = {t: cache_key(translator.backend, model_id, lang, t) for t in unique}
    todo = [t for t in unique if cache.get(keys[t]) is None]
    stats = {"unique": len(unique), "cached": len(unique) - len(todo), "translated": 0, "batches": 0}
    for start in range(0, len(todo), batch_size):
        progress.check()
        batch = todo[start : start + batch_size]
        outs = translator.translate(batch, lang)
        if len(outs) != len(batch):
            raise RuntimeError(f"the {translator.backend} backend returned {len(outs)} translations for {len(batch)} texts")
        cache.put_many((keys[t], o) for t, o in zip(batch, outs))
        stats["translated"] += len(batch)
        stats["batches"] += 1
        progress.update((start + len(batch)) / len(todo), f"{lang}: {start + len(batch)}/{len(todo)}")
    return {t: cache.get(keys[t]) or "" for t in unique}, stats


def translate_records(
    records: Sequence[CaptionedImage],
    translator: Translator,
    langs: Sequence[str],
    out_dir: os.PathLike | str,
    *,
    src: str = "en",
    batch_size: int = 16,
    progress: Optional[Progress] = None,
) -> dict:
    """Translate every ``src`` caption of ``records`` into ``langs``; write the caption files; return a report."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    progress = progress or Progress()
    cache = TranslationCache(out / "cache")
    texts = [c for r in records for c in r.captions.get(src, [])]
    if not texts:
        raise ValueError(f"no {src!r} captions to translate; check --captions (and --src-lang)")
    report: dict = {"backend": translator.backend, "src": src, "images": len(records), "captions": len(texts),
                    "languages": {}, "files": {}}
    t0 = time.monotonic()
    done = _read_progress(out)
    for i, lang in enumerate(langs):
        if lang == src:
            continue
        table, stats = translate_texts(translator, texts, lang, cache, batch_size=batch_size,
                                       progress=progress.sub(i / len(langs), (i + 1) / len(langs)))
        for r in records:
            r.captions[lang] = [table[c] for c in r.captions.get(src, [])]
        path = write_manifest_jsonl(out / f"captions.{lang}.jsonl", records, langs=[lang])
        report["languages"][lang] = stats
        report["files"][lang] = str(path)
        done[lang] = {"captions": len(texts), "model": translator.model_id(lang)}
        atomic_write_text(out / PROGRESS_FILE, json.dumps(done, indent=2) + "\n")
    report["files"]["all"] = str(write_manifest_jsonl(out / "captions.all.jsonl", records, langs=[src, *langs]))
    report["seconds"] = round(time.monotonic() - t0, 3)
    return report


def _read_progress(out: Path) -> dict:
    p = out / PROGRESS_FILE
    try:
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}
    except json.JSONDecodeError:
        return {}
