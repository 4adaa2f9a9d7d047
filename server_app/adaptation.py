"""The server-side fine-tune's data, made once before round 1.

- ``fedavg-adapt``/``fedavg-adapt+``: ``aux-size`` labelled images generated
  with the guidance model (docs/fedddpm.md, our design);
- ``fedavg-public`` (the control): the server's labelled public split itself,
  the data that trained the embedded generator, minus the validation slice.

Both take the same seeded slice of the public split as the real validation
set. Done here, next to the other guidance preparation, so the strategies'
constructors only store tensors.
"""

from __future__ import annotations

import time
from logging import INFO
from typing import Any

import numpy as np
import torch
from flwr.common import log

from common import seeding
from common.config import RunConfig
from common.datasets import get_spec, load_dataset, to_float
from common.federation import make_model
from common.partition import DataSplit
from diffusion_service.embedded_model import resolve_guidance_model
from diffusion_service.federated.generate import generate_labelled


def prepare_adaptation(
    cfg: RunConfig, split: DataSplit
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The strategy's prepared arguments, and a record.

    ``generated`` and ``validation`` (normalised images, labels), the work
    model, and the batch size and seed of its fine-tunes.
    """
    spec = get_spec(cfg.data.dataset)
    t0 = time.perf_counter()
    folder = resolve_guidance_model(cfg.guidance.model)
    images, labels = generate_labelled(
        folder,
        list(spec.class_names),
        cfg.guidance.prompt_template,
        cfg.fedddpm.aux_size,
        steps=cfg.fedddpm.sample_steps,
        guidance_scale=cfg.fedddpm.sample_guidance_scale,
        seed=cfg.seed + seeding.GENERATION_OFFSET,
        size=spec.image_size,
        channels=spec.in_channels,
    )
    log(
        INFO,
        "Generated %d labelled images in %.1f s",
        len(labels),
        time.perf_counter() - t0,
    )
    pick = validation_slice(cfg, split)
    kwargs = {"generated": (to_float(images, spec), labels), **_shared(cfg, pick)}
    info = {
        "generated-images": len(labels),
        "validation-images": len(pick),
        "seconds": time.perf_counter() - t0,  # the one-off column of the results
    }
    return kwargs, info


def prepare_public_split(
    cfg: RunConfig, split: DataSplit
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``fedavg-public``'s prepared arguments: the labelled public split.

    The validation slice is left out of the fine-tune set, so the keep-if-not-
    worse check scores images the fine-tune never saw (as for fedavg-adapt).
    It is ``heldout-size`` images, at most half the split, so that a small
    public split (a demo's few hundred) still leaves the fine-tune its half.
    """
    t0 = time.perf_counter()
    spec = get_spec(cfg.data.dataset)
    pick = validation_slice(cfg, split, cap=len(split.public) // 2)
    rest = torch.from_numpy(np.setdiff1d(split.public, pick.numpy()))
    train, _ = load_dataset(cfg.data.dataset, cfg.data.data_root)
    kwargs = {
        "public": (to_float(train.images[rest], spec), train.labels[rest]),
        **_shared(cfg, pick),
    }
    info = {
        "public-images": len(rest),
        "validation-images": len(pick),
        "seconds": time.perf_counter() - t0,
    }
    return kwargs, info


def validation_slice(
    cfg: RunConfig, split: DataSplit, cap: int | None = None
) -> torch.Tensor:
    """The real validation slice of the public split (training-set indices).

    The trigger's loss, and the check that keeps a fine-tune only if this
    loss does not rise: ``heldout-size`` images, or ``cap`` if fewer.
    """
    size = (
        cfg.fedddpm.heldout_size if cap is None else min(cap, cfg.fedddpm.heldout_size)
    )
    if size < 1:
        raise ValueError(
            f"the public split ({len(split.public)} images) is too small for a "
            "validation slice and a fine-tune set: set public-split-size >= 2"
        )
    return torch.from_numpy(split.public_slice(size, cfg.seed, seeding.HELDOUT_SLICE))


def _shared(cfg: RunConfig, pick: torch.Tensor) -> dict[str, Any]:
    """What both fine-tunes take besides their data."""
    spec = get_spec(cfg.data.dataset)
    train, _ = load_dataset(cfg.data.dataset, cfg.data.data_root)
    return {
        "validation": (to_float(train.images[pick], spec), train.labels[pick]),
        # The server's work copy of the client model (weights loaded each round).
        "model": make_model(cfg, spec),
        "batch_size": cfg.sgd.batch_size,
        "seed": cfg.seed,
    }
