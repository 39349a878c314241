"""Class prompts -> text embeddings (CLIP prompt ensembling), in any language the bundle supports.

A class's embedding is the mean over (its synonyms x the bundle's prompt templates) of L2-normalised
text embeddings, normalised again: the zero-shot head of CLIP and of Paper A. For labelling, a
:class:`PromptHead` may instead keep one embedding per synonym and merge their logits by max (SegEarth-OV),
and carries background prompts as further logit columns (see :func:`prompt_head`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import numpy as np

from .bundle import Bundle, BundleError
from .classes import ClassesInput, ClassSpec, parse_classes
from .options import SYNONYM_MERGES
from .runtime import TEXT_ROLE, EncoderSession, l2_normalise

__all__ = ["ClassSpec", "PromptHead", "class_embeddings", "embed_texts", "parse_classes", "prompt_head", "prompts_for",
           "synonym_merge", "templates_for"]

# Text encoders are small next to image ones; a moderate batch keeps peak memory low for long class lists.
TEXT_BATCH = 64


_tokenizers: dict[tuple[str, str], object] = {}


def _tokenizer(bundle: Bundle):
    """The bundle's tokenizer, loaded once per tokenizer file content."""
    from .tokenizer import BundleTokenizer

    text = bundle.manifest.text
    key = (str(bundle.path(text.tokenizer)), bundle.manifest.files.get(text.tokenizer, ""))
    tok = _tokenizers.get(key)
    if tok is None:
        tok = _tokenizers[key] = BundleTokenizer.from_bundle(bundle)
    return tok


def _text_session(bundle: Bundle, session: Optional[EncoderSession], provider: str) -> EncoderSession:
    if session is None:
        return EncoderSession(bundle, TEXT_ROLE, provider=provider)
    if session.role != TEXT_ROLE:
        raise ValueError(f"class embeddings need the bundle's text session, not the {session.role!r} one")
    return session


def embed_texts(
    bundle: Bundle, texts: Sequence[str], session: Optional[EncoderSession] = None, provider: str = "auto"
) -> np.ndarray:
    """L2-normalised embeddings [N, D] of raw texts (tokenised once, run in batches)."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    sess = _text_session(bundle, session, provider)
    ids = _tokenizer(bundle).encode(texts)
    out = np.zeros((len(texts), bundle.manifest.embed_dim), np.float32)
    for i in range(0, len(texts), TEXT_BATCH):
        out[i : i + TEXT_BATCH] = sess.embed(ids[i : i + TEXT_BATCH])
    return out


def check_language(bundle: Bundle, lang: str) -> None:
    langs = bundle.manifest.text.languages
    if lang not in langs:
        raise BundleError(
            f"bundle {bundle.manifest.name!r} does not support prompts in {lang!r}; its text encoder knows: "
            f"{', '.join(langs)} (choose one of these with {{lang}}, or a multilingual bundle)",
            params=("lang",),
        )


def templates_for(bundle: Bundle, lang: str = "en") -> list[str]:
    """The bundle's prompt templates in ``lang``, else its English ones, else the bare class name."""
    pt = bundle.manifest.prompt_templates
    return list(pt.get(lang) or pt.get("en") or ["{}"])


def prompts_for(spec: ClassSpec, templates: Sequence[str]) -> list[str]:
    return [t.replace("{}", phrase) for phrase in spec.phrases for t in templates]


def class_embeddings(
    bundle: Bundle,
    classes: ClassesInput,
    lang: str = "en",
    templates: Optional[Sequence[str]] = None,
    session: Optional[EncoderSession] = None,
    provider: str = "auto",
) -> np.ndarray:
    """Per class, the renormalised mean of the normalised embeddings of (synonyms x templates): [K, D]."""
    return spec_embeddings(bundle, parse_classes(classes), lang, templates, session, provider)


def spec_embeddings(
    bundle: Bundle,
    specs: Sequence[ClassSpec],
    lang: str = "en",
    templates: Optional[Sequence[str]] = None,
    session: Optional[EncoderSession] = None,
    provider: str = "auto",
) -> np.ndarray:
    """``class_embeddings`` of given ClassSpecs, taken as they are: no class-list parsing or label-map rules
    (search phrases may hold ';' or '|', repeat a word or be called 'unknown')."""
    check_language(bundle, lang)
    tmpl = list(templates) if templates is not None else templates_for(bundle, lang)
    bad = [t for t in tmpl if "{}" not in t]
    if not tmpl or bad:
        raise ValueError(f"prompt templates must each contain '{{}}' for the class name: {bad or tmpl}")
    prompts: list[str] = []
    owners: list[int] = []
    for k, spec in enumerate(specs):
        p = prompts_for(spec, tmpl)
        prompts += p
        owners += [k] * len(p)
    emb = embed_texts(bundle, prompts, session=session, provider=provider)
    sums = np.zeros((len(specs), emb.shape[1]), np.float64)
    np.add.at(sums, np.asarray(owners), emb.astype(np.float64))
    counts = np.bincount(owners, minlength=len(specs))[:, None]
    return l2_normalise((sums / counts).astype(np.float32))


# Measured (scripts/synonyms_eval.py: EuroSAT RGB, 100 real 64 px tiles, 10 classes with 2-4 synonyms each, the
# default bundle's rgb encoder): tile accuracy mean 0.12, max 0.22 (class names alone 0.21); dense pixel accuracy
# mean 0.08, max 0.16 (names alone 0.22). A mean vector drifts towards no wording in particular; max keeps the
# best-matching one, so it is the default in both modes (SegEarth-OV merges by max too).
DEFAULT_SYNONYM_MERGE = "max"


def synonym_merge(requested: Optional[str]) -> str:
    """How a class's synonyms are merged: the one asked for, else DEFAULT_SYNONYM_MERGE (the one rule)."""
    if requested in (None, "auto"):
        return DEFAULT_SYNONYM_MERGE
    if requested not in SYNONYM_MERGES:
        raise ValueError(f"synonyms must be one of auto, {', '.join(SYNONYM_MERGES)}, not {requested!r}")
    return requested


@dataclass(frozen=True)
class PromptHead:
    """The text side of zero-shot labelling: ``vectors`` [M, D] (normalised) and, per vector, the logit
    column it feeds (``columns`` [M], ascending); ``n_columns`` = classes + background prompts. With synonyms
    merged by mean there is one vector per column; by max, one per synonym, and a column's logit is the max
    of its vectors' logits (:meth:`merge`)."""

    vectors: np.ndarray
    columns: np.ndarray
    n_columns: int

    @classmethod
    def of(cls, vectors: np.ndarray) -> PromptHead:
        """One vector per column (class embeddings as class_embeddings gives them)."""
        v = np.asarray(vectors, np.float32)
        return cls(v, np.arange(len(v)), len(v))

    def merge(self, raw: np.ndarray) -> np.ndarray:
        """Per-vector logits [..., M] -> per-column logits [..., n_columns] (max over each column's vectors)."""
        if len(self.columns) == self.n_columns:
            return raw
        starts = np.flatnonzero(np.r_[True, np.diff(self.columns) != 0])
        return np.maximum.reduceat(raw, starts, axis=-1)


def prompt_head(
    bundle: Bundle,
    specs: Sequence[ClassSpec],
    lang: str = "en",
    synonyms: str = "mean",
    background: Sequence[ClassSpec] = (),
    session: Optional[EncoderSession] = None,
    provider: str = "auto",
) -> PromptHead:
    """The PromptHead of ``specs`` then ``background`` (each background prompt a column of its own, embedded
    like a class with the bundle's templates): synonyms x templates averaged per column (``synonyms`` 'mean'),
    or templates averaged per synonym with the column's logit the max over them ('max'). One text run."""
    if synonyms not in SYNONYM_MERGES:
        raise ValueError(f"synonyms must be one of {', '.join(SYNONYM_MERGES)}, not {synonyms!r}")
    units: list[tuple[int, ClassSpec]] = []
    for col, spec in enumerate((*specs, *background)):
        if synonyms == "max":
            units += [(col, ClassSpec(p)) for p in spec.phrases]
        else:
            units.append((col, spec))
    vectors = spec_embeddings(bundle, [u for _, u in units], lang, session=session, provider=provider)
    return PromptHead(vectors, np.asarray([c for c, _ in units]), len(specs) + len(background))


# Function words that mark a language in a short search query ("um rio", "ein Hafen"). Words shared by
# several of the ten languages count for none of them: only distinctive evidence decides.
_FUNCTION_WORDS: dict[str, str] = {
    "en": "a an the of with and in on near by from at or some many",
    "pt": "um uma o os as do da dos das com perto em no na ao ou muitos muitas",
    "es": "un una el los las del con cerca en y al o muchos muchas junto",
    "fr": "un une le la les des du avec près et au aux ou dans sur beaucoup",
    "de": "ein eine einer einem einen der die das mit und bei nahe im am oder viele",
    "nl": "een het de met en bij nabij in op of veel",
    "it": "un uno una il lo gli la le della del con vicino e in o molti molte",
}


@lru_cache(maxsize=1)
def _vocabulary() -> dict[str, frozenset[str]]:
    """Distinctive words per Latin-script language: function words plus the shipped class names."""
    from .resources import classnames_dir, load_classnames

    words: dict[str, set[str]] = {lang: set(ws.split()) for lang, ws in _FUNCTION_WORDS.items()}
    for path in sorted(classnames_dir().glob("*.json")):
        for lang, names in load_classnames(path.stem).items():
            if lang in words:
                for name in names:
                    words[lang].update(_words(name))
    counts: dict[str, int] = {}
    for ws in words.values():
        for w in ws:
            counts[w] = counts.get(w, 0) + 1
    return {lang: frozenset(w for w in ws if counts[w] == 1) for lang, ws in words.items()}


def _words(text: str) -> list[str]:
    return re.findall(r"[^\W\d_]+", text.lower())


def guess_language(text: str) -> Optional[str]:
    """The language a short query is written in, when the evidence is clear; None when unsure.

    Scripts decide Chinese, Korean and Russian; for the Latin-script languages, distinctive function words
    and class-name words. Used to warn that a bundle would read the query in a language it does not know.
    """
    if re.search(r"[\uac00-\ud7af\u1100-\u11ff]", text):
        return "ko"
    if re.search(r"[\u4e00-\u9fff]", text):
        return "zh"
    if re.search(r"[\u0400-\u04ff]", text):
        return "ru"
    vocab = _vocabulary()
    scores = {lang: sum(w in ws for w in _words(text)) for lang, ws in vocab.items()}
    ranked = sorted(scores.items(), key=lambda kv: -kv[1])
    (best, top), (_, second) = ranked[0], ranked[1]
    return best if top > 0 and top > second else None


def check_query_language(bundle: Bundle, text: str, lang: str) -> Optional[str]:
    """A one-line warning when ``text`` looks written in a language the bundle's text encoder does not
    know, or in another one than ``lang`` says; None when nothing is wrong."""
    guess = guess_language(text)
    if guess is None or guess == lang:
        return None
    langs = bundle.manifest.text.languages
    if guess not in langs:
        return (f"the query looks {LANGUAGE_NAMES.get(guess, guess)}, which the bundle {bundle.manifest.name!r} "
                f"does not know (it knows: {', '.join(langs)}); type the query in one of those, or choose a "
                "multilingual bundle")
    return (f"the query looks {LANGUAGE_NAMES.get(guess, guess)} but the language chosen is "
            f"{LANGUAGE_NAMES.get(lang, lang)}; choose {guess} for its prompts")


LANGUAGE_NAMES = {"en": "English", "pt": "Portuguese", "es": "Spanish", "fr": "French", "de": "German",
                  "nl": "Dutch", "it": "Italian", "zh": "Chinese", "ko": "Korean", "ru": "Russian"}
