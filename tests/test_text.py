"""Class lists, prompt ensembling and text embeddings (real tokenizer, real text.onnx of the tiny bundle)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rs_clip_plugin.engine.bundle import BundleError
from rs_clip_plugin.engine.classes import ClassSpec, class_colours, parse_classes
from rs_clip_plugin.engine.runtime import EncoderSession
from rs_clip_plugin.engine.text import class_embeddings, embed_texts, templates_for
from rs_clip_plugin.engine.tokenizer import BundleTokenizer


def test_parse_classes_forms(tmp_path: Path) -> None:
    assert parse_classes("forest|woodland; river ;annual crop") == [
        ClassSpec("forest", ("woodland",)),
        ClassSpec("river"),
        ClassSpec("annual crop"),
    ]
    assert parse_classes(["forest | woodland | forest", "sea;lake"]) == [
        ClassSpec("forest", ("woodland",)),
        ClassSpec("sea"),
        ClassSpec("lake"),
    ]
    f = tmp_path / "classes.txt"
    f.write_text("# land cover\nforest|woodland\n\n  river  \n# water\nsea or lake\n", encoding="utf-8")
    want = [ClassSpec("forest", ("woodland",)), ClassSpec("river"), ClassSpec("sea or lake")]
    assert parse_classes(f) == want
    assert parse_classes(str(f)) == want
    assert parse_classes([ClassSpec("x", ("y",))]) == [ClassSpec("x", ("y",))]
    assert ClassSpec("forest", ("woodland",)).phrases == ("forest", "woodland")


@pytest.mark.parametrize("bad", ["", " ; ;", "# only a comment", [], ["  "]])
def test_parse_classes_empty(bad) -> None:
    with pytest.raises(ValueError, match="no classes given"):
        parse_classes(bad)


def test_parse_classes_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="listed twice"):
        parse_classes("forest;Forest")
    with pytest.raises(ValueError, match="reserved"):
        parse_classes("forest;unknown")
    with pytest.raises(ValueError, match="at most 254"):  # 0 is no data, K+1 unknown
        parse_classes([f"c{i}" for i in range(255)])
    assert len(parse_classes([f"c{i}" for i in range(254)])) == 254
    with pytest.raises(FileNotFoundError, match="does not exist"):
        parse_classes(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="holds no name"):
        parse_classes("forest;|")


def test_class_colours_distinct_and_customary() -> None:
    cols = class_colours(parse_classes("forest;river;sea or lake;annual crop;a;b;c;d;e;f;g;h"))
    assert len(set(cols)) == len(cols)
    assert all(c.startswith("#") and len(c) == 7 for c in cols)
    assert cols[0] == "#1b7837"  # forest is green
    # Two classes hitting the same keyword still get distinct colours.
    two = class_colours(["dense forest", "open forest"])
    assert two[0] != two[1]


def test_embed_texts_normalised_and_batch_independent(bundle) -> None:
    texts = ["a satellite image of a river.", "a satellite image of a forest.", "houses"]
    emb = embed_texts(bundle, texts)
    assert emb.shape == (3, bundle.manifest.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(embed_texts(bundle, texts[1:2])[0], emb[1], atol=1e-5)
    # Same as running the text graph on the bundle tokenizer's ids and normalising by hand.
    ids = BundleTokenizer.from_bundle(bundle).encode(texts)
    raw = EncoderSession(bundle, "text", provider="cpu").run(ids)
    np.testing.assert_allclose(emb, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)


def test_class_embeddings_prompt_ensembling_by_hand(bundle) -> None:
    templates = templates_for(bundle, "en")
    assert len(templates) > 1
    classes = parse_classes("forest|woodland;river")
    got = class_embeddings(bundle, classes)
    assert got.shape == (2, bundle.manifest.embed_dim)
    for k, phrases in enumerate([("forest", "woodland"), ("river",)]):
        prompts = [t.replace("{}", p) for p in phrases for t in templates]
        e = embed_texts(bundle, prompts)
        mean = e.mean(axis=0)
        np.testing.assert_allclose(got[k], mean / np.linalg.norm(mean), atol=1e-5)
    # The ensemble differs from the bare first prompt (the templates matter).
    single = embed_texts(bundle, [templates[0].replace("{}", "river")])[0]
    assert float(got[1] @ single) < 0.99999
    # Explicit templates override the bundle's.
    only = class_embeddings(bundle, "river", templates=["{}"])
    np.testing.assert_allclose(only[0], embed_texts(bundle, ["river"])[0], atol=1e-5)


def test_language_and_template_errors(bundle) -> None:
    assert bundle.manifest.text.languages == ["en"]
    with pytest.raises(BundleError, match=r"'de'.*knows: en"):
        class_embeddings(bundle, "Wald", lang="de")
    with pytest.raises(ValueError, match=r"contain '\{\}'"):
        class_embeddings(bundle, "river", templates=["no placeholder"])
    with pytest.raises(ValueError, match="no classes given"):
        class_embeddings(bundle, "")


def test_guess_language_of_short_queries() -> None:
    from rs_clip_plugin.engine.text import guess_language

    cases = {"a river": "en", "um rio": "pt", "ein Hafen": "de", "une forêt": "fr", "een haven": "nl",
             "un fiume": "it", "bosque": "es", "河流": "zh", "강": "ko", "река": "ru", "xyzzy": None}
    assert {t: guess_language(t) for t in cases} == cases
