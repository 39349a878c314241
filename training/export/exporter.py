"""Model -> bundle: ONNX encoders, tokenizer.json, manifest; checked for parity, written atomically.

Two levels:
- ``export_model(name_or_loaded, ...)``: a CLIP model (open_clip name + tag, checkpoint, or an in-memory
  ``LoadedModel``) with its visual tower as the ``rgb`` encoder, unless ``image_encoders`` says otherwise;
- ``export_bundle(text_module, tokenizer, image_encoders, out_dir, ...)``: any text module and any image
  encoders (e.g. Sentinel-2 / Sentinel-1 students trained by the alignment recipes) into one bundle.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from rs_clip_plugin.engine import resources
from rs_clip_plugin.engine.atomic import replace_dir, staging_dir
from rs_clip_plugin.engine.bands import RGB_BANDS
from rs_clip_plugin.engine.bundle import (
    DENSE_CLS_OUTPUT,
    EMBEDDING_OUTPUT,
    IMAGE_INPUT,
    PATCH_OUTPUT,
    SCHEMA_VERSION,
    TEXT_INPUT,
    BundleError,
    EncoderSpec,
    Manifest,
    TextSpec,
    load_bundle,
    write_manifest,
    zip_bundle,
)
from rs_clip_plugin.engine.radiometry import BandTransform, default_transform
from training.models.factory import LoadedModel, create_model
from training.models.tiny import MULTILINGUAL_LANGUAGES, TINY_MULTILINGUAL

from .onnx_export import (
    DenseEncoder,
    ImageEncoder,
    TextEncoder,
    convert_fp16,
    convert_int8,
    dense_encoder,
    dense_problem,
    export_onnx,
    read_metadata,
    supports_dense,
)
from .parity import FP16_MIN_COSINE, FP32_MIN_COSINE, check_parity, check_parity_outputs, random_images
from .tokenizer_export import TokenizerInfo, write_tokenizer

log = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
TEXT_FILE = "text.onnx"
# Dense variant written by default (issue 11): SegEarth-OV's, the best of the training-free family on remote
# sensing (39.2 mIoU over 8 benchmarks vs 33.4 ClearCLIP, 31.1 SCLIP, 27.2 MaskCLIP, ViT-B/16).
DEFAULT_DENSE_VARIANT = "segearth"
# Real prompts for the text parity check: short, long (truncated), several scripts.
_PARITY_CLASSES = ["forest", "river", "industrial buildings", "annual crop land", "sea or lake"]
_PARITY_EXTRA = [
    "一张森林的卫星图像。",
    "спутниковый снимок реки",
    "une image satellite d'une forêt",
    " ".join(["many green trees near a river and a bridge"] * 12),
]


@dataclass
class ImageEncoderExport:
    """One image encoder for a bundle: a module [B, C, S, S] -> [B, D] and how its input is made."""

    modality: str
    module: torch.nn.Module
    bands: list[str]
    units: str
    transforms: list[BandTransform]
    mean: list[float]
    std: list[float]
    input_size: int
    gsd_m: float = 10.0
    tile_size_px: Optional[int] = None  # default: input_size

    @property
    def dense(self) -> Optional[dict[str, Any]]:
        """The manifest's dense entry when the module has dense outputs (a DenseEncoder), else None."""
        m = self.module
        if not isinstance(m, DenseEncoder):
            return None
        return {"variant": m.variant, "grid": [int(g) for g in m.grid],
                "outputs": {"patches": PATCH_OUTPUT, "cls": DENSE_CLS_OUTPUT}}

    def spec(self, onnx: str, onnx_fp16: Optional[str]) -> EncoderSpec:
        return EncoderSpec(
            modality=self.modality,
            onnx=onnx,
            bands=list(self.bands),
            transforms=list(self.transforms),
            units=self.units,
            mean=[float(v) for v in self.mean],
            std=[float(v) for v in self.std],
            input_size=int(self.input_size),
            gsd_m=float(self.gsd_m),
            tile_size_px=int(self.tile_size_px or self.input_size),
            onnx_fp16=onnx_fp16,
            dense=self.dense,
        )


@dataclass
class TextExport:
    """The text side of a bundle: a module [B, L] int64 -> [B, D], its tokenizer and some real token ids."""

    module: torch.nn.Module
    tokenizer_json: Path
    info: TokenizerInfo
    languages: list[str]
    parity_ids: torch.Tensor  # [N, context_length] int64, from the real tokenizer
    extra: dict[str, Any] = field(default_factory=dict)


def rgb_encoder(loaded: LoadedModel, gsd_m: float = 10.0, tile_size_px: Optional[int] = None,
                dense: Optional[str] = DEFAULT_DENSE_VARIANT) -> ImageEncoderExport:
    """The CLIP visual tower as the bundle's ``rgb`` encoder (RGB in [0, 1], the model's own mean/std).

    ``dense``: the dense variant (DENSE_VARIANTS) whose patch outputs the graph also gets, when the tower can
    (supports_dense: an open_clip ViT); None for the pooled embedding alone."""
    units, transforms, _, _ = default_transform("rgb", 3)
    module = (dense_encoder(loaded.model, dense) if dense and supports_dense(loaded.model)
              else ImageEncoder(loaded.model))
    return ImageEncoderExport(
        modality="rgb",
        module=module,
        bands=list(RGB_BANDS),
        units=units,
        transforms=transforms,
        mean=list(loaded.mean),
        std=list(loaded.std),
        input_size=loaded.image_size,
        gsd_m=gsd_m,
        tile_size_px=tile_size_px,
    )


def student_module(student: torch.nn.Module, dense: Optional[str] = DEFAULT_DENSE_VARIANT,
                   strict: bool = False) -> torch.nn.Module:
    """A student encoder (``ClipVisualStudent``, ``TimmStudent``) as a bundle's image module: wrapped with the
    dense outputs of variant ``dense`` (``dense_encoder``) when it has a dense path, else as it is (pooled only).

    ``strict``: a student without a dense path raises ValueError (naming why) instead of exporting pooled only."""
    if not dense:
        return student
    problem = dense_problem(student)
    if problem is None:
        return dense_encoder(student, dense)
    if strict:
        raise ValueError(f"dense outputs ({dense!r}) asked for a {type(student).__name__} that has none: {problem}; "
                         "set export.dense to none")
    log.warning("exporting %s without dense outputs (tile mode only): %s", type(student).__name__, problem)
    return student


def default_languages(loaded: LoadedModel) -> list[str]:
    if loaded.model_name == TINY_MULTILINGUAL or "xlm-roberta" in loaded.model_name or "RS-M-CLIP" in loaded.model_name:
        return list(MULTILINGUAL_LANGUAGES)
    return ["en"]


def default_prompt_templates(languages: list[str]) -> dict[str, list[str]]:
    table = resources.prompt_templates()
    missing = [lang for lang in languages if lang not in table]
    if missing:
        raise ValueError(f"no default prompt templates for {missing} in {resources.resources_dir()}; pass prompt_templates")
    return {lang: table[lang] for lang in languages}


def text_export(loaded: LoadedModel, work_dir: Path, languages: Optional[list[str]] = None) -> TextExport:
    """Tokenizer written into ``work_dir`` and the text module of ``loaded``."""
    path = Path(work_dir) / TOKENIZER_FILE
    info = write_tokenizer(loaded, path)
    prompts = [f"a satellite image of {c}." for c in _PARITY_CLASSES] + _PARITY_EXTRA
    ids = loaded.tokenizer(prompts)
    return TextExport(TextEncoder(loaded.model), path, info, languages or default_languages(loaded), ids.long())


def export_model(
    model: Union[str, LoadedModel],
    pretrained: Optional[str] = None,
    checkpoint: Optional[Union[str, os.PathLike]] = None,
    out_dir: Union[str, os.PathLike, None] = None,
    *,
    fp16: bool = False,
    int8: bool = True,
    image_encoders: Optional[list[ImageEncoderExport]] = None,
    languages: Optional[list[str]] = None,
    prompt_templates: Optional[dict[str, list[str]]] = None,
    provenance: Optional[dict[str, Any]] = None,
    zip_path: Union[str, os.PathLike, None] = None,
    overwrite: bool = False,
    name: Optional[str] = None,
    dense: Optional[str] = DEFAULT_DENSE_VARIANT,
) -> dict[str, Any]:
    """Export a CLIP model to a bundle at ``out_dir``; returns the report (paths, parity figures, seconds).

    ``dense``: the dense variant of the default rgb encoder (None: no dense outputs); ignored with
    ``image_encoders`` (each of those says itself whether it is dense)."""
    if out_dir is None:
        raise ValueError("out_dir is required: the directory the bundle is written to")
    out_dir = Path(out_dir)
    _check_target(out_dir, overwrite)
    t0 = time.perf_counter()
    loaded = model if isinstance(model, LoadedModel) else create_model(model, pretrained=pretrained, checkpoint=checkpoint)
    loaded.model.eval()
    with tempfile.TemporaryDirectory(prefix="rsclip-tok-") as tok_dir:
        text = text_export(loaded, Path(tok_dir), languages)
        encoders = image_encoders if image_encoders is not None else [rgb_encoder(loaded, dense=dense)]
        prov = {
            "base_model": loaded.model_name,
            "pretrained": loaded.pretrained,
            "checkpoint": loaded.checkpoint,
            "method": "export",
        }
        prov = {k: v for k, v in prov.items() if v is not None} | (provenance or {})
        report = export_bundle(
            text,
            encoders,
            out_dir,
            name=name or _bundle_name(loaded),
            embed_dim=loaded.embed_dim,
            logit_scale=float(loaded.model.logit_scale.detach().exp()) if hasattr(loaded.model, "logit_scale") else 100.0,
            prompt_templates=prompt_templates,
            provenance=prov,
            fp16=fp16,
            int8=int8,
            zip_path=zip_path,
            overwrite=overwrite,
        )
    report["seconds"] = round(time.perf_counter() - t0, 3)
    return report


def export_bundle(
    text: TextExport,
    image_encoders: list[ImageEncoderExport],
    out_dir: Union[str, os.PathLike],
    *,
    name: str,
    embed_dim: int,
    logit_scale: float,
    prompt_templates: Optional[dict[str, list[str]]] = None,
    provenance: Optional[dict[str, Any]] = None,
    fp16: bool = False,
    int8: bool = True,
    zip_path: Union[str, os.PathLike, None] = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a complete bundle: every encoder exported and parity-checked, manifest last, then moved into place.

    ``int8``: also an int8 twin of every image encoder, with its agreement with fp32 measured on real sample
    tiles and recorded in the manifest (see ``add_int8_twins``)."""
    out_dir = Path(out_dir)
    _check_target(out_dir, overwrite)
    if not image_encoders:
        raise ValueError("a bundle needs at least one image encoder")
    t0 = time.perf_counter()
    templates = prompt_templates or default_prompt_templates(text.languages)
    info = text.info
    common = {
        "schema_version": SCHEMA_VERSION,
        "model": name,
        "embed_dim": int(embed_dim),
        "logit_scale": float(logit_scale),
    }
    parity: dict[str, dict[str, float]] = {}
    work = staging_dir(out_dir)  # beside out_dir (same file system); stale ones of killed exports removed
    try:
        shutil.copyfile(text.tokenizer_json, work / TOKENIZER_FILE)
        text_meta = {
            **common,
            "role": "text",
            "input": TEXT_INPUT,
            "context_length": info.context_length,
            "tokenizer": {
                "file": TOKENIZER_FILE,
                "kind": info.kind,
                "sot_id": info.sot_id,
                "eot_id": info.eot_id,
                "pad_id": info.pad_id,
                "lowercase": info.lowercase,
                "vocab_size": info.vocab_size,
            },
            "languages": text.languages,
        }
        text_fp16 = _export_one(
            text.module, text.parity_ids, work, TEXT_FILE, TEXT_INPUT, text_meta, fp16, parity, "text"
        )
        text_spec = TextSpec(
            onnx=TEXT_FILE,
            tokenizer=TOKENIZER_FILE,
            context_length=info.context_length,
            languages=list(text.languages),
            tokenizer_kind=info.kind,
            sot_id=info.sot_id,
            eot_id=info.eot_id,
            pad_id=info.pad_id,
            lowercase=info.lowercase,
            onnx_fp16=text_fp16,
        )
        specs = []
        for enc in image_encoders:
            fname = f"image_{enc.modality}.onnx"
            spec = enc.spec(fname, None)
            meta = {
                **common,
                "role": "image",
                "modality": enc.modality,
                "input": IMAGE_INPUT,
                "bands": spec.bands,
                "units": spec.units,
                "transforms": [t.to_dict() for t in spec.transforms],
                "mean": spec.mean,
                "std": spec.std,
                "input_size": spec.input_size,
                "gsd_m": spec.gsd_m,
                "tile_size_px": spec.tile_size_px,
                **({"dense": spec.dense} if spec.dense else {}),
            }
            example = random_images(4, len(spec.bands), spec.input_size, seed=len(specs))
            spec.onnx_fp16 = _export_one(enc.module, example, work, fname, IMAGE_INPUT, meta, fp16, parity, f"image_{enc.modality}")
            specs.append(spec)
        manifest = Manifest(
            name=name,
            embed_dim=int(embed_dim),
            logit_scale=float(logit_scale),
            text=text_spec,
            encoders=specs,
            prompt_templates=templates,
            provenance={**(provenance or {}), "parity": parity},
        )
        write_manifest(work, manifest)
        load_bundle(work)  # the reader's own checks: hashes, ONNX inputs against the manifest
        if int8:
            add_int8_twins(work)
        _check_target(out_dir, overwrite)  # again: the export took a while
        replace_dir(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    manifest = load_bundle(out_dir).manifest
    files = {rel: (out_dir / rel).stat().st_size for rel in [*manifest.files, "manifest.json"]}
    report: dict[str, Any] = {
        "bundle": str(out_dir),
        "name": name,
        "parity": parity,
        "int8": {e.modality: e.int8_agreement for e in manifest.encoders if e.onnx_int8},
        "files": files,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if zip_path:
        report["zip"] = str(zip_bundle(out_dir, Path(zip_path)))
    return report


def add_int8_twins(root: Union[str, os.PathLike], modalities: Optional[list[str]] = None) -> dict[str, dict[str, Any]]:
    """Give the image encoders of the bundle at ``root`` (all, or ``modalities``) an int8 twin, measure it
    against fp32 on real sample tiles (engine/agreement.py: min/mean cosine, zero-shot label agreement over
    the EuroSAT classes) and record both in the manifest, rewritten with its hashes. Works on an existing
    bundle too (its fp32 graphs are the reference). Returns the figures per modality.

    Which nodes stay fp32 is measured, not assumed: ``int8_candidates`` lists ever more fp32 nodes (the
    output projection, then the first and last blocks); the first that keeps labels on >= INT8_MIN_AGREEMENT
    of the tiles is written, else the one that agrees best. A candidate keeping over a third of the weight
    products fp32 is not tried: it would cost the speed int8 is for.
    """
    import onnx

    from rs_clip_plugin.engine.agreement import agreement, real_tiles, run_graph, zero_shot_classes
    from rs_clip_plugin.engine.runtime import INT8_MIN_AGREEMENT
    from training.export.onnx_export import weight_matmuls

    root = Path(root)
    bundle = load_bundle(root)
    manifest = bundle.manifest
    class_emb, _ = zero_shot_classes(bundle)
    figures: dict[str, dict[str, Any]] = {}
    for spec in manifest.encoders:
        if modalities is not None and spec.modality not in modalities:
            continue
        src = root / spec.onnx
        rel = spec.onnx.replace(".onnx", ".int8.onnx")
        meta = read_metadata(src)
        tiles, sources = real_tiles(spec)
        weights, _ = weight_matmuls(onnx.load(str(src), load_external_data=False))
        ref = run_graph(src, tiles) if len(tiles) else None
        best: Optional[tuple[float, dict[str, Any]]] = None
        for n, exclude in enumerate(int8_candidates(weights)):
            path = root / (rel if n == 0 else f".{rel}.{n}")
            how = convert_int8(src, path, meta, exclude=exclude)
            if ref is None:  # no real tiles for this encoder: nothing to choose by
                fig = {**agreement(np.zeros((0, 1)), np.zeros((0, 1))),
                       "note": f"no sample raster can feed the {spec.modality!r} encoder; auto keeps fp32"}
                best = (0.0, {**fig, **how})
                break
            fig = agreement(ref, run_graph(path, tiles), class_emb)
            fig.update(classes="eurosat", rasters=len(sources), **how)
            score = fig["label_agreement"]
            if best is None or score > best[0]:
                if n:
                    os.replace(path, root / rel)  # the better twin takes the name
                best = (score, fig)
            elif n:
                path.unlink(missing_ok=True)
            if score >= INT8_MIN_AGREEMENT:
                break
        assert best is not None
        spec.onnx_int8 = rel
        spec.int8_agreement = best[1]
        figures[spec.modality] = spec.int8_agreement
    write_manifest(root, manifest)
    load_bundle(root)  # hashes and every graph's inputs checked again, the new twins included
    return figures


def int8_candidates(weights: list[str]) -> list[list[str]]:
    """Weight products to keep fp32, tried in order: none; the output projection (the last weight product:
    one token per image, no speed lost); also the first and last transformer blocks (where quantisation
    error enters and where nothing is left to average it out). Sets over a third of ``weights`` are dropped."""
    import re

    out: list[list[str]] = [[]]
    if weights:
        out.append(weights[-1:])
        blocks = [int(m.group(1)) for w in weights if (m := re.search(r"blocks\.(\d+)/", w))]
        if blocks:
            ends = {min(blocks), max(blocks)}
            edge = [w for w in weights if (m := re.search(r"blocks\.(\d+)/", w)) and int(m.group(1)) in ends]
            out.append(sorted({*edge, weights[-1]}, key=weights.index))
    return [c for c in out if 3 * len(c) <= len(weights)]


def _export_one(
    module: torch.nn.Module,
    example: torch.Tensor,
    work: Path,
    fname: str,
    input_name: str,
    meta: dict[str, Any],
    fp16: bool,
    parity: dict[str, dict[str, float]],
    key: str,
) -> Optional[str]:
    """Export fp32 (and fp16) of one encoder, check both against torch; returns the fp16 file name or None.

    A module with several outputs (DenseImageEncoder: ``outputs``) is checked per output: the pooled one under
    ``key``, the others under ``key`` + ``_dense_patches`` / ``_dense_cls``."""
    module.eval()
    outputs = tuple(getattr(module, "outputs", (EMBEDDING_OUTPUT,)))
    if isinstance(module, DenseEncoder):
        _check_dense_grid(module, example)
    path = export_onnx(module, example[:2], work / fname, input_name, {**meta, "precision": "fp32"}, outputs=outputs)

    def check(graph: Path, suffix: str, min_cosine: float) -> None:
        if len(outputs) == 1:
            parity[key + suffix] = check_parity(module, graph, input_name, example, min_cosine)
            return
        figures = check_parity_outputs(module, graph, input_name, example, outputs, min_cosine)
        for name, fig in figures.items():
            parity[key + _PARITY_SUFFIX.get(name, f"_{name}") + suffix] = fig

    check(path, "", FP32_MIN_COSINE)
    if not fp16:
        return None
    half = fname.replace(".onnx", ".fp16.onnx")
    convert_fp16(path, work / half, meta)
    check(work / half, "_fp16", FP16_MIN_COSINE)
    return half


def _check_dense_grid(module: DenseEncoder, example: torch.Tensor) -> None:
    """The manifest's grid (from the model's configured input size) must be what the graph makes at the export
    size: the engine reshapes the patch output by it."""
    with torch.no_grad():
        n = int(module(example[:1])[1].shape[1])
    gh, gw = module.grid
    if n != gh * gw:
        raise ValueError(f"the dense encoder makes {n} patch tokens from {example.shape[-1]} px inputs, not its "
                         f"{gh}x{gw} grid: build the model for the bundle's input size ({example.shape[-1]} px)")


# Parity report keys of the outputs of a dense graph (the pooled one keeps the plain key, as before).
_PARITY_SUFFIX = {EMBEDDING_OUTPUT: "", PATCH_OUTPUT: "_dense_patches", DENSE_CLS_OUTPUT: "_dense_cls"}


def _bundle_name(loaded: LoadedModel) -> str:
    base = loaded.model_name.replace("hf-hub:", "").replace("/", "-")
    return f"{base}-{loaded.pretrained}" if loaded.pretrained else base


def _check_target(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise BundleError(f"{out_dir}: exists and is not a directory; choose another --out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise BundleError(f"{out_dir}: exists and is not empty; choose another --out or pass --overwrite")
