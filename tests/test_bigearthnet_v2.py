"""BigEarthNet v2 (reBEN) loader: LMDB of safetensors records + metadata.parquet, as in configilm's mock data."""

from __future__ import annotations

import glob
import zipfile
from pathlib import Path

import numpy as np
import pytest

from rs_clip_plugin.engine.bands import S2_L1C_BANDS
from training.data.bigearthnet import LABELS_19
from training.data.bigearthnet_v2 import (
    LMDB_DIR,
    METADATA,
    BigEarthNetV2,
    to_labels_19,
    upsample,
    write_archive,
)
from training.data.readers import DataError

# Native sizes of a 1.2 km patch, as in the reBEN records (and the configilm mock).
NATIVE = {"B02": 120, "B03": 120, "B04": 120, "B08": 120, "B05": 60, "B06": 60, "B07": 60, "B8A": 60,
          "B11": 60, "B12": 60, "B01": 20, "B09": 20}  # fmt: skip
LABELS = [
    ["Urban fabric", "Arable land"],  # 19-class names, as reBEN ships them
    ["Continuous urban fabric", "Bare rock", "Sea and ocean"],  # 43-class names: mapped, Bare rock dropped
    ["Coniferous forest"],
    ["Pastures", "Inland waters"],
    ["Mixed forest"],
    ["Marine waters"],
]
SPLITS = ["train", "train", "train", "train", "validation", "test"]


def s2_key(i: int) -> str:
    return f"S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_{i:02d}_88"


def s1_key(i: int) -> str:
    return f"S1B_IW_GRDH_1SDV_20170612T165809_33UUP_{i:02d}_88"


def s2_record(i: int) -> dict[str, np.ndarray]:
    # Band b of patch i holds the constant DN 100 * (band index + 1) + i, a ramp on B04 to see the resampling.
    rec = {b: np.full((n, n), 100 * (k + 1) + i, np.uint16) for k, (b, n) in enumerate(NATIVE.items())}
    rec["B04"] = (np.arange(120 * 120, dtype=np.uint16).reshape(120, 120) % 4000) + i
    return rec


def s1_record(i: int) -> dict[str, np.ndarray]:
    return {"VV": np.full((120, 120), -10.0 - i, np.float32), "VH": np.full((120, 120), -20.0 - i, np.float32)}


def make_ben_v2(root: Path, n: int = len(LABELS), skip_keys: tuple[str, ...] = ()) -> Path:
    records = {s2_key(i): s2_record(i) for i in range(n)} | {s1_key(i): s1_record(i) for i in range(n)}
    for k in skip_keys:
        records.pop(k)
    meta = [{"patch_id": s2_key(i), "labels": LABELS[i], "split": SPLITS[i], "country": "Austria", "s1_name": s1_key(i),
             "s2v1_name": f"S2A_MSIL2A_20170613T101031_{i:02d}_88", "contains_seasonal_snow": False,
             "contains_cloud_or_shadow": False} for i in range(n)]  # fmt: skip
    return write_archive(root, records, meta)


@pytest.fixture()
def ben_root(tmp_path: Path) -> Path:
    return make_ben_v2(tmp_path / "BigEarthNet-v2")


def test_reads_s2_as_13_band_reflectance_at_10m(ben_root: Path):
    ben = BigEarthNetV2(ben_root)
    assert len(ben) == 6 and [p.split for p in ben.patches] == SPLITS
    x = ben.read_s2(ben.patches[2])
    assert x.shape == (13, 120, 120) and x.dtype == np.float32
    assert np.all(x[S2_L1C_BANDS.index("B10")] == 0)  # the L2A zero band where an encoder expects 13
    # B02 is NATIVE's first band: DN 100 + 2 -> reflectance 0.0102; B01 (20 px, 11th) upsampled stays constant.
    assert np.allclose(x[S2_L1C_BANDS.index("B02")], 0.0102)
    assert np.allclose(x[S2_L1C_BANDS.index("B01")], (1100 + 2) / 10000)
    assert np.allclose(x[S2_L1C_BANDS.index("B12")], (1000 + 2) / 10000)
    ramp = (np.arange(120 * 120).reshape(120, 120) % 4000 + 2) / 10000
    assert np.allclose(x[S2_L1C_BANDS.index("B04")], ramp, atol=1e-7)  # 10 m band: untouched


def test_upsample_is_half_pixel_bilinear():
    up = upsample(np.array([[0.0, 2.0]], np.float32).repeat(2, 0), 4)
    # Output centres at 0.25, 0.75, 1.25, 1.75 input pixels -> 0, 0.5, 1.5, 2 (edges clamp).
    assert np.allclose(up[0], [0.0, 0.5, 1.5, 2.0])


def test_reads_s1_in_db_and_targets(ben_root: Path):
    ben = BigEarthNetV2(ben_root, require_s1=True)
    p = ben.patches[1]
    s1 = ben.read_s1(p)
    assert s1.shape == (2, 120, 120) and np.allclose(s1[0], -11.0) and np.allclose(s1[1], -21.0)
    assert p.labels_19 == ("Urban fabric", "Marine waters")
    y = ben.target(p)
    assert y.shape == (19,) and y.sum() == 2 and y[LABELS_19.index("Urban fabric")] == 1


def test_label_nomenclature_shared_with_v1():
    assert to_labels_19(["Peatbogs", "Inland marshes", "Airports"]) == ["Inland wetlands"]
    assert to_labels_19(["Inland waters", "Water bodies"]) == ["Inland waters"]
    with pytest.raises(DataError, match="unknown BigEarthNet labels"):
        to_labels_19(["Glaciers"])


def test_split_filter(ben_root: Path):
    assert [p.patch_id for p in BigEarthNetV2(ben_root, splits=["validation", "test"]).patches] == [s2_key(4), s2_key(5)]
    with pytest.raises(DataError, match="splits present"):
        BigEarthNetV2(ben_root, splits=["val"])


def test_missing_files_are_named(tmp_path: Path, ben_root: Path):
    with pytest.raises(DataError, match="folder not found"):
        BigEarthNetV2(tmp_path / "nowhere")
    (ben_root / METADATA).rename(tmp_path / "meta.parquet")
    with pytest.raises(DataError, match="metadata not found"):
        BigEarthNetV2(ben_root)
    assert len(BigEarthNetV2(ben_root, metadata=tmp_path / "meta.parquet")) == 6
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"no LMDB \(data.mdb\)"):
        BigEarthNetV2(empty)


def test_patch_missing_from_lmdb_is_named(tmp_path: Path):
    root = make_ben_v2(tmp_path / "a", skip_keys=(s2_key(3),))
    with pytest.raises(DataError, match=f"not in the LMDB, e.g. {s2_key(3)}"):
        BigEarthNetV2(root)
    root = make_ben_v2(tmp_path / "b", skip_keys=(s1_key(0),))
    assert len(BigEarthNetV2(root)) == 6  # S2-only use does not need the S1 records
    with pytest.raises(DataError, match=f"{s1_key(0)} \\(S1 of {s2_key(0)}\\)"):
        BigEarthNetV2(root, require_s1=True)


def test_metadata_without_required_columns(tmp_path: Path):
    write_archive(tmp_path, {s2_key(0): s2_record(0)}, [{"patch_id": s2_key(0), "labels": ["Pastures"]}])
    with pytest.raises(DataError, match=r"columns \['split', 's1_name'\] missing"):
        BigEarthNetV2(tmp_path)


def test_recipe_loads_v2_in_memory(ben_root: Path):
    from training.methods.modality_gap import data as recipe_data

    spec = {"kind": "bigearthnet_v2", "root": ben_root.name, "classnames": "bigearthnet19"}
    train, held = recipe_data.load_rgb_set(spec, ben_root.parent, 32)
    assert train.images.shape == (4, 3, 32, 32) and train.labels.shape == (4, 19)
    assert held is not None and held.images.shape[0] == 1 and held.labels[0, LABELS_19.index("Mixed forest")] == 1
    src = {"kind": "bigearthnet_v2", "root": ben_root.name, "stride": 60, "holdout": 0.0}
    s2_train, _ = recipe_data.load_s2_crops([src], ben_root.parent, 60)
    assert len(s2_train) == 4 * 4 and s2_train.levels[0] == "s2-l2a"
    s1_train, _ = recipe_data.load_s1_crops([src], ben_root.parent, 120)
    assert len(s1_train) == 4 and np.allclose(s1_train.s1[3][0], -13.0)


def _configilm_wheel() -> Path | None:
    candidates = glob.glob("/tmp/cilm/configilm-*.whl") + glob.glob("/tmp/**/configilm-*.whl", recursive=False)
    candidates += glob.glob(str(Path.home() / ".cache/pip/**/configilm-*.whl"), recursive=True)
    return Path(sorted(candidates)[-1]) if candidates else None


def test_reads_the_real_configilm_mock(tmp_path: Path):
    wheel = _configilm_wheel()
    if wheel is None:
        pytest.skip("configilm wheel not found in /tmp/cilm or pip's cache: `pip download --no-deps configilm -d /tmp/cilm`")
    prefix = "configilm/extra/mock_data/BENv2/"
    with zipfile.ZipFile(wheel) as zf:
        members = [m for m in zf.namelist() if m.startswith(prefix) and (m.endswith(".mdb") or m.endswith(METADATA))]
        zf.extractall(tmp_path, members)
    root = tmp_path / prefix
    assert (root / LMDB_DIR / "data.mdb").is_file()
    ben = BigEarthNetV2(root, require_s1=True)
    assert len(ben) == 18 and {p.split for p in ben.patches} == {"train", "validation", "test"}
    for p in ben.patches[:3]:
        s2, s1 = ben.read_s2(p), ben.read_s1(p)
        assert s2.shape == (13, 120, 120) and np.all(s2[10] == 0) and 0 < s2.max() < 2
        assert s1.shape == (2, 120, 120) and s1.min() < -5  # dB, not linear power
        assert ben.target(p).sum() == len(p.labels_19) > 0


def test_reben_has_no_boa_offset_on_a_real_patch(data_dir: Path):
    """The real reBEN patch (N9999 product, reBEN folder layout): blue DN far below 1000, so no +1000 offset."""
    import rasterio

    from rs_clip_plugin.engine.bands import parse_s2_product, s2_offset_dn
    from training.data.bigearthnet_v2 import REBEN_OFFSET_DN, boa_offset_evidence

    (b02,) = sorted((data_dir / "bigearthnet_v1" / "BigEarthNet-S2").glob("*/*/*_B02.tif"))
    with rasterio.open(b02) as src:
        dn = src.read(1)
    ev = boa_offset_evidence(dn)
    assert not ev["offset_present"] and ev["share_below_offset"] > 0.5 and ev["min_dn"] < 100
    assert boa_offset_evidence(dn.astype(np.int32) + 1000)["offset_present"]  # the check can tell the two apart
    assert REBEN_OFFSET_DN == 0.0 == s2_offset_dn(parse_s2_product(b02.parent.name).baseline)
