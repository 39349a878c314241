"""Streaming training data: lazy map-style datasets over the loaders and one DataLoader builder.

The in-memory path (small sets, the smoke recipe) stacks everything into tensors; real-size runs read each
sample in a DataLoader worker instead. Items are the recipe's encoder inputs, made with the same
``composites`` functions as the in-memory path, so both paths feed the encoders identical tensors.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .composites import ms_input, rgb_composite, rgb_input, s1_input
from .transforms import dihedral_batch, resize_batch


def world() -> tuple[int, int]:
    """(rank, world size) under torchrun, else (0, 1)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _resized(x: np.ndarray, size: int) -> torch.Tensor:
    return resize_batch(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None], size)[0]


@dataclass
class Normalisation:
    """The teacher's input size and CLIP mean/std (picklable, for workers)."""

    size: int
    mean: Sequence[float]
    std: Sequence[float]

    def teacher(self, rgb01: np.ndarray) -> torch.Tensor:
        return _resized(rgb_input(rgb01, self.mean, self.std), self.size)


class LazyDataset(Dataset):
    """``read(item) -> sample`` per index; ``read`` must be picklable (a bound method or a top-level callable)."""

    def __init__(self, items: Sequence[Any], read: Callable[[Any], tuple]):
        self.items = list(items)
        self.read = read

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple:
        return self.read(self.items[i])


@dataclass
class RgbClassificationReader:
    """Stage 1: item -> (teacher input [3, S, S], label). ``load(item) -> (rgb01 [3, H, W], label)``."""

    load: Callable[[Any], tuple[np.ndarray, Any]]
    norm: Normalisation

    def __call__(self, item: Any) -> tuple[torch.Tensor, torch.Tensor]:
        rgb01, label = self.load(item)
        return self.norm.teacher(rgb01), torch.as_tensor(label)


@dataclass
class S2AlignmentReader:
    """Stage 2, S2: item -> (student input [13, S, S], teacher input [3, S, S], label).

    ``load(item) -> (reflectance [13, H, W], level, label)``; label -1 (or a multi-hot) as in the in-memory path.
    """

    load: Callable[[Any], tuple[np.ndarray, str, Any]]
    norm: Normalisation

    def __call__(self, item: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        refl, level, label = self.load(item)
        return _resized(ms_input(refl), self.norm.size), self.norm.teacher(rgb_composite(refl, level)), torch.as_tensor(label)


@dataclass
class S1AlignmentReader:
    """Stage 2, S1: item -> (student input [2, S, S], teacher input of the paired S2 [3, S, S], label).

    ``load(item) -> (S1 dB [2, H, W], paired S2 reflectance [13, H, W], level, label)``.
    """

    load: Callable[[Any], tuple[np.ndarray, np.ndarray, str, Any]]
    norm: Normalisation

    def __call__(self, item: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s1, s2, level, label = self.load(item)
        return _resized(s1_input(s1), self.norm.size), self.norm.teacher(rgb_composite(s2, level)), torch.as_tensor(label)


def seed_worker(worker_id: int) -> None:
    """numpy/random seeds from torch's per-worker seed (itself derived from the loader's generator)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def build_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    seed: int = 0,
    shuffle: bool = True,
    num_workers: int = 0,
    device: Optional[torch.device] = None,
    drop_last: bool = True,
    prefetch_factor: Optional[int] = None,
    persistent_workers: bool = True,
) -> DataLoader:
    """A DataLoader for training: seeded shuffling and workers, pinned memory on CUDA, a DistributedSampler under DDP.

    Under torchrun each rank gets a disjoint shard of ``batch_size`` samples per step; call ``set_epoch`` (done
    by ``endless``) so the shards reshuffle every epoch.
    """
    if len(dataset) == 0:
        raise ValueError("the training dataset is empty: check the recipe's data sources")
    rank, size = world()
    bs = min(int(batch_size), len(dataset))
    sampler = None
    if size > 1:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(dataset, num_replicas=size, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
    g = torch.Generator().manual_seed(seed + rank)
    # More workers than cores only adds contention (and torch warns about it).
    workers = max(0, min(int(num_workers), os.cpu_count() or 1))
    return DataLoader(
        dataset,
        batch_size=bs,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=workers,
        pin_memory=bool(device is not None and torch.device(device).type == "cuda"),
        drop_last=drop_last,
        generator=g,
        worker_init_fn=seed_worker if workers else None,
        persistent_workers=bool(persistent_workers and workers),
        prefetch_factor=prefetch_factor if workers else None,
    )


def endless(loader: DataLoader, seed: int = 0, augment: bool = True) -> Iterator[tuple[torch.Tensor, ...]]:
    """Batches forever (a new shuffle each epoch); with ``augment`` one flip/rotation per batch on every image
    tensor (all but the last, the labels), as the in-memory ``shuffled_batches`` does."""
    g = torch.Generator().manual_seed(seed)
    epoch = 0
    while True:
        sampler = loader.sampler
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        n = 0
        for batch in loader:
            n += 1
            *xs, y = batch
            if augment:
                xs = dihedral_batch(xs, g)
            yield (*xs, y)
        if n == 0:
            raise ValueError("the DataLoader yields no batch: fewer samples than one batch with drop_last")
        epoch += 1
