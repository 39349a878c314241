"""Caption translation mechanics on tiny, locally made Hugging Face models (random weights: gibberish out,
but real tokenisation, generation, language-code forcing, batching, caching, resume and files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rs_clip_plugin.engine.progress import Cancelled, Progress
from training.cli import main as train_main
from training.data.captions import load_captions
from training.translate import (
    TranslationCache,
    code_for,
    make_translator,
    parse_langs,
    translate_records,
)

CAPTIONS = [
    "many buildings are near a river",
    "a green forest with dense trees",
    "an airport with two runways and planes",
    "a harbor with boats",
    "farmland divided into rectangular fields",
]
LANG_TOKENS = [f"__{c}__" for c in ("en", "pt", "es", "fr", "de", "nl", "it", "zh", "ko", "ru")]


def _tokenizer(out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=150, special_tokens=["<s>", "<pad>", "</s>", "<unk>", *LANG_TOKENS],
                                  show_progress=False)
    tok.train_from_iterator(CAPTIONS * 3, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", additional_special_tokens=LANG_TOKENS)
    fast.save_pretrained(str(out))
    return fast


@pytest.fixture(scope="module")
def tiny_m2m(tmp_path_factory) -> Path:
    import torch
    from transformers import M2M100Config, M2M100ForConditionalGeneration

    out = tmp_path_factory.mktemp("tiny-m2m100")
    fast = _tokenizer(out)
    torch.manual_seed(0)
    cfg = M2M100Config(vocab_size=len(fast), d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                       decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64,
                       pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)
    M2M100ForConditionalGeneration(cfg).save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def tiny_causal(tmp_path_factory) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama")
    fast = _tokenizer(out)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                      pad_token_id=1, bos_token_id=0, eos_token_id=2)
    LlamaForCausalLM(cfg).save_pretrained(str(out))
    return out


@pytest.fixture()
def rsicd_file(tmp_path: Path) -> Path:
    images = [{"filename": f"img_{i}.jpg", "split": "train" if i < 2 else "test", "imgid": i,
               "sentences": [{"raw": CAPTIONS[i]}, {"raw": CAPTIONS[(i + 1) % len(CAPTIONS)]}]} for i in range(3)]
    path = tmp_path / "dataset_rsicd.json"
    path.write_text(json.dumps({"dataset": "rsicd", "images": images}), encoding="utf-8")
    return path


def test_language_codes_per_backend():
    assert code_for("nllb", "zh") == "zho_Hans"
    assert code_for("nllb", "pt") == "por_Latn"
    assert code_for("m2m100", "ko") == "__ko__"
    assert code_for("marian", "ru") == ">>rus<<"
    assert code_for("causal", "nl") == "Dutch"
    assert parse_langs("all") == ["pt", "es", "fr", "de", "nl", "it", "zh", "ko", "ru"]
    with pytest.raises(ValueError, match="unknown"):
        parse_langs("pt,xx")


def test_cache_survives_a_torn_line(tmp_path: Path):
    cache = TranslationCache(tmp_path)
    cache.put_many([("a", "um"), ("b", "dois")])
    with open(cache.path, "ab") as f:
        f.write(b'{"k": "c", "t": "tr')  # killed mid-write
    again = TranslationCache(tmp_path)
    assert (len(again), again.torn_lines, again.get("b")) == (2, 1, "dois")
    again.put_many([("c", "três")])
    assert TranslationCache(tmp_path).get("c") == "três"


def test_seq2seq_translates_with_forced_language_token(tiny_m2m: Path):
    tr = make_translator("seq2seq", tiny_m2m, device="cpu", max_new_tokens=6)
    _, _, family = tr._load("pt")
    assert family == "m2m100"
    out_pt = tr.translate(CAPTIONS[:3], "pt")
    out_ko = tr.translate(CAPTIONS[:3], "ko")
    assert len(out_pt) == len(out_ko) == 3 and all(isinstance(s, str) for s in out_pt)
    assert out_pt != out_ko  # the forced first token differs, so does the rest
    with pytest.raises(ValueError, match="has no"):
        tr.translate(["x"], "xx")


def test_translate_resumes_after_interruption(tiny_m2m: Path, rsicd_file: Path, tmp_path: Path):
    tr = make_translator("seq2seq", tiny_m2m, device="cpu", max_new_tokens=4)
    out = tmp_path / "out"
    calls = {"n": 0}

    def cancel_after_first_batch() -> bool:
        return calls["n"] >= 1

    def on_update(fraction, msg):
        calls["n"] += 1

    with pytest.raises(Cancelled):
        translate_records(load_captions(rsicd_file), tr, ["pt", "es"], out, batch_size=2,
                          progress=Progress(on_update, cancel_after_first_batch))
    assert not (out / "captions.pt.jsonl").exists()  # no partial output
    assert len(TranslationCache(out / "cache")) == 2  # one batch of two unique captions survived
    report = translate_records(load_captions(rsicd_file), tr, ["pt", "es"], out, batch_size=2)
    assert report["languages"]["pt"]["cached"] == 2
    assert report["languages"]["pt"]["translated"] == report["languages"]["pt"]["unique"] - 2
    # A third run is all cache.
    again = translate_records(load_captions(rsicd_file), tr, ["pt", "es"], out, batch_size=2)
    assert all(s["translated"] == 0 for s in again["languages"].values())


def test_translate_command_end_to_end(tiny_m2m: Path, tiny_causal: Path, rsicd_file: Path, tmp_path: Path, capsys):
    out = tmp_path / "tr"
    rc = train_main(["translate", "--captions", str(rsicd_file), "--model", str(tiny_m2m), "--backend", "seq2seq",
                     "--langs", "all", "--out", str(out), "--batch-size", "4", "--max-new-tokens", "4",
                     "--device", "cpu", "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert sorted(report["languages"]) == sorted(["pt", "es", "fr", "de", "nl", "it", "zh", "ko", "ru"])
    for lang in report["languages"]:
        rows = [json.loads(line) for line in (out / f"captions.{lang}.jsonl").read_text(encoding="utf-8").splitlines()]
        assert len(rows) == 6 and {r["lang"] for r in rows} == {lang}
        assert rows[0]["image"].endswith("img_0.jpg") and {r["split"] for r in rows} == {"train", "test"}
    merged = load_captions(out / "captions.all.jsonl", image_dir=out)
    assert len(merged) == 3 and sorted(merged[0].languages) == sorted(["en", *report["languages"]])
    assert merged[0].captions["en"] == CAPTIONS[0:2]

    out_c = tmp_path / "tr-causal"
    rc = train_main(["translate", "--captions", str(rsicd_file), "--model", str(tiny_causal), "--backend", "causal",
                     "--langs", "pt,zh", "--out", str(out_c), "--max-new-tokens", "4", "--device", "cpu"])
    assert rc == 0
    assert (out_c / "captions.zh.jsonl").is_file() and (out_c / "captions.all.jsonl").is_file()


def test_translate_command_reports_missing_model(rsicd_file: Path, tmp_path: Path, capsys):
    rc = train_main(["translate", "--captions", str(rsicd_file), "--model", str(tmp_path / "nope"), "--backend",
                     "seq2seq", "--langs", "pt", "--out", str(tmp_path / "o"), "--device", "cpu"])
    assert rc == 2
    assert "config.json" in capsys.readouterr().err
