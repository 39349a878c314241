"""BigEarthNet v2 (reBEN, Clasen et al. 2024): one LMDB of safetensors records plus ``metadata.parquet``.

Layout (that of ``configilm``'s mock data, ``configilm/extra/mock_data/BENv2``)::

    <root>/BigEarthNet-V2-LMDB/data.mdb        key = patch name (utf-8), value = safetensors bytes
    <root>/metadata.parquet                    patch_id, labels (list of names), split, country, s1_name, ...

An S2 record (key = ``patch_id``, e.g. ``S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_37_88``) holds the 12
L2A bands as uint16 DN at native resolution: B02/B03/B04/B08 120 px, B05/B06/B07/B8A/B11/B12 60 px,
B01/B09 20 px. An S1 record (key = the row's ``s1_name``) holds ``VV`` and ``VH`` as float32 dB, 120 px.
Labels in v2 metadata use the 19-class names; 43-class CORINE names are mapped with the v1 table.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from rs_clip_plugin.engine.bands import S1_GRD_BANDS, S2_L2A_BANDS

from .bigearthnet import LABELS_19, LABELS_43_TO_19, multi_hot
from .composites import dn_to_reflectance, to_13_bands
from .readers import DataError

LMDB_DIR = "BigEarthNet-V2-LMDB"
METADATA = "metadata.parquet"
PATCH_SIZE = 120  # pixels at 10 m
REQUIRED_COLUMNS = ("patch_id", "labels", "split", "s1_name")

# reBEN (BigEarthNet v2) L2A digital numbers carry NO baseline-04.00 +1000 offset: reflectance = DN / 10000.
# Checked on a real reBEN patch, S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_75_43 (reBEN's naming and
# tile/patch folder layout, in ../shared/data/bigearthnet_v1): 11046 of 14400 B02 pixels are below 1000 DN
# (min 35, median 438) and the darkest NIR pixel (B03 408, B08 380 DN; NDWI > 0, water-like) reads 3.8 %
# reflectance. With a +1000 offset 77 % of the blue band would be negative reflectance, impossible for a
# valid L2A product. The product names carry baseline N9999, which engine.bands.s2_offset_dn maps to 0:
# consistent. tests/test_bigearthnet_v2.py re-checks this on the file (boa_offset_evidence).
REBEN_OFFSET_DN = 0.0


def to_labels_19(labels: Iterable[str]) -> list[str]:
    """19-class names (kept) or 43-class CORINE names (mapped with the v1 table; dropped classes vanish)."""
    out, unknown = set(), []
    for lab in labels:
        if lab in LABELS_19:
            out.add(lab)
        elif lab in LABELS_43_TO_19:
            if LABELS_43_TO_19[lab]:
                out.add(LABELS_43_TO_19[lab])
        else:
            unknown.append(lab)
    if unknown:
        raise DataError(f"unknown BigEarthNet labels {unknown}; expected names of the 19-class or 43-class nomenclature")
    return sorted(out, key=LABELS_19.index)


@dataclass(frozen=True)
class BenV2Patch:
    patch_id: str
    s1_name: str
    split: str
    labels_19: tuple[str, ...]


def upsample(band: np.ndarray, size: int) -> np.ndarray:
    """[h, w] -> [size, size] bilinear (half-pixel centres, as rasterio's and GDAL's bilinear resampling)."""
    if band.shape == (size, size):
        return band.astype(np.float32, copy=False)
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(band, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()


def _find_lmdb(root: Path, lmdb_dir: Optional[Path]) -> Path:
    if lmdb_dir is not None:
        path = Path(lmdb_dir)
    else:
        path = root / LMDB_DIR
        if not path.is_dir():
            found = sorted(p.parent for p in root.glob("*/data.mdb"))
            path = found[0] if len(found) == 1 else path
    if not (path / "data.mdb").is_file():
        raise DataError(f"{path}: no LMDB (data.mdb) found; BigEarthNet v2 needs {LMDB_DIR}/ from the reBEN archive under {root}")
    return path


# lmdb refuses a second open of one environment in a process, and an environment must not cross a fork:
# one per (path, process), opened on first read (in each DataLoader worker).
_ENVS: dict[tuple[str, int], object] = {}


def _open_env(path: Path):
    key = (str(Path(path).resolve()), os.getpid())
    if key not in _ENVS:
        import lmdb

        # A forked worker inherits the parent's handle, which lmdb still counts as open here: close the copy.
        for stale in [k for k in _ENVS if k[0] == key[0]]:
            _ENVS.pop(stale).close()

        _ENVS[key] = lmdb.open(key[0], readonly=True, lock=False, readahead=False, meminit=False, max_readers=256)
    return _ENVS[key]


class BigEarthNetV2:
    """Validated index of a BigEarthNet v2 LMDB + metadata; reads S2 (13-band reflectance) and S1 (dB) lazily.

    The LMDB is opened on first read in each process, so an instance can be handed to DataLoader workers.
    ``splits`` keeps the metadata rows of those splits ("train", "validation", "test"); ``require_s1`` also
    checks every row's S1 record.
    """

    def __init__(self, root: Path, *, lmdb_dir: Optional[Path] = None, metadata: Optional[Path] = None,
                 splits: Optional[Sequence[str]] = None, require_s1: bool = False, offset_dn: float = REBEN_OFFSET_DN):  # fmt: skip
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: BigEarthNet v2 folder not found (expected {LMDB_DIR}/ and {METADATA})")
        self.lmdb_path = _find_lmdb(self.root, lmdb_dir)
        self.metadata_path = Path(metadata) if metadata else self.root / METADATA
        if not self.metadata_path.is_file():
            raise DataError(f"{self.metadata_path}: BigEarthNet v2 metadata not found; put the archive's {METADATA} next to {LMDB_DIR}/")
        # reBEN's DN carry no BOA offset (REBEN_OFFSET_DN); a non-zero offset_dn supports re-processed archives.
        self.offset_dn = float(offset_dn)
        self.patches = self._read_metadata(splits)
        self._check_keys(require_s1)

    def _read_metadata(self, splits: Optional[Sequence[str]]) -> list[BenV2Patch]:
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(self.metadata_path)
        except Exception as exc:  # pyarrow raises several types for damaged files
            raise DataError(f"{self.metadata_path}: not a readable Parquet file ({exc})") from exc
        missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
        if missing:
            raise DataError(f"{self.metadata_path}: columns {missing} missing (found {table.column_names}); is this reBEN's metadata.parquet?")
        cols = {c: table.column(c).to_pylist() for c in REQUIRED_COLUMNS}
        wanted = set(splits) if splits else None
        out = []
        for pid, labels, split, s1 in zip(cols["patch_id"], cols["labels"], cols["split"], cols["s1_name"]):
            if wanted is None or split in wanted:
                out.append(BenV2Patch(pid, s1 or "", split, tuple(to_labels_19(labels or []))))
        if not out:
            found = sorted(set(cols["split"]))
            raise DataError(f"{self.metadata_path}: no patches in splits {sorted(wanted or [])} (splits present: {found})")
        return out

    def _txn_keys(self) -> set[str]:
        with self.env.begin(write=False) as txn:
            return {k.decode() for k in txn.cursor().iternext(values=False)}

    def _check_keys(self, require_s1: bool) -> None:
        keys = self._txn_keys()
        absent = [p.patch_id for p in self.patches if p.patch_id not in keys]
        if require_s1:
            absent += [f"{p.s1_name or '(empty s1_name)'} (S1 of {p.patch_id})" for p in self.patches if p.s1_name not in keys]
        if absent:
            raise DataError(
                f"{self.lmdb_path}: {len(absent)} patches of {self.metadata_path.name} are not in the LMDB, e.g. {absent[0]}; "
                "the LMDB and metadata come from different archive versions, or the LMDB is incomplete"
            )

    @property
    def env(self):
        return _open_env(self.lmdb_path)

    def __len__(self) -> int:
        return len(self.patches)

    def record(self, key: str) -> dict[str, np.ndarray]:
        from safetensors.numpy import load

        with self.env.begin(write=False, buffers=True) as txn:
            data = txn.get(key.encode())
            if data is None:
                raise DataError(f"{self.lmdb_path}: no record {key!r} in the LMDB")
            return load(bytes(data))

    def read_s2(self, patch: BenV2Patch, size: int = PATCH_SIZE) -> np.ndarray:
        """[13, size, size] L2A reflectance in L1C band order (zero B10), all bands bilinear to the 10 m grid."""
        rec = self.record(patch.patch_id)
        missing = [b for b in S2_L2A_BANDS if b not in rec]
        if missing:
            raise DataError(f"{self.lmdb_path}: record {patch.patch_id} lacks bands {missing} (has {sorted(rec)})")
        dn = np.stack([upsample(rec[b], size) for b in S2_L2A_BANDS])
        return to_13_bands(dn_to_reflectance(dn, self.offset_dn), "s2-l2a")

    def read_s1(self, patch: BenV2Patch, size: int = PATCH_SIZE) -> np.ndarray:
        """[2, size, size] VV, VH backscatter in dB (as stored)."""
        if not patch.s1_name:
            raise DataError(f"{self.metadata_path}: patch {patch.patch_id} has no s1_name; it has no Sentinel-1 pair")
        rec = self.record(patch.s1_name)
        missing = [b for b in S1_GRD_BANDS if b not in rec]
        if missing:
            raise DataError(f"{self.lmdb_path}: record {patch.s1_name} lacks bands {missing} (has {sorted(rec)})")
        return np.stack([upsample(rec[b], size) for b in S1_GRD_BANDS]).astype(np.float32)

    def target(self, patch: BenV2Patch) -> np.ndarray:
        """Multi-hot [19] in LABELS_19 order."""
        return multi_hot(list(patch.labels_19))


def write_archive(root: Path, records: dict[str, dict[str, np.ndarray]], metadata: Sequence[dict]) -> Path:
    """Write a reBEN-layout archive (subsets, test fixtures): ``records`` key -> band arrays, ``metadata`` rows
    with at least patch_id, labels, split, s1_name. The parquet is written to a temp file and renamed."""
    import lmdb
    import pyarrow as pa
    import pyarrow.parquet as pq
    from safetensors.numpy import save

    from rs_clip_plugin.engine.atomic import atomic_write

    root = Path(root)
    (root / LMDB_DIR).mkdir(parents=True, exist_ok=True)
    size = max(1 << 20, 2 * sum(a.nbytes for rec in records.values() for a in rec.values()) + (1 << 20))
    env = lmdb.open(str(root / LMDB_DIR), map_size=size)
    try:
        with env.begin(write=True) as txn:
            for key, rec in records.items():
                txn.put(key.encode(), save({b: np.ascontiguousarray(a) for b, a in rec.items()}))
    finally:
        env.close()
    columns = {c: [row.get(c) for row in metadata] for c in dict.fromkeys(k for row in metadata for k in row)}
    atomic_write(root / METADATA, lambda tmp: pq.write_table(pa.table(columns), tmp))
    return root


def boa_offset_evidence(blue_dn: np.ndarray, offset: float = 1000.0) -> dict:
    """Whether L2A digital numbers of a blue band (B02) look offset by ``offset``: with the baseline-04.00
    offset valid pixels sit at or above it (below it the reflectance would be negative), without it most
    land and water pixels of the blue band (reflectance < 10 %) sit below it. No-data zeros are ignored."""
    v = np.asarray(blue_dn, dtype=np.float64)
    v = v[v > 0]
    below = float((v < offset).mean()) if v.size else float("nan")
    return {"pixels": int(v.size), "min_dn": float(v.min()) if v.size else float("nan"),
            "share_below_offset": round(below, 4), "offset_present": bool(v.size and below < 0.01)}  # fmt: skip
