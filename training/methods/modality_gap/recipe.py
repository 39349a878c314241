"""Paper A end to end from one config: stage 1 (fine-tune + patching), stage 2 (S2 and S1 alignment), export.

``run_recipe(config, out_dir)`` writes under ``out_dir``: ``metrics.json``, ``patching.{json,md}``,
``alignment.{json,md}``, ``checkpoints/`` (safetensors; stage-2 training resumes from them) and ``bundle/``.
``dry_run=True`` builds every model of the recipe and runs one optimisation step of each stage on synthetic
tensors: no data, no pretrained weights, nothing exported.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from rs_clip_plugin.engine.bands import S1_GRD_BANDS, S2_L1C_BANDS
from rs_clip_plugin.engine.bundle import atomic_write_text
from rs_clip_plugin.engine.radiometry import default_transform
from rs_clip_plugin.engine.settings import sample_data_dir
from training.data.composites import S2_L2A_AS_13, ms_input, rgb_input, s1_input
from training.data.transforms import resize_batch
from training.evaluate.retrieval import recall_at_k
from training.evaluate.tables import write_table
from training.length import describe, plan_steps, world_size

from . import data as recipe_data
from .alignment import alignment_step, mean_cosine
from .finetune import embed, evaluate_head, finetune_step, shuffled_batches
from .loop import OptimConfig, train
from .patching import interpolate, max_abs_diff
from .schedule import resolve_device, seed_everything
from .students import build_student
from .zeroshot_head import ClassificationHead, ImageClassifier, zeroshot_weights

log = logging.getLogger(__name__)
METHOD = "modality_gap"


def _templates(spec: Any) -> list[str]:
    if isinstance(spec, list):
        return spec
    from rs_clip_plugin.engine.resources import prompt_templates

    return prompt_templates()[spec or "en"]


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def _label_smoothing(section: dict, name: str, default: Optional[float] = None) -> float:
    """A stage's label smoothing. Stage 1 must state it: the paper's text (0.2) and its released code (timm
    BinaryCrossEntropy on multi-hot targets: none) disagree, so no default picks one silently. Stage 2's
    0.05 term is a plain BCEWithLogitsLoss in the released code: default 0.0."""
    if "label_smoothing" not in section:
        if default is not None:
            return default
        raise ValueError(f"{name}.label_smoothing is not set: give it explicitly (0.0 matches Paper A's released code, "
                         "0.2 the paper's text)")
    return float(section["label_smoothing"])


class _Recipe:
    def __init__(self, config: dict, out_dir: Path, dry_run: bool):
        self.cfg = config
        self.out = Path(out_dir)
        self.dry_run = dry_run
        self.seed = int(config.get("seed", 0))
        self.device = resolve_device(str(config.get("device", "auto")))
        self.data_dir = Path(config["data_dir"]) if config.get("data_dir") else sample_data_dir()
        self.metrics: dict[str, Any] = {"method": METHOD, "dry_run": dry_run}
        # data.streaming: lazy datasets read by DataLoader workers (real-size runs); else in-memory tensors.
        self.data_cfg = dict(config.get("data") or {})
        self.streaming = bool(self.data_cfg.get("streaming", False))
        self.dense = export_dense_variant(config.get("export") or {})  # checked now, not after training

    # -- set-up ------------------------------------------------------------------------------------
    def length(self, section: dict, n: int, what: str) -> int:
        """Optimizer steps of a stage from its epochs (or samples_seen, or steps), the data size, the per-GPU
        batch and the world size; printed and written to metrics['length'][what]."""
        if self.dry_run:
            return 1
        plan = plan_steps(n, int(section["batch_size"]), epochs=section.get("epochs", 1), samples_seen=section.get("samples_seen"),
                          steps=section.get("steps"), world=world_size())  # fmt: skip
        self.metrics.setdefault("length", {})[what] = plan
        if int(os.environ.get("RANK", "0")) == 0:
            print(describe(plan, what), flush=True)
        return plan["steps"]

    def build_model(self):
        from training.models.factory import create_model

        m = self.cfg["model"]
        self.lm = create_model(
            m["name"], pretrained=None if self.dry_run else m.get("pretrained"), checkpoint=None if self.dry_run else m.get("checkpoint")
        )
        self.lm.model.to(self.device).eval()
        for p in self.lm.model.parameters():
            p.requires_grad_(False)
        self.size = self.lm.image_size

    def head(self, names: list[str]) -> ClassificationHead:
        w = zeroshot_weights(self.lm.model, self.lm.tokenizer, names, _templates(self.cfg.get("templates", "en")))
        return ClassificationHead(w).to(self.device)

    def norm(self):
        from training.data.loaders import Normalisation

        return Normalisation(self.size, list(self.lm.mean), list(self.lm.std))

    def stream(self, dataset, batch_size: int, seed: int, augment: bool):
        """Endless augmented batches from a DataLoader over ``dataset`` (workers, pinned memory, DDP sampler)."""
        from training.data.loaders import build_loader, endless

        d = self.data_cfg
        loader = build_loader(dataset, batch_size, seed=seed, num_workers=int(d.get("num_workers", 0)), device=self.device,
                              prefetch_factor=d.get("prefetch_factor"), persistent_workers=bool(d.get("persistent_workers", True)))  # fmt: skip
        return endless(loader, seed, augment)

    def teacher_input(self, rgb01: np.ndarray) -> torch.Tensor:
        return resize_batch(_t(rgb_input(rgb01, self.lm.mean, self.lm.std)), self.size)

    # -- stage 1 -----------------------------------------------------------------------------------
    def stage1(self) -> None:
        s1 = self.cfg["stage1"]
        visual = self.lm.model.visual
        if self.dry_run:
            names = recipe_data.classnames(s1["train"].get("classnames", "eurosat"))[1]
            head = self.head(names)
            multi = s1.get("loss", "ce") == "bce"
            g = torch.Generator().manual_seed(self.seed)
            x = torch.randn(2, 3, self.size, self.size, generator=g)
            y = (torch.rand(2, len(names), generator=g) > 0.5).float() if multi else torch.tensor([0, 1])
            train_set, held, controls, n = (x, y), None, [], 2
        elif self.streaming:
            train_set, held, names = recipe_data.stream_rgb_set(s1["train"], self.data_dir, self.norm())
            head = self.head(names)
            controls = [recipe_data.load_rgb_set(c, self.data_dir, self.size)[0] for c in s1.get("controls", [])]
            n = len(train_set)
        else:
            train_ds, held_ds = recipe_data.load_rgb_set(s1["train"], self.data_dir, self.size)
            head = self.head(train_ds.classnames)
            train_set = (self.teacher_input(train_ds.images), torch.from_numpy(train_ds.labels))
            held = held_ds
            controls = [recipe_data.load_rgb_set(c, self.data_dir, self.size)[0] for c in s1.get("controls", [])]
            n = len(train_ds.labels)
        self.head_weights = head
        zs_state = copy.deepcopy(visual.state_dict())
        for p in visual.parameters():
            p.requires_grad_(True)
        clf = ImageClassifier(visual, head)
        steps = self.length(s1, n, "stage1")
        opt = OptimConfig.from_dict(s1["optim"], steps)
        hist = train(
            clf,
            finetune_step(s1.get("loss", "ce"), _label_smoothing(s1, "stage1"), self.device,
                          self.augment(s1.get("augment", True), "stage1"), self.seed + 3),
            self._batches(train_set, int(s1["batch_size"]), self.seed),
            opt,
            self.device,
        )
        for p in visual.parameters():
            p.requires_grad_(False)
        ft_state = copy.deepcopy(visual.state_dict())
        self.metrics["stage1"] = {"loss_first": hist[0]["loss"], "loss_last": hist[-1]["loss"], "steps": len(hist),
                                  "losses": [round(h["loss"], 5) for h in hist]}  # fmt: skip
        # Patching: evaluate every alpha on the fine-tuning task's held-out part and on the control sets.
        rows, alpha0 = [], None
        # Heads and inputs do not depend on alpha (only the visual weights are patched): built once.
        evals = [(ds, head if ds is held else self.head(ds.classnames), self.teacher_input(ds.images))
                 for ds in ([held] if held is not None else []) + controls]
        for alpha in s1.get("alphas", [0.0, 0.5, 1.0]):
            visual.load_state_dict(interpolate(zs_state, ft_state, float(alpha)))
            if float(alpha) == 0.0:
                alpha0 = max_abs_diff(visual.state_dict(), zs_state)
            row: dict[str, Any] = {"alpha": float(alpha)}
            for ds, ds_head, inputs in evals:
                row[ds.name] = evaluate_head(visual, ds_head, inputs, ds.labels, self.device)
            rows.append(row)
        self.metrics["patching"] = {"alpha0_max_abs_diff": alpha0 if alpha0 is not None else float("nan"), "table": rows}
        if not self.dry_run:
            write_table(rows, self.out / "patching", "Stage 1: weight-space patching (accuracy %, held-out and control sets)")
        teacher_alpha = float(s1.get("teacher_alpha", 0.5))
        visual.load_state_dict(interpolate(zs_state, ft_state, teacher_alpha))
        self.metrics["patching"]["teacher_alpha"] = teacher_alpha
        if not self.dry_run:
            from training.checkpoint import save_checkpoint

            save_checkpoint(self.lm.model, self.out / "checkpoints" / "patched", self.lm.model_name, pretrained=self.lm.pretrained,
                            step=steps, extra={"method": METHOD, "alpha": teacher_alpha})  # fmt: skip

    def _batches(self, train_set, batch_size: int, seed: int):
        """In-memory tensors -> shuffled batches; a Dataset (streaming) -> DataLoader batches. Not augmented here:
        the step functions augment each sample on the device (``augment``).

        A streaming dry run pushes its synthetic tensors through the DataLoader path too, so it is exercised."""
        if isinstance(train_set, tuple):
            if not self.streaming:
                return shuffled_batches(list(train_set[:-1]), train_set[-1], batch_size, seed, augment=False)
            from torch.utils.data import TensorDataset

            train_set = TensorDataset(*train_set)
        return self.stream(train_set, batch_size, seed, augment=False)

    def augment(self, spec: Any, stage: str):
        """The per-sample augmentation of a stage from its config: true (the defaults below), false, or a mapping
        of parameters. Stage 1: ``PaperAStage1`` (the released code's crop, flips, jitter, grayscale, blur);
        stage 2: ``PairedGeometric`` (one crop + flips for student and teacher input)."""
        from training.data.augment import PairedGeometric, PaperAStage1

        if spec is False or spec is None:
            return None
        params = dict(spec) if isinstance(spec, dict) else {}
        if stage == "stage1":
            return PaperAStage1(tuple(self.lm.mean), tuple(self.lm.std), **params)
        return PairedGeometric(**params)

    # -- stage 2 -----------------------------------------------------------------------------------
    def stage2_data(self, which: str) -> dict[str, Any]:
        s2cfg = self.cfg["stage2"]
        crop = int(s2cfg.get("crop", self.size))
        sec = s2cfg[which]
        if self.dry_run:
            g = torch.Generator().manual_seed(self.seed + 1)
            c = len(S2_L1C_BANDS) if which == "s2" else len(S1_GRD_BANDS)
            xs = torch.randn(2, c, self.size, self.size, generator=g)
            xt = torch.randn(2, 3, self.size, self.size, generator=g)
            if s2cfg.get("loss", "ce") == "bce":
                y = (torch.rand(2, self.head_weights.out_features, generator=g) > 0.5).float()
            else:
                y = torch.tensor([0, -1])
            return {"train": (xs, xt, y), "held": None, "n": 2}
        if self.streaming:
            return self._stream_stage2(which, sec)
        lam, loss = float(s2cfg.get("lambda", 0.05)), s2cfg.get("loss", "ce")
        ben = [src["kind"] for src in sec["sources"] if str(src["kind"]).startswith("bigearthnet")]
        if lam and loss == "bce" and ben:
            # In memory, crops are cut from scenes without their labels: every BigEarthNet crop would get -1 and
            # the lambda classification term would silently vanish.
            raise ValueError(f"stage2.{which}: BigEarthNet sources ({', '.join(ben)}) carry their multi-labels only with "
                             f"data.streaming: true; in memory the lambda={lam} classification term would silently drop out. "
                             "Set data.streaming: true (or stage2.lambda: 0 to align without it)")
        if which == "s2":
            tr, he = recipe_data.load_s2_crops(sec["sources"], self.data_dir, crop)

            def tensors(part):
                ms, rgb, labels = part.arrays()
                return resize_batch(_t(ms_input(ms)), self.size), self.teacher_input(rgb), torch.from_numpy(labels), ms
        else:
            tr, he = recipe_data.load_s1_crops(sec["sources"], self.data_dir, crop)

            def tensors(part):
                s1, s2, rgb = part.arrays()
                lab = torch.full((len(part),), -1, dtype=torch.long)
                return resize_batch(_t(s1_input(s1)), self.size), self.teacher_input(rgb), lab, s2
        train_t = tensors(tr)
        held_t = tensors(he) if len(he) else None
        labelled = int((train_t[2] >= 0).sum())
        if lam and not labelled:
            log.warning("stage2.%s: none of the %d training crops has a label: the lambda=%g classification term is off, "
                        "the student learns from the MSE to the teacher alone", which, len(tr), lam)
        return {"train": train_t[:3], "held": held_t, "n": len(tr), "n_held": len(he), "labelled": labelled}

    def _stream_stage2(self, which: str, sec: dict) -> dict[str, Any]:
        multi = self.cfg["stage2"].get("loss", "ce") == "bce"
        dataset, held_items = recipe_data.stream_alignment_set(which, sec["sources"], self.data_dir, self.norm(), multi)
        held = None
        if held_items:
            raws, tens = zip(*held_items)
            xs, xt, y = (torch.stack([t[i] for t in tens]) for i in range(3))
            refl = np.stack([r[0] if which == "s2" else r[1] for r in raws])
            held = (xs, xt, y, refl)
        return {"train": dataset, "held": held, "n": len(dataset), "n_held": len(held_items)}

    def align(self, which: str, bands: list[str]) -> nn.Module:
        s2cfg = self.cfg["stage2"]
        sec = s2cfg[which]
        d = self.stage2_data(which)
        student_cfg = dict(sec.get("student", {}))
        ckpt_path = student_cfg.get("checkpoint")
        if self.dry_run and ckpt_path and not Path(ckpt_path).is_file():
            # A dry run needs no weights, but loads them when they are here: a layout that does not fit shows now,
            # not hours into a GPU job.
            log.warning("dry run: student checkpoint %s not found, the %s student starts from random weights", ckpt_path, which)
            student_cfg["checkpoint"] = None
        student = build_student(student_cfg, bands, self.lm.model.visual, self.lm.embed_dim, self.size).to(self.device)
        # What the student started from: {checkpoint, loaded, total, patch_embed_loaded, skipped, missing, ignored}.
        init = dict(getattr(student, "load_report", None) or {"checkpoint": None, "kind": student_cfg.get("kind", "clip_visual")})
        self.metrics.setdefault("student_init", {})[which] = init
        teacher = self.lm.model.visual
        held = d["held"]
        # The teacher stays frozen through the alignment: its held-out embeddings are computed once.
        emb_before = embed(student, held[0], self.device) if held else None
        teacher_emb = embed(teacher, held[1], self.device) if held else None
        before = mean_cosine(emb_before, teacher_emb) if held else None
        steps = self.length(sec, d["n"], f"stage2.{which}")
        step = alignment_step(teacher, self.head_weights, float(s2cfg.get("lambda", 0.05)), s2cfg.get("loss", "ce"),
                              _label_smoothing(s2cfg, "stage2", 0.0), self.device,
                              self.augment(sec.get("augment", True), "stage2"), self.seed + 11)  # fmt: skip
        ckpt = None if self.dry_run else self.out / "checkpoints" / f"{which}_student"
        batches_ = self._batches(d["train"], int(sec["batch_size"]), self.seed + 7)
        hist = train(student, step, batches_, OptimConfig.from_dict(sec["optim"], steps), self.device, ckpt)
        m: dict[str, Any] = {"steps": len(hist), "n_train": d["n"], "n_heldout": d.get("n_held", 0)}
        if "labelled" in d:
            m["n_labelled"] = d["labelled"]  # crops the classification term sees (0: MSE only)
        if hist:
            m.update({"loss_first": hist[0]["loss"], "loss_last": hist[-1]["loss"], "mse_first": hist[0]["mse"], "mse_last": hist[-1]["mse"]})
        if held:
            after_emb = embed(student, held[0], self.device)
            m["cos_before"], m["cos_after"] = before, mean_cosine(after_emb, teacher_emb)
            self._held[which] = {"before": emb_before, "after": after_emb, "teacher": teacher_emb, "s2_refl": held[3]}
        self.metrics.setdefault("alignment", {})[which] = m
        return student

    def retrieval(self, s2_student: nn.Module) -> None:
        out: dict[str, Any] = {}

        def r(q: torch.Tensor, g: torch.Tensor) -> dict[str, float]:
            sim = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(g, dim=-1).T
            return recall_at_k(sim.numpy(), np.arange(q.shape[0]), ks=(1, 5, 10, 20, 50))  # Paper A's R@k

        h2 = self._held.get("s2")
        if h2:
            out["ms_to_rgb"] = r(h2["after"], h2["teacher"])
            out["rgb_to_ms"] = r(h2["teacher"], h2["after"])
            out["ms_to_rgb_before"] = r(h2["before"], h2["teacher"])
            out["n_s2"] = int(h2["after"].shape[0])
        h1 = self._held.get("s1")
        if h1:
            s2_in = resize_batch(_t(ms_input(h1["s2_refl"])), self.size)
            s2_emb = embed(s2_student, s2_in, self.device)
            out["s1_to_s2"] = r(h1["after"], s2_emb)
            out["s2_to_s1"] = r(s2_emb, h1["after"])
            out["s1_to_s2_before"] = r(h1["before"], s2_emb)
            out["n_s1"] = int(h1["after"].shape[0])
        self.metrics["retrieval"] = out
        rows = [{"direction": k, **v} for k, v in out.items() if isinstance(v, dict)]
        if rows:
            write_table(rows, self.out / "retrieval", "Cross-modal retrieval on held-out patches (R@k, %)")

    def zero_shot(self, s2_student: nn.Module) -> None:
        """Paper A's evaluation of the aligned student: zero-shot through the text head on labelled Sentinel-2
        sets (``stage2.zero_shot``), beside the RGB teacher on the composites of the same patches."""
        from training.data.composites import rgb_composite

        out: dict[str, Any] = {}
        for spec in self.cfg["stage2"].get("zero_shot") or []:
            ds, level = recipe_data.load_ms_set(spec, self.data_dir, int(self.cfg["stage2"].get("crop", self.size)))
            head = self.head(ds.classnames)
            x_ms = resize_batch(_t(ms_input(ds.images)), self.size)
            x_rgb = self.teacher_input(np.stack([rgb_composite(a, level) for a in ds.images]))
            out[ds.name] = {"metric": "macro_mAP" if ds.labels.ndim == 2 else "accuracy", "n": len(ds.labels),
                            "ms_student": evaluate_head(s2_student, head, x_ms, ds.labels, self.device),
                            "rgb_teacher": evaluate_head(self.lm.model.visual, head, x_rgb, ds.labels, self.device)}  # fmt: skip
        if out:
            self.metrics["zero_shot"] = out
            write_table([{"dataset": k, **v} for k, v in out.items()], self.out / "zero_shot",
                        "Zero-shot of the aligned MS student and the RGB teacher (accuracy or macro mAP, %)")  # fmt: skip

    def check_inputs(self) -> None:
        """Evaluation sets are read at the end: a missing folder must stop the run now, not after training."""
        for spec in self.cfg["stage2"].get("zero_shot") or []:
            if not (self.data_dir / spec["root"]).exists():
                raise FileNotFoundError(f"stage2.zero_shot {spec.get('name', spec['kind'])}: {self.data_dir / spec['root']} "
                                        "not found; fix data_dir / root or remove the entry")

    # -- export ------------------------------------------------------------------------------------
    def export(self, s2_student: nn.Module, s1_student: nn.Module) -> None:
        """The bundle: rgb teacher and the S2 / S1 students, each with dense outputs (export.dense, default
        segearth) in the same graph as its pooled embedding when it has a dense path."""
        from training.export.exporter import ImageEncoderExport, export_model, rgb_encoder, student_module

        ex = self.cfg.get("export", {})
        gsd = float(ex.get("gsd_m", 10.0))
        strict = "dense" in ex  # a variant the config names must be honoured; the default falls back with a warning
        s2_module = student_module(s2_student.eval(), self.dense, strict=strict)  # one wrapper: both S2 levels
        s1_module = student_module(s1_student.eval(), self.dense, strict=strict)

        def enc(modality: str, module: nn.Module, bands: list[str]) -> ImageEncoderExport:
            units, transforms, mean, std = default_transform(modality, len(bands))
            return ImageEncoderExport(modality, module.eval(), list(bands), units, transforms, mean, std, self.size, gsd)

        encoders = [
            rgb_encoder(self.lm, gsd_m=gsd, dense=self.dense),
            enc("s2-l1c", s2_module, list(S2_L1C_BANDS)),
            enc("s2-l2a", s2_module, list(S2_L2A_AS_13)),
            enc("s1-grd", s1_module, list(S1_GRD_BANDS)),
        ]
        provenance = {
            "method": "modality-gap (Paper A: patching + cross-modal alignment)",
            "paper": "Zavras et al., Mind the Modality Gap, arXiv 2402.09816",
            "description": ex.get("description", ""),
            "recipe": self.cfg.get("name", ""),
            "data": self.cfg.get("data_description", ""),
            "metrics": {k: v for k, v in self.metrics.items() if k in ("stage1", "patching", "alignment", "retrieval", "zero_shot")},
        }
        report = export_model(self.lm, out_dir=self.out / "bundle", image_encoders=encoders, provenance=provenance,
                              name=ex.get("name"), fp16=bool(ex.get("fp16", False)), overwrite=True)  # fmt: skip
        self.metrics["bundle"] = str((self.out / "bundle").resolve())
        self.metrics["export"] = {"parity": report.get("parity"), "seconds": report.get("seconds")}

    def run(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        self._held: dict[str, dict] = {}
        timings: dict[str, float] = {}

        def timed(name: str, fn, *a):
            t = time.perf_counter()
            out = fn(*a)
            timings[name] = round(time.perf_counter() - t, 2)
            log.info("%s done in %.1f s", name, timings[name])
            return out

        if not self.dry_run:
            self.check_inputs()
        timed("build", self.build_model)
        timed("stage1", self.stage1)
        s2_student = timed("align_s2", self.align, "s2", list(S2_L1C_BANDS))
        s1_student = timed("align_s1", self.align, "s1", list(S1_GRD_BANDS))
        if not self.dry_run:
            timed("retrieval", self.retrieval, s2_student)
            timed("zero_shot", self.zero_shot, s2_student)
            if self.cfg.get("export", {}).get("enabled", True):
                timed("export", self.export, s2_student, s1_student)
        self.metrics["timings_s"] = timings
        if not self.dry_run:
            rows = [{"student": k, **{m: v for m, v in a.items() if not isinstance(v, list)}} for k, a in self.metrics["alignment"].items()]
            write_table(rows, self.out / "alignment", "Stage 2: student-teacher alignment (held-out mean cosine)")
        self.metrics["seconds"] = round(time.perf_counter() - t0, 2)
        return self.metrics


def export_dense_variant(export_cfg: dict) -> Optional[str]:
    """The recipe's ``export.dense``: a dense variant (default: the exporter's DEFAULT_DENSE_VARIANT), or None
    for ``none`` / null / false (pooled embeddings only, tile mode)."""
    from rs_clip_plugin.engine.bundle import DENSE_VARIANTS
    from training.export.exporter import DEFAULT_DENSE_VARIANT

    value = export_cfg.get("dense", DEFAULT_DENSE_VARIANT)
    if value in (None, False, "none"):
        return None
    if value not in DENSE_VARIANTS:
        raise ValueError(f"export.dense is {value!r}: use one of {', '.join(DENSE_VARIANTS)} or none")
    return str(value)


def run_recipe(config: dict, out_dir: Path, *, dry_run: bool = False) -> dict:
    """Run Paper A's recipe from ``config`` into ``out_dir``; returns (and writes) the metrics."""
    for key in ("model", "stage1", "stage2"):
        if key not in config:
            raise ValueError(f"recipe has no {key!r} section; see training/configs/smoke/modality_gap.yaml for the layout")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    threads: Optional[int] = config.get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    seed_everything(int(config.get("seed", 0)))
    metrics = _Recipe(config, out, dry_run).run()
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, default=float) + "\n")
    return metrics
