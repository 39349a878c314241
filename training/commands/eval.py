"""`rsclip-train eval`: zero-shot accuracy of a torch model/checkpoint OR an exported bundle on the same data.

A bundle runs through the engine's own ONNX Runtime path (tokenizer, sessions, manifest radiometry), so
``--bundle B`` and ``--model M --checkpoint C`` on the same ``--dataset`` compare an export with its source.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

DATASETS = {"eurosat_rgb": ("eurosat_rgb_small", "rgb"), "eurosat_ms": ("eurosat_ms", "s2-l1c")}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="zero-shot accuracy of a checkpoint or a bundle")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--bundle", type=Path, help="exported bundle (directory or .zip), run with ONNX Runtime")
    src.add_argument("--model", help="open_clip name (torch path), with --checkpoint or --pretrained")
    p.add_argument("--checkpoint", type=Path)
    p.add_argument("--pretrained")
    p.add_argument("--dataset", choices=sorted(DATASETS), default="eurosat_rgb")
    p.add_argument("--root", type=Path, help="dataset folder (default: the sample data)")
    p.add_argument("--modality", choices=["rgb", "s2-l1c"], help="encoder to use (default: the dataset's; rgb on MS = composite)")
    p.add_argument("--precision", choices=["auto", "fp32", "fp16", "int8"], default="auto",
                   help="graph of a --bundle's image encoder (default auto: what the engine runs on this CPU, e.g. its "
                   "int8 twin; fp32 to compare the export itself with its torch source)")
    p.add_argument("--out", type=Path, help="write eval.json / eval.md here")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def load_physical(dataset: str, root: Path, modality: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(physical arrays [N, C, H, W], labels, English class names) of a class-folder dataset."""
    from rs_clip_plugin.engine.resources import load_classnames
    from training.data.composites import rgb_composite
    from training.data.eurosat import read_ms, read_rgb, scan_class_folders

    table = load_classnames("eurosat")
    keys, names = table["keys"], table["en"]
    if dataset == "eurosat_rgb":
        items, _ = scan_class_folders(root, (".jpg", ".jpeg", ".png"), keys, "RGB images")
        x = np.stack([read_rgb(it.path) for it in items])
    else:
        items, _ = scan_class_folders(root, (".tif",), keys, "EuroSAT-MS GeoTIFFs")
        x = np.stack([read_ms(it.path) for it in items])
        if modality == "rgb":
            x = rgb_composite(x, "s2-l1c")
    return x.astype(np.float32), np.array([it.label for it in items]), names


def _resize(x: np.ndarray, size: int) -> np.ndarray:
    import torch

    from training.data.transforms import resize_batch

    return resize_batch(torch.from_numpy(x), size).numpy()


def bundle_scores(bundle_path: Path, x: np.ndarray, modality: str, classnames: list[str],
                  precision: str = "auto") -> np.ndarray:
    from rs_clip_plugin.engine.bundle import load_bundle
    from rs_clip_plugin.engine.radiometry import apply_transform
    from rs_clip_plugin.engine.runtime import EncoderSession, l2_normalise
    from rs_clip_plugin.engine.tokenizer import BundleTokenizer

    b = load_bundle(bundle_path)
    spec = b.manifest.encoder(modality)
    inputs = apply_transform(_resize(x, spec.input_size), spec.transforms, spec.mean, spec.std)
    img = EncoderSession(b, modality, provider="cpu", precision=precision).embed(inputs)
    tok = BundleTokenizer.from_bundle(b)
    text = EncoderSession(b, "text", provider="cpu")
    templates = b.manifest.prompt_templates.get("en") or next(iter(b.manifest.prompt_templates.values()))
    cls = np.stack([l2_normalise(text.embed(tok.encode([t.format(c) for t in templates])).mean(0)) for c in classnames])
    return img @ cls.T


def torch_scores(args: argparse.Namespace, x: np.ndarray, modality: str, classnames: list[str]) -> np.ndarray:
    import torch

    from rs_clip_plugin.engine.resources import prompt_templates
    from training.data.composites import rgb_input
    from training.methods.modality_gap.zeroshot_head import zeroshot_weights
    from training.models.factory import create_model

    if modality != "rgb":
        raise ValueError("the torch path evaluates CLIP models on RGB; use --modality rgb or evaluate the exported bundle")
    lm = create_model(args.model, pretrained=args.pretrained, checkpoint=args.checkpoint)
    w = zeroshot_weights(lm.model, lm.tokenizer, classnames, prompt_templates()["en"])
    inputs = torch.from_numpy(_resize(rgb_input(x, lm.mean, lm.std), lm.image_size))
    with torch.no_grad():
        emb = torch.nn.functional.normalize(lm.model.encode_image(inputs).float(), dim=-1)
    return (emb @ torch.nn.functional.normalize(w, dim=-1).T).numpy()


def run(args: argparse.Namespace) -> int:
    from rs_clip_plugin.engine.cli import emit
    from rs_clip_plugin.engine.settings import sample_data_dir
    from training.evaluate.tables import write_table
    from training.evaluate.zero_shot import accuracy

    folder, default_modality = DATASETS[args.dataset]
    modality = args.modality or default_modality
    root = args.root or sample_data_dir() / folder
    x, y, names = load_physical(args.dataset, root, modality)
    scores = (bundle_scores(args.bundle, x, modality, names, args.precision) if args.bundle
              else torch_scores(args, x, modality, names))
    result = {
        "source": str(args.bundle or args.checkpoint or f"{args.model}/{args.pretrained}"),
        "dataset": args.dataset,
        "modality": modality,
        "n": len(y),
        "accuracy": accuracy(scores, y),
        "scores": scores.round(6).tolist(),
    }
    if args.out:
        write_table([{k: v for k, v in result.items() if k != "scores"}], Path(args.out) / "eval", "Zero-shot accuracy (%)")
    emit(args, result, f"{result['source']}: {args.dataset} ({modality}) zero-shot accuracy {result['accuracy']:.2f} % on {len(y)} images")
    return 0
