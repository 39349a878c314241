"""Dense (per-pixel) zero-shot labelling, issue 11: the exported patch outputs, the manifest entry, classify's
dense mode on a real Sentinel-2 crop, and bundles without dense outputs staying in tile mode."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from plugin_support import s2_crop, s2_l2a_crop

from rs_clip_plugin.engine.bundle import (
    DENSE_CLS_OUTPUT,
    DENSE_VARIANTS,
    EMBEDDING_OUTPUT,
    PATCH_OUTPUT,
    BundleError,
    load_bundle,
    read_manifest,
    write_manifest,
)
from rs_clip_plugin.engine.classes import parse_classes
from rs_clip_plugin.engine.classify import classify_raster, dense_tile_logits
from rs_clip_plugin.engine.cli import main
from rs_clip_plugin.engine.errors import InputError
from rs_clip_plugin.engine.options import TilingOptions
from rs_clip_plugin.engine.pipeline import preprocess_tile
from rs_clip_plugin.engine.raster import open_source
from rs_clip_plugin.engine.runtime import EncoderSession
from rs_clip_plugin.engine.text import prompt_head

CLASSES = "forest|woodland;river;annual crop;town"
TILE = 64  # the tiny bundle's tile (64 px at 10 m)


@pytest.fixture(scope="module")
def tiny_model():
    from training.models.factory import create_model

    # Seeded, as conftest's bundles: the students below start from these weights, and tests that look at labels
    # (dense edges inside tiles) must not depend on which tests drew random numbers before this fixture.
    torch.manual_seed(0)
    loaded = create_model("rsclip-tiny")
    loaded.model.eval()
    return loaded


@pytest.fixture(scope="module")
def crop(major_tom_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return s2_crop(major_tom_dir, tmp_path_factory.mktemp("crop") / "crop.tif", size=3 * TILE)


def _non_uniform_blocks(labels: np.ndarray, size: int = TILE) -> int:
    """Tile-sized blocks of a label map holding more than one label."""
    h, w = labels.shape
    return sum(len(np.unique(labels[r : r + size, c : c + size])) > 1
               for r in range(0, h - size + 1, size) for c in range(0, w - size + 1, size))


# -- export --------------------------------------------------------------------------------------------

def test_tiny_bundle_has_dense_outputs_with_parity(tiny_bundle: Path) -> None:
    m = load_bundle(tiny_bundle).manifest
    rgb = m.encoder("rgb")
    assert rgb.dense == {"variant": "segearth", "grid": [8, 8],
                         "outputs": {"patches": PATCH_OUTPUT, "cls": DENSE_CLS_OUTPUT}}
    parity = m.provenance["parity"]
    for key in ("image_rgb", "image_rgb_dense_patches", "image_rgb_dense_cls"):
        assert parity[key]["min_cosine"] >= 0.9999, key
    # The int8 twin still loads and runs the pooled output (its agreement was measured as before).
    assert rgb.onnx_int8 and rgb.int8_label_agreement is not None
    sess = EncoderSession(load_bundle(tiny_bundle), "rgb", provider="cpu", precision="int8")
    assert sess.embed(np.zeros((2, 3, 64, 64), np.float32)).shape == (2, m.embed_dim)


@pytest.mark.parametrize("variant", DENSE_VARIANTS)
def test_every_variant_exports_with_parity(variant: str, tiny_model, tmp_path: Path) -> None:
    from training.export.onnx_export import DenseImageEncoder, ImageEncoder, export_onnx
    from training.export.parity import check_parity_outputs, random_images

    module = DenseImageEncoder(tiny_model.model, variant)
    x = random_images(3, 3, 64, seed=7)
    path = export_onnx(module, x[:2], tmp_path / "d.onnx", "image", {}, outputs=module.outputs)
    figures = check_parity_outputs(module, path, "image", x, module.outputs)
    assert set(figures) == {EMBEDDING_OUTPUT, PATCH_OUTPUT, DENSE_CLS_OUTPUT}
    assert min(f["min_cosine"] for f in figures.values()) >= 0.9999
    with torch.no_grad():
        pooled, patches, cls = module(x)
        plain = ImageEncoder(tiny_model.model)(x)
    # The pooled output is today's embedding, untouched by the dense branch beside it.
    assert torch.allclose(pooled, plain, atol=1e-6)
    assert patches.shape == (3, 64, tiny_model.embed_dim) and cls.shape == (3, tiny_model.embed_dim)


def test_segearth_patch_tokens_match_the_formula(tiny_model) -> None:
    """SegEarth-OV's last block written out independently: per head softmax(qq^T)+softmax(kk^T)+softmax(vv^T)
    applied to v, out_proj, no residual nor FFN, then ln_post and proj."""
    from training.export.onnx_export import DenseImageEncoder

    v = tiny_model.model.visual
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        _, patches, cls = DenseImageEncoder(tiny_model.model, "segearth")(x)
        t = v._embeds(x)
        for blk in v.transformer.resblocks[:-1]:
            t = blk(t)
        last = v.transformer.resblocks[-1]
        y = last.ln_1(t)
        mha = last.attn
        c, h = y.shape[-1], mha.num_heads
        q, k, val = (torch.nn.functional.linear(y, w, b) for w, b in
                     zip(mha.in_proj_weight.chunk(3), mha.in_proj_bias.chunk(3)))
        split = lambda z: z.reshape(2, -1, h, c // h).permute(0, 2, 1, 3)  # noqa: E731
        q, k, val = split(q), split(k), split(val)
        att = sum(torch.softmax(z @ z.transpose(-1, -2) / (c // h) ** 0.5, dim=-1) for z in (q, k, val))
        out = mha.out_proj((att @ val).permute(0, 2, 1, 3).reshape(2, -1, c))
        ref = v.ln_post(out) @ v.proj
    assert torch.allclose(patches, ref[:, 1:], atol=1e-5) and torch.allclose(cls, ref[:, 0], atol=1e-5)


def test_non_vit_towers_get_no_dense_path() -> None:
    from training.export.onnx_export import DenseImageEncoder, supports_dense

    class NotClip(torch.nn.Module):
        visual = torch.nn.Conv2d(3, 4, 3)

    assert not supports_dense(NotClip())
    with pytest.raises(ValueError, match="no dense path"):
        DenseImageEncoder(NotClip())


# -- students (Paper A's S2 / S1 encoders) ----------------------------------------------------------------

# A small timm ViT of Paper A's family (vit_small_patch16_224), shrunk: 2 blocks, 48 wide, 8 px patches at 64 px.
TIMM_KW = {"depth": 2, "embed_dim": 48, "num_heads": 3, "patch_size": 8}


def _timm_student(bands: int, **kw):
    from training.methods.modality_gap.students import TimmStudent

    torch.manual_seed(1)
    return TimmStudent("vit_small_patch16_224", bands, 64, 64, model_kwargs={**TIMM_KW, **kw}).eval()


def _clip_student(tiny_model, bands):
    from training.methods.modality_gap.students import ClipVisualStudent

    return ClipVisualStudent(tiny_model.model.visual, bands, fill="mean").eval()


def _timm_from_clip(tiny_model, bands):
    """A timm ViT student carrying the weights of rsclip-tiny's visual tower (inflated to ``bands`` as a
    ClipVisualStudent is): the same function written by the other library, so its dense path can be checked
    against the open_clip one, and it labels a scene as a trained student would rather than as a fresh timm init
    (whose near-uniform attention gives every patch the same token)."""
    from functools import partial

    from training.methods.modality_gap.students import TimmStudent

    v = _clip_student(tiny_model, bands).visual
    width = v.conv1.out_channels
    st = TimmStudent("vit_small_patch16_224", len(bands), tiny_model.embed_dim, 64, model_kwargs={
        "depth": len(v.transformer.resblocks), "embed_dim": width, "num_heads": v.transformer.resblocks[0].attn.num_heads,
        "patch_size": v.conv1.kernel_size[0], "pre_norm": True, "norm_layer": partial(torch.nn.LayerNorm, eps=1e-5)})
    bb = st.backbone
    with torch.no_grad():
        bb.patch_embed.proj.weight.copy_(v.conv1.weight)  # no bias: timm drops it with pre_norm, as CLIP has none
        bb.cls_token.copy_(v.class_embedding.view(1, 1, -1))
        bb.pos_embed.copy_(v.positional_embedding[None])
        for dst, src in ((bb.norm_pre, v.ln_pre), (bb.norm, v.ln_post)):
            dst.load_state_dict(src.state_dict())
        for blk, res in zip(bb.blocks, v.transformer.resblocks):
            blk.norm1.load_state_dict(res.ln_1.state_dict())
            blk.norm2.load_state_dict(res.ln_2.state_dict())
            blk.attn.qkv.weight.copy_(res.attn.in_proj_weight)
            blk.attn.qkv.bias.copy_(res.attn.in_proj_bias)
            blk.attn.proj.load_state_dict(res.attn.out_proj.state_dict())
            blk.mlp.fc1.load_state_dict(res.mlp.c_fc.state_dict())
            blk.mlp.fc2.load_state_dict(res.mlp.c_proj.state_dict())
        st.proj.weight.copy_(v.proj.T)
        st.proj.bias.zero_()
    return st.eval()


@pytest.mark.parametrize("variant", DENSE_VARIANTS)
def test_timm_path_equals_the_open_clip_path_on_the_same_weights(variant: str, tiny_model) -> None:
    """One tower in two libraries: the timm dense path (fused qkv, its own scale, norm, proj) gives what the
    open_clip one gives, for every variant."""
    from rs_clip_plugin.engine.bands import S1_GRD_BANDS
    from training.export.onnx_export import DenseImageEncoder, DenseTimmEncoder, dense_encoder

    clip = dense_encoder(_clip_student(tiny_model, S1_GRD_BANDS), variant)
    timm = dense_encoder(_timm_from_clip(tiny_model, S1_GRD_BANDS), variant)
    assert isinstance(clip, DenseImageEncoder) and isinstance(timm, DenseTimmEncoder) and clip.grid == timm.grid
    x = torch.randn(2, 2, 64, 64, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        for a, b in zip(clip(x), timm(x)):
            assert a.shape == b.shape and torch.allclose(a, b, atol=1e-4), (variant, (a - b).abs().max())


@pytest.mark.parametrize("variant", DENSE_VARIANTS)
def test_timm_student_every_variant_exports_with_parity(variant: str, tmp_path: Path) -> None:
    from training.export.onnx_export import DenseTimmEncoder, dense_encoder, export_onnx
    from training.export.parity import check_parity_outputs, random_images

    student = _timm_student(13)
    module = dense_encoder(student, variant)
    assert isinstance(module, DenseTimmEncoder) and module.grid == (8, 8) and module.prefix == 1
    x = random_images(3, 13, 64, seed=5)
    path = export_onnx(module, x[:2], tmp_path / "s.onnx", "image", {}, outputs=module.outputs)
    figures = check_parity_outputs(module, path, "image", x, module.outputs)
    assert min(f["min_cosine"] for f in figures.values()) >= 0.9999
    with torch.no_grad():
        pooled, patches, cls = module(x)
        # The pooled output is the student's own embedding (what tile mode and search use), untouched.
        assert torch.allclose(pooled, student(x), atol=1e-6)
    assert patches.shape == (3, 64, 64) and cls.shape == (3, 64)


def test_timm_segearth_matches_the_formula_with_registers_qk_norm_and_layerscale() -> None:
    """SegEarth-OV on a timm ViT written out independently: register tokens excluded from the patches, q/k
    norms applied, LayerScale kept, no residual nor MLP, then the final norm and the student's proj."""
    from training.export.onnx_export import dense_encoder

    student = _timm_student(13, reg_tokens=2, qk_norm=True, init_values=0.5)
    module = dense_encoder(student, "segearth")
    assert module.prefix == 3 and module.grid == (8, 8)
    bb = student.backbone
    x = torch.randn(2, 13, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        _, patches, cls = module(x)
        t = bb.blocks[0](bb._pos_embed(bb.patch_embed(x)))
        last = bb.blocks[1]
        a = last.attn
        y = last.norm1(t)
        q, k, v = a.qkv(y).reshape(2, -1, 3, 3, 16).permute(2, 0, 3, 1, 4)
        q, k = a.q_norm(q), a.k_norm(k)
        att = sum(torch.softmax(z @ z.transpose(-1, -2) / 16**0.5, dim=-1) for z in (q, k, v))
        out = last.ls1(a.proj((att @ v).transpose(1, 2).reshape(2, -1, 48)))
        ref = student.proj(bb.norm(out))
    assert ref.shape[1] == 3 + 64
    assert torch.allclose(patches, ref[:, 3:], atol=1e-5) and torch.allclose(cls, ref[:, 0], atol=1e-5)


def test_clip_visual_student_is_dense_through_its_visual_tower(tiny_model, tmp_path: Path) -> None:
    from rs_clip_plugin.engine.bands import S2_L1C_BANDS
    from training.export.onnx_export import DenseImageEncoder, dense_encoder, export_onnx, supports_dense
    from training.export.parity import check_parity_outputs, random_images

    student = _clip_student(tiny_model, S2_L1C_BANDS)
    assert supports_dense(student)
    module = dense_encoder(student, "segearth")
    assert isinstance(module, DenseImageEncoder) and module.grid == (8, 8)  # the grid of its own visual tower
    x = random_images(3, 13, 64, seed=6)
    path = export_onnx(module, x[:2], tmp_path / "s.onnx", "image", {}, outputs=module.outputs)
    assert min(f["min_cosine"] for f in check_parity_outputs(module, path, "image", x, module.outputs).values()) >= 0.9999
    with torch.no_grad():
        assert torch.allclose(module(x)[0], student(x), atol=1e-6)


def test_students_without_a_dense_path_are_refused_or_exported_pooled() -> None:
    from training.export.exporter import student_module
    from training.export.onnx_export import DenseTimmEncoder, dense_encoder, supports_dense

    avg = _timm_student(13, global_pool="avg")
    assert not supports_dense(avg)
    with pytest.raises(ValueError, match=r"no dense path: .*'avg'.*class-token pooling"):
        dense_encoder(avg, "segearth")
    assert student_module(avg, "segearth") is avg  # the recipe's default: pooled only, tile mode, a warning
    with pytest.raises(ValueError, match=r"has none: .*set export.dense to none"):
        student_module(avg, "segearth", strict=True)
    plain = _timm_student(13)
    assert isinstance(student_module(plain, "naclip"), DenseTimmEncoder) and student_module(plain, None) is plain
    with pytest.raises(ValueError, match="unknown dense variant"):
        dense_encoder(plain, "segment-anything")


def test_recipe_export_dense_setting() -> None:
    from training.methods.modality_gap.recipe import export_dense_variant

    assert export_dense_variant({}) == "segearth" and export_dense_variant({"dense": "sclip"}) == "sclip"
    assert export_dense_variant({"dense": "none"}) is None and export_dense_variant({"dense": None}) is None
    with pytest.raises(ValueError, match=r"export.dense is 'seg': use one of segearth"):
        export_dense_variant({"dense": "seg"})


@pytest.fixture(scope="module", params=["clip_visual", "timm"])
def student_bundle(request, tiny_model, tmp_path_factory: pytest.TempPathFactory):
    """rsclip-tiny's text + rgb and the recipe's encoder layout: one 13-band S2 student exported as s2-l1c and as
    s2-l2a (12 bands + 'zero' for B10), and an S1 student; the S2 student is ``param``'s kind, the S1 one the
    other, each wrapped for dense outputs as the recipe's export does. Returns (bundle, {modality: module})."""
    from rs_clip_plugin.engine.bands import S1_GRD_BANDS, S2_L1C_BANDS
    from rs_clip_plugin.engine.radiometry import default_transform
    from training.data.composites import S2_L2A_AS_13
    from training.export.exporter import ImageEncoderExport, export_model, rgb_encoder, student_module

    def make(kind: str, bands) -> torch.nn.Module:
        return (_clip_student if kind == "clip_visual" else _timm_from_clip)(tiny_model, bands)

    other = "timm" if request.param == "clip_visual" else "clip_visual"
    torch.manual_seed(1)  # the students' new layers (inflated conv1, timm blocks): the same in every run order
    s2 = student_module(make(request.param, S2_L1C_BANDS), strict=True)
    s1 = student_module(make(other, S1_GRD_BANDS), strict=True)

    def enc(modality: str, module, bands) -> ImageEncoderExport:
        units, transforms, mean, std = default_transform(modality, len(bands))
        return ImageEncoderExport(modality, module, list(bands), units, transforms, mean, std, input_size=64)

    out = tmp_path_factory.mktemp("bundles") / f"students-{request.param}"
    report = export_model(tiny_model, out_dir=out, name=f"students-{request.param}", int8=False, image_encoders=[
        rgb_encoder(tiny_model), enc("s2-l1c", s2, S2_L1C_BANDS), enc("s2-l2a", s2, S2_L2A_AS_13),
        enc("s1-grd", s1, S1_GRD_BANDS)])
    return out, {"s2-l1c": s2, "s2-l2a": s2, "s1-grd": s1}, report


def test_student_bundle_manifest_and_parity(student_bundle) -> None:
    out, _, report = student_bundle
    m = load_bundle(out).manifest
    parity = m.provenance["parity"]
    assert report["parity"] == parity  # what `rsclip-train export --json` reports
    for modality in ("s2-l1c", "s2-l2a", "s1-grd"):
        assert m.encoder(modality).dense == {"variant": "segearth", "grid": [8, 8],
                                             "outputs": {"patches": PATCH_OUTPUT, "cls": DENSE_CLS_OUTPUT}}
        for suffix in ("", "_dense_patches", "_dense_cls"):
            assert parity[f"image_{modality}{suffix}"]["min_cosine"] >= 0.9999, modality + suffix


def test_student_dense_outputs_in_onnx_runtime_match_torch(student_bundle, major_tom_dir: Path, tmp_path: Path) -> None:
    """The engine's session on real preprocessed Sentinel-2 pixels against the torch student."""
    out, modules, _ = student_bundle
    b = load_bundle(out)
    spec = b.manifest.encoder("s2-l2a")
    crop12 = s2_l2a_crop(major_tom_dir, tmp_path / "c.tif", size=2 * TILE)
    with open_source(crop12) as src:
        x = np.stack([preprocess_tile(src.read_for(spec, rasterio.windows.Window(c, r, TILE, TILE)), spec)
                      for r in (0, TILE) for c in (0, TILE)])
    got = EncoderSession(b, "s2-l2a", provider="cpu", dense=True).embed_dense(x)
    with torch.no_grad():
        pooled, patches, cls = (t.numpy() for t in modules["s2-l2a"](torch.from_numpy(x)))

    def unit(a: np.ndarray) -> np.ndarray:
        return a / np.linalg.norm(a, axis=-1, keepdims=True)

    for ours, ref in ((got.pooled, pooled), (got.patches, patches), (got.cls, cls)):
        assert (ours * unit(ref)).sum(-1).min() >= 0.9999


def test_twelve_band_scene_gets_dense_labels_from_the_s2_student(student_bundle, major_tom_dir: Path,
                                                                   tmp_path: Path) -> None:
    """Issue 11's 'done when' on the students: a real 12-band L2A crop, auto mode, per-pixel results inside tiles."""
    out, _, _ = student_bundle
    crop12 = s2_l2a_crop(major_tom_dir, tmp_path / "crop12.tif", size=3 * TILE)
    dense = classify_raster(crop12, CLASSES, tmp_path / "dense", bundle=out, provider="cpu")
    tile = classify_raster(crop12, CLASSES, tmp_path / "tile", bundle=out, provider="cpu", mode="tile")
    summary = json.loads(dense.summary_path.read_text())
    assert summary["mode"] == "dense" and summary["dense"]["grid"] == [8, 8]
    assert dense.summary["modality"] == "s2-l2a"
    with rasterio.open(dense.labels_path) as ds:
        dense_labels = ds.read(1)
    with rasterio.open(tile.labels_path) as ds:
        tile_labels = ds.read(1)
    assert dense_labels.shape == (3 * TILE, 3 * TILE) and dense_labels.min() >= 1
    assert _non_uniform_blocks(tile_labels) == 0
    # Per-pixel results from the patch outputs: the dense confidence varies inside every tile, tile mode's is one
    # value per tile. (Whether an untrained student's argmax also changes inside a tile is up to its random
    # weights: asserting that passed or failed with the order the tests ran in.)
    conf = {}
    for mode, res in (("dense", dense), ("tile", tile)):
        with rasterio.open(res.confidence_path) as ds:
            conf[mode] = ds.read(1)
    assert _non_uniform_blocks(conf["tile"]) == 0 and _non_uniform_blocks(conf["dense"]) == 9


# -- manifest and info ----------------------------------------------------------------------------------

def test_info_json_shows_dense_per_encoder(tiny_bundle: Path, plain_bundle: Path, capsys) -> None:
    assert main(["info", str(tiny_bundle), "--json"]) == 0
    enc = json.loads(capsys.readouterr().out)["encoders"][0]
    assert enc["dense"]["variant"] == "segearth" and enc["dense"]["grid"] == [8, 8]
    assert main(["info", str(plain_bundle), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["encoders"][0]["dense"] is None
    # A bundle without dense outputs writes the manifest it always did: no 'dense' key at all.
    assert "dense" not in json.loads((plain_bundle / "manifest.json").read_text())["encoders"][0]


def test_manifest_dense_entry_is_checked(plain_bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "b"
    shutil.copytree(plain_bundle, copy)
    m = read_manifest(copy)
    m.encoders[0].dense = {"variant": "segearth", "grid": [8, 8],
                           "outputs": {"patches": PATCH_OUTPUT, "cls": DENSE_CLS_OUTPUT}}
    write_manifest(copy, m)
    with pytest.raises(BundleError, match=r"dense outputs .* the graph lacks"):
        load_bundle(copy, verify=False)
    m.encoders[0].dense = {"variant": "segearth", "grid": [8], "outputs": {}}
    with pytest.raises(BundleError, match=r"dense\.grid"):
        write_manifest(copy, m)


# -- classify -------------------------------------------------------------------------------------------

def test_dense_labels_vary_inside_tiles(tiny_bundle: Path, crop: Path, tmp_path: Path) -> None:
    b = load_bundle(tiny_bundle)
    dense = classify_raster(crop, CLASSES, tmp_path / "dense", bundle=b, provider="cpu")
    tile = classify_raster(crop, CLASSES, tmp_path / "tile", bundle=b, provider="cpu", mode="tile")
    assert dense.summary["mode"] == "dense" and dense.summary["precision"] == "fp32"
    assert dense.summary["dense"] == {"variant": "segearth", "grid": [8, 8], "bias_lambda": 0.3}
    assert tile.summary["mode"] == "tile" and tile.summary["dense"] is None
    assert json.loads(dense.summary_path.read_text())["mode"] == "dense"
    with rasterio.open(dense.labels_path) as ds:
        dense_labels = ds.read(1)
    with rasterio.open(tile.labels_path) as ds:
        tile_labels = ds.read(1)
    assert dense_labels.shape == tile_labels.shape == (3 * TILE, 3 * TILE)
    assert dense_labels.min() >= 1
    assert _non_uniform_blocks(tile_labels) == 0  # one label per tile without overlap
    assert _non_uniform_blocks(dense_labels) > 0  # edges inside tiles

    # The first tile recomputed by hand: patch logits with the bias alleviation, upsampled to 64 x 64.
    spec = b.manifest.encoder("rgb")
    with open_source(crop) as src:
        x = preprocess_tile(src.read_for(spec, rasterio.windows.Window(0, 0, TILE, TILE)), spec)
    out = EncoderSession(b, "rgb", provider="cpu", dense=True).embed_dense(x[None])
    # Synonyms are merged by max (the default): forest and woodland each get a vector, the class its better logit.
    assert dense.summary["synonyms"] == tile.summary["synonyms"] == "max"
    head = prompt_head(b, parse_classes(CLASSES), synonyms="max")
    assert head.vectors.shape[0] == 5 and head.n_columns == 4
    logits = dense_tile_logits(out.patches[0], out.cls[0], head, b.manifest.logit_scale, (8, 8), TILE, TILE)
    assert np.array_equal(dense_labels[:TILE, :TILE], logits.argmax(axis=0) + 1)


def test_dense_with_overlap_and_cli_modes(tiny_bundle: Path, crop: Path, tmp_path: Path, capsys) -> None:
    rc = main(["classify", str(crop), "--classes", CLASSES, "--out", str(tmp_path / "o"), "--bundle", str(tiny_bundle),
               "--provider", "cpu", "--overlap", "0.5", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mode"] == "dense" and out["tiling"]["stride_px"] == 32
    rc = main(["classify", str(crop), "--classes", CLASSES, "--out", str(tmp_path / "t"), "--bundle", str(tiny_bundle),
               "--provider", "cpu", "--mode", "tile"])
    assert rc == 0 and "tile mode" in capsys.readouterr().out
    assert json.loads((tmp_path / "t" / "summary.json").read_text())["mode"] == "tile"


def test_bundle_without_dense_falls_back_to_tile_mode(plain_bundle: Path, crop: Path, tmp_path: Path) -> None:
    res = classify_raster(crop, CLASSES, tmp_path / "o", bundle=plain_bundle, provider="cpu")
    assert res.summary["mode"] == "tile" and res.summary["dense"] is None
    with pytest.raises(InputError, match="has none"):
        classify_raster(crop, CLASSES, tmp_path / "d", bundle=plain_bundle, provider="cpu", mode="dense")
    assert not (tmp_path / "d").exists()


def test_dense_mode_refuses_int8_and_auto_keeps_int8_in_tile_mode(tiny_bundle: Path, crop: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="dense mode runs the fp32 graph"):
        classify_raster(crop, CLASSES, tmp_path / "d", bundle=tiny_bundle, provider="cpu", mode="dense",
                        precision="int8")
    res = classify_raster(crop, CLASSES, tmp_path / "a", bundle=tiny_bundle, provider="cpu", precision="int8")
    assert res.summary["mode"] == "tile" and res.summary["precision"] == "int8"


def test_mode_option_is_checked() -> None:
    assert TilingOptions(mode="auto").mode is None
    with pytest.raises(InputError, match="mode"):
        TilingOptions(mode="pixel")


# -- search heat maps at patch resolution ---------------------------------------------------------------

def test_index_with_patch_embeddings_and_patch_heatmap(tiny_bundle: Path, crop: Path, tmp_path: Path) -> None:
    """build_index(dense_heatmap=True) stores per tile and patch p - 0.3 c (float16, verified like the other
    arrays); search heat maps then score patches, upsampled bilinearly: they vary inside tiles, unlike per-tile
    maps, and equal the patch scores of each tile by hand."""
    from rs_clip_plugin.engine.classify import GLOBAL_BIAS_LAMBDA
    from rs_clip_plugin.engine.index import PATCHES, IndexCacheError, build_index, open_index
    from rs_clip_plugin.engine.pipeline import resize_hw
    from rs_clip_plugin.engine.search import search, text_query_vector

    b = load_bundle(tiny_bundle)
    idx = build_index(crop, b, provider="cpu", dense_heatmap=True)
    assert idx.patches is not None and idx.patches.shape == (9, 64, b.manifest.embed_dim)
    assert idx.patches.dtype == np.float16 and idx.patch_grid == (8, 8)
    assert idx.summary()["patches"] == {"grid": [8, 8], "bytes": (idx.root / PATCHES).stat().st_size}
    assert idx.meta["precision_used"] == "fp32"
    plain = build_index(crop, b, provider="cpu", precision="fp32")
    assert plain.root != idx.root and plain.patches is None and plain.summary()["patches"] is None
    # The pooled rows are the tile embeddings of the plain index (same fp32 graph), the patches p - 0.3 c.
    assert np.allclose(idx.embeddings, plain.embeddings, atol=1e-5)
    spec = b.manifest.encoder("rgb")
    with open_source(crop) as src:
        x = preprocess_tile(src.read_for(spec, rasterio.windows.Window(*idx.tiles[4])), spec)
    out = EncoderSession(b, "rgb", provider="cpu", dense=True).embed_dense(x[None])
    want = out.patches[0] - GLOBAL_BIAS_LAMBDA * out.cls[0]
    assert np.allclose(np.asarray(idx.patches[4], np.float32), want, atol=2e-3)
    assert build_index(crop, b, provider="cpu", dense_heatmap=True).reused

    q = text_query_vector(b, "a river")
    res = search([crop], q, tmp_path / "patch", bundle=b, heatmap=True, dense_heatmap=True, provider="cpu", top_k=2)
    tile = search([crop], q, tmp_path / "tile", bundle=b, heatmap=True, provider="cpu", precision="fp32", top_k=2)
    with rasterio.open(res.heatmap_path) as ds:
        heat, tags = ds.read(1), ds.tags()
    with rasterio.open(tile.heatmap_path) as ds:
        flat, flat_tags = ds.read(1), ds.tags()
    assert tags["RSCLIP_HEATMAP"] == "patch" and flat_tags["RSCLIP_HEATMAP"] == "tile"
    assert _non_uniform_blocks(flat) == 0 and heat.shape == flat.shape == (3 * TILE, 3 * TILE)
    c, r, w, h = (int(v) for v in idx.tiles[4])
    by_hand = resize_hw((np.asarray(idx.patches[4], np.float32) @ q).reshape(1, 8, 8), h, w)[0]
    assert np.allclose(heat[r : r + h, c : c + w], by_hand, atol=1e-5)
    assert np.ptp(heat[r : r + h, c : c + w]) > 0  # varies inside the tile
    assert [h.tile for h in res.hits] == [h.tile for h in tile.hits]  # the ranking is the tiles' own

    # An altered patch file is never trusted: the index is rebuilt.
    arr = np.load(idx.root / PATCHES, mmap_mode="r+")
    arr[0, 0, 0] += 1
    arr.flush()
    del arr
    with pytest.raises(IndexCacheError, match="altered"):
        open_index(idx.root)
    assert not build_index(crop, b, provider="cpu", dense_heatmap=True).reused


def test_patch_heatmap_chunks_are_bounded_in_bytes(tiny_bundle: Path, crop: Path, tmp_path: Path, monkeypatch) -> None:
    """Patch scores are computed in chunks bounded in bytes, not in tiles (a ViT-B/16's patches are 25x the tiny
    model's per tile): with room for two tiles' float32 patches a chunk holds two tiles, and the heat map is the
    one a single chunk gives."""
    from rs_clip_plugin.engine import search as search_mod
    from rs_clip_plugin.engine.index import Index
    from rs_clip_plugin.engine.search import search, text_query_vector

    b = load_bundle(tiny_bundle)
    q = text_query_vector(b, "a river")
    res = search([crop], q, tmp_path / "one", bundle=b, heatmap=True, dense_heatmap=True, provider="cpu", top_k=2)
    with rasterio.open(res.heatmap_path) as ds:
        whole = ds.read(1)
    per_tile = 4 * 64 * b.manifest.embed_dim  # 8x8 patches, float32
    monkeypatch.setattr(search_mod, "PATCH_CHUNK_BYTES", 2 * per_tile)
    chunks: list[int] = []
    real = Index.patch_scores

    def recording(self, query, rows):  # the real scoring, its chunk sizes noted
        out = real(self, query, rows)
        chunks.append(len(out))
        return out

    monkeypatch.setattr(Index, "patch_scores", recording)
    res = search([crop], q, tmp_path / "two", bundle=b, heatmap=True, dense_heatmap=True, provider="cpu", top_k=2)
    assert chunks == [2, 2, 2, 2, 1]  # the crop's 9 tiles
    with rasterio.open(res.heatmap_path) as ds:
        np.testing.assert_array_equal(ds.read(1), whole)


def test_patch_index_with_no_data_tiles_keeps_rows_aligned(tiny_bundle: Path, crop: Path, tmp_path: Path,
                                                           monkeypatch) -> None:
    """Skipped no-data tiles leave rows unused; the filled rows of the embeddings and the patches are copied out
    by one mechanism (in byte-bounded chunks, here of 3 tiles' patches): row k of both arrays is tile k of
    tiles.npy, and no working file is left in the index."""
    from rs_clip_plugin.engine import index as index_mod
    from rs_clip_plugin.engine.classify import GLOBAL_BIAS_LAMBDA

    holes = tmp_path / "holes.tif"
    with rasterio.open(crop) as ds:
        data, profile = ds.read(), {**ds.profile, "nodata": 0}
    data[:, :TILE, :TILE] = 0  # tile 0: no data
    data[:, 2 * TILE :, TILE : 2 * TILE] = 0  # tile 7
    with rasterio.open(holes, "w", **profile) as ds:
        ds.write(data)
    b = load_bundle(tiny_bundle)
    monkeypatch.setattr(index_mod, "COPY_CHUNK_BYTES", 3 * 64 * b.manifest.embed_dim * 2)
    idx = index_mod.build_index(holes, b, provider="cpu", dense_heatmap=True)
    assert len(idx) == 7 and idx.patches.shape[0] == 7
    assert {(int(c), int(r)) for c, r, _w, _h in idx.tiles} == {(c * TILE, r * TILE) for r in range(3)
                                                             for c in range(3)} - {(0, 0), (TILE, 2 * TILE)}
    spec = b.manifest.encoder("rgb")
    session = EncoderSession(b, "rgb", provider="cpu", dense=True)
    with open_source(holes) as src:
        x = np.stack([preprocess_tile(src.read_for(spec, rasterio.windows.Window(*t)), spec) for t in idx.tiles])
    out = session.embed_dense(x)
    np.testing.assert_allclose(np.asarray(idx.patches, np.float32),
                               out.patches - GLOBAL_BIAS_LAMBDA * out.cls[:, None, :], atol=2e-3)
    np.testing.assert_allclose(idx.embeddings, out.pooled, atol=1e-5)
    assert sorted(p.name for p in idx.root.iterdir() if p.name.startswith("all")) == []


def test_dense_heatmap_needs_dense_outputs(plain_bundle: Path, crop: Path, tmp_path: Path, capsys) -> None:
    rc = main(["search", str(crop), "--query", "a river", "--heatmap", "--dense-heatmap", "--out", str(tmp_path / "s"),
               "--bundle", str(plain_bundle), "--provider", "cpu"])
    assert rc == 2 and "--dense-heatmap needs an encoder with dense outputs" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_cli_dense_heatmap_writes_the_patch_heat_map(tiny_bundle: Path, crop: Path, tmp_path: Path) -> None:
    """`rsclip search --dense-heatmap` without `--heatmap` writes the patch heat map it asked for (it used to
    index every tile's patches and write hits only)."""
    rc = main(["search", str(crop), "--query", "a river", "--dense-heatmap", "--out", str(tmp_path / "s"),
               "--bundle", str(tiny_bundle), "--provider", "cpu"])
    assert rc == 0
    with rasterio.open(tmp_path / "s" / "heatmap.tif") as ds:
        assert ds.tags()["RSCLIP_HEATMAP"] == "patch"


# -- PAMR refinement (rsclip classify --refine pamr) -------------------------------------------------------
def _pamr_by_convolution(image: np.ndarray, logits: np.ndarray, iterations: int, dilations: tuple) -> np.ndarray:
    """PAMR as Araslanov & Roth publish it, with torch convolutions (3x3 shift kernels, replicate padding per
    dilation, unbiased local std over the 3x3 neighbourhoods of all dilations): a second mechanism, so the
    slicing in engine/refine.py is checked against the kernels, not against itself."""
    import torch.nn.functional as F

    def neighbours(x: torch.Tensor, with_centre: bool, minus_centre: bool) -> torch.Tensor:
        # x [C, H, W] -> [C, n * len(dilations), H, W]
        spots = [(r, c) for r in range(3) for c in range(3) if with_centre or (r, c) != (1, 1)]
        kernel = torch.zeros(len(spots), 1, 3, 3)
        for i, (r, c) in enumerate(spots):
            kernel[i, 0, r, c] = -1.0 if minus_centre else 1.0
            if minus_centre:
                kernel[i, 0, 1, 1] += 1.0
        outs = [F.conv2d(F.pad(x[:, None], [d] * 4, mode="replicate"), kernel, dilation=d) for d in dilations]
        return torch.cat(outs, 1)

    x, m = torch.from_numpy(image), torch.from_numpy(logits)
    std = neighbours(x, True, False).std(1, keepdim=True)
    aff = torch.softmax((-neighbours(x, False, True).abs() / (1e-8 + 0.1 * std)).mean(0), 0)
    for _ in range(iterations):
        m = (neighbours(m, False, False) * aff[None]).sum(1)
    return m.numpy()


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    out = mask.copy()
    h, w = mask.shape
    p = np.pad(mask, r)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out |= p[r + dy : r + dy + h, r + dx : r + dx + w]
    return out


def _boundaries(labels: np.ndarray) -> np.ndarray:
    b = np.zeros(labels.shape, bool)
    b[:-1] |= labels[:-1] != labels[1:]
    b[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    return b


def test_pamr_equals_the_published_convolutions(tiny_bundle: Path, crop: Path) -> None:
    """engine/refine.pamr on a real tile (its normalised bands, its dense logits) equals the reference built
    from 3x3 kernels, for NACLIP's settings and for one dilation."""
    from rs_clip_plugin.engine.pipeline import resize_hw
    from rs_clip_plugin.engine.refine import PAMR_DILATIONS, PAMR_ITERATIONS, pamr

    b = load_bundle(tiny_bundle)
    spec = b.manifest.encoder("rgb")
    with open_source(crop) as src:
        x = preprocess_tile(src.read_for(spec, rasterio.windows.Window(64, 64, TILE, TILE)), spec)
    out = EncoderSession(b, "rgb", provider="cpu", dense=True).embed_dense(x[None])
    head = prompt_head(b, parse_classes(CLASSES), "en", "max")
    logits = dense_tile_logits(out.patches[0], out.cls[0], head, b.manifest.logit_scale, spec.dense_grid, TILE, TILE)
    image = resize_hw(x, TILE, TILE)
    for iterations, dilations in ((PAMR_ITERATIONS, PAMR_DILATIONS), (3, (1,))):
        got = pamr(image, logits, iterations, dilations)
        want = _pamr_by_convolution(image, logits, iterations, dilations)
        assert np.allclose(got, want, atol=1e-4 * np.abs(want).max()), np.abs(got - want).max()
    assert not np.allclose(got, logits)
    with pytest.raises(ValueError, match="on the logits' pixels"):
        pamr(x[:, :10], logits)


def test_pamr_moves_dense_labels_onto_image_edges(tiny_bundle: Path, crop: Path, tmp_path: Path, capsys) -> None:
    """--refine pamr on a real crop changes a few per cent of the labels, all next to the unrefined map's
    boundaries, and the refined boundaries lie on stronger image gradients; counts stay consistent (the
    summary's counts are labels.tif's, every valid pixel keeps a label); summary.json records it; tile mode
    refuses it."""
    plain = classify_raster(crop, CLASSES, tmp_path / "plain", bundle=tiny_bundle, provider="cpu")
    rc = main(["classify", str(crop), "--classes", CLASSES, "--out", str(tmp_path / "pamr"), "--bundle",
               str(tiny_bundle), "--provider", "cpu", "--refine", "pamr"])
    assert rc == 0 and "refined by pamr" in capsys.readouterr().out
    summary = json.loads((tmp_path / "pamr" / "summary.json").read_text())
    assert summary["refine"] == {"method": "pamr", "iterations": 10, "dilations": [1, 2]}
    assert plain.summary["refine"] is None and summary["timings"]["refine_s"] > 0
    with rasterio.open(plain.labels_path) as ds:
        before = ds.read(1)
    with rasterio.open(tmp_path / "pamr" / "labels.tif") as ds:
        after = ds.read(1)
    with rasterio.open(crop) as ds:
        grey = ds.read().astype(np.float32).mean(0)
    changed = before != after
    assert 0.005 < changed.mean() < 0.2, changed.mean()
    edges = _boundaries(before)
    assert edges.mean() < 0.5 and changed[~_dilate(edges, 2)].sum() <= 0.02 * changed.sum()
    gradient = np.hypot(*np.gradient(grey))
    assert gradient[_boundaries(after)].mean() > 1.1 * gradient[edges].mean()
    # Counts: per class as in labels.tif, the same valid pixels as unrefined, all of them labelled.
    for s in (plain.summary, summary):
        assert sum(c["pixels"] for c in s["classes"]) + s["unknown"]["pixels"] == s["valid_pixels"]
    assert [c["pixels"] for c in summary["classes"]] == [int((after == k).sum()) for k in range(1, 5)]
    assert summary["valid_pixels"] == plain.summary["valid_pixels"] == int((after > 0).sum())
    rc = main(["classify", str(crop), "--classes", CLASSES, "--out", str(tmp_path / "tile"), "--bundle",
               str(tiny_bundle), "--provider", "cpu", "--mode", "tile", "--refine", "pamr"])
    err = capsys.readouterr().err
    assert rc == 2 and "--refine pamr refines dense labels" in err and "--mode dense" in err, err
    with pytest.raises(InputError, match="not one of none, pamr"):
        classify_raster(crop, CLASSES, tmp_path / "x", bundle=tiny_bundle, provider="cpu", refine="crf")


def test_refine_refused_per_tile_names_the_actual_reason(tiny_bundle: Path, plain_bundle: Path, crop: Path,
                                                         tmp_path: Path, capsys) -> None:
    """--refine pamr on a per-tile run says why the run is per tile: --mode tile asked, --precision int8 asked,
    or an encoder without dense outputs; never 'runs int8' for a dense fp32 encoder asked for tile mode."""
    cases = [(tiny_bundle, ["--mode", "tile"], "--mode tile was asked"),
             (tiny_bundle, ["--precision", "int8"], "--precision int8 runs the int8 graph"),
             (plain_bundle, [], "has no dense outputs")]
    for i, (bundle, extra, reason) in enumerate(cases):
        rc = main(["classify", str(crop), "--classes", CLASSES, "--out", str(tmp_path / f"o{i}"), "--bundle",
                   str(bundle), "--provider", "cpu", "--refine", "pamr", *extra])
        err = capsys.readouterr().err
        assert rc == 2 and reason in err and "--refine pamr refines dense labels" in err, err
        assert ("int8" in err) == ("int8" in reason), err
        assert len(err.strip().splitlines()) == 1, err


def test_pamr_memory_is_bounded_by_strips(tiny_bundle: Path, crop: Path, monkeypatch) -> None:
    """PAMR of a large tile works in row strips with a halo the iterations cannot cross, so its working memory
    stays near refine.PAMR_MAX_BYTES instead of ~16 affinity planes + 3 logit stacks of the whole tile (GBs for
    a 4700 px RGB tile), and the result equals the whole-tile computation (the reference convolutions)."""
    import tracemalloc

    from rs_clip_plugin.engine import refine
    from rs_clip_plugin.engine.pipeline import resize_hw

    b = load_bundle(tiny_bundle)
    spec = b.manifest.encoder("rgb")
    with open_source(crop) as src:
        x = preprocess_tile(src.read_for(spec, rasterio.windows.Window(0, 0, 192, 192)), spec)
    out = EncoderSession(b, "rgb", provider="cpu", dense=True).embed_dense(x[None])
    head = prompt_head(b, parse_classes(CLASSES), "en", "max")
    size = 384
    logits = dense_tile_logits(out.patches[0], out.cls[0], head, b.manifest.logit_scale, spec.dense_grid, size, size)
    image = resize_hw(x, size, size)
    whole_bytes = 4 * size * size * (8 * len(refine.PAMR_DILATIONS) + 3 * logits.shape[0])
    monkeypatch.setattr(refine, "PAMR_MAX_BYTES", whole_bytes // 8)
    tracemalloc.start()
    got = refine.pamr(image, logits)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < whole_bytes // 2, (peak, whole_bytes)
    want = _pamr_by_convolution(image, logits, refine.PAMR_ITERATIONS, refine.PAMR_DILATIONS)
    assert np.allclose(got, want, atol=1e-4 * np.abs(want).max()), np.abs(got - want).max()
