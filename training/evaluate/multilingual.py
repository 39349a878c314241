"""Per-language retrieval and zero-shot classification, for torch models and exported bundles alike.

Both kinds of model are wrapped as an ``Encoder`` (``encode_images(uint8 [N, H, W, 3])`` and
``encode_texts(list[str])``, L2-normalised numpy out): ``TorchEncoder`` runs an open_clip model,
``BundleEncoder`` runs the bundle's ONNX graphs through the engine (its tokenizer, its ONNX Runtime
sessions, its band transforms), so a bundle is scored exactly as the plugin would use it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional, Protocol

import numpy as np

from rs_clip_plugin.engine import resources

from .retrieval import DEFAULT_KS, retrieval_by_language

LANGUAGES = resources.LANGUAGES


def load_classnames(name: str) -> dict[str, list[str]]:
    """resources/classnames/<name>.json: {"keys": [...], "en": [...], ...} in the dataset's class order."""
    return resources.load_classnames(name)


def load_prompt_templates(languages: Sequence[str] = LANGUAGES) -> dict[str, list[str]]:
    table = resources.prompt_templates()
    missing = [lang for lang in languages if lang not in table]
    if missing:
        raise ValueError(f"{resources.resources_dir() / 'prompt_templates.json'}: no prompt templates for {missing}")
    return {lang: list(table[lang]) for lang in languages}


class Encoder(Protocol):
    def encode_images(self, images: np.ndarray) -> np.ndarray: ...
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray: ...


def _resize_uint8(images: np.ndarray, size: int) -> np.ndarray:
    """[N, H, W, 3] uint8 -> float32 [N, 3, size, size] in 0..255 (bilinear, antialiased)."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.array(images, dtype=np.uint8)).permute(0, 3, 1, 2).float()
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.clamp(0, 255).numpy()


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class TorchEncoder:
    """An open_clip model (``training.models.LoadedModel``) in eval mode."""

    def __init__(self, loaded, batch_size: int = 64) -> None:
        self.loaded = loaded
        self.batch_size = batch_size

    def encode_images(self, images: np.ndarray) -> np.ndarray:
        import torch

        lm = self.loaded
        mean = np.array(lm.mean, np.float32).reshape(1, 3, 1, 1)
        std = np.array(lm.std, np.float32).reshape(1, 3, 1, 1)
        device = next(lm.model.parameters()).device
        out = []
        with torch.no_grad():
            for i in range(0, len(images), self.batch_size):
                x = (_resize_uint8(images[i : i + self.batch_size], lm.image_size) / 255.0 - mean) / std
                out.append(lm.model.encode_image(torch.from_numpy(x.astype(np.float32)).to(device)).float().cpu().numpy())
        return _l2(np.concatenate(out))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        lm = self.loaded
        device = next(lm.model.parameters()).device
        out = []
        with torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                out.append(lm.model.encode_text(lm.tokenizer(list(texts[i : i + self.batch_size])).to(device)).float().cpu().numpy())
        return _l2(np.concatenate(out))


class BundleEncoder:
    """An exported bundle through the engine's ONNX Runtime path (rgb encoder + text encoder)."""

    def __init__(self, bundle: os.PathLike | str, provider: str = "cpu", batch_size: int = 32) -> None:
        from rs_clip_plugin.engine.bundle import load_bundle
        from rs_clip_plugin.engine.runtime import EncoderSession

        self.bundle = load_bundle(bundle)
        self.spec = self.bundle.manifest.encoder("rgb")
        self.image_session = EncoderSession(self.bundle, "rgb", provider=provider)
        self.provider = provider
        self.batch_size = batch_size

    @property
    def languages(self) -> list[str]:
        return list(self.bundle.manifest.text.languages)

    def encode_images(self, images: np.ndarray) -> np.ndarray:
        from rs_clip_plugin.engine.radiometry import apply_transform

        s = self.spec
        out = []
        for i in range(0, len(images), self.batch_size):
            x = apply_transform(_resize_uint8(images[i : i + self.batch_size], s.input_size), s.transforms, s.mean, s.std)
            out.append(self.image_session.embed(x))
        return _l2(np.concatenate(out))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        from rs_clip_plugin.engine.text import embed_texts

        return _l2(embed_texts(self.bundle, list(texts), provider=self.provider))


@dataclass
class RetrievalSet:
    """Images and captions for retrieval: caption j (in ``langs[j]``) describes the images ``positives[j]``."""

    images: np.ndarray  # uint8 [N, H, W, 3]
    captions: list[str] = field(default_factory=list)
    langs: list[str] = field(default_factory=list)
    positives: list[set[int]] = field(default_factory=list)

    @classmethod
    def from_records(cls, images: np.ndarray, captions_per_image: Sequence[dict[str, list[str]]]) -> RetrievalSet:
        """Identical captions of several images (class-name captions) become one query with several positives."""
        index: dict[tuple[str, str], int] = {}
        rs = cls(images=images)
        for i, caps in enumerate(captions_per_image):
            for lang, texts in caps.items():
                for t in texts:
                    j = index.get((lang, t))
                    if j is None:
                        j = index[(lang, t)] = len(rs.captions)
                        rs.captions.append(t)
                        rs.langs.append(lang)
                        rs.positives.append(set())
                    rs.positives[j].add(i)
        return rs


def evaluate_retrieval(encoder: Encoder, data: RetrievalSet, ks: Sequence[int] = DEFAULT_KS) -> dict[str, dict[str, float]]:
    """{lang: {"R@1", "R@5", "R@10", "t2i_R@k", "i2t_R@k", "mean_recall"}} plus "mean" over languages."""
    img = encoder.encode_images(data.images)
    txt = encoder.encode_texts(data.captions)
    out = retrieval_by_language(img, txt, data.positives, data.langs, ks)
    keys = next(iter(out.values())).keys() if out else []
    out["mean"] = {k: float(np.mean([m[k] for m in out.values()])) for k in keys}
    return out


def evaluate_zero_shot(
    encoder: Encoder,
    images: np.ndarray,
    labels: Sequence[int],
    classnames: dict[str, list[str]],
    templates: dict[str, list[str]],
    languages: Optional[Sequence[str]] = None,
) -> dict[str, dict[str, float]]:
    """Top-1/top-5 accuracy (percent) per language with prompt-ensembled class embeddings."""
    languages = list(languages or [lang for lang in LANGUAGES if lang in classnames and lang in templates])
    img = encoder.encode_images(images)
    labels = np.asarray(labels)
    out: dict[str, dict[str, float]] = {}
    for lang in languages:
        names = classnames[lang]
        prompts = [t.format(n) for n in names for t in templates[lang]]
        emb = encoder.encode_texts(prompts).reshape(len(names), len(templates[lang]), -1).mean(axis=1)
        logits = img @ _l2(emb).T
        order = np.argsort(-logits, axis=1)
        top5 = min(5, len(names))
        out[lang] = {
            "top1": float(100.0 * np.mean(order[:, 0] == labels)),
            f"top{top5}": float(100.0 * np.mean((order[:, :top5] == labels[:, None]).any(axis=1))),
        }
    return out


def markdown_table(results: dict[str, dict[str, float]], columns: Sequence[str], title: str = "") -> str:
    """One row per language, the chosen metric columns, values with one decimal."""
    lines = [f"### {title}", ""] if title else []
    lines.append("| lang | " + " | ".join(columns) + " |")
    lines.append("|---|" + "---|" * len(columns))
    for lang, m in results.items():
        lines.append(f"| {lang} | " + " | ".join(f"{m[c]:.1f}" if c in m else "-" for c in columns) + " |")
    return "\n".join(lines) + "\n"
