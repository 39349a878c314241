"""`rsclip-train import-checkpoint`: Paper A's released patched / aligned .pt files -> a bundle."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import-checkpoint", help="turn Paper A's patched/aligned checkpoints into a bundle")
    p.add_argument("--model", required=True, help="open_clip architecture of the teacher, e.g. ViT-B-32 (or rsclip-tiny)")
    p.add_argument("--pretrained", help="open_clip tag for the text encoder, e.g. openai")
    p.add_argument("--patched", type=Path, help="patched image-encoder checkpoint (.pt with 'model')")
    p.add_argument("--aligned", type=Path, help="aligned Sentinel-2 student checkpoint (.pt with 'model')")
    p.add_argument("--student", default="vit_small_patch16_224", help="timm name of the student (Paper A: ViT-S/16)")
    p.add_argument("--student-size", type=int, default=224, help="student input size in pixels")
    p.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from training.methods.modality_gap.import_paper import import_checkpoints

    if not args.patched and not args.aligned:
        raise ValueError("give --patched and/or --aligned: the checkpoint files to import")
    report = import_checkpoints(args.model, args.out, pretrained=args.pretrained, patched=args.patched, aligned=args.aligned,
                                student=args.student, student_size=args.student_size, overwrite=args.overwrite)  # fmt: skip
    print(json.dumps({k: report[k] for k in ("bundle", "name", "parity")}, indent=2))
    return 0
