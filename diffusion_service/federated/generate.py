"""Class-conditioned images from any diffusers-layout guidance model.

The classifier adaptation (ours, docs/fedddpm.md) fine-tunes the global
classifier on these: the embedded model, a FedDDPM result folder, or any
folder ``GuidanceModel.from_pretrained`` loads.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..model import GuidanceModel
from .ldm import decode_images, sample_latents


def generate_labelled(
    folder: str,
    class_names: list[str],
    prompt_template: str,
    n: int,
    *,
    steps: int,
    guidance_scale: float,
    seed: int,
    size: int,
    channels: int = 1,
) -> tuple[Tensor, Tensor]:
    """``n`` class-balanced samples (uint8, the dataset's format) and their labels.

    Labels cycle 0..C-1, so every class gets ``n // C`` or one more.
    """
    model = GuidanceModel.from_pretrained(folder)
    prompts = [prompt_template.format(name) for name in class_names]
    states, _ = model.encode_prompts([*prompts, ""])
    labels = torch.arange(n) % len(class_names)
    z = sample_latents(
        model.unet,
        model.scheduler,
        states.clone().float(),
        labels,
        steps=steps,
        guidance_scale=guidance_scale,
        seed=seed,
    )
    return decode_images(model.vae, z, size, channels), labels
