"""The engine's torch-free tokenizer gives exactly open_clip's ids, for CLIP BPE and for an HF text tower."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rs_clip_plugin.engine.bundle import BundleError, TextSpec, load_bundle
from rs_clip_plugin.engine.tokenizer import BundleTokenizer, clean_text

PROMPTS = [
    "a satellite image of a Forest.",
    "  Extra   spaces\tand\nnewlines  ",
    "Café à São Paulo, naïve résumé, Ærøskøbing, Straße",
    "一张森林的卫星图像。",
    "숲의 위성 이미지",
    "спутниковый снимок РЕКИ",
    "it’s a “quoted” ﬁeld &amp; a road!!!",
    "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ１２３",
    "",
    " ".join(["river"] * 120),  # longer than the context: truncated, end token kept
    " ".join(["一张森林的卫星图像"] * 40),
    "numbers 12345 and 3.14, punctuation?!;: (brackets) [x] {y}",
    "MiXeD CaSe SeNtInEl-2 B04/B08 NDVI",
    "emoji 🛰️🌍 and a tab\tseparated word",
]


@pytest.mark.parametrize("fixture", ["tiny_bundle", "tiny_multilingual_bundle"])
def test_ids_match_open_clip(fixture: str, request: pytest.FixtureRequest) -> None:
    from training.models import create_model

    bundle = load_bundle(request.getfixturevalue(fixture))
    tok = BundleTokenizer.from_bundle(bundle)
    reference = create_model(bundle.manifest.name).tokenizer(PROMPTS).numpy()
    got = tok.encode(PROMPTS)
    assert got.dtype == np.int64
    assert got.shape == (len(PROMPTS), bundle.manifest.text.context_length)
    for prompt, a, b in zip(PROMPTS, got, reference):
        assert a.tolist() == b.tolist(), f"ids differ for {prompt!r}"


def test_truncation_keeps_end_token(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    spec = bundle.manifest.text
    ids = BundleTokenizer.from_bundle(bundle).encode([" ".join(["river"] * 200), "river"])
    assert ids[0, 0] == spec.sot_id and ids[0, -1] == spec.eot_id
    assert (ids[0] != spec.pad_id).all()
    assert ids[1].tolist()[:3] == [spec.sot_id, ids[0, 1], spec.eot_id]
    assert (ids[1, 3:] == spec.pad_id).all()


def test_multilingual_pads_with_its_pad_id(tiny_multilingual_bundle: Path) -> None:
    bundle = load_bundle(tiny_multilingual_bundle)
    spec = bundle.manifest.text
    assert (spec.tokenizer_kind, spec.sot_id, spec.eot_id, spec.pad_id, spec.lowercase) == ("hf", 0, 2, 1, False)
    ids = BundleTokenizer.from_bundle(bundle).encode(["Forest", "forest"])
    assert ids[0, -1] == 1
    assert ids[0].tolist() != ids[1].tolist()  # case kept: XLM-R is cased


def test_clean_text() -> None:
    assert clean_text("  A  b\t&amp;\nC ", lowercase=True) == "a b & c"
    assert clean_text("“Ｑ” ’s ﬁ", lowercase=False) == "\"Q\" 's fi"
    assert clean_text("e\u0301", lowercase=False) == "é"  # NFC


def test_missing_or_bad_tokenizer_file_is_named(tmp_path: Path) -> None:
    spec = TextSpec(onnx="text.onnx", tokenizer="tokenizer.json", context_length=77, languages=["en"])
    with pytest.raises(BundleError, match=r"tokenizer\.json: tokenizer file missing"):
        BundleTokenizer(tmp_path / "tokenizer.json", spec)
    bad = tmp_path / "tokenizer.json"
    bad.write_text(json.dumps({"not": "a tokenizer"}))
    with pytest.raises(BundleError, match="not a readable tokenizers file"):
        BundleTokenizer(bad, spec)
