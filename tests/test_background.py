"""Background prompts and synonym merging (issue 11, SegEarth-OV): background prompts are extra softmax columns
whose winning pixels become 'background / unknown' (K+1); synonyms merged by mean (one vector) or max (one
logit per synonym). Real Sentinel-2 crop, tiny bundle (random weights, real ONNX graphs)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import rasterio
from plugin_support import s2_crop
from rasterio.windows import Window

from rs_clip_plugin.engine.classes import BACKGROUND_UNKNOWN, ClassSpec, parse_background, parse_classes
from rs_clip_plugin.engine.classify import classify_raster
from rs_clip_plugin.engine.cli import main
from rs_clip_plugin.engine.errors import InputError
from rs_clip_plugin.engine.pipeline import preprocess_tile
from rs_clip_plugin.engine.raster import open_source
from rs_clip_plugin.engine.runtime import EncoderSession
from rs_clip_plugin.engine.text import PromptHead, class_embeddings, prompt_head, synonym_merge
from rs_clip_plugin.engine.writers import read_class_legend

TILE = 64
ALL = ["forest", "annual crop", "town", "water"]


@pytest.fixture(scope="module")
def crop(major_tom_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The scene's corner: fields and forest, where even tile mode finds more than one class.
    return s2_crop(major_tom_dir, tmp_path_factory.mktemp("bg") / "crop.tif", size=3 * TILE, col=0, row=0)


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def _split(bundle, crop: Path, out: Path, mode: str) -> tuple[list[str], str]:
    """(classes, background): ALL without the class that wins most pixels, and that class as background."""
    res = classify_raster(crop, ALL, out, bundle=bundle, provider="cpu", mode=mode)
    labels = _read(res.labels_path)
    # The most frequent winner: it wins some pixels whatever the (random, per test session) weights.
    values, counts = np.unique(labels, return_counts=True)
    back = ALL[int(values[counts.argmax()]) - 1]
    return [c for c in ALL if c != back], back


@pytest.mark.parametrize("mode", ["tile", "dense"])
def test_background_column_wins_become_unknown(bundle, crop: Path, tmp_path: Path, mode: str) -> None:
    """A background prompt is the same logit column a class would be: the run with one class moved to the
    background labels exactly the pixels the four-class run gave to it (the last class, value 4) as K+1 = 4, with
    the same confidence (softmax over classes + background), and calls that value 'background / unknown'."""
    classes, back = _split(bundle, crop, tmp_path / "first", mode)
    full = classify_raster(crop, [*classes, back], tmp_path / "full", bundle=bundle, provider="cpu", mode=mode)
    bg = classify_raster(crop, classes, tmp_path / "bg", bundle=bundle, provider="cpu", mode=mode, background=back)
    want, got = _read(full.labels_path), _read(bg.labels_path)
    assert (want == 4).any()
    if mode == "dense":  # per-pixel labels: the classes win the other pixels (a random-weight tile model may
        assert (want < 4).any()  # give every 640 m tile the same label)
    assert np.array_equal(got, want)
    assert np.allclose(_read(bg.confidence_path), _read(full.confidence_path), atol=1e-5)
    s = json.loads(bg.summary_path.read_text())
    assert s["background"] == [back] and s["mode"] == mode
    assert s["unknown"]["name"] == BACKGROUND_UNKNOWN and s["unknown"]["pixels"] == int((want == 4).sum())
    assert [c["name"] for c in s["classes"]] == classes
    assert read_class_legend(bg.labels_path)["names"] == ["no data", *classes, BACKGROUND_UNKNOWN]
    labels = [e.get("label") for e in ET.parse(bg.qml_path).getroot().iter("paletteEntry")]
    assert labels == [*classes, BACKGROUND_UNKNOWN]
    # Without background prompts the wording stays 'unknown'.
    assert full.summary["background"] == [] and full.summary["unknown"]["name"] == "unknown"


def test_background_and_threshold_together(bundle, crop: Path, tmp_path: Path) -> None:
    """Below the threshold is K+1 as well; the polygons name it like the legend."""
    classes, back = _split(bundle, crop, tmp_path / "s", "tile")
    first = classify_raster(crop, classes, tmp_path / "a", bundle=bundle, provider="cpu", mode="tile", background=back)
    conf = _read(first.confidence_path)
    thr = float(np.median(conf))
    res = classify_raster(crop, classes, tmp_path / "b", bundle=bundle, provider="cpu", mode="tile",
                          background=back, threshold=thr, polygons=True)
    labels = _read(res.labels_path)
    expect = _read(first.labels_path).copy()
    expect[conf < thr] = 4
    assert np.array_equal(labels, expect) and (conf < thr).any()
    from osgeo import ogr

    ds = ogr.Open(str(res.summary["files"]["polygons"]))
    names = {f.GetField("class") for f in ds.GetLayer(0)}
    assert BACKGROUND_UNKNOWN in names


def test_background_is_checked(bundle, crop: Path, tmp_path: Path, capsys) -> None:
    assert parse_background(None) == () and parse_background("  ") == ()
    assert parse_background("cloud|haze; shadow;cloud") == (ClassSpec("cloud", ("haze",)), ClassSpec("shadow"))
    with pytest.raises(InputError, match="also one of the classes"):
        parse_background("Forest", parse_classes("forest;river"))
    with pytest.raises(InputError, match=r"^`background` entry '\|' holds no prompt; pass background prompts as"):
        parse_background("cloud; | ")  # the error names the background, not the class list
    rc = main(["classify", str(crop), "--classes", "forest;river", "--background", "forest", "--out",
               str(tmp_path / "x"), "--bundle", str(bundle.root), "--provider", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "--background prompt 'forest' is also one of the classes" in err
    assert not (tmp_path / "x").exists()


def test_cli_background_and_synonyms(bundle, crop: Path, tmp_path: Path, capsys) -> None:
    rc = main(["classify", str(crop), "--classes", "forest|woodland;annual crop;town", "--background", "river;a cloud",
               "--synonyms", "mean", "--mode", "dense", "--out", str(tmp_path / "o"), "--bundle", str(bundle.root),
               "--provider", "cpu", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["synonyms"] == "mean" and out["mode"] == "dense" and out["background"] == ["river", "a cloud"]
    rc = main(["classify", str(crop), "--classes", "forest|woodland;town", "--background", "river", "--out",
               str(tmp_path / "t"), "--bundle", str(bundle.root), "--provider", "cpu", "--mode", "tile"])
    text = capsys.readouterr().out
    assert rc == 0 and "synonyms merged by max" in text and "background prompts: river" in text
    with pytest.raises(InputError, match="`synonyms` 'median' is not one of auto, mean, max"):
        classify_raster(crop, "a;b", tmp_path / "m", bundle=bundle, synonyms="median")
    assert not (tmp_path / "m").exists()


def test_synonym_rule_and_head(bundle) -> None:
    assert synonym_merge(None) == synonym_merge("auto") == "max" and synonym_merge("mean") == "mean"
    specs = parse_classes("forest|woodland|trees;river")
    mean = prompt_head(bundle, specs, synonyms="mean", background=parse_background("cloud|haze"))
    assert mean.vectors.shape[0] == mean.n_columns == 3
    assert np.allclose(mean.vectors[:2], class_embeddings(bundle, specs), atol=1e-6)
    mx = prompt_head(bundle, specs, synonyms="max", background=parse_background("cloud|haze"))
    assert list(mx.columns) == [0, 0, 0, 1, 2, 2] and mx.n_columns == 3
    # Each synonym's vector is its templates' mean, as a class of that one word would get.
    assert np.allclose(mx.vectors[1], class_embeddings(bundle, "woodland")[0], atol=1e-6)
    raw = np.array([[0.1, 0.5, 0.2, 0.3, 0.9, 0.4]], np.float32)
    assert np.array_equal(mx.merge(raw), np.array([[0.5, 0.3, 0.9]], np.float32))
    one = PromptHead.of(mean.vectors)  # plain class vectors: one column each, logits passed through
    assert one.n_columns == 3 and np.array_equal(one.merge(raw[:, :3]), raw[:, :3])


def test_synonyms_max_in_tile_mode_by_hand(bundle, crop: Path, tmp_path: Path) -> None:
    """Tile mode with synonyms merged by max (the default): each tile's class logit is the best of its synonyms'."""
    classes = "forest|woodland|jungle;river|stream;annual crop|farmland"
    res = classify_raster(crop, classes, tmp_path / "o", bundle=bundle, provider="cpu", mode="tile", precision="fp32")
    assert res.summary["synonyms"] == "max"
    labels, conf = _read(res.labels_path), _read(res.confidence_path)
    spec = bundle.manifest.encoder("rgb")
    with open_source(crop) as src:
        tiles = [preprocess_tile(src.read_for(spec, Window(c, r, TILE, TILE)), spec)
                 for r in range(0, 3 * TILE, TILE) for c in range(0, 3 * TILE, TILE)]
    emb = EncoderSession(bundle, "rgb", provider="cpu", precision="fp32").embed(np.stack(tiles))
    phrases = [ClassSpec(p) for p in ("forest", "woodland", "jungle", "river", "stream", "annual crop", "farmland")]
    raw = bundle.manifest.logit_scale * emb @ class_embeddings(bundle, phrases).T
    logits = np.stack([raw[:, 0:3].max(1), raw[:, 3:5].max(1), raw[:, 5:7].max(1)], axis=1)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    got = labels[::TILE, ::TILE].ravel()
    assert np.array_equal(got, p.argmax(1) + 1)
    assert np.allclose(conf[::TILE, ::TILE].ravel(), p.max(1), atol=1e-4)
    mean = classify_raster(crop, classes, tmp_path / "m", bundle=bundle, provider="cpu", mode="tile", precision="fp32",
                           synonyms="mean")
    assert mean.summary["synonyms"] == "mean"
    assert not np.allclose(_read(mean.confidence_path), conf)  # the rule changes the result


def test_background_wins_with_the_most_classes_stay_in_uint8() -> None:
    """254 classes (the uint8 limit) and 3 background prompts: a pixel won by any background column is K+1 =
    255, never a column number wrapped round past 255 (to 0, no data, or to a class)."""
    from rs_clip_plugin.engine.classify import _softmax_label

    k, n_cols = 254, 257
    logits = np.zeros((n_cols, 1, 6), np.float32)
    for px, col in enumerate((0, 253, 254, 255, 256)):  # classes 1 and 254, then each background column
        logits[col, 0, px] = 9.0
    logits[:, 0, 5] = np.nan  # no tile
    labels, _conf, covered = _softmax_label(logits, None, k)
    assert labels.tolist() == [[1, 254, 255, 255, 255, 0]]
    assert covered.tolist() == [[True] * 5 + [False]]
    labels, _, _ = _softmax_label(logits, 0.99, k)  # below the threshold: K+1 as well
    assert labels.tolist() == [[255] * 5 + [0]]
