"""Write a model's tokenizer as one ``tokenizer.json`` the engine's ``BundleTokenizer`` reads.

CLIP BPE models: built from open_clip's ``bpe_simple_vocab_16e6.txt.gz`` the way transformers'
``CLIPConverter`` does. Hugging Face text towers: the tower's own fast tokenizer, as it is.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class TokenizerInfo:
    """The TextSpec facts of a tokenizer (everything but file names and languages)."""

    kind: str  # "clip-bpe" | "hf"
    context_length: int
    sot_id: int
    eot_id: int
    pad_id: int
    lowercase: bool
    vocab_size: int


def clip_bpe_tokenizer(bpe_path: str | None = None):
    """A ``tokenizers.Tokenizer`` equal to open_clip's SimpleTokenizer (before its ftfy/html clean-up)."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    with gzip.open(bpe_path or default_bpe()) as f:
        merges_text = f.read().decode("utf-8").split("\n")
    # Same slice as open_clip: 49152 - 256 - 2 merges after the header line.
    merges = [tuple(m.split()) for m in merges_text[1 : 49152 - 256 - 2 + 1]]
    chars = list(bytes_to_unicode().values())
    vocab_list = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + ["<start_of_text>", "<end_of_text>"]
    vocab = {t: i for i, t in enumerate(vocab_list)}
    tok = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=merges,
            dropout=None,
            continuing_subword_prefix="",
            end_of_word_suffix="</w>",
            fuse_unk=False,
        )
    )
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""), behavior="removed", invert=True
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<start_of_text>", "<end_of_text>"])
    return tok


def write_tokenizer(loaded: Any, path: Path) -> TokenizerInfo:
    """Write ``loaded.tokenizer`` (an open_clip tokenizer) to ``path``; return its TextSpec facts."""
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

    tk = loaded.tokenizer
    path = Path(path)
    if isinstance(tk, SimpleTokenizer):
        if getattr(tk, "reduction_fn", None) is not None:
            raise ValueError(f"{loaded.model_name}: tokenizers with a reduction mask are not supported by bundles")
        tok = clip_bpe_tokenizer()
        tok.save(str(path))
        return TokenizerInfo("clip-bpe", int(tk.context_length), tk.sot_token_id, tk.eot_token_id, 0, True, tok.get_vocab_size())
    if isinstance(tk, HFTokenizer):
        hf = tk.tokenizer
        if getattr(tk, "tokenizer_mode", "") or getattr(tk, "strip_sep_token", False):
            raise ValueError(f"{loaded.model_name}: HF tokenizer modes other than the standard one are not supported by bundles")
        backend = getattr(hf, "backend_tokenizer", None) or getattr(hf, "_tokenizer", None)
        if backend is None:
            raise ValueError(f"{loaded.model_name}: its tokenizer has no fast (tokenizers) backend to export")
        sot, eot = _hf_special_ids(hf)
        backend.save(str(path))
        return TokenizerInfo("hf", int(tk.context_length), sot, eot, int(hf.pad_token_id), False, backend.get_vocab_size())
    raise ValueError(f"{loaded.model_name}: tokenizer type {type(tk).__name__} cannot be exported to a bundle")


def _hf_special_ids(hf: Any) -> tuple[int, int]:
    # What the tokenizer itself adds around one sequence (e.g. <s> ... </s> for XLM-R, [CLS] ... [SEP] for BERT).
    ids = hf("x", add_special_tokens=True)["input_ids"]
    plain = hf("x", add_special_tokens=False)["input_ids"]
    if len(ids) != len(plain) + 2 or ids[1:-1] != plain:
        raise ValueError("the HF tokenizer does not wrap a text in exactly one start and one end token; not supported")
    return int(ids[0]), int(ids[-1])
