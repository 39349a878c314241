"""Class-name presets for the GUI (EuroSAT, BigEarthNet-19 in ten languages) and the plugin icon.

A thin layer over ``engine.resources``, which owns the resource files and their reading, so a preset
means the same class names in the dialog, the Processing algorithms, the CLI and training.
"""

from __future__ import annotations

from pathlib import Path

from .engine.resources import classnames, load_classnames, resources_dir

# GUI label -> the engine's class-name set (resources/classnames/<set>.json).
PRESETS = {"EuroSAT": "eurosat", "BigEarthNet-19": "bigearthnet19"}

__all__ = ["PRESETS", "icon_path", "preset_classes", "preset_languages", "resources_dir"]


def icon_path(name: str = "icon") -> str:
    """resources/<name>.png: "icon" (the plugin), "icon_classify" and "icon_search" (one per toolbar tool)."""
    icon: Path = resources_dir() / f"{name}.png"
    if not icon.is_file():
        raise FileNotFoundError(f"RS-CLIP icon {icon} is missing; reinstall the plugin")
    return str(icon)


def _dataset(preset: str) -> str:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[preset]


def preset_languages(preset: str) -> list[str]:
    return [k for k in load_classnames(_dataset(preset)) if k != "keys"]


def preset_classes(preset: str, lang: str = "en") -> list[str]:
    return classnames(_dataset(preset), lang)


