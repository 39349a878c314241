"""Paper A's formulas pinned against hand-computed values, students, checkpoints, and the smoke recipe end to end."""

from __future__ import annotations

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


def test_timm_student_loads_local_checkpoint(tmp_path: Path):
    from training.checkpoint import CheckpointError

    src = TimmStudent("vit_tiny_patch16_224", 13, 64, 32)
    # MoCo-style layout: {'model': {'module.encoder_q.<key>': tensor}} with a head to drop.
    wrapped = {f"module.encoder_q.{k}": v for k, v in src.backbone.state_dict().items()}
    wrapped["module.encoder_q.head.weight"] = torch.zeros(10, 192)
    torch.save({"model": wrapped, "epoch": 3}, tmp_path / "moco.pth")
    dst = TimmStudent("vit_tiny_patch16_224", 13, 64, 32, checkpoint=tmp_path / "moco.pth")
    assert dst.load_report["loaded"] >= len(src.backbone.state_dict()) - 2
    assert "patch_embed.proj.weight" in dst.load_report["missing"]  # a new patch embedding, as in Paper A
    assert torch.equal(dst.backbone.blocks[0].attn.qkv.weight, src.backbone.blocks[0].attn.qkv.weight)
    assert dst(torch.rand(1, 13, 32, 32)).shape == (1, 64)
    torch.save({"model": {"something.else": torch.zeros(3)}}, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError, match="is it a checkpoint of this architecture"):
        TimmStudent("vit_tiny_patch16_224", 13, 64, 32, checkpoint=tmp_path / "wrong.pth")


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
    assert b.manifest.provenance["metrics"]["alignment"]["s2"]["cos_after"] == m["alignment"]["s2"]["cos_after"]
    assert "not a usable remote-sensing model" in b.manifest.provenance["description"]
    assert (smoke_run / "patching.md").read_text().startswith("## Stage 1")


def test_paper_recipe_dry_run(tmp_path: Path):
    from training.cli import main

    assert main(["run", str(PAPER), "--out", str(tmp_path), "--dry-run"]) == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["dry_run"] and m["stage1"]["steps"] == 1 and m["alignment"]["s2"]["steps"] == 1
    assert not (tmp_path / "bundle").exists()


def test_split_every_holds_out_by_position() -> None:
    items = [{"id": i % 3} for i in range(10)]  # equal-comparing items must not leak between the parts
    train, held = split_every(items, 4)
    assert len(held) == 2 and held[0] is items[3] and held[1] is items[7]
    assert len(train) == 8 and all(t is not items[3] and t is not items[7] for t in train)
    assert sum(t == {"id": 0} for t in train) == 3  # a filter on "not in held" would drop all four
    assert split_every(items, 0) == (items, [])
