"""Caption translation (English -> nine languages) for RS-M-CLIP: backends, code maps, cache, pipeline."""

from .backends import BACKENDS, CausalTranslator, Seq2SeqTranslator, Translator, make_translator
from .cache import TranslationCache, cache_key
from .codes import LANGUAGE_NAMES, TARGET_LANGUAGES, code_for, parse_langs
from .pipeline import translate_records, translate_texts

__all__ = [
    "BACKENDS",
    "LANGUAGE_NAMES",
    "TARGET_LANGUAGES",
    "CausalTranslator",
    "Seq2SeqTranslator",
    "TranslationCache",
    "Translator",
    "cache_key",
    "code_for",
    "make_translator",
    "parse_langs",
    "translate_records",
    "translate_texts",
]
