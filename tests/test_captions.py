"""Caption datasets in their published layouts, merged across languages, validated with clear messages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training.data.captions import (
    CaptionDataError,
    class_folder_captions,
    load_captions,
    merge,
    read_rgb,
    validate,
    write_manifest_jsonl,
)
from training.evaluate.multilingual import load_classnames, load_prompt_templates


def _karpathy(tmp: Path) -> Path:
    (tmp / "images").mkdir()
    for name in ("a.jpg", "b.jpg"):
        (tmp / "images" / name).write_bytes(b"x")
    data = {"images": [
        {"filename": "a.jpg", "split": "train", "sentences": [{"raw": "A river  crosses fields ."}, {"raw": "a river"}]},
        {"filename": "b.jpg", "split": "test", "sentences": [{"tokens": ["many", "planes"]}]},
    ]}
    path = tmp / "dataset_rsicd.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_karpathy_layout_and_translation_merge(tmp_path: Path):
    recs = load_captions(_karpathy(tmp_path))
    assert [r.image.name for r in recs] == ["a.jpg", "b.jpg"] and [r.split for r in recs] == ["train", "test"]
    assert recs[0].captions["en"] == ["A river crosses fields .", "a river"]
    assert recs[1].captions["en"] == ["many planes"]
    manifest = tmp_path / "pt.csv"
    manifest.write_text("image,caption,lang,split\nimages/a.jpg,um rio,pt,train\nimages/b.jpg,muitos aviões,pt,test\n",
                        encoding="utf-8")
    merged = merge(recs, load_captions(manifest))
    assert len(merged) == 2 and merged[0].languages == ["en", "pt"]
    assert validate(merged, languages=["en", "pt"])["captions"] == {"en": 3, "pt": 2}
    out = write_manifest_jsonl(tmp_path / "all.jsonl", merged)
    back = load_captions(out)
    assert [r.captions for r in back] == [r.captions for r in merged]


def test_nwpu_layout(tmp_path: Path):
    data = {"airport": [{"filename": "airport_001.jpg", "split": "val", "raw": "an airport", "raw_1": "planes parked",
                         "raw_2": "an airport"}]}
    path = tmp_path / "dataset_nwpu.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    (rec,) = load_captions(path, image_dir=tmp_path / "NWPU-RESISC45")
    assert rec.image == tmp_path / "NWPU-RESISC45" / "airport" / "airport_001.jpg"
    assert rec.captions["en"] == ["an airport", "planes parked"] and rec.split == "val"


def test_validation_names_what_is_missing(tmp_path: Path):
    recs = load_captions(_karpathy(tmp_path))
    (tmp_path / "images" / "b.jpg").unlink()
    with pytest.raises(CaptionDataError, match=r"1 of 2 image files are missing.*b\.jpg"):
        validate(recs)
    with pytest.raises(CaptionDataError, match=r"no 'ko' caption.*translate --langs ko"):
        validate(recs[:1], languages=["ko"])
    bad = tmp_path / "bad.csv"
    bad.write_text("image,text\nx.jpg,hello\n", encoding="utf-8")
    with pytest.raises(CaptionDataError, match=r"columns \['caption', 'lang'\] are missing"):
        load_captions(bad)
    with pytest.raises(CaptionDataError, match="unrecognised caption layout"):
        (tmp_path / "odd.json").write_text("[1, 2]", encoding="utf-8")
        load_captions(tmp_path / "odd.json")


def test_class_names_tables_cover_ten_languages():
    for name, n in (("eurosat", 10), ("bigearthnet19", 19), ("ucmerced", 21)):
        table = load_classnames(name)
        assert set(table) == {"keys", "en", "pt", "es", "fr", "de", "nl", "it", "zh", "ko", "ru"}
        assert all(len(v) == n and len(set(v)) == n for v in table.values())
    assert load_classnames("eurosat")["keys"][0] == "AnnualCrop"
    assert load_classnames("bigearthnet19")["keys"][-1] == "Marine waters"


def test_class_folder_captions_on_real_eurosat(data_dir: Path):
    langs = ["en", "zh"]
    recs = class_folder_captions(data_dir / "eurosat_rgb_small", load_classnames("eurosat"), load_prompt_templates(langs),
                                 langs, limit_per_class=1)
    assert len(recs) == 10 and recs[1].source == "Forest"
    assert "a satellite image of forest." in recs[1].captions["en"]
    assert "一张森林的卫星图像。" in recs[1].captions["zh"]
    img = read_rgb(recs[1].image)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    tif = read_rgb(next((data_dir / "ucmerced" / "forest").glob("*.tif")))
    assert tif.shape == (256, 256, 3)


def shipped_layout(tmp_path: Path, data_dir: Path, datasets: tuple[str, ...] = ("rsicd",)) -> list[dict]:
    """The caption entries of the shipped rs_m_clip.yaml for ``datasets``, with files of their layout under the
    current directory: real JPEGs, a dataset_*.json (3 images: train, train, test) and what `rsclip-train
    translate` writes (captions.all.jsonl: English + Portuguese, paths relative to the manifest's folder)."""
    import shutil

    import yaml

    repo = Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load((repo / "training" / "configs" / "rs_m_clip.yaml").read_text(encoding="utf-8"))
    entries = [e for e in cfg["data"]["captions"] if any(d in e["path"].lower() for d in datasets)]
    jpgs = sorted((data_dir / "eurosat_rgb_small" / "Forest").glob("*.jpg"))
    for n, (orig, trans) in enumerate(zip(entries[: len(entries) // 2], entries[len(entries) // 2 :])):
        assert (orig["format"], trans["format"]) == ("karpathy", "manifest")
        img_dir = Path(orig["image_dir"])
        img_dir.mkdir(parents=True)
        mine = jpgs[3 * n : 3 * n + 3]
        for j in mine:
            shutil.copy(j, img_dir / j.name)
        Path(orig["path"]).write_text(json.dumps({"images": [
            {"filename": j.name, "split": s, "sentences": [{"raw": f"forest number {i}"}]}
            for i, (j, s) in enumerate(zip(mine, ["train", "train", "test"]))]}), encoding="utf-8")  # fmt: skip
        recs = load_captions(orig["path"], orig["image_dir"], "karpathy")
        for r in recs:
            r.add("pt", "floresta " + r.captions["en"][0].split()[-1])
        Path(trans["path"]).parent.mkdir(parents=True)
        write_manifest_jsonl(trans["path"], recs)
    return entries


def test_translations_merge_with_originals_in_the_shipped_rs_m_clip_layout(tmp_path: Path, monkeypatch, data_dir: Path):
    """rs_m_clip.yaml reads data/RSICD/dataset_rsicd.json and data/translations/rsicd/captions.all.jsonl, whose
    image paths are '../../RSICD/RSICD_images/x.jpg' (relative to the manifest): one record per image."""
    from training.methods.rs_m_clip.recipe import build_records

    monkeypatch.chdir(tmp_path)
    entries = shipped_layout(tmp_path, data_dir)
    assert json.loads(Path(entries[1]["path"]).read_text().splitlines()[0])["image"].startswith("../../RSICD/")
    train, val = build_records({"captions": entries}, ["en", "pt"], seed=0)
    assert len(train) == 2 and len(val) == 1  # not 4 + 2: the translated images are the same images
    for r in train + val:
        assert sorted(r.captions) == ["en", "pt"] and len(r.captions["en"]) == 1, r
        assert ".." not in r.image.parts and r.image.is_file()


def test_data_command_reports_no_duplicates_for_the_shipped_layout(tmp_path: Path, monkeypatch, data_dir: Path, capsys):
    import shutil

    import yaml

    from training.cli import main

    monkeypatch.chdir(tmp_path)
    entries = shipped_layout(tmp_path, data_dir, ("rsicd", "ucm"))
    repo = Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load((repo / "training" / "configs" / "rs_m_clip.yaml").read_text(encoding="utf-8"))
    cfg["data"]["captions"], cfg["languages"] = entries, ["en", "pt"]
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    assert main(["data", "recipe.yaml", "--json", "--hash"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert set(rep["datasets"]) == {"RSICD", "UCM-Captions"}
    assert rep["datasets"]["RSICD"]["train"] == {"images": 2, "captions": {"en": 2, "pt": 2}, "duplicate_images": 0,
                                                 "duplicate_content": 0}  # fmt: skip
    assert rep["total"]["test"]["images"] == 2 and rep["images_in_several_splits"] == 0
    assert rep["length"]["epochs"] == 10 and rep["length"]["n_samples"] == 4
    # The same picture under another name in another dataset: found by content, and the exit status says so.
    ucm = Path(entries[1]["image_dir"])
    first = sorted(Path(entries[0]["image_dir"]).glob("*.jpg"))[0]
    victim = sorted(ucm.glob("*.jpg"))[0]
    shutil.copy(first, victim)
    assert main(["data", "recipe.yaml", "--hash"]) == 1
    assert "same bytes" in capsys.readouterr().out
