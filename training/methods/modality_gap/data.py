"""The recipe's data: config sections -> in-memory tensors (small sets) or disk-backed datasets (BigEarthNet).

Every stage works on *physical* arrays (RGB in [0, 1], S2 reflectance in the 13-band layout, S1 dB); encoder
inputs are made from them with ``training.data.composites`` at batch time, so export and training agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, TypeVar

import numpy as np

from training.data.composites import rgb_composite
from training.data.eurosat import EUROSAT_CLASSES, holdout_split, read_ms, read_rgb, scan_class_folders
from training.data.readers import DataError, grid_windows, split_windows
from training.data.samples import Scene, major_tom_scene, s1_s2_date_pairs, ssl4eo_location

T = TypeVar("T")


def split_every(items: Sequence[T], every: int) -> tuple[list[T], list[T]]:
    """(train, held out): every ``every``-th item held out (none when ``every`` is 0), by position, so the
    split is linear in the number of items and never depends on how items compare."""
    if not every:
        return list(items), []
    held = [it for i, it in enumerate(items) if i % every == every - 1]
    train = [it for i, it in enumerate(items) if i % every != every - 1]
    return train, held


def classnames(spec, lang: str = "en") -> tuple[list[str], list[str]]:
    """(folder keys, prompt names) from a resources/classnames/<name>.json name, or a {key: prompt} mapping."""
    if isinstance(spec, dict):
        return list(spec), list(spec.values())
    if isinstance(spec, (list, tuple)):
        return list(spec), list(spec)
    from rs_clip_plugin.engine.resources import load_classnames

    table = load_classnames(str(spec))
    if lang not in table:
        raise ValueError(f"class-name set {spec!r} has no {lang!r} names")
    return list(table.get("keys", table[lang])), list(table[lang])


@dataclass
class LabelledImages:
    """RGB images in [0, 1] [N, 3, H, W] with class indices [N] (or multi-hot [N, C])."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    classnames: list[str]


def _resize_np(x: np.ndarray, size: int) -> np.ndarray:
    import torch

    from training.data.transforms import resize_batch

    return resize_batch(torch.from_numpy(np.ascontiguousarray(x)), size).numpy()


def load_rgb_set(spec: dict, data_dir: Path, size: int) -> tuple[LabelledImages, Optional[LabelledImages]]:
    """A single-label RGB set (train, held-out): kinds eurosat_rgb, ucmerced (class folders), eurosat_ms_rgb."""
    kind = spec["kind"]
    root = data_dir / spec["root"]
    keys, names = classnames(spec.get("classnames", "eurosat"))
    if kind in ("eurosat_rgb", "ucmerced", "class_folders"):
        items, _ = scan_class_folders(root, (".jpg", ".jpeg", ".png", ".tif"), keys, "RGB images")
        read = read_rgb
    elif kind == "bigearthnet":
        return _bigearthnet_rgb(spec, root, size)
    elif kind == "bigearthnet_v2":
        return _bigearthnet_v2_rgb(spec, root, size)
    elif kind == "eurosat_ms_rgb":
        items, _ = scan_class_folders(root, (".tif",), keys, "EuroSAT-MS GeoTIFFs")

        def read(p: Path) -> np.ndarray:
            return rgb_composite(read_ms(p), "s2-l1c")
    else:
        raise ValueError(f"unknown RGB dataset kind {kind!r}: use eurosat_rgb, ucmerced, eurosat_ms_rgb, bigearthnet(_v2)")
    per_class = int(spec.get("holdout_per_class", 0))
    train, held = holdout_split(items, per_class) if per_class else (items, [])

    def build(part, suffix) -> LabelledImages:
        imgs = np.stack([_resize_np(read(it.path)[None], size)[0] for it in part]).astype(np.float32)
        return LabelledImages(spec.get("name", kind) + suffix, imgs, np.array([it.label for it in part]), names)

    return build(train, ""), (build(held, "-heldout") if held else None)


def _bigearthnet_rgb(spec: dict, root: Path, size: int) -> tuple[LabelledImages, Optional[LabelledImages]]:
    """BigEarthNet-19 RGB composites (L2A scaling) with multi-hot labels; every k-th patch held out."""
    from training.data.bigearthnet import LABELS_19, multi_hot, open_v1

    ben = open_v1(root, spec, require_labels=True)
    limit = spec.get("max_patches")
    patches = ben.s2[: int(limit)] if limit else ben.s2
    every = int(spec.get("holdout_every", 0))
    _, names = classnames(spec.get("classnames", "bigearthnet19"))
    if len(names) != len(LABELS_19):
        raise ValueError(f"BigEarthNet-19 needs 19 class names, got {len(names)}")

    def build(part, suffix) -> LabelledImages:
        imgs = np.stack([_resize_np(rgb_composite(ben.read_s2(p), "s2-l2a")[None], size)[0] for p in part]).astype(np.float32)
        labels = np.stack([multi_hot(p.labels_19 or []) for p in part])
        return LabelledImages(spec.get("name", "bigearthnet19") + suffix, imgs, labels, names)

    train, held = split_every(patches, every)
    return build(train, ""), (build(held, "-heldout") if held else None)


def load_ms_set(spec: dict, data_dir: Path, size: int) -> tuple[LabelledImages, str]:
    """(a labelled Sentinel-2 set as 13-band reflectance [N, 13, size, size], its product level) for zero-shot
    evaluation of the MS student: ``eurosat_ms`` (class folders, L1C, single-label) or ``bigearthnet`` (v1, L2A,
    19-class multi-hot; ``split_csv``/``exclude_csvs`` select the official test split without cloud/snow)."""
    kind, root = spec["kind"], data_dir / spec["root"]
    if kind == "eurosat_ms":
        keys, names = classnames(spec.get("classnames", "eurosat"))
        items, _ = scan_class_folders(root, (".tif",), keys, "EuroSAT-MS GeoTIFFs")
        imgs = np.stack([_resize_np(read_ms(it.path)[None], size)[0] for it in items]).astype(np.float32)
        return LabelledImages(spec.get("name", kind), imgs, np.array([it.label for it in items]), names), "s2-l1c"
    if kind == "bigearthnet":
        from training.data.bigearthnet import LABELS_19, multi_hot, open_v1

        ben = open_v1(root, spec, require_labels=True)
        limit = spec.get("max_patches")
        patches = ben.s2[: int(limit)] if limit else ben.s2
        _, names = classnames(spec.get("classnames", "bigearthnet19"))
        if len(names) != len(LABELS_19):
            raise ValueError(f"BigEarthNet-19 needs 19 class names, got {len(names)}")
        imgs = np.stack([_resize_np(ben.read_s2(p)[None], size)[0] for p in patches]).astype(np.float32)
        labels = np.stack([multi_hot(p.labels_19 or []) for p in patches])
        return LabelledImages(spec.get("name", "bigearthnet19"), imgs, labels, names), "s2-l2a"
    raise ValueError(f"unknown zero-shot MS dataset kind {kind!r}: use eurosat_ms or bigearthnet")


@dataclass
class S2Crops:
    """Sentinel-2 crops: 13-band reflectance, product level per crop, label (-1: none), source name."""

    data: list[np.ndarray] = field(default_factory=list)
    levels: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def add(self, arr: np.ndarray, level: str, label: int, source: str) -> None:
        self.data.append(arr.astype(np.float32))
        self.levels.append(level)
        self.labels.append(label)
        self.sources.append(source)

    def __len__(self) -> int:
        return len(self.data)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(reflectance [N, 13, S, S], RGB composites [N, 3, S, S], labels [N])."""
        ms = np.stack(self.data)
        rgb = np.stack([rgb_composite(a, lv) for a, lv in zip(self.data, self.levels)])
        return ms, rgb, np.array(self.labels, dtype=np.int64)


@dataclass
class S1Crops:
    """Sentinel-1 crops (dB) with the co-registered Sentinel-2 crop (13-band reflectance) and its level."""

    s1: list[np.ndarray] = field(default_factory=list)
    s2: list[np.ndarray] = field(default_factory=list)
    levels: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.s1)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(S1 dB [N, 2, S, S], paired S2 reflectance [N, 13, S, S], composites of it [N, 3, S, S])."""
        s2 = np.stack(self.s2)
        rgb = np.stack([rgb_composite(a, lv) for a, lv in zip(self.s2, self.levels)])
        return np.stack(self.s1), s2, rgb


def _crop(a: np.ndarray, y: int, x: int, size: int) -> np.ndarray:
    return a[..., y : y + size, x : x + size]


def _scene_windows(scene_hw: tuple[int, int], src: dict, crop: int) -> tuple[list, list]:
    h, w = scene_hw
    wins = grid_windows(h, w, crop, int(src.get("stride", crop)))
    train, held = split_windows(wins, h, crop, float(src.get("holdout", 0.25)))
    limit = src.get("max_crops")
    if limit:
        step = max(1, len(train) // int(limit))
        train = train[::step][: int(limit)]
    return train, held


def load_s2_crops(sources: list[dict], data_dir: Path, crop: int) -> tuple[S2Crops, S2Crops]:
    """(train, held-out) Sentinel-2 crops from the configured sources."""
    train, held = S2Crops(), S2Crops()
    for src in sources:
        kind, root = src["kind"], data_dir / src["root"]
        if kind == "eurosat_ms":
            keys, _ = classnames(src.get("classnames", "eurosat"))
            items, _ = scan_class_folders(root, (".tif",), keys or list(EUROSAT_CLASSES), "EuroSAT-MS GeoTIFFs")
            every = int(src.get("holdout_every", 4))
            for i, it in enumerate(items):
                arr = _resize_np(read_ms(it.path)[None], crop)[0]
                (held if every and i % every == every - 1 else train).add(arr, "s2-l1c", it.label, kind)
            continue
        if kind == "major_tom":
            folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
            if not folders:
                raise DataError(f"{root}: no Major-TOM product folders")
            scenes = [major_tom_scene(f) for f in folders]
        elif kind == "ssl4eo":
            loc = ssl4eo_location(root)
            scenes = [s for lv in src.get("levels", ["s2-l1c", "s2-l2a"]) for s in loc[lv]]
        elif kind == "bigearthnet_s2":
            from training.data.bigearthnet import open_v1

            ben = open_v1(root, src)
            scenes = [Scene(p.name, "s2-l2a", ben.read_s2(p)) for p in ben.s2]
        elif kind == "bigearthnet_v2":
            scenes = _v2_scenes(src, root)
        else:
            raise ValueError(f"unknown Sentinel-2 source kind {kind!r}: use eurosat_ms, major_tom, ssl4eo, bigearthnet_s2, "
                             "bigearthnet_v2")  # fmt: skip
        for sc in scenes:
            tr, he = _scene_windows(sc.data.shape[-2:], src, crop)
            for part, wins in ((train, tr), (held, he)):
                for y, x in wins:
                    part.add(_crop(sc.data, y, x, crop), sc.kind, -1, f"{kind}:{sc.name}")
    if not len(train):
        raise DataError("no Sentinel-2 training crops: check stage2.s2.sources")
    return train, held


def load_s1_crops(sources: list[dict], data_dir: Path, crop: int) -> tuple[S1Crops, S1Crops]:
    """(train, held-out) co-registered S1/S2 crops: SSL4EO-S12 dates, BigEarthNet S1/S2 pairs."""
    train, held = S1Crops(), S1Crops()
    for src in sources:
        kind, root = src["kind"], data_dir / src["root"]
        if kind == "ssl4eo":
            loc = ssl4eo_location(root)
            pairs = [(a.data, b.data, b.kind) for a, b in s1_s2_date_pairs(loc["s1-grd"], loc[src.get("s2_level", "s2-l2a")])]
        elif kind == "bigearthnet":
            from training.data.bigearthnet import open_v1

            ben = open_v1(root, src)
            pairs = [(ben.read_s1(a), ben.read_s2(b), "s2-l2a") for a, b in ben.pairs()]
        elif kind == "bigearthnet_v2":
            pairs = _v2_pairs(src, root)
        else:
            raise ValueError(f"unknown Sentinel-1 source kind {kind!r}: use ssl4eo, bigearthnet or bigearthnet_v2")
        for s1, s2, level in pairs:
            tr, he = _scene_windows(s1.shape[-2:], src, crop)
            for part, wins in ((train, tr), (held, he)):
                for y, x in wins:
                    part.s1.append(_crop(s1, y, x, crop).astype(np.float32))
                    part.s2.append(_crop(s2, y, x, crop).astype(np.float32))
                    part.levels.append(level)
    if not len(train):
        raise DataError("no co-registered Sentinel-1/2 training crops: check stage2.s1.sources")
    return train, held


# -- BigEarthNet v2 (LMDB + parquet) -----------------------------------------------------------------------
def _ben_v2(spec: dict, root: Path, splits: list[str], require_s1: bool = False):
    from training.data.bigearthnet_v2 import BigEarthNetV2

    return BigEarthNetV2(root, splits=splits, require_s1=require_s1, offset_dn=float(spec.get("offset_dn", 0.0)))


def _limited(patches: list, limit) -> list:
    return patches[: int(limit)] if limit else patches


def _bigearthnet_v2_rgb(spec: dict, root: Path, size: int) -> tuple[LabelledImages, Optional[LabelledImages]]:
    """BigEarthNet-19 (v2) RGB composites with multi-hot labels; held out: the metadata's validation split."""
    _, names = classnames(spec.get("classnames", "bigearthnet19"))
    train_ben = _ben_v2(spec, root, list(spec.get("splits", ["train"])))
    held_splits = list(spec.get("holdout_splits", ["validation"]))
    held_ben = _ben_v2(spec, root, held_splits) if held_splits else None

    def build(ben, patches, suffix) -> LabelledImages:
        imgs = np.stack([_resize_np(rgb_composite(ben.read_s2(p), "s2-l2a")[None], size)[0] for p in patches])
        labels = np.stack([ben.target(p) for p in patches])
        return LabelledImages(spec.get("name", "bigearthnet19") + suffix, imgs.astype(np.float32), labels, names)

    train = build(train_ben, _limited(train_ben.patches, spec.get("max_patches")), "")
    held = build(held_ben, _limited(held_ben.patches, spec.get("max_heldout")), "-heldout") if held_ben else None
    return train, held


def _v2_scenes(src: dict, root: Path) -> list[Scene]:
    ben = _ben_v2(src, root, list(src.get("splits", ["train"])))
    return [Scene(p.patch_id, "s2-l2a", ben.read_s2(p)) for p in _limited(ben.patches, src.get("max_patches"))]


def _v2_pairs(src: dict, root: Path) -> list[tuple[np.ndarray, np.ndarray, str]]:
    ben = _ben_v2(src, root, list(src.get("splits", ["train"])), require_s1=True)
    return [(ben.read_s1(p), ben.read_s2(p), "s2-l2a") for p in _limited(ben.patches, src.get("max_patches"))]


# -- streaming (data.streaming: true): lazy datasets read in DataLoader workers ------------------------------
class _V1Read:
    """Picklable per-patch reads of BigEarthNet v1 (what a worker needs: the index, not the arrays)."""

    def __init__(self, ben, multi_label: bool):
        self.ben, self.multi_label = ben, multi_label

    def rgb(self, p):
        from training.data.bigearthnet import multi_hot

        return rgb_composite(self.ben.read_s2(p), "s2-l2a"), multi_hot(p.labels_19 or [])

    def _label(self, p):
        from training.data.bigearthnet import multi_hot

        if not self.multi_label:
            return -1
        return multi_hot(p.labels_19) if p.labels_43 is not None else np.full(19, -1.0, np.float32)

    def s2(self, p):
        return self.ben.read_s2(p), "s2-l2a", self._label(p)

    def s1(self, pair):
        a, b = pair
        return self.ben.read_s1(a), self.ben.read_s2(b), "s2-l2a", self._label(b)


class _V2Read:
    def __init__(self, ben, multi_label: bool):
        self.ben, self.multi_label = ben, multi_label

    def rgb(self, p):
        return rgb_composite(self.ben.read_s2(p), "s2-l2a"), self.ben.target(p)

    def s2(self, p):
        return self.ben.read_s2(p), "s2-l2a", self.ben.target(p) if self.multi_label else -1

    def s1(self, p):
        return self.ben.read_s1(p), self.ben.read_s2(p), "s2-l2a", self.ben.target(p) if self.multi_label else -1


class _ClassFolderRead:
    """Picklable reads of class-folder sets (EuroSAT RGB / MS, UC Merced): single-label."""

    def rgb(self, it):
        return read_rgb(it.path), it.label

    def ms_rgb(self, it):
        return rgb_composite(read_ms(it.path), "s2-l1c"), it.label

    def s2(self, it):
        return read_ms(it.path), "s2-l1c", it.label


# Held-out samples are kept in memory as encoder inputs (~4 MB each for a 13-band student at 224 px): cap them.
HELD_STAGE2 = 256

STREAMING_RGB = ("bigearthnet", "bigearthnet_v2", "eurosat_rgb", "ucmerced", "class_folders", "eurosat_ms_rgb")
STREAMING_S2 = ("bigearthnet_s2", "bigearthnet_v2", "eurosat_ms")
STREAMING_S1 = ("bigearthnet", "bigearthnet_v2")


def _not_streamable(kind: str, allowed: tuple[str, ...], where: str) -> ValueError:
    return ValueError(f"{where} kind {kind!r} cannot stream (streaming kinds: {list(allowed)}); set data.streaming: false "
                      "to load it in memory")  # fmt: skip


def stream_rgb_set(spec: dict, data_dir: Path, norm) -> tuple[Any, Optional[LabelledImages], list[str]]:
    """Stage 1, streaming: (lazy training dataset, in-memory held-out set or None, prompt class names)."""
    from training.data.loaders import LazyDataset, RgbClassificationReader

    kind, root = spec["kind"], data_dir / spec["root"]
    _, names = classnames(spec.get("classnames", "bigearthnet19"))
    if kind == "bigearthnet_v2":
        ben = _ben_v2(spec, root, list(spec.get("splits", ["train"])))
        items = _limited(ben.patches, spec.get("max_patches"))
        read = _V2Read(ben, True).rgb
        held = None
        if spec.get("holdout_splits", ["validation"]):
            hb = _ben_v2(spec, root, list(spec.get("holdout_splits", ["validation"])))
            hp = _limited(hb.patches, spec.get("max_heldout", 1000))
            imgs = np.stack([_resize_np(rgb_composite(hb.read_s2(p), "s2-l2a")[None], norm.size)[0] for p in hp])
            held = LabelledImages(spec.get("name", kind) + "-heldout", imgs.astype(np.float32), np.stack([hb.target(p) for p in hp]), names)
    elif kind == "bigearthnet":
        from training.data.bigearthnet import open_v1

        ben1 = open_v1(root, spec, require_labels=True)
        patches = _limited(ben1.s2, spec.get("max_patches"))
        every = int(spec.get("holdout_every", 0))
        items, held_p = split_every(patches, every)
        read = _V1Read(ben1, True).rgb
        held = None
        if held_p:
            hp = _limited(held_p, spec.get("max_heldout", 1000))
            imgs = np.stack([_resize_np(read(p)[0][None], norm.size)[0] for p in hp])
            held = LabelledImages(spec.get("name", kind) + "-heldout", imgs.astype(np.float32), np.stack([read(p)[1] for p in hp]), names)
    elif kind in STREAMING_RGB:  # class folders: the in-memory split, read lazily
        keys, names = classnames(spec.get("classnames", "eurosat"))
        ms = kind == "eurosat_ms_rgb"
        found, _ = scan_class_folders(root, (".tif",) if ms else (".jpg", ".jpeg", ".png", ".tif"), keys,
                                      "EuroSAT-MS GeoTIFFs" if ms else "RGB images")  # fmt: skip
        per_class = int(spec.get("holdout_per_class", 0))
        items, held_f = holdout_split(found, per_class) if per_class else (found, [])
        read = _ClassFolderRead().ms_rgb if ms else _ClassFolderRead().rgb
        held = None
        if held_f:
            imgs = np.stack([_resize_np(read(it)[0][None], norm.size)[0] for it in held_f])
            held = LabelledImages(spec.get("name", kind) + "-heldout", imgs.astype(np.float32), np.array([it.label for it in held_f]), names)
    else:
        raise _not_streamable(kind, STREAMING_RGB, "stage1.train")
    return LazyDataset(items, RgbClassificationReader(read, norm)), held, names


def stream_alignment_set(which: str, sources: list[dict], data_dir: Path, norm, multi_label: bool):
    """Stage 2, streaming: (lazy training dataset of whole patches, held-out samples as a list of tuples).

    Each source's ``holdout_splits`` (v2; default validation) or ``holdout_every`` (v1, EuroSAT-MS) patches, at
    most ``max_heldout`` (default HELD_STAGE2), are read once into memory for the cosine and retrieval figures.
    """
    from torch.utils.data import ConcatDataset

    from training.data.loaders import LazyDataset, S1AlignmentReader, S2AlignmentReader

    allowed = STREAMING_S2 if which == "s2" else STREAMING_S1
    wrap = S2AlignmentReader if which == "s2" else S1AlignmentReader
    parts, held_items = [], []
    for src in sources:
        kind, root = src["kind"], data_dir / src["root"]
        if kind not in allowed:
            raise _not_streamable(kind, allowed, f"stage2.{which}.sources")
        if kind == "eurosat_ms":
            keys, _ = classnames(src.get("classnames", "eurosat"))
            found, _ = scan_class_folders(root, (".tif",), keys or list(EUROSAT_CLASSES), "EuroSAT-MS GeoTIFFs")
            every = int(src.get("holdout_every", 4))
            reader = _ClassFolderRead()
            items, held_f = split_every(found, every)
            held_items += [(reader, it) for it in _limited(held_f, src.get("max_heldout", HELD_STAGE2))]
        elif kind == "bigearthnet_v2":
            ben = _ben_v2(src, root, list(src.get("splits", ["train"])), require_s1=which == "s1")
            reader = _V2Read(ben, multi_label)
            items = _limited(ben.patches, src.get("max_patches"))
            hs = list(src.get("holdout_splits", ["validation"]))
            if hs:
                hb = _ben_v2(src, root, hs, require_s1=which == "s1")
                held_items += [(_V2Read(hb, multi_label), p) for p in _limited(hb.patches, src.get("max_heldout", HELD_STAGE2))]
        else:
            from training.data.bigearthnet import open_v1

            ben1 = open_v1(root, src)
            reader = _V1Read(ben1, multi_label)
            every = int(src.get("holdout_every", 0))
            all_items = _limited(ben1.s2 if which == "s2" else ben1.pairs(), src.get("max_patches"))
            items, held_p = split_every(all_items, every)
            held_items += [(reader, p) for p in _limited(held_p, src.get("max_heldout", HELD_STAGE2))]
        parts.append(LazyDataset(items, wrap(getattr(reader, which), norm)))
    dataset = ConcatDataset(parts)
    if not len(dataset):
        raise DataError(f"no streaming training patches for stage2.{which}: check its sources and splits")
    return dataset, [(getattr(r, which)(p), wrap(getattr(r, which), norm)(p)) for r, p in held_items]
