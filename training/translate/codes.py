"""Language codes per translation backend for RS-M-CLIP's ten languages (ISO 639-1 keys)."""

from __future__ import annotations

TARGET_LANGUAGES = ("pt", "es", "fr", "de", "nl", "it", "zh", "ko", "ru")
LANGUAGE_NAMES = {
    "en": "English", "pt": "Portuguese", "es": "Spanish", "fr": "French", "de": "German", "nl": "Dutch",
    "it": "Italian", "zh": "Chinese", "ko": "Korean", "ru": "Russian",
}
# NLLB-200 uses FLORES-200 codes as forced-BOS tokens.
NLLB_CODES = {
    "en": "eng_Latn", "pt": "por_Latn", "es": "spa_Latn", "fr": "fra_Latn", "de": "deu_Latn", "nl": "nld_Latn",
    "it": "ita_Latn", "zh": "zho_Hans", "ko": "kor_Hang", "ru": "rus_Cyrl",
}
# M2M-100's tokens are "__xx__" around ISO 639-1 codes.
M2M100_CODES = {lang: f"__{lang}__" for lang in LANGUAGE_NAMES}
# Multi-target Marian (opus-mt-en-ROMANCE, -mul) pick the target with a ">>xxx<<" prefix (ISO 639-3).
MARIAN_CODES = {
    "en": ">>eng<<", "pt": ">>por<<", "es": ">>spa<<", "fr": ">>fra<<", "de": ">>deu<<", "nl": ">>nld<<",
    "it": ">>ita<<", "zh": ">>cmn_Hans<<", "ko": ">>kor<<", "ru": ">>rus<<",
}
FAMILIES = ("nllb", "m2m100", "marian", "t5", "causal")


def code_for(family: str, lang: str) -> str:
    """The backend's code for ``lang`` (ISO 639-1), or a ValueError naming the languages it knows."""
    table = {"nllb": NLLB_CODES, "m2m100": M2M100_CODES, "marian": MARIAN_CODES}.get(family)
    if table is None:
        table = LANGUAGE_NAMES  # t5 and causal LMs are prompted with the language's English name
    if lang not in table:
        raise ValueError(f"language {lang!r} has no {family} code; supported: {', '.join(sorted(table))}")
    return table[lang]


def parse_langs(value: str) -> list[str]:
    """'pt,es,fr' -> ['pt', 'es', 'fr'] (checked against the ten languages); 'all' -> the nine targets."""
    if value.strip() == "all":
        return list(TARGET_LANGUAGES)
    langs = [v.strip() for v in value.split(",") if v.strip()]
    bad = [lang for lang in langs if lang not in LANGUAGE_NAMES]
    if bad or not langs:
        raise ValueError(f"--langs {value!r}: unknown {bad}; use codes from {', '.join(LANGUAGE_NAMES)} (or 'all')")
    return langs
