"""Class-name presets (EuroSAT, BigEarthNet-19 in ten languages) and where the plugin's resources are.

The preset files are ``resources/classnames/*.json`` (``keys`` plus one list per language). In a
checkout they sit at the repository's top level; in the installed plugin zip they sit inside the plugin.
"""

from __future__ import annotations

import json
from pathlib import Path

PLUGIN_DIR = Path(__file__).resolve().parent

PRESETS = {"EuroSAT": "eurosat.json", "BigEarthNet-19": "bigearthnet19.json"}

def resources_dir() -> Path:
    for candidate in (PLUGIN_DIR / "resources", PLUGIN_DIR.parent / "resources"):
        if (candidate / "icon.png").is_file():
            return candidate
    raise FileNotFoundError(f"RS-CLIP resources not found beside {PLUGIN_DIR}; reinstall the plugin")


def icon_path() -> str:
    return str(resources_dir() / "icon.png")


def preset_languages(preset: str) -> list[str]:
    data = _load(preset)
    return [k for k in data if k != "keys"]


def preset_classes(preset: str, lang: str = "en") -> list[str]:
    data = _load(preset)
    if lang not in data or lang == "keys":
        langs = ", ".join(k for k in data if k != "keys")
        raise ValueError(f"preset {preset!r} has no class names in {lang!r}; available languages: {langs}")
    return list(data[lang])


def _load(preset: str) -> dict:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    path = resources_dir() / "classnames" / PRESETS[preset]
    return json.loads(path.read_text(encoding="utf-8"))


def split_classes(text: str) -> list[str]:
    """'forest; water' or one class per line -> ['forest', 'water'] (the CLI's separators)."""
    parts = [p.strip() for chunk in text.splitlines() for p in chunk.split(";")]
    return [p for p in parts if p]
