"""Band handling, composites and dataset loaders of training/data (real rasters: the samples or ones written here)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from rs_clip_plugin.engine.bands import S2_L1C_BANDS, S2_L2A_BANDS
from training.data import bigearthnet as ben
from training.data.composites import (
    S2_L2A_AS_13,
    insert_zero_band,
    ms_input,
    rgb_composite,
    s1_input,
    to_13_bands,
)
from training.data.eurosat import holdout_split, read_ms, scan_class_folders
from training.data.manifest import read_manifest_table
from training.data.readers import DataError, band_files, grid_windows, read_band_stack, split_windows
from training.data.sen12ms import scan as sen12ms_scan

REPO = Path(__file__).resolve().parents[1]


def _write(path: Path, arr: np.ndarray, res: float = 10.0, x0: float = 500000.0, y0: float = 5000000.0) -> None:
    if arr.ndim == 2:
        arr = arr[None]
    with rasterio.open(path, "w", driver="GTiff", width=arr.shape[-1], height=arr.shape[-2], count=arr.shape[0],
                       dtype=arr.dtype, crs="EPSG:32633", transform=from_origin(x0, y0, res, res)) as dst:  # fmt: skip
        dst.write(arr)


def test_zero_band_goes_to_b10_index():
    l2a = np.arange(12, dtype=np.float32).reshape(12, 1, 1) + 1
    out = insert_zero_band(l2a)
    assert out.shape == (13, 1, 1)
    assert out[10, 0, 0] == 0 and S2_L1C_BANDS[10] == "B10"
    # B11 (12th L2A band index 10) now sits at 11, B09 stays at 9.
    assert out[11, 0, 0] == 11 and out[9, 0, 0] == 10 and out[12, 0, 0] == 12
    assert S2_L2A_AS_13[10] == "zero" and [b for b in S2_L2A_AS_13 if b != "zero"] == list(S2_L2A_BANDS)
    with pytest.raises(ValueError, match="12 L2A bands"):
        insert_zero_band(np.zeros((13, 1, 1)))
    with pytest.raises(ValueError, match="13 bands"):
        to_13_bands(np.zeros((12, 1, 1)), "s2-l1c")


def test_rgb_composite_paper_scaling():
    refl = np.zeros((13, 1, 2), np.float32)
    refl[3] = 0.1  # B04: 1000 DN
    refl[2] = [0.2, 0.4]  # B03: 2000 / 4000 DN
    refl[1] = 0.3558  # B02
    l2a = rgb_composite(refl, "s2-l2a")
    # 1000 / 2000 * 255 = 127.5 -> uint8 127; 2000/2000 -> 255; 4000 -> clamped 255.
    assert l2a[0, 0, 0] == pytest.approx(127 / 255)
    assert l2a[1, 0].tolist() == pytest.approx([1.0, 1.0])
    l1c = rgb_composite(refl, "s2-l1c")
    assert l1c[2, 0, 0] == pytest.approx(1.0)  # 3558 / 3558
    assert l1c[0, 0, 0] == pytest.approx(np.floor(1000 / 3558 * 255) / 255)
    assert rgb_composite(refl, "s2-l2a", quantize=False)[0, 0, 0] == pytest.approx(0.5)


def test_encoder_inputs_scale_like_the_paper_and_engine():
    refl = np.array([1.2, -0.1, 0.25] + [0.0] * 10, np.float32).reshape(13, 1, 1)
    x = ms_input(refl)
    assert x[:3, 0, 0].tolist() == pytest.approx([1.0, 0.0, 0.25])  # clamp(x/10000, 0, 1), no CLIP normalisation
    db = np.array([-30.0, 5.0], np.float32).reshape(2, 1, 1)
    assert s1_input(db)[:, 0, 0].tolist() == pytest.approx([-2.0, 2.0])  # (0 - 0.5)/0.25, (1 - 0.5)/0.25


def test_band_stack_resamples_and_names_missing(tmp_path: Path):
    _write(tmp_path / "P_B02.tif", np.full((1, 4, 4), 7, np.uint16))
    _write(tmp_path / "P_B05.tif", np.full((1, 2, 2), 9, np.uint16), res=20.0)
    files = band_files(tmp_path)
    assert set(files) == {"B02", "B05"}
    stack = read_band_stack(files, ["B02", "zero", "B05"])
    assert stack.shape == (3, 4, 4) and stack[1].max() == 0 and np.allclose(stack[2], 9)
    with pytest.raises(DataError, match=r"missing band files \['B04'\]"):
        read_band_stack(files, ["B02", "B04"])


def test_windows_split_without_overlap():
    wins = grid_windows(264, 264, 64, 32)
    assert wins[0] == (0, 0) and (200, 200) in wins
    train, held = split_windows(wins, 264, 64, 0.25)
    cut = 198
    assert all(y + 64 <= cut for y, _ in train) and all(y >= cut for y, _ in held) and held


def test_eurosat_loaders_on_samples(data_dir: Path):
    items, classes = scan_class_folders(data_dir / "eurosat_ms", (".tif",), None, "patches")
    assert classes == ["AnnualCrop", "Forest", "Pasture", "SeaLake"] and len(items) == 8
    x = read_ms(items[0].path)
    assert x.shape == (13, 64, 64) and 0 < float(np.median(x)) < 1
    _train, held = holdout_split(items, 1)
    assert len(held) == 2  # only classes with more than one file give one up
    with pytest.raises(DataError, match="dataset folder not found"):
        scan_class_folders(data_dir / "nope", (".tif",))


def test_bigearthnet_nomenclature():
    assert len(ben.LABELS_43) == 43 and len(ben.LABELS_19) == 19
    table = json.loads((REPO / "resources" / "classnames" / "bigearthnet19.json").read_text())
    assert list(ben.LABELS_19) == table["keys"]
    assert ben.labels_19(["Vineyards", "Olive groves", "Airports", "Peatbogs"]) == ["Permanent crops", "Inland wetlands"]
    assert ben.multi_hot(["Marine waters"])[18] == 1
    with pytest.raises(DataError, match="unknown BigEarthNet labels"):
        ben.labels_19(["Moon dust"])


def test_bigearthnet_v1_sample_and_pairs(data_dir: Path, tmp_path: Path):
    d = ben.BigEarthNetV1(data_dir / "bigearthnet_v1")
    assert len(d.s2) == 1 and len(d.s1) == 1
    s2 = d.read_s2(d.s2[0])
    assert s2.shape == (13, 120, 120) and s2[10].max() == 0 and s2[3].max() > 0
    assert d.pairs() == []  # the sample's S1 and S2 patches lie 6 km apart
    # A co-registered pair made here is found through the S1 label file.
    s2dir, s1dir = tmp_path / "S2" / "p1", tmp_path / "S1" / "q1"
    s2dir.mkdir(parents=True)
    s1dir.mkdir(parents=True)
    for b in S2_L2A_BANDS:
        _write(s2dir / f"p1_{b}.tif", np.full((1, 12, 12), 1000, np.uint16))
    (s2dir / "p1_labels_metadata.json").write_text(json.dumps({"labels": ["Pastures"]}))
    for b in ("VV", "VH"):
        _write(s1dir / f"q1_{b}.tif", np.full((1, 12, 12), -12, np.float32))
    (s1dir / "q1_labels_metadata.json").write_text(json.dumps({"labels": ["Pastures"], "corresponding_s2_patch": "p1"}))
    d2 = ben.BigEarthNetV1(tmp_path)
    assert [(a.name, b.name) for a, b in d2.pairs()] == [("q1", "p1")]
    assert d2.s2[0].labels_19 == ["Pastures"]
    (s2dir / "p1_B8A.tif").unlink()
    with pytest.raises(DataError, match="B8A"):
        ben.BigEarthNetV1(tmp_path)


def test_manifest_csv(tmp_path: Path):
    _write(tmp_path / "a.tif", np.zeros((1, 2, 2), np.uint16))
    (tmp_path / "m.csv").write_text("s2-l1c,labels,split\na.tif,Forest|River,train\nb.tif,Forest,val\n")
    rows = read_manifest_table(tmp_path / "m.csv", split="train")
    assert rows[0]["labels"] == ["Forest", "River"] and rows[0]["s2-l1c"] == tmp_path / "a.tif"
    with pytest.raises(DataError, match=r"row 3: s2-l1c file .*b.tif does not exist"):
        read_manifest_table(tmp_path / "m.csv")
    (tmp_path / "bad.csv").write_text("image,label\na.tif,x\n")
    with pytest.raises(DataError, match="no modality column"):
        read_manifest_table(tmp_path / "bad.csv")


def test_sen12ms_names_missing_twin(tmp_path: Path):
    s1 = tmp_path / "ROIs1158_spring" / "s1_1"
    s1.mkdir(parents=True)
    _write(s1 / "ROIs1158_spring_s1_1_p30.tif", np.zeros((2, 4, 4), np.float32))
    with pytest.raises(DataError, match="lack their S2/land-cover twin"):
        sen12ms_scan(tmp_path)


def test_paired_geometric_is_per_sample_and_keeps_pairs_aligned():
    import torch

    from training.data.augment import PairedGeometric, resized_crop

    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 13, 32, 32)
    whole = torch.tensor([[0.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
    no, yes = torch.tensor([False]), torch.tensor([True])
    assert torch.allclose(resized_crop(x, whole, no, no), x, atol=1e-5)  # the full box is the identity
    assert torch.allclose(resized_crop(x, whole, yes, no), x.flip(-1), atol=1e-5)
    assert torch.allclose(resized_crop(x, whole, no, yes), x.flip(-2), atol=1e-5)
    batch = x.expand(16, -1, -1, -1)
    rgb = batch[:, [3, 2, 1]].contiguous()  # the teacher input: bands 4/3/2 of the same pixels
    s, t = PairedGeometric(scale=(0.5, 1.0))([batch, rgb], g)
    assert torch.allclose(s[:, [3, 2, 1]], t, atol=1e-6)  # same crop and flips for student and teacher
    assert len({tuple(v.flatten()[:8].tolist()) for v in s}) > 8  # drawn per sample, not once per batch


def test_paper_a_stage1_augmentation_per_sample_in_pixel_space():
    import torch

    from training.data.augment import PaperAStage1

    mean, std = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)
    g = torch.Generator().manual_seed(0)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    img01 = torch.linspace(0, 1, 3 * 24 * 24).view(1, 3, 24, 24)
    x = ((img01 - m) / s).expand(32, -1, -1, -1)
    off = PaperAStage1(mean, std, scale=(1.0, 1.0), jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)
    (y,) = off([x], g)
    flips = [torch.allclose(v, x[0], atol=1e-4) or torch.allclose(v, x[0].flip(-1), atol=1e-4)
             or torch.allclose(v, x[0].flip(-2), atol=1e-4) or torch.allclose(v, x[0].flip(-1, -2), atol=1e-4) for v in y]  # fmt: skip
    assert all(flips)  # without crop/colour only the four flips remain
    (z,) = PaperAStage1(mean, std)([x], g)  # the released values
    pix = (z * s + m)
    assert float(pix.min()) >= -1e-5 and float(pix.max()) <= 1 + 1e-5  # augmented in [0, 1], normalised again
    grey = (pix.max(dim=1).values - pix.min(dim=1).values).amax(dim=(1, 2)) < 1e-5
    assert 1 <= int(grey.sum()) <= 14  # RandomGrayscale(p=0.2) per sample
    assert len({round(float(v.mean()), 4) for v in z}) > 20


def test_student_drop_path_from_config():
    from training.methods.modality_gap.students import build_student

    st = build_student({"kind": "timm", "name": "vit_small_patch16_224", "drop_path": 0.2, "model_kwargs": {"depth": 2}},
                       ["B01"] * 13, None, 64, 32)  # fmt: skip
    assert st.backbone.blocks[-1].drop_path1.drop_prob == pytest.approx(0.2)  # timm: linear up to drop_path_rate


def test_bigearthnet_v1_official_split_and_cloud_snow_exclusion(data_dir: Path, tmp_path: Path):
    """Paper A's protocol: an official split CSV keeps only its patches; the cloud/shadow and snow lists drop theirs."""
    root = data_dir / "bigearthnet_v1"
    s2_name = ben.BigEarthNetV1(root).s2[0].name
    (tmp_path / "test.csv").write_text(f"{s2_name}\nsome_other_patch\n")
    (tmp_path / "train.csv").write_text("some_other_patch\n")
    (tmp_path / "patches_with_seasonal_snow.csv").write_text(f"{s2_name}\n")
    (tmp_path / "patches_with_cloud_and_shadow.csv").write_text("x\n")
    assert [p.name for p in ben.open_v1(root, {"split_csv": str(tmp_path / "test.csv")}).s2] == [s2_name]
    with pytest.raises(DataError, match="no patch is left after the split"):
        ben.open_v1(root, {"split_csv": str(tmp_path / "train.csv")})
    excl = [str(tmp_path / "patches_with_cloud_and_shadow.csv"), str(tmp_path / "patches_with_seasonal_snow.csv")]
    kept = ben.open_v1(root, {"exclude_csvs": excl})
    assert kept.s2 == [] and len(kept.s1) == 1  # the snowy S2 patch is dropped, the S1 patch is another place
    with pytest.raises(DataError, match="patch list not found"):
        ben.open_v1(root, {"split_csv": "val.csv"})
