"""Paper A's formulas pinned against hand-computed values, students, checkpoints, and the smoke recipe end to end."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from training.evaluate.zero_shot import accuracy, average_precision, macro_map
from training.methods.modality_gap.data import split_every
from training.methods.modality_gap.losses import alignment_loss, classification_loss, smooth_multilabel
from training.methods.modality_gap.patching import interpolate, max_abs_diff
from training.methods.modality_gap.schedule import cosine_lr
from training.methods.modality_gap.students import ClipVisualStudent, TimmStudent, inflate_patch_embed
from training.methods.modality_gap.zeroshot_head import ClassificationHead, zeroshot_weights

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "training" / "configs" / "smoke" / "modality_gap.yaml"
PAPER = REPO / "training" / "configs" / "modality_gap" / "vit-b-32_openai_bigearthnet19.yaml"


class TableTextModel(nn.Module):
    """A real (tiny) text model: token id -> fixed embedding, so the head can be computed by hand."""

    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.tensor([[1.0, 0.0], [0.0, 3.0], [2.0, 2.0]]))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(2.0)))

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table[ids[:, 0]]


def _tok(texts: list[str]) -> torch.Tensor:
    # "a X" -> row 0, "b X" -> row 1, "c X" -> row 2
    return torch.tensor([["abc".index(t[0])] for t in texts])


def test_zeroshot_head_averages_normalised_templates_times_logit_scale():
    w = zeroshot_weights(TableTextModel(), _tok, ["cls"], ["a {}", "b {}"])
    # normalise([1,0]) and normalise([0,3]) -> mean [0.5, 0.5] -> renormalised [0.7071, 0.7071] -> x exp(log 2) = 2
    assert w.shape == (1, 2)
    assert w[0].tolist() == pytest.approx([math.sqrt(2), math.sqrt(2)], abs=1e-6)
    head = ClassificationHead(torch.tensor([[2.0, 0.0], [0.0, 2.0]]))
    assert not head.weight.requires_grad
    assert head(torch.tensor([[3.0, 4.0]])).tolist()[0] == pytest.approx([1.2, 1.6])  # normalise -> [0.6, 0.8]
    with pytest.raises(ValueError, match="must each contain"):
        zeroshot_weights(TableTextModel(), _tok, ["cls"], ["no slot"])


def test_interpolation_formula_and_alpha0_exact():
    zs = {"w": torch.tensor([0.0, 1.0]), "n": torch.tensor([3])}
    ft = {"w": torch.tensor([2.0, -1.0]), "n": torch.tensor([3])}
    assert interpolate(zs, ft, 0.25)["w"].tolist() == pytest.approx([0.5, 0.5])
    assert max_abs_diff(interpolate(zs, ft, 0.0), zs) == 0.0
    assert torch.equal(interpolate(zs, ft, 1.0)["w"], ft["w"])
    with pytest.raises(ValueError, match="non-float"):
        interpolate(zs, {"w": ft["w"], "n": torch.tensor([4])}, 0.5)
    with pytest.raises(ValueError, match="alpha"):
        interpolate(zs, ft, 1.5)


def test_cosine_schedule_with_warmup():
    assert cosine_lr(0, 1.0, 4, 10) == pytest.approx(0.25)
    assert cosine_lr(3, 1.0, 4, 10) == pytest.approx(1.0)
    assert cosine_lr(4, 1.0, 4, 10) == pytest.approx(1.0)
    assert cosine_lr(7, 1.0, 4, 10) == pytest.approx(0.5)  # half-way through the cosine
    assert cosine_lr(10, 1.0, 4, 10) == pytest.approx(0.0, abs=1e-12)


def test_losses_by_hand():
    assert smooth_multilabel(torch.tensor([1.0, 0.0]), 0.2).tolist() == pytest.approx([0.9, 0.1])
    x = torch.tensor([[2.0]])
    sig = 1 / (1 + math.exp(-2.0))
    want = -(0.9 * math.log(sig) + 0.1 * math.log(1 - sig))
    assert float(classification_loss(x, torch.tensor([[1.0]]), "bce", 0.2)) == pytest.approx(want, rel=1e-6)
    assert float(classification_loss(torch.zeros(1, 2), torch.tensor([1]), "ce")) == pytest.approx(math.log(2))
    total, parts = alignment_loss(
        torch.tensor([[1.0, 0.0]]), torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([0]), None, lam=0.05, kind="ce"
    )
    assert parts["mse"] == pytest.approx(0.5) and parts["cls"] == pytest.approx(math.log(2))
    assert float(total) == pytest.approx(0.5 + 0.05 * math.log(2))
    # Unlabelled samples only: the MSE term alone.
    total, _ = alignment_loss(torch.ones(2, 2), torch.zeros(2, 2), torch.zeros(2, 2), torch.tensor([0, 0]),
                              torch.tensor([False, False]), lam=0.05, kind="ce")  # fmt: skip
    assert float(total) == pytest.approx(1.0)


def test_zero_shot_metrics_by_hand():
    assert accuracy(np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), np.array([0, 1, 1])) == pytest.approx(200 / 3)
    # positives ranked 1 and 3 -> AP = (1/1 + 2/3) / 2
    assert average_precision(np.array([0.9, 0.8, 0.7]), np.array([1, 0, 1])) == pytest.approx((1 + 2 / 3) / 2)
    scores = np.array([[0.9, 0.1], [0.8, 0.9], [0.7, 0.2]])
    targets = np.array([[1, 0], [0, 1], [1, 0]])
    assert macro_map(scores, targets) == pytest.approx(100 * ((1 + 2 / 3) / 2 + 1.0) / 2)


def test_patch_embedding_inflation_places_rgb_on_b4_b3_b2():
    rgb = torch.arange(2 * 3 * 1 * 1, dtype=torch.float32).reshape(2, 3, 1, 1)
    bands = ["B02", "B03", "B04", "B08"]
    w = inflate_patch_embed(rgb, bands)
    assert torch.equal(w[:, 2], rgb[:, 0]) and torch.equal(w[:, 1], rgb[:, 1]) and torch.equal(w[:, 0], rgb[:, 2])
    assert w[:, 3].abs().sum() == 0
    m = inflate_patch_embed(rgb, ["VV", "VH"], fill="mean")
    assert torch.allclose(m[:, 0], rgb.mean(1) * 1.5)


def test_clip_student_starts_as_teacher_on_rgb_bands():
    from rs_clip_plugin.engine.bands import S2_L1C_BANDS
    from training.models.factory import create_model

    lm = create_model("rsclip-tiny")
    student = ClipVisualStudent(lm.model.visual, list(S2_L1C_BANDS)).eval()
    rgb = torch.rand(2, 3, 64, 64)
    ms = torch.zeros(2, 13, 64, 64)
    ms[:, 3], ms[:, 2], ms[:, 1] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    with torch.no_grad():
        assert torch.allclose(student(ms), lm.model.visual(rgb), atol=1e-5)
    assert student.visual.conv1.weight.shape[1] == 13
    assert lm.model.visual.conv1.weight.shape[1] == 3  # the teacher is untouched


def _mlp(num_layers: int, d_in: int, d_mlp: int, d_out: int, last_bn: bool = True) -> nn.Sequential:
    """MoCo v3's ``_build_mlp`` (moco/builder.py): Linear(no bias), BN, ReLU, ..., Linear, BN(affine=False)."""
    layers: list[nn.Module] = []
    for i in range(num_layers):
        d1, d2 = (d_in if i == 0 else d_mlp), (d_out if i == num_layers - 1 else d_mlp)
        layers.append(nn.Linear(d1, d2, bias=False))
        if i < num_layers - 1:
            layers += [nn.BatchNorm1d(d2), nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(nn.BatchNorm1d(d2, affine=False))
    return nn.Sequential(*layers)


def moco_v3_file(path: Path, img_size: int = 32, depth: int = 2, seed: int = 0) -> tuple[Path, dict]:
    """A file of exactly SSL4EO-S12's ``B13_vits16_moco_0099_ckpt.pth`` layout (MoCo v3 main_moco.py's
    save_checkpoint): {'epoch', 'arch', 'state_dict': {'module.base_encoder.*', 'module.momentum_encoder.*',
    'module.predictor.*'}, 'optimizer', 'scaler'}; the encoders are timm ViT-S/16 with 13 input bands whose
    classifier is MoCo's 3-layer projector. Fewer blocks than 12 keep it small; the key layout is the same."""
    import timm

    torch.manual_seed(seed)
    base = timm.create_model("vit_small_patch16_224", in_chans=13, img_size=img_size, depth=depth, num_classes=10)
    base.head = _mlp(3, 384, 64, 32)
    momentum = copy.deepcopy(base)
    predictor = _mlp(2, 32, 64, 32, last_bn=False)
    sd = {f"module.base_encoder.{k}": v for k, v in base.state_dict().items()}
    sd.update({f"module.momentum_encoder.{k}": v + 1 for k, v in momentum.state_dict().items()})
    sd.update({f"module.predictor.{k}": v for k, v in predictor.state_dict().items()})
    opt = torch.optim.AdamW(base.parameters())
    torch.save({"epoch": 100, "arch": "vit_small", "state_dict": sd, "optimizer": opt.state_dict(),
                "scaler": {"scale": 65536.0, "growth_factor": 2.0}}, path)  # fmt: skip
    return path, {k: v for k, v in base.state_dict().items() if not k.startswith("head.")}


def test_student_loads_moco_v3_checkpoint_with_its_13_band_patch_embedding(tmp_path: Path):
    path, want = moco_v3_file(tmp_path / "B13_vits16_moco_0099_ckpt.pth")
    dst = TimmStudent("vit_small_patch16_224", 13, 64, 32, checkpoint=path, model_kwargs={"depth": 2})
    rep = dst.load_report
    assert rep["loaded"] == rep["total"] == len(want) and rep["missing"] == []
    assert rep["patch_embed_loaded"]
    assert rep["ignored"] == {"module.momentum_encoder": len(want) + 16, "module.predictor": 7}
    assert all(s.startswith("head.") for s in rep["skipped"]) and len(rep["skipped"]) == 16  # MoCo's projector
    for k, v in dst.backbone.state_dict().items():  # the base encoder, not the momentum copy (+1)
        assert torch.equal(v, want[k]), k
    assert dst(torch.rand(1, 13, 32, 32)).shape == (1, 64)
    # reinit_patch_embed discards the pretrained kernels only when asked to.
    fresh = TimmStudent("vit_small_patch16_224", 13, 64, 32, checkpoint=path, reinit_patch_embed=True, model_kwargs={"depth": 2})
    assert not fresh.load_report["patch_embed_loaded"]
    assert not torch.equal(fresh.backbone.patch_embed.proj.weight, want["patch_embed.proj.weight"])


def test_student_loads_dino_moco_v2_and_timm_layouts(tmp_path: Path):
    import argparse

    from training.checkpoint import CheckpointError

    src = TimmStudent("vit_small_patch16_224", 13, 64, 32, model_kwargs={"depth": 1})
    bb = src.backbone.state_dict()
    files = {
        # DINO main_dino.py: teacher/student (student under DDP 'module.'), heads, and the argparse Namespace
        "dino": {"teacher": {**{f"backbone.{k}": v for k, v in bb.items()}, "head.last_layer.weight_g": torch.ones(1, 1)},
                 "student": {f"module.backbone.{k}": v * 0 for k, v in bb.items()}, "epoch": 99,
                 "args": argparse.Namespace(arch="vit_small", patch_size=16)},
        # MoCo v2: the query encoder plus the key encoder and the queue
        "mocov2": {"state_dict": {**{f"module.encoder_q.{k}": v for k, v in bb.items()},
                                  **{f"module.encoder_k.{k}": v * 0 for k, v in bb.items()}, "module.queue": torch.zeros(8, 4)}},
        # plain timm, with a 3-band patch embedding (an ImageNet model): skipped, reported, the rest loaded
        "timm_rgb": {**bb, "patch_embed.proj.weight": torch.zeros(384, 3, 16, 16), "head.weight": torch.zeros(10, 384)},
    }  # fmt: skip
    for name, obj in files.items():
        torch.save(obj, tmp_path / f"{name}.pth")
        dst = TimmStudent("vit_small_patch16_224", 13, 64, 32, checkpoint=tmp_path / f"{name}.pth", model_kwargs={"depth": 1})
        rep = dst.load_report
        assert torch.equal(dst.backbone.blocks[0].attn.qkv.weight, src.backbone.blocks[0].attn.qkv.weight), name
        if name == "timm_rgb":
            assert not rep["patch_embed_loaded"] and rep["missing"] == ["patch_embed.proj.weight"]
            assert any(s.startswith("patch_embed.proj.weight: shape (384, 3, 16, 16)") for s in rep["skipped"])
        else:
            assert rep["patch_embed_loaded"] and rep["loaded"] == rep["total"], name
    torch.save({"model": {"something.else": torch.zeros(3)}}, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError, match="is it a checkpoint of this architecture"):
        TimmStudent("vit_small_patch16_224", 13, 64, 32, checkpoint=tmp_path / "wrong.pth", model_kwargs={"depth": 1})


def test_run_overrides():
    from training.commands.run import apply_override

    cfg = {"stage1": {"steps": 40}, "stage2": {"s2": {"sources": [{"stride": 64}]}}}
    apply_override(cfg, "stage1.steps=3")
    apply_override(cfg, "stage2.s2.sources.0.stride=32")
    assert cfg["stage1"]["steps"] == 3 and cfg["stage2"]["s2"]["sources"][0]["stride"] == 32
    with pytest.raises(ValueError, match="KEY=VALUE"):
        apply_override(cfg, "stage1.steps")


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, data_dir) -> Path:
    """The smoke recipe through the CLI, with fewer steps (one run shared by the tests below)."""
    from training.cli import main

    out = tmp_path_factory.mktemp("smoke") / "run"
    rc = main(["run", str(SMOKE), "--out", str(out), "--set", "stage1.steps=20", "--set", "stage2.s2.steps=20",
               "--set", "stage2.s1.steps=20", "--set", "stage2.s2.sources.1.max_crops=16"])  # fmt: skip
    assert rc == 0
    return out


def test_smoke_recipe_learns_and_exports(smoke_run: Path):
    from rs_clip_plugin.engine.bundle import load_bundle

    m = json.loads((smoke_run / "metrics.json").read_text())
    assert m["stage1"]["loss_last"] < m["stage1"]["loss_first"]
    assert m["patching"]["alpha0_max_abs_diff"] == 0.0
    assert [r["alpha"] for r in m["patching"]["table"]] == [0.0, 0.5, 1.0]
    for mod in ("s2", "s1"):
        a = m["alignment"][mod]
        assert a["cos_after"] > a["cos_before"], mod
    assert "R@1" in m["retrieval"]["ms_to_rgb"] and "R@1" in m["retrieval"]["s1_to_s2"]
    b = load_bundle(m["bundle"])
    assert b.manifest.modalities == ["rgb", "s2-l1c", "s2-l2a", "s1-grd"]
    assert b.manifest.encoder("s2-l2a").bands[10] == "zero"
    # Every encoder, the S2 / S1 students included, has dense outputs (export.dense: segearth) with parity.
    parity = b.manifest.provenance["parity"]
    assert m["export"]["parity"] == parity
    for mod in b.manifest.modalities:
        assert b.manifest.encoder(mod).dense["variant"] == "segearth", mod
        assert b.manifest.encoder(mod).dense["grid"] == [8, 8], mod
        for suffix in ("", "_dense_patches", "_dense_cls"):
            assert parity[f"image_{mod}{suffix}"]["min_cosine"] >= 0.9999, mod + suffix
    assert b.manifest.provenance["metrics"]["alignment"]["s2"]["cos_after"] == m["alignment"]["s2"]["cos_after"]
    assert "not a usable remote-sensing model" in b.manifest.provenance["description"]
    assert (smoke_run / "patching.md").read_text().startswith("## Stage 1")
    # The paper's table beside ours, filled from this run where the recipe computes the figure.
    rows = {(r["task"], r["metric"]): r for r in json.loads((smoke_run / "paper_table.json").read_text())["rows"]}
    assert rows[("retrieval RGB->MS", "R@1")]["paper"] == 24.86
    assert rows[("retrieval RGB->MS", "R@1")]["ours"] == round(m["retrieval"]["rgb_to_ms"]["R@1"], 2)
    assert rows[("retrieval MS->RGB", "R@50")]["ours"] == round(m["retrieval"]["ms_to_rgb"]["R@50"], 2)
    assert rows[("patching gain", "accuracy")]["ours"] is not None
    zs = m["zero_shot"]["eurosat-ms"]
    assert zs["metric"] == "accuracy" and zs["n"] == 8 and 0 <= zs["ms_student"] <= 100 and 0 <= zs["rgb_teacher"] <= 100
    assert rows[("zero-shot, aligned MS student", "accuracy")]["ours"] == round(zs["ms_student"], 2)


def test_paper_recipe_dry_run(tmp_path: Path, capsys):
    """The dry run loads the configured student checkpoint when it is there and reports what it loaded, and
    prints the table the recipe will produce beside the paper's numbers."""
    from training.cli import main

    ckpt, want = moco_v3_file(tmp_path / "moco.pth", img_size=224)
    assert main(["run", str(PAPER), "--out", str(tmp_path), "--dry-run", "--set", f"stage2.s2.student.checkpoint={ckpt}",
                 "--set", "stage2.s2.student.model_kwargs.depth=2"]) == 0  # fmt: skip
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["dry_run"] and m["stage1"]["steps"] == 1 and m["alignment"]["s2"]["steps"] == 1
    init = m["student_init"]["s2"]
    assert init["loaded"] == init["total"] == len(want) and init["patch_embed_loaded"] is True
    assert len(init["skipped"]) == 16 and init["checkpoint"] == str(ckpt)
    assert m["student_init"]["s1"]["checkpoint"] is None
    out = capsys.readouterr().out
    assert "## Paper A (Mind the Modality Gap)" in out and "| patching gain | BigEarthNet-19 | macro mAP | 56.86 |  |" in out
    assert not (tmp_path / "bundle").exists()


def test_split_every_holds_out_by_position() -> None:
    items = [{"id": i % 3} for i in range(10)]  # equal-comparing items must not leak between the parts
    train, held = split_every(items, 4)
    assert len(held) == 2 and held[0] is items[3] and held[1] is items[7]
    assert len(train) == 8 and all(t is not items[3] and t is not items[7] for t in train)
    assert sum(t == {"id": 0} for t in train) == 3  # a filter on "not in held" would drop all four
    assert split_every(items, 0) == (items, [])


def test_stage_length_from_epochs_batch_and_world(tmp_path: Path, monkeypatch, capsys) -> None:
    from training.length import plan_steps
    from training.methods.modality_gap.recipe import _Recipe

    assert plan_steps(1000, 128, epochs=5, world=1)["steps"] == 40  # ceil(5000 / 128)
    assert plan_steps(1000, 128, epochs=5, world=4)["steps"] == 10  # each rank takes its own 128
    assert plan_steps(1000, 128, samples_seen=2560, world=2)["steps"] == 10
    assert plan_steps(1000, 128, steps=7)["steps"] == 7
    monkeypatch.setenv("WORLD_SIZE", "2")
    r = _Recipe({"device": "cpu"}, tmp_path, dry_run=False)
    assert r.length({"epochs": 5, "batch_size": 256}, 51200, "stage2.s2") == 500
    assert r.metrics["length"]["stage2.s2"]["global_batch"] == 512
    assert "5 epochs = 500 steps" in capsys.readouterr().out


def test_paper_label_smoothing_matches_the_released_loss() -> None:
    """The released code: timm BinaryCrossEntropy(smoothing=0.2) on multi-hot BigEarthNet targets, which
    smooths nothing; the paper recipe's explicit label_smoothing reproduces that loss exactly."""
    import yaml
    from timm.loss import BinaryCrossEntropy

    from training.methods.modality_gap.recipe import _label_smoothing

    for path in (PAPER, PAPER.with_name("vit-b-32_openai_bigearthnet19_v2.yaml")):
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
        s1 = cfg["stage1"]
        g = torch.Generator().manual_seed(0)
        logits = torch.randn(8, 19, generator=g)
        y = (torch.rand(8, 19, generator=g) > 0.7).float()
        released = BinaryCrossEntropy(smoothing=0.2)(logits, y)
        ours = classification_loss(logits, y, s1["loss"], _label_smoothing(s1, "stage1"))
        assert torch.allclose(ours, released), path.name
    with pytest.raises(ValueError, match="label_smoothing is not set"):
        _label_smoothing({"loss": "bce"}, "stage1")


def test_in_memory_bigearthnet_stage2_with_bce_fails_loudly(tmp_path: Path, data_dir: Path, caplog) -> None:
    """streaming: false cuts BigEarthNet crops without labels: the lambda term must not vanish silently."""
    from training.methods.modality_gap.recipe import _Recipe

    cfg = {"device": "cpu", "data_dir": str(data_dir), "model": {"name": "rsclip-tiny"}, "data": {"streaming": False},
           "stage2": {"crop": 64, "lambda": 0.05, "loss": "bce",
                      "s2": {"sources": [{"kind": "bigearthnet_s2", "root": "bigearthnet_v1", "stride": 56}]}}}  # fmt: skip
    r = _Recipe(cfg, tmp_path, dry_run=False)
    r.build_model()
    with pytest.raises(ValueError, match=r"stage2.s2: BigEarthNet .*data.streaming: true"):
        r.stage2_data("s2")
    cfg["stage2"]["loss"] = "ce"  # single-label crops only: BigEarthNet crops are unlabelled, said in the metrics
    with caplog.at_level("WARNING"):
        d = r.stage2_data("s2")
    assert d["labelled"] == 0 and d["n"] > 0
    assert "classification term is off" in caplog.text


def test_in_memory_batches_are_sharded_by_rank(monkeypatch) -> None:
    from training.methods.modality_gap.finetune import shuffled_batches

    x, y = torch.arange(12.0).view(12, 1), torch.arange(12)
    seen = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        it = shuffled_batches([x], y, 3, seed=0, augment=False)
        seen.append(sorted(int(v) for _ in range(2) for v in next(it)[1]))  # one epoch of this rank's shard
    assert set(seen[0]).isdisjoint(seen[1]) and sorted(seen[0] + seen[1]) == list(range(12))
