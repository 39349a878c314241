"""Remote-sensing image-caption datasets in their published layouts, in any number of languages.

Layouts read here:

- ``karpathy``: RSICD, UCM-Captions, Sydney-Captions and RSITMD ship ``dataset_*.json`` as
  ``{"images": [{"filename", "split", "sentences": [{"raw": ...}, ...]}, ...]}``;
- ``nwpu``: NWPU-Captions' ``dataset_nwpu.json``: ``{class: [{"filename", "split", "raw", "raw_1".."raw_4"}]}``
  with images under ``<image_dir>/<class>/<filename>``;
- ``manifest``: a CSV/TSV (header row) or JSONL file with ``image``, ``caption``, ``lang`` and optional
  ``split`` columns, one caption per row: the generic form, and how translations are stored.

Everything becomes ``CaptionedImage`` records keyed by image path; one image can carry captions in many
languages (``merge`` joins the English file with its translations).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

FORMATS = ("karpathy", "nwpu", "manifest")
MANIFEST_COLUMNS = ("image", "caption", "lang")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


class CaptionDataError(ValueError):
    """A caption file that cannot be used; the message names the file, what is wrong and how to fix it."""


def image_key(path: os.PathLike | str) -> str:
    """The identity of an image file: its resolved path (symbolic links followed, ``..`` removed).

    Manifests store paths relative to their own folder (``../../RSICD/RSICD_images/x.jpg``); the caption files
    they translate name the same file from elsewhere (``data/RSICD/RSICD_images/x.jpg``). Every place that asks
    "is this the same image" (merging languages, counting duplicates) compares this key, not the Path as written.
    """
    return os.path.realpath(path)


@dataclass
class CaptionedImage:
    image: Path  # made absolute and normalised (no '..'); the file keeps its own name (links are not followed)
    captions: dict[str, list[str]] = field(default_factory=dict)  # lang -> captions
    split: str = "train"
    source: str = ""

    def __post_init__(self) -> None:
        self.image = Path(os.path.normpath(os.path.abspath(self.image)))

    @property
    def key(self) -> str:
        return image_key(self.image)

    def add(self, lang: str, caption: str) -> None:
        caption = " ".join(caption.split())
        if caption and caption not in self.captions.setdefault(lang, []):
            self.captions[lang].append(caption)

    @property
    def languages(self) -> list[str]:
        return [lang for lang, caps in self.captions.items() if caps]


def _read_json(path: Path) -> object:
    if not path.is_file():
        raise CaptionDataError(f"{path}: no such caption file; check the path")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CaptionDataError(f"{path}: not valid UTF-8 JSON ({exc}); download the file again") from exc


def load_karpathy(path: os.PathLike | str, image_dir: os.PathLike | str, lang: str = "en") -> list[CaptionedImage]:
    """RSICD / UCM-Captions / Sydney-Captions / RSITMD ``dataset_*.json``."""
    path, image_dir = Path(path), Path(image_dir)
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise CaptionDataError(
            f"{path}: expected {{'images': [...]}} (the dataset_*.json layout of RSICD/UCM/Sydney/RSITMD); "
            "for NWPU-Captions use format 'nwpu', for CSV/JSONL use 'manifest'"
        )
    out = []
    for n, item in enumerate(data["images"]):
        if not isinstance(item, dict) or "filename" not in item or not isinstance(item.get("sentences"), list):
            raise CaptionDataError(f"{path}: images[{n}] lacks 'filename' or a 'sentences' list")
        rec = CaptionedImage(image_dir / item["filename"], split=str(item.get("split", "train")), source=path.name)
        for s in item["sentences"]:
            raw = s.get("raw") if isinstance(s, dict) else None
            if raw is None and isinstance(s, dict) and "tokens" in s:
                raw = " ".join(s["tokens"])
            if raw:
                rec.add(lang, str(raw))
        out.append(rec)
    return out


def load_nwpu(path: os.PathLike | str, image_dir: os.PathLike | str, lang: str = "en") -> list[CaptionedImage]:
    """NWPU-Captions ``dataset_nwpu.json`` (class -> entries with raw, raw_1..raw_4)."""
    path, image_dir = Path(path), Path(image_dir)
    data = _read_json(path)
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise CaptionDataError(f"{path}: expected {{class_name: [entries...]}} (NWPU-Captions' dataset_nwpu.json layout)")
    out = []
    for cls, items in data.items():
        for n, item in enumerate(items):
            if not isinstance(item, dict) or "filename" not in item:
                raise CaptionDataError(f"{path}: {cls}[{n}] has no 'filename'")
            rec = CaptionedImage(image_dir / cls / item["filename"], split=str(item.get("split", "train")), source=path.name)
            for key in sorted(k for k in item if k == "raw" or k.startswith("raw_")):
                rec.add(lang, str(item[key]))
            out.append(rec)
    return out


def load_manifest(path: os.PathLike | str, image_dir: Optional[os.PathLike | str] = None) -> list[CaptionedImage]:
    """CSV/TSV/JSONL rows of image, caption, lang[, split]; relative image paths are under ``image_dir``
    (default: the manifest's folder)."""
    path = Path(path)
    root = Path(image_dir) if image_dir is not None else path.parent
    if not path.is_file():
        raise CaptionDataError(f"{path}: no such caption manifest; check the path")
    rows: list[dict] = []
    if path.suffix in (".jsonl", ".ndjson"):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise CaptionDataError(f"{path}:{n}: not a JSON object ({exc})") from exc
    else:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t" if path.suffix in (".tsv", ".tab") else ","))
    if rows:
        missing = [c for c in MANIFEST_COLUMNS if c not in rows[0]]
        if missing:
            raise CaptionDataError(f"{path}: columns {missing} are missing; a caption manifest needs {list(MANIFEST_COLUMNS)} (and optionally 'split')")
    by_image: dict[str, CaptionedImage] = {}
    keys: dict[str, str] = {}  # each image has ~50 rows (5 captions x 10 languages): resolve its path once
    for n, row in enumerate(rows, 1):
        if not row.get("image") or not row.get("lang"):
            raise CaptionDataError(f"{path}: row {n} has an empty 'image' or 'lang'")
        img = Path(row["image"])
        img = img if img.is_absolute() else root / img
        key = keys.get(row["image"]) or keys.setdefault(row["image"], image_key(img))
        rec = by_image.setdefault(key, CaptionedImage(img, split=str(row.get("split") or "train"), source=path.name))
        rec.add(str(row["lang"]), str(row.get("caption") or ""))
    return list(by_image.values())


def detect_format(path: os.PathLike | str) -> str:
    path = Path(path)
    if path.suffix in (".csv", ".tsv", ".tab", ".jsonl", ".ndjson"):
        return "manifest"
    data = _read_json(path)
    if isinstance(data, dict) and "images" in data:
        return "karpathy"
    if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
        return "nwpu"
    raise CaptionDataError(f"{path}: unrecognised caption layout; give format as one of {FORMATS}")


def load_captions(
    path: os.PathLike | str, image_dir: Optional[os.PathLike | str] = None, fmt: str = "auto", lang: str = "en"
) -> list[CaptionedImage]:
    """Any supported layout (``fmt='auto'`` detects it); ``lang`` is the language of single-language files."""
    path = Path(path)
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "manifest":
        return load_manifest(path, image_dir)
    root = Path(image_dir) if image_dir is not None else path.parent / "images"
    if fmt == "karpathy":
        return load_karpathy(path, root, lang)
    if fmt == "nwpu":
        return load_nwpu(path, root, lang)
    raise CaptionDataError(f"unknown caption format {fmt!r}; use one of {FORMATS} or 'auto'")


def merge(*record_lists: Iterable[CaptionedImage]) -> list[CaptionedImage]:
    """One record per image with the captions of every list (e.g. English + its nine translations)."""
    by_image: dict[str, CaptionedImage] = {}
    for records in record_lists:
        for r in records:
            tgt = by_image.setdefault(r.key, CaptionedImage(r.image, split=r.split, source=r.source))
            for lang, caps in r.captions.items():
                for c in caps:
                    tgt.add(lang, c)
    return list(by_image.values())


def validate(records: Sequence[CaptionedImage], *, check_images: bool = True, languages: Sequence[str] = ()) -> dict:
    """Raise CaptionDataError naming what is missing (images, captions, languages); else return counts."""
    if not records:
        raise CaptionDataError("no captioned images were loaded; check the caption file and image folder")
    problems = []
    no_caps = [r.image.name for r in records if not r.languages]
    if no_caps:
        problems.append(f"{len(no_caps)} images have no caption (e.g. {no_caps[:3]})")
    if check_images:
        missing = [str(r.image) for r in records if not r.image.is_file()]
        if missing:
            problems.append(f"{len(missing)} of {len(records)} image files are missing (e.g. {missing[:3]}); "
                            "point image_dir at the folder holding the dataset's images")
    for lang in languages:
        lacking = [r.image.name for r in records if not r.captions.get(lang)]
        if lacking:
            problems.append(f"{len(lacking)} images have no {lang!r} caption (e.g. {lacking[:3]}); "
                            f"run rsclip-train translate --langs {lang}")
    if problems:
        raise CaptionDataError("; ".join(problems))
    langs: dict[str, int] = {}
    for r in records:
        for lang, caps in r.captions.items():
            langs[lang] = langs.get(lang, 0) + len(caps)
    splits: dict[str, int] = {}
    for r in records:
        splits[r.split] = splits.get(r.split, 0) + 1
    return {"images": len(records), "captions": langs, "splits": splits}


def write_manifest_jsonl(path: os.PathLike | str, records: Sequence[CaptionedImage], langs: Optional[Sequence[str]] = None) -> Path:
    """The generic manifest (one caption per line) written atomically; image paths relative to its folder
    where possible."""
    from rs_clip_plugin.engine.bundle import atomic_write_text

    path = Path(path)
    lines = []
    for r in records:
        try:
            img = os.path.relpath(r.image, path.parent)
        except ValueError:  # another drive on Windows
            img = str(r.image)
        for lang, caps in r.captions.items():
            if langs is not None and lang not in langs:
                continue
            for c in caps:
                lines.append(json.dumps({"image": img, "caption": c, "lang": lang, "split": r.split}, ensure_ascii=False))
    atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))
    return path


def class_folder_captions(
    root: os.PathLike | str,
    classnames: dict[str, list[str]],
    templates: dict[str, list[str]],
    languages: Sequence[str],
    *,
    limit_per_class: Optional[int] = None,
) -> list[CaptionedImage]:
    """Captions built from class names for a ``<root>/<ClassKey>/<image>`` folder (EuroSAT, UC Merced).

    ``classnames`` is a resources/classnames/*.json table (``keys`` + one list per language); every image
    gets template x class name in each language, so the contrastive task has ten-language positives.
    """
    root = Path(root)
    keys = classnames["keys"]
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.name not in keys:
            raise CaptionDataError(f"{folder}: class {folder.name!r} is not in the class-name table (keys {keys[:5]}...)")
        k = keys.index(folder.name)
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for img in images[:limit_per_class]:
            rec = CaptionedImage(img, source=folder.name)
            for lang in languages:
                for t in templates[lang]:
                    rec.add(lang, t.format(classnames[lang][k]))
            out.append(rec)
    return out


def read_rgb(path: os.PathLike | str) -> np.ndarray:
    """An image as uint8 [H, W, 3]: JPEG/PNG through Pillow, GeoTIFF through rasterio (first three bands)."""
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        import warnings

        import rasterio
        from rasterio.errors import NotGeoreferencedWarning

        with warnings.catch_warnings():
            # Caption datasets (UC Merced, RSICD) are photos: no georeferencing is expected, none is used.
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = rasterio.open(path)
        with src:
            if src.count < 3:
                raise CaptionDataError(f"{path}: {src.count} band(s); caption datasets are RGB, 3 bands needed")
            arr = src.read([1, 2, 3])
        if arr.dtype != np.uint8:
            hi = float(np.percentile(arr, 99.5)) or 1.0
            arr = np.clip(arr.astype(np.float32) / hi * 255.0, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(arr.transpose(1, 2, 0))
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))
