"""`rsclip info BUNDLE`: describe a bundle after verifying every file's sha256 and ONNX inputs."""

from __future__ import annotations

import argparse

from ..default_bundle import as_bundle


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="verify and describe a model bundle")
    p.add_argument("bundle", nargs="?", help="bundle directory or .zip (default: the embedded default bundle)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..cli import emit

    bundle = as_bundle(args.bundle)
    s = bundle.summary()
    lines = [
        f"{s['name']}  (schema {s['schema_version']}, {s['size_bytes'] / 1e6:.1f} MB)  {s['path']}",
        f"  embedding {s['embed_dim']}-d, logit scale {s['logit_scale']:.2f}",
        f"  text: {s['tokenizer_kind']} tokenizer, context {s['context_length']}, languages {', '.join(s['languages'])}",
    ]
    for e in s["encoders"]:
        agree = (e.get("int8_agreement") or {}).get("label_agreement")
        int8 = ""
        dense = e.get("dense")
        dense_txt = f"  +dense ({dense['variant']}, {dense['grid'][0]}x{dense['grid'][1]} patches)" if dense else ""
        if e.get("int8"):
            int8 = f"  +int8 (labels agree {100 * agree:.1f}%)" if agree is not None else "  +int8 (agreement not measured)"
        lines.append(
            f"  image {e['modality']:7s} bands {','.join(e['bands'])}  {e['input_size']} px at {e['gsd_m']:g} m"
            f"  tile {e['tile_size_px']} px{'  +fp16' if e['fp16'] else ''}{int8}{dense_txt}"
        )
    prov = s.get("provenance") or {}
    if prov:
        lines.append(f"  provenance: {prov.get('method', '?')} from {prov.get('base_model', '?')} ({prov.get('pretrained', '-')})")
    lines.append("  all files verified (sha256, ONNX inputs)")
    emit(args, s, "\n".join(lines))
    return 0
