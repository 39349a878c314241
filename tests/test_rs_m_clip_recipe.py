"""The RS-M-CLIP recipe end to end on real EuroSAT images (shortened smoke config), its checkpoint resume,
and the exported bundle answering queries in all ten languages through the engine's ONNX path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training.cli import main as train_main

SMOKE = Path(__file__).resolve().parents[1] / "training" / "configs" / "smoke" / "rs_m_clip.yaml"
LANGS = ["en", "pt", "es", "fr", "de", "nl", "it", "zh", "ko", "ru"]
SHORT = [
    "train.steps=3", "train.batch_size=8", "train.checkpoint_every=2", "loss_window=1", "threads=1",
    "data.class_folders=[{root: $DATA/eurosat_rgb_small, classnames: eurosat, limit_per_class: 3}]",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_dir) -> Path:
    out = tmp_path_factory.mktemp("rs_m_clip_run")
    args = ["run", str(SMOKE), "--out", str(out)]
    for s in SHORT:
        args += ["--set", s]
    assert train_main(args) == 0
    return out


def test_metrics_and_checkpoint(run_dir: Path):
    m = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    for key in ("contrastive", "dino"):
        assert np.isfinite([m[key]["loss_first"], m[key]["loss_last"]]).all()
    assert m["steps"] == 3 and m["train_images"] == 20 and m["val_images"] == 10
    assert set(LANGS) <= set(m["retrieval"])
    assert all(0 <= m["retrieval"][lang]["R@1"] <= 100 for lang in LANGS)
    assert (run_dir / "checkpoint" / "model" / "model.safetensors").is_file()
    assert (run_dir / "metrics.md").read_text(encoding="utf-8").startswith("# RS-M-CLIP run")


def test_resume_continues_from_checkpoint(run_dir: Path, tmp_path: Path):
    import shutil

    out = tmp_path / "resume"
    shutil.copytree(run_dir / "checkpoint", out / "checkpoint")
    args = ["run", str(SMOKE), "--out", str(out), "--set", "export.enabled=false"]
    for s in SHORT:
        args += ["--set", s.replace("train.steps=3", "train.steps=4")]
    assert train_main(args) == 0
    m = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert m["resumed"] is True and m["steps"] == 4
    log = json.loads((out / "train_log.json").read_text(encoding="utf-8"))
    assert [h["step"] for h in log] == [1, 2, 3, 4]  # three steps restored from the checkpoint, one new


def test_bundle_answers_all_ten_languages(run_dir: Path, data_dir: Path, capsys):
    from rs_clip_plugin.engine.bundle import load_bundle
    from rs_clip_plugin.engine.cli import main as rsclip_main
    from rs_clip_plugin.engine.text import embed_texts
    from training.data.captions import read_rgb
    from training.evaluate.multilingual import (
        BundleEncoder,
        evaluate_zero_shot,
        load_classnames,
        load_prompt_templates,
    )

    m = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    bundle = load_bundle(m["bundle"])
    assert bundle.manifest.text.languages == LANGS
    assert rsclip_main(["info", m["bundle"], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["languages"] == LANGS

    names = load_classnames("eurosat")
    queries = [f"{t.format(names[lang][1])}" for lang, t in ((lang, load_prompt_templates([lang])[lang][0]) for lang in LANGS)]
    emb = embed_texts(bundle, queries, provider="cpu")
    assert emb.shape == (10, bundle.manifest.embed_dim)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert len({e.tobytes() for e in emb}) == 10  # every language tokenises to its own input

    enc = BundleEncoder(m["bundle"])
    images = np.stack([read_rgb(p) for p in sorted((data_dir / "eurosat_rgb_small" / "Forest").glob("*.jpg"))[:2]])
    zs = evaluate_zero_shot(enc, images, [1, 1], names, load_prompt_templates(LANGS))
    assert set(zs) == set(LANGS) and all(0 <= v["top1"] <= 100 for v in zs.values())


def test_shipped_recipe_length_is_epochs_over_data_batch_and_world(monkeypatch, capsys, data_dir: Path):
    """rs_m_clip.yaml says 10 epochs: steps follow from the images, the per-GPU batch and the torchrun world size."""
    import yaml

    from training.methods.rs_m_clip.recipe import run_recipe

    cfg = yaml.safe_load((SMOKE.parents[1] / "rs_m_clip.yaml").read_text(encoding="utf-8"))
    assert cfg["train"]["epochs"] == 10 and "steps" not in cfg["train"]
    cfg["data"] = {"class_folders": [{"root": "$DATA/eurosat_rgb_small", "classnames": "eurosat"}], "val_fraction": 0.2}
    cfg["train"]["batch_size"] = 8
    for world, steps in ((1, 100), (4, 25)):  # 80 training images x 10 epochs / (8 x world)
        monkeypatch.setenv("WORLD_SIZE", str(world))
        m = run_recipe(cfg, Path("unused"), dry_run=True)
        assert m["train_images"] == 80 and m["length"]["steps"] == m["train"]["steps"] == steps
        assert m["length"]["epochs"] == 10 and m["length"]["global_batch"] == 8 * world
        assert m["train"]["warmup_steps"] == steps // 10 == m["train"]["teacher_temp_warmup_steps"]  # 1 epoch
        assert f"10 epochs = {steps} steps" in capsys.readouterr().out


def test_paper_b_table_reads_per_dataset_test_retrieval():
    from training.evaluate.paper_tables import paper_table

    title, rows = paper_table("rs_m_clip", {"retrieval_test": {"RSICD": {"en": {"mean_recall": 12.345}}}})
    got = {(r["dataset"], r["metric"]): r["ours"] for r in rows}
    assert title.startswith("Paper B") and got[("RSICD", "mean recall en")] == 12.35 and got[("UCM-Captions", "mean recall en")] is None
    assert all(r["paper"] is None for r in rows)  # research.md holds none of Paper B's numbers: none are guessed


def test_paper_table_files(tmp_path: Path):
    from training.evaluate.paper_tables import write_paper_table

    md = write_paper_table("rs_m_clip", {"retrieval_test": {"RSICD": {"en": {"mean_recall": 12.345}}}}, tmp_path)
    assert "None" not in md and "| RSICD | mean recall en | — | 12.35 |" in md
    assert (tmp_path / "paper_table.md").read_text() == md
    assert json.loads((tmp_path / "paper_table.json").read_text())["rows"][0]["ours"] == 12.35
