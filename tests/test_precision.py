"""Precision: int8 twins written and measured at export, the runtime's one rule for fp32/fp16/int8, the chosen
precision reported, indexes of one precision only. Real tiny bundles, real ORT sessions, real sample rasters."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from rs_clip_plugin.engine.agreement import agreement, real_tiles, sample_rasters
from rs_clip_plugin.engine.bundle import MANIFEST, load_bundle, read_manifest, write_manifest
from rs_clip_plugin.engine.errors import BundleError, InputError
from rs_clip_plugin.engine.runtime import INT8_MIN_AGREEMENT, EncoderSession, choose_precision


def _with_agreement(src: Path, dst: Path, label_agreement) -> Path:
    """A copy of bundle ``src`` whose rgb encoder records ``label_agreement`` for its int8 twin (rehashed)."""
    shutil.copytree(src, dst)
    m = read_manifest(dst)
    enc = m.encoder("rgb")
    enc.int8_agreement = {**(enc.int8_agreement or {}), "label_agreement": label_agreement}
    write_manifest(dst, m)
    return dst


def test_int8_twin_exported_measured_and_loaded(tiny_bundle: Path) -> None:
    from training.export.onnx_export import read_metadata

    b = load_bundle(tiny_bundle)
    enc = b.manifest.encoder("rgb")
    assert enc.onnx_int8 == "image_rgb.int8.onnx" and (tiny_bundle / enc.onnx_int8).is_file()
    assert enc.onnx_int8 in b.manifest.files  # hashed like every other graph
    assert read_metadata(tiny_bundle / enc.onnx_int8)["precision"] == "int8"
    rec = enc.int8_agreement
    # measured on real sample tiles through the engine's reader, over the EuroSAT class names
    assert rec["tiles"] > 64 and rec["rasters"] > 10 and rec["classes"] == "eurosat"
    assert 0.0 <= rec["label_agreement"] <= 1.0 and 0.9 < rec["min_cosine"] <= rec["mean_cosine"] <= 1.0
    assert rec["int8_nodes"] > 0  # some MatMul/Gemm really were quantised
    assert b.summary()["encoders"][0]["int8"] is True
    # the int8 file is smaller (int8 weights) and computes nearly what fp32 does
    assert (tiny_bundle / enc.onnx_int8).stat().st_size < (tiny_bundle / enc.onnx).stat().st_size
    tiles, _ = real_tiles(enc, limit=16)
    s8 = EncoderSession(b, "rgb", provider="cpu", precision="int8")
    s32 = EncoderSession(b, "rgb", provider="cpu", precision="fp32")
    assert (s8.precision_used, s32.precision_used) == ("int8", "fp32")
    assert agreement(s32.run(tiles), s8.run(tiles))["min_cosine"] > 0.9
    assert not np.array_equal(s32.run(tiles), s8.run(tiles))  # really another graph


def test_real_tiles_come_from_the_sample_rasters(tiny_bundle: Path, data_dir: Path) -> None:
    rasters = sample_rasters(data_dir)
    # per-band folders count once (Major-TOM, BigEarthNet, SSL4EO), image files one by one
    assert any(p.name.startswith("S2B_MSIL2A") and p.is_dir() for p in rasters)
    assert not any(p.stem.endswith(("_B04", "_VV")) or p.name == "B04.tif" for p in rasters)
    enc = load_bundle(tiny_bundle).manifest.encoder("rgb")
    tiles, used = real_tiles(enc, limit=40, data_dir=data_dir)
    assert tiles.shape == (40, 3, enc.input_size, enc.input_size) and tiles.dtype == np.float32
    assert len(used) > 10 and np.isfinite(tiles).all() and tiles.std() > 0.1


def test_auto_picks_int8_on_cpu_only_when_the_recorded_agreement_is_high(tiny_bundle: Path, tmp_path: Path) -> None:
    good = load_bundle(_with_agreement(tiny_bundle, tmp_path / "good", 0.995))
    low = load_bundle(_with_agreement(tiny_bundle, tmp_path / "low", 0.95))
    unknown = load_bundle(_with_agreement(tiny_bundle, tmp_path / "unknown", None))
    assert EncoderSession(good, "rgb", provider="cpu").precision_used == "int8"
    for b in (low, unknown):
        s = EncoderSession(b, "rgb", provider="cpu")
        assert s.planned_precision == s.precision_used == "fp32"
    # asked for explicitly, int8 runs whatever was recorded
    assert EncoderSession(low, "rgb", provider="cpu", precision="int8").precision_used == "int8"
    # the text encoder has no int8 twin: auto keeps fp32
    assert EncoderSession(good, "text", provider="cpu").precision_used == "fp32"


def test_choose_precision_rule() -> None:
    twins = {"fp32": "a.onnx", "fp16": "a.fp16.onnx", "int8": "a.int8.onnx"}
    assert choose_precision("auto", twins, INT8_MIN_AGREEMENT, gpu=False) == ("int8", "a.int8.onnx")
    assert choose_precision("auto", twins, INT8_MIN_AGREEMENT - 1e-4, gpu=False) == ("fp32", "a.onnx")
    assert choose_precision("auto", twins, 1.0, gpu=True) == ("fp16", "a.fp16.onnx")  # GPU: fp16, never int8
    assert choose_precision("auto", {**twins, "fp16": None}, 1.0, gpu=True) == ("fp32", "a.onnx")
    assert choose_precision("fp16", twins, None, gpu=False) == ("fp16", "a.fp16.onnx")
    with pytest.raises(BundleError, match="no int8 graph"):
        choose_precision("int8", {**twins, "int8": None}, None, gpu=False)
    with pytest.raises(InputError, match="precision"):
        choose_precision("bf16", twins, None, gpu=False)


def test_explicit_precision_without_twin_is_refused_at_once(tiny_bundle: Path) -> None:
    b = load_bundle(tiny_bundle)  # exported without --fp16
    with pytest.raises(BundleError, match="no fp16 graph") as err:
        EncoderSession(b, "rgb", provider="cpu", precision="fp16")
    assert "--precision" in err.value.render({"precision": "--precision"})


def test_old_manifest_without_int8_fields_loads_and_runs_fp32(tiny_bundle: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(tiny_bundle, old)
    data = json.loads((old / MANIFEST).read_text())
    for e in data["encoders"]:
        (old / e.pop("onnx_int8")).unlink()
        e.pop("int8_agreement")
    data["files"] = {k: v for k, v in data["files"].items() if ".int8." not in k}
    (old / MANIFEST).write_text(json.dumps(data))
    b = load_bundle(old)
    assert b.manifest.encoder("rgb").onnx_int8 is None
    assert EncoderSession(b, "rgb", provider="cpu").precision_used == "fp32"
    with pytest.raises(BundleError, match="no int8 graph"):
        EncoderSession(b, "rgb", provider="cpu", precision="int8")


def test_export_cli_no_int8_and_json(tmp_path: Path, capsys) -> None:
    from training.cli import main

    assert main(["export", "--model", "rsclip-tiny", "--out", str(tmp_path / "b"), "--no-int8", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["int8"] == {}
    m = load_bundle(tmp_path / "b").manifest
    assert m.encoder("rgb").onnx_int8 is None and not any(".int8." in f for f in m.files)


def test_add_int8_twins_to_an_existing_bundle(tiny_bundle: Path, tmp_path: Path) -> None:
    """The exporter's int8 step on a bundle already written: twin rewritten, figures recorded and returned
    (what `rsclip-train export --json` prints under "int8")."""
    from training.export.exporter import add_int8_twins

    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    figures = add_int8_twins(copy)
    assert set(figures) == {"rgb"}
    assert figures["rgb"] == load_bundle(copy).manifest.encoder("rgb").int8_agreement
    for key in ("min_cosine", "mean_cosine", "label_agreement", "tiles"):
        assert isinstance(figures["rgb"][key], (int, float)), key


def test_classify_reports_precision(tiny_bundle: Path, major_tom_dir: Path, tmp_path: Path, capsys) -> None:
    from rs_clip_plugin.engine.cli import main

    extent = _corner(major_tom_dir)
    rc = main(["classify", str(major_tom_dir), "--classes", "forest;river", "--out", str(tmp_path / "o"), "--bundle",
               str(tiny_bundle), "--provider", "cpu", "--precision", "int8", "--extent", extent, "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["precision"] == "int8" and out["provider"] == "CPUExecutionProvider"
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["precision"] == "int8"


def _corner(scene: Path, tiles: int = 3) -> str:
    import rasterio

    with rasterio.open(scene / "B04.tif") as ds:
        b = ds.bounds
    size = tiles * 640.0
    return f"{b.left},{b.top - size},{b.left + size},{b.top}"


def test_index_keeps_its_precision_and_search_refuses_mixed(tiny_bundle: Path, major_tom_dir: Path,
                                                            tmp_path: Path) -> None:
    from rs_clip_plugin.engine.index import build_index
    from rs_clip_plugin.engine.search import search

    extent = [float(v) for v in _corner(major_tom_dir).split(",")]
    i32 = build_index(major_tom_dir, tiny_bundle, provider="cpu", precision="fp32", extent=extent)
    i8 = build_index(major_tom_dir, tiny_bundle, provider="cpu", precision="int8", extent=extent)
    assert i32.root != i8.root  # one precision per index: int8 rows never land in the fp32 one
    assert (i32.meta["precision"], i8.meta["precision"]) == ("fp32", "int8")
    assert (i32.summary()["precision"], i8.summary()["precision"]) == ("fp32", "int8")
    assert not np.allclose(np.asarray(i32.embeddings), np.asarray(i8.embeddings))
    # asked again at the same precision: the cached index is reused
    assert build_index(major_tom_dir, tiny_bundle, provider="cpu", precision="int8", extent=extent).reused
    q = np.asarray(i32.embeddings[0], np.float32)
    with pytest.raises(InputError, match="different precisions"):
        search([i32, i8], q, tmp_path / "s", bundle=tiny_bundle)
    res = search([i8], q, tmp_path / "s8", bundle=tiny_bundle)
    assert res.precision == "int8" and res.to_dict()["precision"] == "int8"


def test_encoders_at_different_precisions_search_together(tmp_path) -> None:
    """Each encoder runs at the precision its own agreement allows: an rgb index at fp32 and an s2 index at int8
    are searched together (the refusal is for one encoder's indexes at two precisions)."""
    from rs_clip_plugin.engine.index import Index, check_one_precision

    class Fake(Index):
        def __init__(self, modality: str, precision: str, name: str) -> None:
            self.meta = {"modality": modality, "precision": precision, "precision_used": precision,
                         "source": str(tmp_path / name)}

    assert check_one_precision([Fake("rgb", "fp32", "a.tif"), Fake("s2-l2a", "int8", "b.tif")]) == "rgb fp32, s2-l2a int8"
    assert check_one_precision([Fake("rgb", "int8", "a.tif"), Fake("s2-l2a", "int8", "b.tif")]) == "int8"
    with pytest.raises(InputError, match="rgb indexes were built at different precisions"):
        check_one_precision([Fake("rgb", "int8", "a.tif"), Fake("rgb", "fp32", "b.tif")])
