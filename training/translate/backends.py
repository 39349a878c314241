"""Translation backends over local Hugging Face models (no hub access needed: give a model directory).

- ``seq2seq``: encoder-decoder models. NLLB and M2M-100 pick the target with a forced first token
  (``eng_Latn``/``por_Latn``..., ``__en__``/``__pt__``...), multi-target Marian with a ``>>por<<`` prefix,
  single-pair Marian (``opus-mt-en-de``) needs one model per language (``--model DIR_{lang}``), T5 a
  "translate English to German: " prefix.
- ``causal``: decoder-only LMs prompted to translate (Tower is RS-M-CLIP's probable translator): the
  model's chat template if it has one, else Tower's plain prompt; only the first line of new text is kept.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from .codes import LANGUAGE_NAMES, code_for

BACKENDS = ("seq2seq", "causal")
TOWER_PROMPT = "Translate the following text from {src} into {tgt}.\n{src}: {text}\n{tgt}:"


def _model_id(path: Path) -> str:
    """Name plus a hash of config.json: a cache key that survives moving the folder, not changing the model."""
    cfg = path / "config.json"
    digest = hashlib.sha256(cfg.read_bytes()).hexdigest()[:12] if cfg.is_file() else "noconfig"
    weights = sorted(p.name + str(p.stat().st_size) for p in path.glob("*.safetensors")) + sorted(
        p.name + str(p.stat().st_size) for p in path.glob("*.bin")
    )
    return f"{path.name}:{digest}:{hashlib.sha256(''.join(weights).encode()).hexdigest()[:8]}"


def _check_dir(path: Path) -> None:
    if not path.is_dir() or not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path}: not a Hugging Face model directory (no config.json); download the model (e.g. "
            "facebook/nllb-200-distilled-600M, Unbabel/TowerInstruct-7B-v0.2) where a hub is reachable and pass its folder"
        )


class Translator:
    """Common interface: ``translate(texts, tgt) -> list[str]`` from ``src`` (English by default)."""

    backend = "base"

    def __init__(self, model_dir: os.PathLike | str, *, src: str = "en", device: str = "cpu",
                 max_new_tokens: int = 128, num_beams: int = 1) -> None:
        self.model_dir_spec = str(model_dir)
        self.src = src
        self.device = device
        self.max_new_tokens = max_new_tokens
        self.num_beams = num_beams
        self._loaded: dict[str, tuple] = {}

    def model_dir(self, tgt: str) -> Path:
        return Path(self.model_dir_spec.replace("{lang}", tgt))

    def model_id(self, tgt: str) -> str:
        return _model_id(self.model_dir(tgt))

    def translate(self, texts: Sequence[str], tgt: str) -> list[str]:
        raise NotImplementedError

    def _load(self, tgt: str) -> tuple:
        """The loaded model for ``tgt``, opened once per model directory and kept."""
        path = self.model_dir(tgt)
        key = str(path)
        if key not in self._loaded:
            _check_dir(path)
            self._loaded[key] = self._open(path)
        return self._loaded[key]

    def _open(self, path: Path) -> tuple:
        raise NotImplementedError


class Seq2SeqTranslator(Translator):
    backend = "seq2seq"

    def _open(self, path: Path) -> tuple:
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForSeq2SeqLM.from_pretrained(str(path)).to(self.device).eval()
        return tok, model, self._family(tok, model)

    @staticmethod
    def _family(tok, model) -> str:
        vocab = tok.get_vocab()
        kind = getattr(model.config, "model_type", "")
        if "eng_Latn" in vocab:
            return "nllb"
        if kind == "m2m_100" or "__en__" in vocab:
            return "m2m100"
        if kind == "marian":
            return "marian"
        return "t5"

    def translate(self, texts: Sequence[str], tgt: str) -> list[str]:
        import torch

        tok, model, family = self._load(tgt)
        texts = list(texts)
        gen_kwargs: dict = {"max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams}
        if family in ("nllb", "m2m100"):
            if hasattr(tok, "src_lang"):
                tok.src_lang = code_for(family, self.src)
            tgt_id = tok.convert_tokens_to_ids(code_for(family, tgt))
            if tgt_id is None or tgt_id == tok.unk_token_id:
                raise ValueError(f"{self.model_dir(tgt)}: the tokenizer has no {code_for(family, tgt)!r} token; "
                                 f"this {family} model cannot translate into {tgt}")
            gen_kwargs["forced_bos_token_id"] = tgt_id
        elif family == "marian":
            code = code_for("marian", tgt)
            if code in tok.get_vocab():  # multi-target model; single-pair models need no prefix
                texts = [f"{code} {t}" for t in texts]
        else:
            texts = [f"translate {LANGUAGE_NAMES[self.src]} to {LANGUAGE_NAMES[tgt]}: {t}" for t in texts]
        enc = tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=256).to(self.device)
        with torch.no_grad():
            out = model.generate(**enc, **gen_kwargs)
        return [s.strip() for s in tok.batch_decode(out, skip_special_tokens=True)]


class CausalTranslator(Translator):
    backend = "causal"

    def _open(self, path: Path) -> tuple:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(path))
        tok.padding_side = "left"  # generation continues from the right end of every row
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token or tok.unk_token
        model = AutoModelForCausalLM.from_pretrained(str(path)).to(self.device).eval()
        return tok, model

    def prompt(self, tok, text: str, tgt: str) -> str:
        body = TOWER_PROMPT.format(src=LANGUAGE_NAMES[self.src], tgt=LANGUAGE_NAMES[tgt], text=text)
        if getattr(tok, "chat_template", None):
            return tok.apply_chat_template([{"role": "user", "content": body}], tokenize=False, add_generation_prompt=True)
        return body

    def translate(self, texts: Sequence[str], tgt: str) -> list[str]:
        import torch

        tok, model = self._load(tgt)
        prompts = [self.prompt(tok, t, tgt) for t in texts]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=self.max_new_tokens, num_beams=self.num_beams, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        new = out[:, enc["input_ids"].shape[1] :]
        decoded = tok.batch_decode(new, skip_special_tokens=True)
        return [(d.strip().splitlines() or [""])[0].strip() for d in decoded]


def make_translator(backend: str, model_dir: os.PathLike | str, *, device: Optional[str] = None, **kwargs) -> Translator:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    cls = Seq2SeqTranslator if backend == "seq2seq" else CausalTranslator
    return cls(model_dir, device=device, **kwargs)
