"""Tiny open_clip configurations: real architectures, small enough for tests on one CPU core.

- ``rsclip-tiny``: a 2-layer ViT (64 px, patch 8) and a 2-layer CLIP text transformer with open_clip's
  CLIP BPE tokenizer; a static JSON config in ``configs/``.
- ``rsclip-tiny-multilingual``: the same ViT and an XLM-RoBERTa-style Hugging Face text tower (the shape of
  RS-M-CLIP's ``xlm-roberta-base-ViT-B-32``) whose config and tokenizer are made here, offline: the tokenizer
  is trained deterministically on ``resources/tiny_multilingual_corpus.txt`` (ten languages). The directory is
  generated once under ``cache_dir()/models`` and keyed by a hash of everything that shapes it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from rs_clip_plugin.engine.atomic import staged_dir
from rs_clip_plugin.engine.resources import LANGUAGES, resources_dir
from rs_clip_plugin.engine.settings import cache_dir

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
CORPUS = resources_dir() / "tiny_multilingual_corpus.txt"

TINY = "rsclip-tiny"
TINY_MULTILINGUAL = "rsclip-tiny-multilingual"
TINY_MODELS = (TINY, TINY_MULTILINGUAL)
MULTILINGUAL_LANGUAGES = list(LANGUAGES)

# XLM-R's special tokens and their ids (sentencepiece order of the original model).
XLMR_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
_VOCAB_SIZE = 4000
_CONTEXT_LENGTH = 77
_HF_CONFIG = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 128,
    # RoBERTa positions start after padding_idx (1), so 77 tokens need 77 + 2 positions.
    "max_position_embeddings": _CONTEXT_LENGTH + 3,
    "type_vocab_size": 1,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
}
_VISION_CFG = json.loads((CONFIG_DIR / f"{TINY}.json").read_text())["vision_cfg"]
_registered: set[str] = set()


def register_tiny_configs(multilingual: bool = True) -> list[str]:
    """Make the tiny model names known to open_clip (idempotent); returns the names registered."""
    import open_clip

    if TINY not in _registered:
        open_clip.add_model_config(CONFIG_DIR / f"{TINY}.json")
        _registered.add(TINY)
    if multilingual and TINY_MULTILINGUAL not in _registered:
        hf_dir = multilingual_text_dir()
        open_clip.add_model_config(hf_dir / f"{TINY_MULTILINGUAL}.json")
        _registered.add(TINY_MULTILINGUAL)
    return sorted(_registered)


def ensure_registered(name: str) -> None:
    """Register ``name`` with open_clip if it is one of the tiny configurations (cheap when already done)."""
    if name in TINY_MODELS:
        register_tiny_configs(multilingual=name == TINY_MULTILINGUAL)


def _multilingual_key() -> str:
    h = hashlib.sha256()
    h.update(CORPUS.read_bytes())
    h.update(json.dumps([_VOCAB_SIZE, _CONTEXT_LENGTH, _HF_CONFIG, _VISION_CFG, XLMR_SPECIALS], sort_keys=True).encode())
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()[:12]


def multilingual_text_dir() -> Path:
    """Local Hugging Face directory (config + tokenizer) of the tiny multilingual text tower; built once."""
    if not CORPUS.is_file():
        raise FileNotFoundError(f"{CORPUS}: the multilingual tokenizer corpus is missing; restore resources/ from the repository")
    dest = cache_dir() / "models" / f"{TINY_MULTILINGUAL}-{_multilingual_key()}"
    if (dest / f"{TINY_MULTILINGUAL}.json").is_file():
        return dest
    # Another process building the identical directory first is fine: either copy will do.
    with staged_dir(dest, complete=lambda d: (d / f"{TINY_MULTILINGUAL}.json").is_file()) as tmp:
        _write_multilingual_dir(tmp, dest)
    return dest


def train_multilingual_tokenizer():
    """An XLM-R-style Unigram tokenizer trained on the ten-language corpus (deterministic)."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(r"\s+"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=_VOCAB_SIZE,
        special_tokens=XLMR_SPECIALS,
        unk_token="<unk>",
        show_progress=False,
        shrinking_factor=0.75,
        max_piece_length=16,
    )
    lines = [line for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
    tok.train_from_iterator(lines, trainer=trainer)
    tok.model = _canonical_unigram(tok)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    for i, t in enumerate(XLMR_SPECIALS):
        if tok.token_to_id(t) != i:
            raise RuntimeError(f"tokenizer training put {t} at id {tok.token_to_id(t)}, expected {i}")
    return tok


def _canonical_unigram(tok):
    """The trained model with rounded scores in a fixed order.

    The trainer runs EM in parallel: scores differ run to run in the last bits and near-equal pieces swap ids.
    Rounding and sorting makes the vocabulary (and the cache key's promise) identical on every build.
    """
    from tokenizers import models

    vocab = json.loads(tok.to_str())["model"]["vocab"]
    specials = vocab[: len(XLMR_SPECIALS)]
    if [t for t, _ in specials] != XLMR_SPECIALS:
        raise RuntimeError(f"tokenizer training put special tokens at {specials}, expected {XLMR_SPECIALS}")
    pieces = sorted(((t, round(float(s), 6)) for t, s in vocab[len(XLMR_SPECIALS) :]), key=lambda p: (-p[1], p[0]))
    # Characters the trainer must keep are appended with scores stepping down by 1e-4 in hash-map order:
    # give that tail (the run of pieces at the bottom spaced <= 1e-4 apart) a fixed alphabetical order.
    start = len(pieces) - 1
    while start > 0 and pieces[start - 1][1] - pieces[start][1] < 1e-4 + 1e-6:
        start -= 1
    if len(pieces) - start > 1:
        top = pieces[start][1]
        tail = sorted(t for t, _ in pieces[start:])
        pieces[start:] = [(t, round(top - i * 1e-4, 6)) for i, t in enumerate(tail)]
    return models.Unigram([(t, 0.0) for t in XLMR_SPECIALS] + pieces, unk_id=XLMR_SPECIALS.index("<unk>"), byte_fallback=False)


def _write_multilingual_dir(tmp: Path, final: Path) -> None:
    from transformers import PreTrainedTokenizerFast, XLMRobertaConfig

    tok = train_multilingual_tokenizer()
    if tok.get_vocab_size() > _VOCAB_SIZE:
        raise RuntimeError(f"tokenizer vocabulary {tok.get_vocab_size()} exceeds the model's {_VOCAB_SIZE}")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=_CONTEXT_LENGTH,
    )
    fast.save_pretrained(str(tmp))
    XLMRobertaConfig(vocab_size=_VOCAB_SIZE, **_HF_CONFIG).save_pretrained(str(tmp))
    # open_clip reads the text tower from this path: the directory's final name, not the temp one.
    cfg = {
        "embed_dim": 64,
        "vision_cfg": _VISION_CFG,
        "text_cfg": {
            "hf_model_name": str(final),
            "hf_tokenizer_name": str(final),
            "hf_pooler_type": "mean_pooler",
            "hf_proj_type": "mlp",
            "context_length": _CONTEXT_LENGTH,
        },
    }
    (tmp / f"{TINY_MULTILINGUAL}.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
