"""Paper A checkpoint import (locally made files of the released layout) and `rsclip-train eval` on torch vs bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training.checkpoint import CheckpointError
from training.methods.modality_gap.import_paper import load_patched, student_state, visual_state
from training.methods.modality_gap.students import TimmStudent


def _paper_file(path: Path, model_state: dict) -> Path:
    """The released layout: {'model': ..., 'optimizer': ..., 'scaler': ...}."""
    torch.save({"model": model_state, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-5, "params": [0]}]},
                "scaler": {"scale": 65536.0, "growth_factor": 2.0}}, path)  # fmt: skip
    return path


def test_import_patched_and_aligned_into_bundle(tmp_path: Path, capsys):
    from rs_clip_plugin.engine.bundle import load_bundle
    from rs_clip_plugin.engine.runtime import EncoderSession
    from training.cli import main
    from training.models.factory import create_model

    src = create_model("rsclip-tiny").model
    with torch.no_grad():
        src.visual.conv1.weight.add_(0.5)  # a "patched" encoder that differs from a fresh model
    patched = _paper_file(tmp_path / "patched.pt", {f"model.{k}": v for k, v in src.state_dict().items() if k.startswith("visual.")})
    student = TimmStudent("vit_tiny_patch16_224", 13, 64, 64).eval()
    aligned = {**{k: v for k, v in student.backbone.state_dict().items()}, "head.weight": student.proj.weight, "head.bias": student.proj.bias}
    aligned_pt = _paper_file(tmp_path / "aligned.pt", {f"module.{k}": v for k, v in aligned.items()})

    target = create_model("rsclip-tiny").model
    load_patched(target, patched)
    assert torch.equal(target.visual.conv1.weight, src.visual.conv1.weight)
    assert set(student_state(aligned_pt)) == set(student.state_dict())

    out = tmp_path / "bundle"
    rc = main(["import-checkpoint", "--model", "rsclip-tiny", "--patched", str(patched), "--aligned", str(aligned_pt),
               "--student", "vit_tiny_patch16_224", "--student-size", "64", "--out", str(out)])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    b = load_bundle(out)
    assert b.manifest.modalities == ["rgb", "s2-l1c", "s2-l2a"]
    # The imported ViT student gets the default dense outputs (16 px patches at 64 px: a 4 x 4 grid).
    assert b.manifest.encoder("s2-l1c").dense["grid"] == [4, 4] and b.manifest.encoder("s2-l2a").dense
    assert b.manifest.provenance["parity"]["image_s2-l1c_dense_patches"]["min_cosine"] >= 0.9999
    x = np.random.default_rng(0).random((2, 13, 64, 64), dtype=np.float32)
    with torch.no_grad():
        want = student(torch.from_numpy(x)).numpy()
    # the fp32 graph against torch (auto could pick the bundle's int8 twin on this CPU: see test_precision.py)
    got = EncoderSession(b, "s2-l1c", provider="cpu", precision="fp32").run(x)
    assert np.allclose(got, want, atol=1e-4)


def test_import_rejects_wrong_files(tmp_path: Path):
    bad = _paper_file(tmp_path / "text_only.pt", {"model.token_embedding.weight": torch.zeros(3, 2)})
    with pytest.raises(CheckpointError, match="no image-encoder tensors"):
        visual_state(bad)
    from training.models.factory import create_model

    wrong = _paper_file(tmp_path / "wrong.pt", {"model.visual.conv1.weight": torch.zeros(1, 3, 2, 2)})
    with pytest.raises(CheckpointError, match="does not fit"):
        load_patched(create_model("rsclip-tiny").model, wrong)


def test_eval_bundle_matches_torch_source(tmp_path: Path, data_dir: Path, capsys):
    """An exported bundle (ONNX Runtime) and its torch checkpoint give the same zero-shot scores."""
    from training.checkpoint import save_checkpoint
    from training.cli import main
    from training.export.exporter import export_model
    from training.models.factory import create_model

    lm = create_model("rsclip-tiny")
    ckpt = save_checkpoint(lm.model, tmp_path / "ckpt", "rsclip-tiny")
    export_model(lm, out_dir=tmp_path / "bundle")
    common = ["--dataset", "eurosat_rgb", "--json"]
    assert main(["eval", "--model", "rsclip-tiny", "--checkpoint", str(ckpt), *common]) == 0
    torch_res = json.loads(capsys.readouterr().out)
    # the fp32 graph is the export of the checkpoint; auto may run the int8 twin on this CPU
    assert main(["eval", "--bundle", str(tmp_path / "bundle"), *common, "--precision", "fp32", "--out", str(tmp_path / "ev")]) == 0
    onnx_res = json.loads(capsys.readouterr().out)
    assert torch_res["n"] == onnx_res["n"] == 100
    assert np.allclose(torch_res["scores"], onnx_res["scores"], atol=1e-3)
    assert (tmp_path / "ev" / "eval.md").is_file()


def test_import_released_aligned_layout(tmp_path: Path):
    """Paper A's AlignmentAgent.save_checkpoint, replayed on a torch.compile'd KDClassifier-shaped module: keys
    visual.trunk.*, visual.head.* (the nn.Linear(384, D) main.py swaps in), _orig_mod.classification_head.*,
    _orig_mod.logit_scale and the student's leftover text parts."""
    import timm
    from torch import nn

    class Visual(nn.Module):  # open_clip's TimmModel: trunk + head
        def __init__(self):
            super().__init__()
            self.trunk = timm.create_model("vit_small_patch16_224", num_classes=0, depth=2, img_size=32, in_chans=13)
            self.head = nn.Linear(384, 64)

    class Clip(nn.Module):  # the student CLIP after delattr(transformer): visual + leftover text tensors
        def __init__(self):
            super().__init__()
            self.visual = Visual()
            self.token_embedding = nn.Embedding(10, 8)
            self.ln_final = nn.LayerNorm(8)
            self.logit_scale = nn.Parameter(torch.tensor(2.0))

    class KD(nn.Module):
        def __init__(self):
            super().__init__()
            self.teacher_model = nn.Linear(2, 2)
            self.student_model = Clip()
            self.classification_head = nn.Linear(64, 19)
            self.logit_scale = nn.Parameter(torch.tensor(4.6))

    torch.manual_seed(0)
    model = torch.compile(KD())  # the released config sets torch_compile: keys gain '_orig_mod.'
    prefix = "_orig_mod."
    state_dict = model.state_dict()
    for key in list(state_dict.keys()):  # the released loop, verbatim
        if f"{prefix}student_model." in key:
            state_dict[key.replace(f"{prefix}student_model.", "")] = state_dict[key]
            del state_dict[key]
        if "teacher_model" in key:
            del state_dict[key]
    assert {k.split(".")[0] for k in state_dict} == {"visual", "token_embedding", "ln_final", "logit_scale", "_orig_mod"}
    path = _paper_file(tmp_path / "ViT-B-32_openai_al_4.pt", state_dict)
    st = TimmStudent("vit_small_patch16_224", 13, 64, 32, model_kwargs={"depth": 2})
    state = student_state(path)
    assert set(state) == set(st.state_dict())
    st.load_state_dict(state)
    kd = model._orig_mod
    x = torch.rand(2, 13, 32, 32)
    with torch.no_grad():
        assert torch.allclose(st(x), kd.student_model.visual.head(kd.student_model.visual.trunk(x)), atol=1e-6)
