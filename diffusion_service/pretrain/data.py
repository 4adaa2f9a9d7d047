"""Pretraining data: the server-held public split, preprocessed like the loader does.

The public split is :func:`common.partition.carve_public_split` with its fixed
seed, so a federated run with the same ``public-split-size`` excludes exactly
these images from every client: the guidance model has seen no client's data.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from common.datasets import DATASETS, load_dataset
from common.partition import PUBLIC_SPLIT_SEED, carve_public_split
from common.seeding import EPOCH_ORDER, mix_seed


@dataclass(frozen=True)
class PublicData:
    """The public split: uint8 images (N, C, H, W), labels, and their indices."""

    images: Tensor
    labels: Tensor
    indices: np.ndarray
    class_names: tuple[str, ...]

    def spec(self, dataset: str, size: int) -> dict:
        """What the training log records about the data."""
        return {
            "dataset": dataset,
            "split": "train",
            "public_split_size": int(size),
            "public_split_seed": PUBLIC_SPLIT_SEED,
            "num_images": len(self.indices),
            "indices_sha256": indices_sha256(self.indices),
            "class_counts": np.bincount(
                self.labels.numpy(), minlength=len(self.class_names)
            ).tolist(),
        }


def indices_sha256(indices: np.ndarray) -> str:
    """SHA-256 of the sorted indices as little-endian int64 bytes."""
    return hashlib.sha256(np.sort(indices).astype("<i8").tobytes()).hexdigest()


def public_split(dataset: str, size: int, *, limit: int = 0) -> PublicData:
    """The public split of ``dataset``'s training set (``limit`` > 0: first N only).

    ``limit`` takes a prefix of the sorted public indices, so a tiny test run
    still trains only on public images.
    """
    train, _ = load_dataset(dataset)
    labels = train.labels.numpy()
    indices = carve_public_split(labels, size)
    if limit:
        indices = indices[:limit]
    idx = torch.from_numpy(indices)
    return PublicData(
        images=train.images[idx],
        labels=train.labels[idx],
        indices=indices,
        class_names=tuple(DATASETS[dataset].class_names),
    )


def to_uint8_gray(x: Tensor) -> Tensor:
    """Decoded [-1, 1] images (N, 3, R, R) -> uint8 grayscale (N, 1, R, R)."""
    gray = x.float().mean(1, keepdim=True).clamp(-1, 1)
    return ((gray + 1) * 127.5).round().to(torch.uint8)


def epoch_order(n: int, seed: int, stage: int, epoch: int) -> Tensor:
    """The shuffled sample order of one epoch, a pure function of its arguments.

    Deriving every random draw from (seed, stage, epoch / step) rather than from
    a running generator makes a resumed run draw exactly what an uninterrupted
    run would, with no RNG state to checkpoint.
    """
    g = torch.Generator().manual_seed(mix_seed(seed, stage, epoch, EPOCH_ORDER))
    return torch.randperm(n, generator=g)
