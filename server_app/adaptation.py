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
from torch import Tensor

from common.config import RunConfig
from common.datasets import get_spec, load_dataset, to_float
from common.partition import DataSplit
from diffusion_service.embedded_model import resolve_guidance_model
from diffusion_service.federated.generate import generate_labelled

# Keep the generation and validation draws apart from the other streams
# seeded by the run seed (the same as before this module existed).
GENERATION_SEED_OFFSET = 1000
VALIDATION_SALT = 11


def prepare_adaptation(
    cfg: RunConfig, split: DataSplit
) -> tuple[dict[str, tuple[Tensor, Tensor]], dict[str, Any]]:
    """``generated`` and ``validation`` (normalised images, labels), and a record."""
    spec = get_spec(cfg.dataset)
    t0 = time.perf_counter()
    folder = resolve_guidance_model(cfg.guidance_model)
    images, labels = generate_labelled(
        folder,
        list(spec.class_names),
        cfg.prompt_template,
        cfg.aux_size,
        steps=cfg.sample_steps,
        guidance_scale=cfg.sample_guidance_scale,
        seed=cfg.seed + GENERATION_SEED_OFFSET,
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
    train, _ = load_dataset(cfg.dataset, cfg.data_root)
    pick = torch.from_numpy(split.public_slice(cfg.heldout_size, cfg.seed, VALIDATION_SALT))
    kwargs = {
        "generated": (to_float(images, spec), labels),
        "validation": (to_float(train.images[pick], spec), train.labels[pick]),
    }
    info = {
        "generated-images": len(labels),
        "validation-images": len(pick),
        "seconds": time.perf_counter() - t0,  # the one-off column of the results
    }
    return kwargs, info
