"""`rsclip-train export`: a CLIP model (open_clip name + tag, hf-hub id, or checkpoint) to a model bundle."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rs_clip_plugin.engine.bundle import DENSE_VARIANTS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a model to a bundle (ONNX encoders + tokenizer + manifest), checked for parity",
        description="Export text and image encoders to ONNX with parity checks against torch, and write a bundle "
        "the plugin and `rsclip` load.",
    )
    p.add_argument("--model", default="", help="open_clip architecture (ViT-B-32, rsclip-tiny, ...) or hf-hub:org/name; "
                   "may be omitted with a project checkpoint directory")
    p.add_argument("--pretrained", help="open_clip pretrained tag (e.g. openai, laion2b_s34b_b79k); needs internet")
    p.add_argument("--checkpoint", help="weights: .safetensors, .pt/.pth/.bin (state dict), or a project checkpoint directory")
    p.add_argument("--out", required=True, help="bundle directory to write")
    p.add_argument("--name", help="bundle name in the manifest (default: model name and tag)")
    p.add_argument("--fp16", action="store_true", help="also write half-precision twins (for GPUs)")
    p.add_argument("--no-int8", dest="int8", action="store_false",
                   help="skip the int8 twins of the image encoders (written by default for CPUs, with their agreement "
                   "with fp32 measured on the real sample tiles)")
    p.add_argument("--dense", default="segearth", choices=[*DENSE_VARIANTS, "none"],
                   help="training-free dense variant whose patch outputs the rgb encoder also gets when it is an "
                   "open_clip ViT (default segearth, SegEarth-OV's; none: pooled embedding only, tile mode)")
    p.add_argument("--zip", action="store_true", help="also write OUT.zip")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from training.checkpoint import is_project_checkpoint
    from training.export.exporter import export_model

    if not args.model and not (args.checkpoint and is_project_checkpoint(args.checkpoint)):
        raise ValueError("--model is required unless --checkpoint is an RS-CLIP checkpoint directory (which names its model)")
    out = Path(args.out)
    report = export_model(
        args.model,
        pretrained=args.pretrained,
        checkpoint=args.checkpoint,
        out_dir=out,
        fp16=args.fp16,
        int8=args.int8,
        zip_path=out.with_name(out.name + ".zip") if args.zip else None,
        overwrite=args.overwrite,
        name=args.name,
        dense=None if args.dense == "none" else args.dense,
    )
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print(f"bundle {report['bundle']} written in {report['seconds']:.1f} s")
        for enc, fig in report["parity"].items():
            print(f"  {enc:16s} parity: min cosine {fig['min_cosine']:.7f}, max abs diff {fig['max_abs_diff']:.2e}")
        for mod, fig in report.get("int8", {}).items():
            if fig.get("label_agreement") is None:
                print(f"  image_{mod} int8: not measured ({fig.get('note', 'no real tiles')}); auto keeps fp32")
            else:
                print(f"  image_{mod} int8: label agreement {fig['label_agreement']:.4f}, min cosine {fig['min_cosine']:.5f}, "
                      f"mean cosine {fig['mean_cosine']:.5f} on {fig['tiles']} real tiles")
        if report.get("zip"):
            print(f"  zip: {report['zip']}")
    return 0
