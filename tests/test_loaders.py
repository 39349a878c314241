"""Streaming training data: lazy datasets over the loaders, the DataLoader builder, the recipe's streaming path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_bigearthnet_v2 import make_ben_v2
from torch.utils.data import TensorDataset

from training.data.bigearthnet_v2 import BigEarthNetV2
from training.data.composites import ms_input, rgb_composite, rgb_input, s1_input
from training.data.loaders import LazyDataset, Normalisation, S2AlignmentReader, build_loader, endless
from training.data.transforms import resize_batch
from training.methods.modality_gap import data as recipe_data

NORM = Normalisation(32, [0.48, 0.46, 0.41], [0.27, 0.26, 0.28])


@pytest.fixture(scope="module")
def ben_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_ben_v2(tmp_path_factory.mktemp("benv2") / "BigEarthNet-v2")


def _order(loader) -> list[int]:
    return [int(i) for (x,) in loader for i in x]


def test_seeded_shuffle_is_reproducible():
    ds = TensorDataset(torch.arange(20))
    a = _order(build_loader(ds, 5, seed=3))
    assert a == _order(build_loader(ds, 5, seed=3)) and sorted(a) == list(range(20))
    assert a != _order(build_loader(ds, 5, seed=4))
    assert _order(build_loader(ds, 5, shuffle=False)) == list(range(20))


def test_loader_options():
    ds = TensorDataset(torch.arange(10))
    plain = build_loader(ds, 4, device=torch.device("cpu"))
    assert not plain.pin_memory and plain.num_workers == 0 and plain.drop_last
    assert build_loader(ds, 4, device=torch.device("cuda")).pin_memory  # pinned for host -> GPU copies
    assert build_loader(ds, 64).batch_size == 10  # a small set still yields a batch
    with pytest.raises(ValueError, match="empty"):
        build_loader(TensorDataset(torch.arange(0)), 4)


def test_distributed_sampler_shards_under_ddp(monkeypatch: pytest.MonkeyPatch):
    from torch.utils.data.distributed import DistributedSampler

    ds = TensorDataset(torch.arange(16))
    shards = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        loader = build_loader(ds, 4, seed=1)
        assert isinstance(loader.sampler, DistributedSampler)
        shards.append(_order(loader))
    assert len(shards[0]) == len(shards[1]) == 8 and sorted(shards[0] + shards[1]) == list(range(16))


def test_endless_reshuffles_epochs_and_augments_pairs():
    x = torch.arange(4 * 2 * 3 * 3, dtype=torch.float32).reshape(4, 2, 3, 3)
    ds = TensorDataset(x, x.clone(), torch.arange(4))
    it = endless(build_loader(ds, 2, seed=0), seed=0, augment=True)
    seen = [next(it) for _ in range(6)]  # three epochs of two batches
    for a, b, y in seen:
        assert torch.equal(a, b)  # one flip/rotation for both tensors of a pair
        for k in range(2):  # each sample is a dihedral transform of its source
            src = x[y[k]]
            assert any(torch.equal(a[k], torch.rot90(f, r, dims=(-2, -1))) for r in range(4) for f in (src, src.flip(-1)))
    epochs = [sorted(int(v) for s in seen[i : i + 2] for v in s[2]) for i in (0, 2, 4)]
    assert all(e == [0, 1, 2, 3] for e in epochs)


def test_lazy_v2_items_equal_the_in_memory_tensors(ben_root: Path):
    ben = BigEarthNetV2(ben_root)
    ds, held = recipe_data.stream_alignment_set(
        "s2", [{"kind": "bigearthnet_v2", "root": ben_root.name}], ben_root.parent, NORM, multi_label=True
    )
    assert len(ds) == 4 and len(held) == 1
    xs, xt, y = ds[1]
    refl = ben.read_s2(ben.patches[1])
    # What the in-memory path computes for the same patch (recipe.stage2_data's tensors()).
    want_s = resize_batch(torch.from_numpy(ms_input(refl[None])), 32)[0]
    want_t = NORM.teacher(rgb_composite(refl, "s2-l2a"))
    assert torch.equal(xs, want_s) and torch.equal(xt, want_t)
    assert y.shape == (19,) and torch.equal(y, torch.from_numpy(ben.target(ben.patches[1])))
    ds1, _ = recipe_data.stream_alignment_set(
        "s1", [{"kind": "bigearthnet_v2", "root": ben_root.name}], ben_root.parent, NORM, multi_label=False
    )
    s1x, _, y1 = ds1[0]
    assert torch.equal(s1x, resize_batch(torch.from_numpy(s1_input(ben.read_s1(ben.patches[0])[None])), 32)[0])
    assert int(y1) == -1


def test_workers_read_the_lmdb(ben_root: Path):
    ben = BigEarthNetV2(ben_root)

    def load(p):
        return ben.read_s2(p), "s2-l2a", ben.target(p)

    ds = LazyDataset(ben.patches, S2AlignmentReader(load, NORM))
    serial = [b for b in build_loader(ds, 2, shuffle=False)]
    parallel = [b for b in build_loader(ds, 2, shuffle=False, num_workers=2, persistent_workers=False)]
    assert len(serial) == len(parallel) == 3
    for a, b in zip(serial, parallel):
        assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert torch.equal(ds[0][0], serial[0][0][0])  # the parent's handle survives the workers


def test_not_streamable_kind_is_explained(tmp_path: Path):
    with pytest.raises(ValueError, match=r"cannot stream.*data.streaming: false"):
        recipe_data.stream_alignment_set("s2", [{"kind": "ssl4eo", "root": "x"}], tmp_path, NORM, False)


def test_recipe_streams_bigearthnet_v2(ben_root: Path, tmp_path: Path):
    from training.methods.modality_gap.recipe import run_recipe

    src = {"kind": "bigearthnet_v2", "root": ben_root.name}
    optim = {"lr": 1.0e-3, "weight_decay": 0.01, "warmup_steps": 0, "precision": "fp32"}
    cfg = {
        "seed": 0, "threads": 1, "device": "cpu", "data_dir": str(ben_root.parent),
        "data": {"streaming": True, "num_workers": 0},
        "model": {"name": "rsclip-tiny", "pretrained": None},
        "stage1": {"train": {**src, "classnames": "bigearthnet19"}, "loss": "bce", "label_smoothing": 0.2, "steps": 2,
                   "batch_size": 2, "optim": optim, "alphas": [0.0, 1.0], "teacher_alpha": 0.5},
        "stage2": {"lambda": 0.05, "loss": "bce",
                   "s2": {"sources": [src], "student": {"kind": "clip_visual", "fill": "zero"}, "steps": 2, "batch_size": 2, "optim": optim},
                   "s1": {"sources": [src], "student": {"kind": "clip_visual", "fill": "mean"}, "steps": 2, "batch_size": 2, "optim": optim}},
        "export": {"enabled": False},
    }  # fmt: skip
    m = run_recipe(cfg, tmp_path / "out")
    assert m["stage1"]["steps"] == 2 and m["patching"]["alpha0_max_abs_diff"] == 0.0
    for which in ("s2", "s1"):
        a = m["alignment"][which]
        assert a["n_train"] == 4 and a["n_heldout"] == 1 and np.isfinite(a["cos_after"])
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["retrieval"]["n_s1"] == 1


def test_streamed_eurosat_matches_in_memory(data_dir: Path):
    """Class-folder sets stream the same samples and tensors the smoke recipe holds in memory."""
    spec = {"kind": "eurosat_rgb", "root": "eurosat_rgb_small", "classnames": "eurosat", "holdout_per_class": 2}
    train, held = recipe_data.load_rgb_set(spec, data_dir, 32)
    ds, s_held, names = recipe_data.stream_rgb_set(spec, data_dir, NORM)
    assert len(ds) == len(train.labels) and names == train.classnames
    assert np.array_equal(s_held.labels, held.labels) and np.allclose(s_held.images, held.images)
    for i in (0, len(ds) - 1):
        x, y = ds[i]
        want = resize_batch(torch.from_numpy(rgb_input(train.images[i : i + 1], NORM.mean, NORM.std)), 32)[0]
        assert int(y) == train.labels[i] and torch.allclose(x, want, atol=1e-5)
    src = {"kind": "eurosat_ms", "root": "eurosat_ms", "classnames": "eurosat", "holdout_every": 4}
    s2_train, s2_held = recipe_data.load_s2_crops([src], data_dir, 64)
    ds2, held2 = recipe_data.stream_alignment_set("s2", [src], data_dir, NORM, multi_label=False)
    assert len(ds2) == len(s2_train) and len(held2) == len(s2_held)
    xs, _, y = ds2[0]
    assert int(y) == s2_train.labels[0]
    assert torch.allclose(xs, resize_batch(torch.from_numpy(ms_input(s2_train.data[0][None])), 32)[0], atol=1e-6)
