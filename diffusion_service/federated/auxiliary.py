"""FedDDPM phase (b): the auxiliary dataset the server samples from local models.

The paper: the server "uses these local models to generate an auxiliary
dataset that approximately represents the global data distribution" (size and
mix not given; ``docs/methods.md``, FedDDPM). OUR choice of mix: local model k
contributes a share of ``aux-size`` proportional to its client's sample count
n_k, and within it each class in proportion to that client's class counts, so
the union follows the federation's label distribution (the sum of the counts)
and no model is asked for a class it never saw.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .ldm import sample_latents


def largest_remainder(weights: np.ndarray, total: int) -> np.ndarray:
    """Non-negative ints proportional to ``weights`` that sum to ``total``."""
    weights = np.asarray(weights, dtype=float)
    if weights.sum() <= 0:
        raise ValueError("weights must have a positive sum")
    exact = weights / weights.sum() * total
    out = np.floor(exact).astype(int)
    order = np.argsort(-(exact - out), kind="stable")
    out[order[: total - out.sum()]] += 1
    return out


def aux_plan(class_counts: np.ndarray, size: int) -> np.ndarray:
    """(K, C) samples to draw per local model and class, summing to ``size``.

    The global class counts (the column sums) are split over the classes by
    largest remainder; each class's share is then split over the models in
    proportion to their counts of that class. The result is exactly
    proportional to the client counts up to rounding, with both margins
    rounded consistently.
    """
    counts = np.asarray(class_counts, dtype=float)
    if counts.ndim != 2 or (counts < 0).any() or counts.sum() <= 0:
        raise ValueError(
            f"class counts must be a non-negative (K, C) table, got {counts}"
        )
    per_class = largest_remainder(counts.sum(0), size)
    plan = np.zeros(counts.shape, dtype=int)
    for c, n in enumerate(per_class):
        if n:
            plan[:, c] = largest_remainder(counts[:, c], int(n))
    return plan


def sample_auxiliary(
    unets: list,
    plan: np.ndarray,
    scheduler,
    text: Tensor,
    *,
    steps: int,
    guidance_scale: float,
    seed: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Latents, labels and source model of the auxiliary set, per :func:`aux_plan`."""
    latents, labels, source = [], [], []
    for k, unet in enumerate(unets):
        y = torch.repeat_interleave(
            torch.arange(plan.shape[1]), torch.as_tensor(plan[k], dtype=torch.long)
        )
        if len(y) == 0:
            continue
        z = sample_latents(
            unet,
            scheduler,
            text,
            y,
            steps=steps,
            guidance_scale=guidance_scale,
            seed=seed + k,
        )
        latents.append(z)
        labels.append(y)
        source.append(torch.full_like(y, k))
    return torch.cat(latents), torch.cat(labels), torch.cat(source)
