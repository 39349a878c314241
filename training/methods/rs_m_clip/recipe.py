"""The RS-M-CLIP recipe: config dict -> data -> training -> checkpoint -> bundle -> per-language evaluation.

Config keys (see training/configs/rs_m_clip.yaml for the paper recipe, configs/smoke/ for the CPU one)::

    method: rs_m_clip
    model: xlm-roberta-base-ViT-B-32      # any open_clip name (or rsclip-tiny-multilingual)
    pretrained: laion5b_s13b_b90k         # or null; checkpoint: DIR to start from a project checkpoint
    languages: [en, pt, es, fr, de, nl, it, zh, ko, ru]
    data:
      load_size: 256                      # images are decoded once and kept at this size
      captions: [{path, image_dir, format: auto|karpathy|nwpu|manifest, lang: en}, ...]
      class_folders: [{root, classnames, limit_per_class}, ...]   # captions from class names x templates
      val_fraction: 0.2                   # class folders: held-out images per class; caption files: split val/test
    train: {...}                          # trainer.TrainConfig fields
    export: {enabled: true}
    eval: {ks: [1, 5, 10]}

Paths starting with ``$DATA/`` resolve under ``rs_clip_plugin.engine.settings.sample_data_dir()``.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from rs_clip_plugin.engine.bundle import atomic_write_text
from rs_clip_plugin.engine.progress import Progress
from rs_clip_plugin.engine.settings import sample_data_dir
from training.data.captions import (
    CaptionedImage,
    class_folder_captions,
    load_captions,
    merge,
    read_rgb,
    validate,
)
from training.evaluate.multilingual import (
    LANGUAGES,
    RetrievalSet,
    TorchEncoder,
    evaluate_retrieval,
    load_classnames,
    load_prompt_templates,
    markdown_table,
)
from training.length import describe, epochs_to_steps, plan_steps

from .trainer import CHECKPOINT_DIR, RSMCLIPTrainer, Sample, TrainConfig, summarise

METHOD = "rs_m_clip"


def resolve_path(value: str) -> Path:
    if value.startswith("$DATA/"):
        return sample_data_dir() / value[len("$DATA/") :]
    return Path(value).expanduser()


def build_records(data_cfg: dict, languages: list[str], seed: int) -> tuple[list[CaptionedImage], list[CaptionedImage]]:
    """(train, val) captioned images from caption files and class folders."""
    templates = load_prompt_templates(languages)
    val_fraction = float(data_cfg.get("val_fraction", 0.2))
    rng = random.Random(seed)
    train: list[CaptionedImage] = []
    val: list[CaptionedImage] = []
    for entry in data_cfg.get("class_folders", []) or []:
        root = resolve_path(entry["root"])
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: class-folder images missing; set RSCLIP_DATA to the sample data folder "
                                    "(default ../shared/data) or fix data.class_folders[].root")
        recs = class_folder_captions(root, load_classnames(entry["classnames"]), templates, languages,
                                     limit_per_class=entry.get("limit_per_class"))
        by_class: dict[str, list[CaptionedImage]] = {}
        for r in recs:
            by_class.setdefault(r.source, []).append(r)
        for items in by_class.values():
            rng.shuffle(items)
            n_val = round(len(items) * val_fraction) if len(items) > 1 else 0
            for r in items[:n_val]:
                r.split = "val"
            val += items[:n_val]
            train += items[n_val:]
        for r in recs:
            r.source = entry.get("name") or root.name  # the dataset, for `rsclip-train data`
    caption_lists = []
    for entry in data_cfg.get("captions", []) or []:
        path = resolve_path(entry["path"])
        recs = load_captions(path, resolve_path(entry["image_dir"]) if entry.get("image_dir") else None,
                             entry.get("format", "auto"), entry.get("lang", "en"))
        for r in recs:
            # The dataset: its folder (data/RSICD/..., data/translations/rsicd/...); a merged image keeps the
            # name of the first entry that has it (the English original).
            r.source = entry.get("name") or path.parent.name
        caption_lists.append(recs)
    if caption_lists:
        recs = merge(*caption_lists)
        validate(recs)
        train += [r for r in recs if r.split == "train"]
        val += [r for r in recs if r.split in ("val", "test")]
    if not train:
        raise ValueError("the recipe has no training images: add data.captions or data.class_folders entries")
    return train, val


def _load_images(records: list[CaptionedImage], size: int) -> np.ndarray:
    from training.evaluate.multilingual import _resize_uint8

    out = np.zeros((len(records), size, size, 3), np.uint8)
    for i, r in enumerate(records):
        out[i] = _resize_uint8(read_rgb(r.image)[None], size)[0].round().transpose(1, 2, 0).astype(np.uint8)
    return out


def run_recipe(config: dict, out_dir: Path, *, dry_run: bool = False, progress: Optional[Progress] = None) -> dict[str, Any]:
    """Train RS-M-CLIP as ``config`` says and write checkpoint, bundle, metrics.json and metrics.md to ``out_dir``."""
    from training.models import create_model

    t0 = time.monotonic()
    out_dir = Path(out_dir)
    progress = progress or Progress()
    if config.get("method", METHOD) != METHOD:
        raise ValueError(f"config method {config.get('method')!r} is not {METHOD!r}")
    languages = list(config.get("languages") or LANGUAGES)
    train_dict = dict(config.get("train", {}) or {})
    data_cfg = config.get("data", {}) or {}
    train_recs, val_recs = build_records(data_cfg, languages, int(train_dict.get("seed", 0)))
    # Length in epochs (or samples seen) over the merged images, per-GPU batch x accumulation x world size.
    plan = plan_steps(len(train_recs), int(train_dict.get("batch_size", TrainConfig.batch_size)),
                      epochs=train_dict.get("epochs"), samples_seen=train_dict.get("samples_seen"),
                      steps=train_dict.get("steps"), accum_steps=int(train_dict.get("accum_steps", 1)))  # fmt: skip
    train_dict = epochs_to_steps(train_dict, plan["steps_per_epoch"])
    train_dict["steps"] = plan["steps"]
    cfg = TrainConfig.from_dict(train_dict)
    if int(os.environ.get("RANK", "0")) == 0:
        print(describe(plan, "rs_m_clip"), flush=True)
    if dry_run:
        return {"method": METHOD, "dry_run": True, "train_images": len(train_recs), "val_images": len(val_recs),
                "languages": languages, "length": plan, "train": cfg.__dict__ | {"crops": cfg.crops.__dict__}}

    torch.set_num_threads(int(config.get("threads", torch.get_num_threads())))
    model_name = config["model"]
    loaded = create_model(model_name, pretrained=config.get("pretrained"), checkpoint=config.get("checkpoint"))
    load_size = int(data_cfg.get("load_size", loaded.image_size))
    train_imgs = _load_images(train_recs, load_size)
    samples = [Sample(torch.from_numpy(img).permute(2, 0, 1).float() / 255.0, r.captions)
               for img, r in zip(train_imgs, train_recs)]
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer = RSMCLIPTrainer(loaded.model, loaded.tokenizer, loaded.mean, loaded.std, cfg, out_dir,
                             model_name=loaded.model_name, pretrained=loaded.pretrained, progress=progress.sub(0, 0.8))
    resumed = trainer.try_resume()
    history = trainer.fit(samples)
    if trainer.rank != 0:
        return {}
    metrics: dict[str, Any] = {"method": METHOD, "model": loaded.model_name, "resumed": resumed,
                               "steps": trainer.step, "length": plan, "train_images": len(train_recs), "val_images": len(val_recs)}
    metrics.update(summarise(history, int(config.get("loss_window", 1))))
    metrics["checkpoint"] = str(out_dir / CHECKPOINT_DIR / "model")

    loaded.model.eval()
    eval_cfg = config.get("eval", {}) or {}
    ks = tuple(eval_cfg.get("ks", (1, 5, 10)))
    if val_recs:
        val_imgs = _load_images(val_recs, load_size)
        rset = RetrievalSet.from_records(val_imgs, [{k: v for k, v in r.captions.items() if k in languages}
                                                    for r in val_recs])
        metrics["retrieval"] = evaluate_retrieval(TorchEncoder(loaded), rset, ks)
        # The standard protocol (RSICD / RSITMD / UCM): each dataset's own test split, five captions per image,
        # mean recall over t2i/i2t R@1/5/10, per language.
        by_ds: dict[str, list[int]] = {}
        for i, r in enumerate(val_recs):
            if r.split == "test":
                by_ds.setdefault(r.source, []).append(i)
        metrics["retrieval_test"] = {
            ds: evaluate_retrieval(TorchEncoder(loaded), RetrievalSet.from_records(
                val_imgs[idx], [{k: v for k, v in val_recs[i].captions.items() if k in languages} for i in idx]), ks)
            for ds, idx in sorted(by_ds.items()) if len(idx) > 1
        }  # fmt: skip
    progress.update(0.85, "exporting the bundle")

    export_cfg = config.get("export", {}) or {}
    if export_cfg.get("enabled", True):
        from training.export.exporter import export_model

        bundle_dir = out_dir / "bundle"
        report = export_model(
            loaded,
            out_dir=bundle_dir,
            languages=languages,
            prompt_templates=load_prompt_templates(languages),
            provenance={"method": METHOD, "steps": trainer.step, "recipe": config.get("name", METHOD)},
            overwrite=True,
            name=export_cfg.get("name"),
        )
        metrics["bundle"] = str(report.get("bundle", bundle_dir))
        metrics["export_parity"] = report.get("parity")
    metrics["seconds"] = round(time.monotonic() - t0, 1)
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2, ensure_ascii=False, default=str) + "\n")
    md = [f"# RS-M-CLIP run ({metrics['model']}, {trainer.step} steps)", ""]
    for key in ("contrastive", "dino"):
        md.append(f"- {key} loss: {metrics[key]['loss_first']:.4f} -> {metrics[key]['loss_last']:.4f}")
    if "retrieval" in metrics:
        md += ["", markdown_table(metrics["retrieval"], [f"t2i_R@{k}" for k in ks] + [f"i2t_R@{k}" for k in ks]
                                  + ["mean_recall"], "Retrieval (validation)")]
    atomic_write_text(out_dir / "metrics.md", "\n".join(md) + "\n")
    progress.update(1.0, "done")
    return metrics
