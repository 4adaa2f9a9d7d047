"""Evidence that the embedded model learned the classes: zero-shot diffusion
classification and a sample grid, written next to the model.

Zero-shot classification (:mod:`diffusion_service.zero_shot`): for an image,
the class whose prompt gives the lowest mean noise-prediction error over a few
fixed (t, noise) pairs, the same pairs for every image here.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from common.datasets import DATASETS, load_dataset
from common.io import atomic_write_json

from ..vae_io import to_model_input
from ..zero_shot import ERROR_TIMESTEPS, class_errors
from .sampling import Embedded, load_embedded, sample_grid


@torch.no_grad()
def denoising_errors(
    model: Embedded,
    images: Tensor,
    *,
    timesteps=ERROR_TIMESTEPS,
    seed: int = 0,
    batch: int = 50,
) -> Tensor:
    """(N, C) mean eps-prediction MSE of each image under each class prompt.

    Parameters
    ----------
    images : Tensor
        uint8 (N, C, H, W).
    timesteps : sequence of int
        One fixed noise draw per timestep (seeded by ``seed``), shared by all
        images and classes (:func:`diffusion_service.zero_shot.class_errors`).
    """
    shape = (4, model.unet.config.sample_size, model.unet.config.sample_size)
    g = torch.Generator().manual_seed(seed)
    noises = torch.randn(len(timesteps), *shape, generator=g).to(model.device)
    sf = model.vae.config.scaling_factor
    class_states = model.text[: len(model.class_names)]  # the last row is ""
    errors = []
    for i in range(0, len(images), batch):
        x = to_model_input(images[i : i + batch], model.resolution).to(model.device)
        z0 = model.vae.encode(x).latent_dist.mean * sf
        eps = noises.unsqueeze(0).expand(len(z0), -1, -1, -1, -1)
        errors.append(
            class_errors(
                model.unet, model.scheduler, z0, eps, timesteps, class_states
            ).cpu()
        )
    return torch.cat(errors)


def zero_shot_classify(model: Embedded, images: Tensor, **kw) -> Tensor:
    """(N,) predicted class ids: lowest denoising error (:func:`denoising_errors`)."""
    return denoising_errors(model, images, **kw).argmin(1)


def zero_shot_accuracy(model: Embedded, images: Tensor, labels: Tensor, **kw) -> dict:
    """Accuracy of :func:`zero_shot_classify` next to chance (1 / classes)."""
    t0 = time.perf_counter()
    pred = zero_shot_classify(model, images, **kw)
    num_classes = len(model.class_names)
    per_class = [
        float((pred[labels == c] == c).float().mean()) if (labels == c).any() else None
        for c in range(num_classes)
    ]
    return {
        "accuracy": float((pred == labels).float().mean()),
        "chance": 1.0 / num_classes,
        "num_images": len(labels),
        "per_class_accuracy": dict(zip(model.class_names, per_class, strict=True)),
        "seconds": time.perf_counter() - t0,
    }


def eval_subset(
    dataset: str, size: int, seed: int = 0
) -> tuple[Tensor, Tensor, np.ndarray]:
    """A seeded, stratified-by-chance random subset of the test set."""
    _, test = load_dataset(dataset)
    idx = np.sort(np.random.default_rng(seed).permutation(len(test.labels))[:size])
    t = torch.from_numpy(idx)
    return test.images[t], test.labels[t], idx


def run_evidence(
    model_dir: Path,
    *,
    dataset: str = "fashion-mnist",
    test_size: int = 500,
    per_class: int = 8,
    guidance_scale: float = 3.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict:
    """Write ``samples.png`` and ``evidence.json`` into ``model_dir``; return the dict."""
    model_dir = Path(model_dir)
    model = load_embedded(model_dir, DATASETS[dataset].class_names, device=device)
    t0 = time.perf_counter()
    sample_grid(
        model,
        model_dir / "samples.png",
        per_class=per_class,
        guidance_scale=guidance_scale,
        seed=seed,
    )
    sampling_s = time.perf_counter() - t0
    images, labels, _ = eval_subset(dataset, test_size, seed)
    zs = zero_shot_accuracy(model, images, labels, seed=seed)
    result = {
        "samples": {
            "file": "samples.png",
            "per_class": per_class,
            "guidance_scale": guidance_scale,
            "ddim_steps": 50,
            "seed": seed,
            "seconds": sampling_s,
        },
        "zero_shot": {"split": "test", "subset_seed": seed, **zs},
    }
    atomic_write_json(model_dir / "evidence.json", result)
    return result
