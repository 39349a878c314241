"""The project's shipped data files: class names in ten languages, prompt templates, icons.

One reader for the engine, the plugin and training, so a preset means the same thing everywhere.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

# RS-M-CLIP's ten languages (Paper B): English plus nine machine-translated ones.
LANGUAGES: tuple[str, ...] = ("en", "pt", "es", "fr", "de", "nl", "it", "zh", "ko", "ru")


def resources_dir() -> Path:
    """Inside the plugin folder once packaged (the zip carries them), else the checkout's resources/."""
    here = Path(__file__).resolve().parents[1]
    for candidate in (here / "resources", here.parent / "resources"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"RS-CLIP resources not found beside {here}; reinstall the plugin or the package")


def classnames_dir() -> Path:
    return resources_dir() / "classnames"


@cache
def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def load_classnames(dataset: str) -> dict[str, list[str]]:
    """{"keys": [dataset ids], "en": [...], "pt": [...], ...} for a class-name set such as 'eurosat'."""
    path = classnames_dir() / f"{dataset}.json"
    if not path.is_file():
        have = ", ".join(sorted(p.stem for p in classnames_dir().glob("*.json")))
        raise ValueError(f"no class-name set {dataset!r} in {classnames_dir()}; available: {have}")
    table = _read_json(path)
    n = len(table.get("keys", table.get("en", [])))
    bad = [lang for lang, names in table.items() if len(names) != n]
    if bad:
        raise ValueError(f"{path}: languages {bad} do not list {n} class names like 'keys' does")
    return table


def classnames(dataset: str, lang: str = "en") -> list[str]:
    table = load_classnames(dataset)
    if lang not in table or lang == "keys":
        langs = ", ".join(k for k in table if k != "keys")
        raise ValueError(f"class-name set {dataset!r} has no {lang!r} names; available: {langs}")
    return list(table[lang])


def prompt_templates() -> dict[str, list[str]]:
    """Default prompt templates per language (each contains '{}' for the class name)."""
    return _read_json(resources_dir() / "prompt_templates.json")
