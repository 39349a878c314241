"""The extra real samples used by the smoke recipe: SSL4EO-S12 (S1 + S2 L1C/L2A dates) and a Major-TOM L2A crop."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rs_clip_plugin.engine.bands import (
    S1_GRD_BANDS,
    S2_L1C_BANDS,
    S2_L2A_BANDS,
    parse_s2_product,
    s2_offset_dn,
)

from .composites import dn_to_reflectance, to_13_bands
from .readers import DataError, band_files, read_band_stack


@dataclass
class Scene:
    """One co-gridded raster: Sentinel-2 as 13-band reflectance, or Sentinel-1 as VV, VH dB."""

    name: str
    kind: str  # "s2-l1c" | "s2-l2a" | "s1-grd"
    data: np.ndarray
    date: str = ""


def read_s2_folder(folder: Path, level: str, name: str = "", date: str = "") -> Scene:
    bands = S2_L1C_BANDS if level == "s2-l1c" else S2_L2A_BANDS
    dn = read_band_stack(band_files(folder), bands, None, folder)
    product = parse_s2_product(str(folder)) or parse_s2_product(_product_id(folder))
    offset = s2_offset_dn(product.baseline) if product else 0.0
    return Scene(name or folder.name, level, to_13_bands(dn_to_reflectance(dn, offset), level), date)


def read_s1_folder(folder: Path, name: str = "", date: str = "") -> Scene:
    return Scene(name or folder.name, "s1-grd", read_band_stack(band_files(folder), S1_GRD_BANDS, None, folder), date)


def _product_id(folder: Path) -> str:
    meta = folder / "metadata.json"
    if meta.is_file():
        try:
            return str(json.loads(meta.read_text()).get("PRODUCT_ID", ""))
        except json.JSONDecodeError:
            return ""
    return ""


def _date(name: str) -> str:
    for token in name.split("_"):
        if len(token) >= 8 and token[:8].isdigit():
            return token[:8]
    return ""


def ssl4eo_location(root: Path) -> dict[str, list[Scene]]:
    """{'s2-l1c': [...], 's2-l2a': [...], 's1-grd': [...]} of every location under an SSL4EO-S12 folder (s1/, s2a/, s2c/)."""
    root = Path(root)
    parts = {"s2c": "s2-l1c", "s2a": "s2-l2a", "s1": "s1-grd"}
    missing = [p for p in parts if not (root / p).is_dir()]
    if missing:
        raise DataError(f"{root}: SSL4EO-S12 sub-folders {missing} are missing (expected s1/, s2a/, s2c/)")
    out: dict[str, list[Scene]] = {k: [] for k in parts.values()}
    for sub, kind in parts.items():
        for folder in sorted(p for p in (root / sub).glob("*/*") if p.is_dir()):
            date = _date(folder.name.split("_", 4)[-1] if kind == "s1-grd" else folder.name)
            name = f"{sub}/{folder.parent.name}/{folder.name}"
            scene = read_s1_folder(folder, name, date) if kind == "s1-grd" else read_s2_folder(folder, kind, name, date)
            out[kind].append(scene)
    return out


def s1_s2_date_pairs(s1: list[Scene], s2: list[Scene]) -> list[tuple[Scene, Scene]]:
    """Each S1 scene with the S2 scene of the nearest date (same location grid)."""
    from datetime import datetime

    def day(s: Scene) -> datetime:
        return datetime.strptime(s.date, "%Y%m%d")

    pairs = []
    for a in s1:
        if not s2:
            break
        b = min(s2, key=lambda s: abs((day(s) - day(a)).days))
        if a.data.shape[-2:] != b.data.shape[-2:]:
            raise DataError(f"{a.name} and {b.name}: grids differ {a.data.shape[-2:]} vs {b.data.shape[-2:]}; not co-registered")
        pairs.append((a, b))
    return pairs


def major_tom_scene(folder: Path) -> Scene:
    """A Major-TOM Core S2 L2A crop (band per file at native resolutions), resampled to 10 m."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: Major-TOM product folder not found")
    return read_s2_folder(folder, "s2-l2a", folder.name)
