"""Class prompts -> text embeddings (CLIP prompt ensembling), in any language the bundle supports.

A class's embedding is the mean over (its synonyms x the bundle's prompt templates) of L2-normalised
text embeddings, normalised again: the zero-shot head of CLIP and of Paper A.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np

from .bundle import Bundle, BundleError
from .classes import ClassesInput, ClassSpec, parse_classes
from .runtime import TEXT_ROLE, EncoderSession, l2_normalise

__all__ = ["ClassSpec", "class_embeddings", "embed_texts", "parse_classes", "prompts_for", "templates_for"]

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
