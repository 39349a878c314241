"""Bundle export: parity of every exported encoder with torch, fp16 twins, metadata, CLI, atomic output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rs_clip_plugin.engine.bundle import ONNX_META_PREFIX, BundleError, load_bundle, onnx_graph_io
from training.export.parity import (
    FP16_MIN_COSINE,
    FP32_MIN_COSINE,
    ParityError,
    check_parity,
    compare,
    ort_session,
)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.mark.parametrize("name", ["rsclip-tiny", "rsclip-tiny-multilingual"])
def test_export_fp32_and_fp16_parity(name: str, tmp_path: Path) -> None:
    from training.export.exporter import export_model

    report = export_model(name, out_dir=tmp_path / "b", fp16=True)
    parity = report["parity"]
    # The open_clip ViT gets dense outputs by default (issue 11), each checked in fp32 and fp16.
    dense = {"image_rgb_dense_patches", "image_rgb_dense_cls"}
    assert set(parity) == {"text", "text_fp16", "image_rgb", "image_rgb_fp16", *dense, *(k + "_fp16" for k in dense)}
    for key, fig in parity.items():
        assert fig["min_cosine"] >= (FP16_MIN_COSINE if key.endswith("fp16") else FP32_MIN_COSINE), key
        assert fig["max_abs_diff"] < (5e-2 if key.endswith("fp16") else 1e-3), key
    bundle = load_bundle(report["bundle"])
    m = bundle.manifest
    assert m.text.onnx_fp16 == "text.fp16.onnx" and m.encoders[0].onnx_fp16 == "image_rgb.fp16.onnx"
    assert m.provenance["parity"] == parity
    assert sorted(report["files"]) == sorted([*m.files, "manifest.json"])
    print(f"\n{name}: export {report['seconds']:.2f} s, parity {json.dumps(parity)}")


def test_tiny_bundle_manifest_and_metadata(tiny_bundle: Path) -> None:
    m = load_bundle(tiny_bundle).manifest
    assert (m.name, m.embed_dim, m.text.tokenizer_kind, m.text.languages) == ("rsclip-tiny", 64, "clip-bpe", ["en"])
    enc = m.encoder("rgb")
    assert (enc.bands, enc.units, enc.input_size, enc.tile_size_px, enc.gsd_m) == (["red", "green", "blue"], "unit", 64, 64, 10.0)
    assert m.prompt_templates["en"][0] == "a satellite image of {}."
    assert m.logit_scale == pytest.approx(1 / 0.07, rel=1e-4)  # open_clip's initial temperature, as a multiplier
    *_, meta = onnx_graph_io(tiny_bundle / enc.onnx)
    meta = {k[len(ONNX_META_PREFIX) :]: json.loads(v) for k, v in meta.items() if k.startswith(ONNX_META_PREFIX)}
    assert meta["role"] == "image" and meta["modality"] == "rgb" and meta["bands"] == ["red", "green", "blue"]
    assert meta["mean"] == pytest.approx(enc.mean) and meta["input_size"] == 64 and meta["embed_dim"] == 64
    *_, tmeta = onnx_graph_io(tiny_bundle / m.text.onnx)
    assert json.loads(tmeta[f"{ONNX_META_PREFIX}tokenizer"])["kind"] == "clip-bpe"
    assert json.loads(tmeta[f"{ONNX_META_PREFIX}context_length"]) == 77


def test_multilingual_bundle_has_ten_languages(tiny_multilingual_bundle: Path) -> None:
    m = load_bundle(tiny_multilingual_bundle).manifest
    langs = ["en", "pt", "es", "fr", "de", "nl", "it", "zh", "ko", "ru"]
    assert m.text.languages == langs
    assert list(m.prompt_templates) == langs
    assert all("{}" in t for ts in m.prompt_templates.values() for t in ts)


def test_engine_text_path_matches_torch_from_a_checkpoint(tmp_path: Path) -> None:
    """BundleTokenizer + ONNX Runtime (the engine's path) against open_clip's encode_text, same weights."""
    from rs_clip_plugin.engine.tokenizer import BundleTokenizer
    from training.checkpoint import save_checkpoint
    from training.export.exporter import export_model
    from training.models import create_model

    lm = create_model("rsclip-tiny-multilingual")
    ckpt = save_checkpoint(lm.model, tmp_path / "ckpt", lm.model_name, step=7)
    report = export_model("", checkpoint=ckpt, out_dir=tmp_path / "b")
    bundle = load_bundle(report["bundle"])
    assert bundle.manifest.provenance["checkpoint"] == str(ckpt)
    prompts = ["a satellite image of a river.", "uma imagem de satélite de um rio.", "一张河流的卫星图像。", "Снимок ЛЕСА"]
    ids = BundleTokenizer.from_bundle(bundle).encode(prompts)
    got = ort_session(bundle.path("text.onnx")).run(None, {"input_ids": ids})[0]
    with torch.no_grad():
        ref = lm.model.encode_text(lm.tokenizer(prompts)).numpy()
    assert compare(ref, got)["min_cosine"] >= FP32_MIN_COSINE


def test_parity_check_fails_on_a_wrong_graph(tiny_bundle: Path) -> None:
    """A graph that computes something else must be refused (the check can fail)."""
    wrong = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(64))
    x = torch.randn(3, 3, 64, 64)
    with pytest.raises(ParityError, match=r"image_rgb\.onnx"):
        check_parity(wrong, tiny_bundle / "image_rgb.onnx", "image", x)
    assert compare(np.ones((2, 4)), np.ones((2, 4)))["min_cosine"] == pytest.approx(1.0)


def test_refuses_non_empty_out_dir_and_leaves_no_partial_bundle(tmp_path: Path) -> None:
    from training.export.exporter import export_model

    out = tmp_path / "b"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(BundleError, match="not empty"):
        export_model("rsclip-tiny", out_dir=out)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    with pytest.raises(ValueError, match="unknown model"):
        export_model("no-such-model", out_dir=tmp_path / "c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no temp dirs left behind


def test_cli_json_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli-bundle"
    exe = Path(sys.executable).with_name("rsclip-train")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(exe), "export", "--model", "rsclip-tiny", "--out", str(out), "--json", "--zip"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    for key in ("text", "image_rgb"):
        assert report["parity"][key]["min_cosine"] >= FP32_MIN_COSINE
        assert "max_abs_diff" in report["parity"][key]
    assert Path(report["zip"]).is_file()
    assert load_bundle(report["zip"]).manifest.name == "rsclip-tiny"

    from training.cli import main as train_main

    assert train_main(["export", "--model", "rsclip-tiny", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


class _TinyStudent(torch.nn.Module):
    """A Sentinel-2 student in miniature: a multi-band patch embedding and a linear head to the CLIP space."""

    def __init__(self, bands: int, dim: int):
        super().__init__()
        self.patch = torch.nn.Conv2d(bands, 16, 8, 8)
        self.head = torch.nn.Linear(16, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.patch(x).mean(dim=(2, 3)))


def test_export_with_a_sentinel2_student(tmp_path: Path) -> None:
    from rs_clip_plugin.engine.bands import S2_L1C_BANDS
    from rs_clip_plugin.engine.radiometry import default_transform
    from training.export.exporter import ImageEncoderExport, export_model, rgb_encoder
    from training.models import create_model

    lm = create_model("rsclip-tiny-multilingual")
    units, transforms, mean, std = default_transform("s2-l1c", len(S2_L1C_BANDS))
    s2 = ImageEncoderExport(
        modality="s2-l1c", module=_TinyStudent(13, lm.embed_dim), bands=list(S2_L1C_BANDS), units=units,
        transforms=transforms, mean=mean, std=std, input_size=64, gsd_m=10.0, tile_size_px=64,
    )  # fmt: skip
    report = export_model(lm, out_dir=tmp_path / "b", image_encoders=[rgb_encoder(lm), s2], provenance={"method": "alignment"})
    # The student is not a ViT with a class token: no dense outputs, no dense parity keys.
    assert set(report["parity"]) == {"text", "image_rgb", "image_s2-l1c", "image_rgb_dense_patches", "image_rgb_dense_cls"}
    m = load_bundle(report["bundle"]).manifest
    assert m.modalities == ["rgb", "s2-l1c"] and m.encoder("s2-l1c").bands == list(S2_L1C_BANDS)
    assert m.encoder("s2-l1c").dense is None and m.encoder("rgb").dense["variant"] == "segearth"
    assert m.provenance["method"] == "alignment" and m.provenance["base_model"] == "rsclip-tiny-multilingual"


def test_export_of_a_fully_frozen_model(tmp_path: Path) -> None:
    """All parameters frozen: nn.MultiheadAttention would take its fused fast path, which has no ONNX export;
    the exporter turns that path off for the export only and restores the previous setting."""
    from training.export.exporter import export_model
    from training.models import create_model

    lm = create_model("rsclip-tiny")
    lm.model.requires_grad_(False)
    before = torch.backends.mha.get_fastpath_enabled()
    report = export_model(lm, out_dir=tmp_path / "frozen")
    assert torch.backends.mha.get_fastpath_enabled() == before
    assert set(report["parity"]) == {"text", "image_rgb", "image_rgb_dense_patches", "image_rgb_dense_cls"}
    for fig in report["parity"].values():
        assert fig["min_cosine"] >= FP32_MIN_COSINE
    assert load_bundle(report["bundle"]).manifest.modalities == ["rgb"]


def _op_counts(path: Path) -> dict[str, int]:
    import collections

    import onnx

    return collections.Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)


@pytest.mark.parametrize("tower", ["image", "text"])
def test_static_attention_export_is_leaner_and_keeps_parity(tower: str, tmp_path: Path) -> None:
    """Self-attention traced with static head reshapes: same outputs, far fewer shape nodes, batch still dynamic."""
    from training.export.onnx_export import ImageEncoder, TextEncoder, export_onnx, traceable_attention
    from training.export.parity import random_images
    from training.models.factory import create_model

    loaded = create_model("rsclip-tiny")
    loaded.model.eval()
    if tower == "image":  # plain self-attention
        module, name = ImageEncoder(loaded.model).eval(), "image"
        example = random_images(4, 3, loaded.image_size, seed=3)
    else:  # causal float mask added to the scores
        module, name = TextEncoder(loaded.model).eval(), "input_ids"
        example = loaded.tokenizer(["a satellite image of a forest.", "river", "industrial buildings", ""]).long()
    lean = export_onnx(module, example[:2], tmp_path / "lean.onnx", name, {"x": 1})
    plain = export_onnx(module, example[:2], tmp_path / "plain.onnx", name, {"x": 1}, static_attention=False)
    for path in (lean, plain):  # checked on 4 rows after tracing on 2: the batch axis is still dynamic
        fig = check_parity(module, path, name, example, FP32_MIN_COSINE)
        assert fig["max_abs_diff"] < 1e-4, (path.name, fig)
    lean_ops, plain_ops = _op_counts(lean), _op_counts(plain)
    assert sum(lean_ops.values()) < 0.6 * sum(plain_ops.values()), (lean_ops, plain_ops)
    assert lean_ops["Shape"] < plain_ops["Shape"] // 2, (lean_ops, plain_ops)
    # The swap is confined to the export: the model's own attention modules are back afterwards.
    assert all(type(m).__name__ != "TraceableSelfAttention" for m in loaded.model.modules())
    with traceable_attention(module) as swapped:
        # Encoders wrap the whole CLIP model, so both towers' blocks are swapped either way.
        assert swapped == len(loaded.model.transformer.resblocks) + len(loaded.model.visual.transformer.resblocks)
    assert all(type(m).__name__ != "TraceableSelfAttention" for m in module.modules())


def test_ort_fuses_layernorm_and_gelu_in_the_exported_graph(tiny_bundle: Path, tmp_path: Path) -> None:
    """The graph's LayerNorm / Gelu (bias included) patterns are ones ONNX Runtime's CPU optimiser fuses."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(tiny_bundle / "image_rgb.onnx"), so, providers=["CPUExecutionProvider"])
    ops = _op_counts(tmp_path / "opt.onnx")
    assert ops["LayerNormalization"] > 0 and ops["BiasGelu"] + ops["Gelu"] + ops["QuickGelu"] > 0, ops
    assert ops["Shape"] <= 4, ops  # the static-attention export leaves only the class-token/batch shapes
