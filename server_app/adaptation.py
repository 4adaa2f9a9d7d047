"""The classifier adaptation's data (``fedavg-adapt``/``fedavg-adapt+``), made once.

Before round 1 the server generates ``aux-size`` labelled images with the
guidance model and takes a seeded slice of its public split as the real
validation set (docs/fedddpm.md, our design). Done here, next to the other
guidance preparation, so the strategy's constructor only stores tensors.
"""

from __future__ import annotations

import time
from logging import INFO
from typing import Any

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
    # The real validation slice: the trigger's loss, and the check that keeps
    # an adaptation only if this loss does not rise.
    train, _ = load_dataset(cfg.data.dataset, cfg.data.data_root)
    pick = torch.from_numpy(
        split.public_slice(cfg.fedddpm.heldout_size, cfg.seed, seeding.HELDOUT_SLICE)
    )
    kwargs = {
        "generated": (to_float(images, spec), labels),
        "validation": (to_float(train.images[pick], spec), train.labels[pick]),
        # The server's work copy of the client model (weights loaded each round).
        "model": make_model(cfg, spec),
        "batch_size": cfg.sgd.batch_size,
        "seed": cfg.seed,
    }
    info = {
        "generated-images": len(labels),
        "validation-images": len(pick),
        "seconds": time.perf_counter() - t0,  # the one-off column of the results
    }
    return kwargs, info
