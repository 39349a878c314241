"""`rsclip-train translate`: English captions -> caption files in nine more languages (RS-M-CLIP's data step)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "translate",
        help="translate a caption set's English captions into other languages (cached, resumable)",
        description="Translate captions with a local Hugging Face model: seq2seq (NLLB, M2M-100, Marian, T5) or a "
        "causal LM prompted to translate (Tower). Re-running after an interruption translates only what is left.",
    )
    p.add_argument("--captions", required=True, help="caption file: dataset_*.json (RSICD/UCM/Sydney/RSITMD), "
                   "dataset_nwpu.json, or a CSV/TSV/JSONL manifest with image, caption, lang")
    p.add_argument("--images", help="image folder of the caption file (default: beside it, 'images/')")
    p.add_argument("--format", default="auto", choices=["auto", "karpathy", "nwpu", "manifest"])
    p.add_argument("--model", required=True, help="local model directory ('{lang}' in it is replaced per target "
                   "language, for one-pair Marian models)")
    p.add_argument("--backend", required=True, choices=["seq2seq", "causal"])
    p.add_argument("--langs", default="all", help="comma-separated targets, e.g. pt,es,fr (default: all nine)")
    p.add_argument("--src-lang", default="en", help="language of the captions to translate (default en)")
    p.add_argument("--out", required=True, help="output folder (caption files, cache, progress)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--beams", type=int, default=1)
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from training.data.captions import load_captions
    from training.translate import make_translator, parse_langs, translate_records

    langs = parse_langs(args.langs)
    if args.batch_size < 1:
        raise ValueError("--batch-size must be at least 1")
    records = load_captions(Path(args.captions), args.images, args.format, lang=args.src_lang)
    translator = make_translator(args.backend, args.model, device=args.device, max_new_tokens=args.max_new_tokens,
                                 num_beams=args.beams)
    translator.src = args.src_lang
    report = translate_records(records, translator, langs, Path(args.out), src=args.src_lang, batch_size=args.batch_size)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        for lang, s in report["languages"].items():
            print(f"{lang}: {s['translated']} translated, {s['cached']} from cache -> {report['files'][lang]}")
        print(f"all languages: {report['files']['all']}")
    return 0
