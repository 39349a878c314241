"""Text -> token ids for a bundle's text encoder, without torch or open_clip.

Reproduces open_clip's tokenizers exactly for the two kinds a bundle can hold:
- ``clip-bpe``: open_clip ``SimpleTokenizer`` (clean, lowercase, CLIP BPE, ``<start_of_text> ... <end_of_text>``,
  truncated to ``context_length`` keeping the end token, zero padded);
- ``hf``: open_clip ``HFTokenizer`` around a Hugging Face fast tokenizer (clean without lowercasing, the
  tokenizer's own ``<s> ... </s>``, truncated to ``context_length``, padded with its pad id).
Both are one ``tokenizer.json`` (``tokenizers`` library) plus the ids in the manifest's ``TextSpec``.
"""

from __future__ import annotations

import html
import os
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .bundle import BundleError, TextSpec

if TYPE_CHECKING:
    from .bundle import Bundle

# open_clip cleans text with ftfy.fix_text before tokenizing. ftfy is not a plugin dependency, so the fixes
# that change well-formed text are reproduced here (mojibake repair is not: bundles are fed typed prompts).
_CONTROL_CHARS = {
    i: None
    for i in [*range(0x00, 0x09), 0x0B, *range(0x0E, 0x20), 0x7F, *range(0x206A, 0x2070), 0xFEFF, *range(0xFFF9, 0xFFFD)]
}
_LIGATURES = {
    "Ĳ": "IJ", "ĳ": "ij", "ŉ": "ʼn", "Ǳ": "DZ", "ǲ": "Dz", "ǳ": "dz", "Ǆ": "DŽ", "ǅ": "Dž", "ǆ": "dž",
    "Ǉ": "LJ", "ǈ": "Lj", "ǉ": "lj", "Ǌ": "NJ", "ǋ": "Nj", "ǌ": "nj",
    "ﬀ": "ff", "ﬁ": "fi", "ﬂ": "fl", "ﬃ": "ffi", "ﬄ": "ffl", "ﬅ": "ſt", "ﬆ": "st",
}  # fmt: skip
_WIDTH = {0x3000: " "}
_WIDTH.update(
    {i: unicodedata.normalize("NFKC", chr(i)) for i in range(0xFF01, 0xFFF0) if unicodedata.normalize("NFKC", chr(i)) != chr(i)}
)
_TRANSLATE = {**_CONTROL_CHARS, **{ord(k): v for k, v in _LIGATURES.items()}, **_WIDTH}
_SINGLE_QUOTES = re.compile("[\u02bc\u2018-\u201b]")
_DOUBLE_QUOTES = re.compile("[\u201c-\u201f]")


def clean_text(text: str, lowercase: bool) -> str:
    """open_clip's ``basic_clean`` + ``whitespace_clean`` (+ ``lower`` for CLIP BPE)."""
    if "<" not in text:  # ftfy unescapes entities unless the text looks like HTML
        text = html.unescape(text)
    text = text.translate(_TRANSLATE)
    text = _DOUBLE_QUOTES.sub('"', _SINGLE_QUOTES.sub("'", text))
    text = unicodedata.normalize("NFC", text)
    text = html.unescape(html.unescape(text)).strip()
    text = " ".join(text.split())
    return text.lower() if lowercase else text


class BundleTokenizer:
    """Encode prompts to the int64 ``[N, context_length]`` ids the bundle's ``text.onnx`` takes."""

    def __init__(self, tokenizer_json: os.PathLike | str, spec: TextSpec):
        from tokenizers import Tokenizer

        path = Path(tokenizer_json)
        if not path.is_file():
            raise BundleError(f"{path}: tokenizer file missing; copy the complete bundle again or re-export it")
        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a plain Exception on bad JSON
            raise BundleError(f"{path}: not a readable tokenizers file ({exc}); re-export the bundle") from exc
        if spec.context_length < 2:
            raise BundleError(f"{path}: context_length {spec.context_length} leaves no room for start and end tokens")
        self.spec = spec
        self.path = path
        self.context_length = int(spec.context_length)
        vocab = self._tok.get_vocab_size(with_added_tokens=True)
        for name in ("sot_id", "eot_id", "pad_id"):
            if not 0 <= getattr(spec, name) < vocab:
                raise BundleError(f"{path}: text.{name}={getattr(spec, name)} is outside the vocabulary ({vocab}); re-export")

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> BundleTokenizer:
        text = bundle.manifest.text
        return cls(bundle.path(text.tokenizer), text)

    def encode(self, texts: Sequence[str] | str) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        n = self.context_length
        out = np.full((len(texts), n), self.spec.pad_id, dtype=np.int64)
        cleaned = [clean_text(t, self.spec.lowercase) for t in texts]
        encodings = self._tok.encode_batch(cleaned, add_special_tokens=False) if cleaned else []
        for i, enc in enumerate(encodings):
            ids = [self.spec.sot_id, *enc.ids[: n - 2], self.spec.eot_id]
            out[i, : len(ids)] = ids
        return out

    __call__ = encode
