"""The zero-shot classification head built from the text encoder, frozen (WiSE-FT / PAINT, Paper A)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def zeroshot_weights(model: nn.Module, tokenizer, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """[C, D]: per class the mean of the L2-normalised template embeddings, re-normalised, times logit_scale.exp()."""
    if not classnames:
        raise ValueError("no class names for the zero-shot head")
    if not templates or any("{}" not in t for t in templates):
        raise ValueError(f"prompt templates must each contain '{{}}': {list(templates)}")
    device = next(model.parameters()).device
    rows = []
    for name in classnames:
        ids = tokenizer([t.format(name) for t in templates]).to(device)
        emb = F.normalize(model.encode_text(ids).float(), dim=-1)
        rows.append(F.normalize(emb.mean(dim=0), dim=-1))
    return torch.stack(rows) * model.logit_scale.exp().float()


class ClassificationHead(nn.Linear):
    """logits = normalise(features) @ W.T with W the zero-shot weights; frozen."""

    def __init__(self, weights: torch.Tensor, normalize: bool = True):
        super().__init__(weights.shape[1], weights.shape[0], bias=False)
        self.normalize = normalize
        with torch.no_grad():
            self.weight.copy_(weights)
        self.weight.requires_grad_(False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            features = F.normalize(features, dim=-1)
        return super().forward(features)


class ImageClassifier(nn.Module):
    """An image encoder [B, C, S, S] -> [B, D] followed by the frozen head."""

    def __init__(self, encoder: nn.Module, head: ClassificationHead):
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))
