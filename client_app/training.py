"""Local training: one plain loop for every method.

Which loss terms run is decided by the train config the strategy sent: a
``proximal-mu`` key switches on FedProx's term, ``moon-mu``/``moon-tau`` MOON's.
Terms compose, so "FedProx + MOON" needs no new code.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common import keys
from common.losses import moon_contrastive, proximal_term


@dataclass(frozen=True)
class LocalSettings:
    """Local-training settings of one round, as sent in the train config."""

    lr: float
    momentum: float
    weight_decay: float
    epochs: int
    batch_size: int
    proximal_mu: float | None = None
    moon_mu: float | None = None
    moon_tau: float = 0.5

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LocalSettings:
        """Read the train ConfigRecord; method keys are optional."""
        missing = [
            k
            for k in (
                keys.LR,
                keys.MOMENTUM,
                keys.WEIGHT_DECAY,
                keys.LOCAL_EPOCHS,
                keys.BATCH_SIZE,
            )
            if k not in config
        ]
        if missing:
            raise KeyError(f"train config lacks {missing}; got keys {sorted(config)}")
        return cls(
            lr=float(config[keys.LR]),
            momentum=float(config[keys.MOMENTUM]),
            weight_decay=float(config[keys.WEIGHT_DECAY]),
            epochs=int(config[keys.LOCAL_EPOCHS]),
            batch_size=int(config[keys.BATCH_SIZE]),
            proximal_mu=float(config[keys.PROXIMAL_MU])
            if keys.PROXIMAL_MU in config
            else None,
            moon_mu=float(config[keys.MOON_MU]) if keys.MOON_MU in config else None,
            moon_tau=float(config.get(keys.MOON_TAU, 0.5)),
        )


def augment_batch(x: Tensor, generator: torch.Generator) -> Tensor:
    """Random crop (pad 4) and horizontal flip, per sample, on a tensor batch."""
    n, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
    dy = torch.randint(0, 9, (n,), generator=generator)
    dx = torch.randint(0, 9, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :]
    batch = torch.arange(n)[:, None, None, None]
    chan = torch.arange(x.shape[1])[None, :, None, None]
    out = padded[batch, chan, rows, cols]
    flip = torch.rand(n, generator=generator) < 0.5
    out[flip] = out[flip].flip(3)
    return out


def _frozen_copy(model: nn.Module) -> nn.Module:
    teacher = copy.deepcopy(model).eval()
    teacher.requires_grad_(False)
    return teacher


def train(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    settings: LocalSettings,
    *,
    prev_model: nn.Module | None = None,
    augment: bool = False,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> dict[str, float]:
    """Train ``model`` in place for ``settings.epochs`` epochs; return mean metrics.

    ``model`` arrives holding the global weights of this round. For MOON,
    ``prev_model`` is this client's model from its previous round (the global
    model on a client's first round, which makes the term a constant log 2).
    """
    device = torch.device(device)
    model.to(device).train()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
    )

    # Teachers are snapshots of the weights as received, before any step.
    global_params = None
    if settings.proximal_mu is not None:
        global_params = [p.detach().clone() for p in model.parameters()]
    global_model = None
    if settings.moon_mu is not None:
        global_model = _frozen_copy(model)
        prev_model = _frozen_copy(prev_model if prev_model is not None else model).to(
            device
        )

    sums = {"loss": 0.0, "ce": 0.0, "prox": 0.0, "moon": 0.0, "correct": 0.0}
    seen, steps, t0 = 0, 0, time.perf_counter()
    for _ in range(settings.epochs):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(order), settings.batch_size):
            idx = order[start : start + settings.batch_size]
            if len(idx) < 2:  # BatchNorm cannot train on a single sample
                continue
            x, y = images[idx], labels[idx]
            if augment:
                x = augment_batch(x, generator)
            x, y = x.to(device), y.to(device)

            # forward: cross-entropy plus whichever method terms are on
            out = model(x)
            ce = F.cross_entropy(out.logits, y)
            loss = ce
            if global_params is not None:
                prox = proximal_term(
                    model.parameters(), global_params, settings.proximal_mu
                )
                loss = loss + prox
                sums["prox"] += prox.item() * len(y)
            if global_model is not None:
                with torch.no_grad():
                    z_global = global_model(x).embedding
                    z_prev = prev_model(x).embedding
                con = moon_contrastive(
                    out.embedding, z_global, z_prev, settings.moon_tau
                )
                loss = loss + settings.moon_mu * con
                sums["moon"] += con.item() * len(y)

            # backward and step
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

            sums["loss"] += loss.item() * len(y)
            sums["ce"] += ce.item() * len(y)
            sums["correct"] += (out.logits.argmax(1) == y).sum().item()
            seen += len(y)
            steps += 1

    seen = max(seen, 1)
    return {
        keys.TRAIN_LOSS: sums["loss"] / seen,
        keys.TRAIN_CE: sums["ce"] / seen,
        keys.TRAIN_PROX: sums["prox"] / seen,
        keys.TRAIN_MOON: sums["moon"] / seen,
        keys.TRAIN_ACCURACY: sums["correct"] / seen,
        keys.TRAIN_SECONDS: time.perf_counter() - t0,
        keys.TRAIN_STEPS: float(steps),
    }
