"""The per-round quality measures of a diffusion run, on fixed, seeded sets.

- held-out denoising loss on ``heldout-size`` test images (seeded choice),
  each at 7 fixed timesteps with fixed noise (``DenoisingProbe``);
- ``measure-samples`` class-balanced samples (DDIM ``sample-steps``, guidance
  ``sample-guidance-scale``, the same initial noise every round), decoded to
  the dataset's size: their Frechet distance to ``REAL_REFERENCE`` test
  images (seeded) in the fixed classifier's embedding space, and that
  classifier's accuracy on them.

Two references put the Frechet distance in scale (summary ``measures``): the
same number of real test images (the small-N floor) and their VAE
reconstructions (what the frozen VAE alone costs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common import seeding
from common.config import RunConfig
from common.datasets import DatasetSpec, load_dataset
from common.federation import data_split
from diffusion_service.federated.ldm import (
    FrozenParts,
    decode_images,
    encode_scaled_latents,
    sample_latents,
)
from diffusion_service.federated.measures import (
    DenoisingProbe,
    features_and_logits,
    fixed_classifier,
    frechet_distance,
    gaussian_stats,
)

REAL_REFERENCE = 2000  # test images whose statistics the samples are compared to


@dataclass
class RoundMeasures:
    """Fixed sets and the fixed classifier; call it on a U-Net each round."""

    spec: DatasetSpec
    probe: DenoisingProbe
    classifier: torch.nn.Module
    real_stats: tuple[np.ndarray, np.ndarray]
    sample_labels: torch.Tensor
    seed: int
    info: dict[str, Any]

    @classmethod
    def build(
        cls, cfg: RunConfig, spec: DatasetSpec, parts: FrozenParts, cache_root: Path
    ) -> RoundMeasures:
        """Fixed sets, the cached classifier and the real-image statistics."""
        train, test = load_dataset(cfg.data.dataset, cfg.data.data_root)
        split = data_split(cfg)
        public = torch.from_numpy(np.sort(split.public))
        classifier, cinfo = fixed_classifier(
            train.images[public],
            train.labels[public],
            spec,
            Path(cache_root) / "measure-cache",
        )
        rng = np.random.default_rng([cfg.seed, seeding.REAL_REFERENCE])
        n_ref = min(REAL_REFERENCE, len(test.labels))
        real = torch.from_numpy(
            np.sort(rng.choice(len(test.labels), n_ref, replace=False))
        )
        feats, logits = features_and_logits(classifier, test.images[real], spec)
        cinfo["test-accuracy"] = float(
            (logits.argmax(1) == test.labels[real]).float().mean()
        )
        held = torch.from_numpy(
            np.sort(
                rng.choice(len(test.labels), cfg.fedddpm.heldout_size, replace=False)
            )
        )
        probe = DenoisingProbe.fixed(
            encode_scaled_latents(parts.vae, test.images[held]),
            test.labels[held],
            seed=cfg.seed + 5,
        )
        real_stats = gaussian_stats(feats)
        n = cfg.fedddpm.measure_samples
        # References at the same N: real images, and their VAE reconstructions.
        ref = torch.from_numpy(rng.choice(len(test.labels), n, replace=False))
        real_n = test.images[ref]
        recon = decode_images(
            parts.vae, encode_scaled_latents(parts.vae, real_n), spec.image_size
        )
        info = {
            "heldout-set": f"{cfg.fedddpm.heldout_size} test images (seeded), 7 timesteps each",
            "feature-space": "128-d penultimate embedding of the fixed classifier",
            "real-reference": f"{n_ref} test images (seeded)",
            "classifier": cinfo,
            "samples": n,
            "fd-real-at-n": frechet_distance(
                *gaussian_stats(features_and_logits(classifier, real_n, spec)[0]),
                *real_stats,
            ),
            "fd-vae-reconstruction-at-n": frechet_distance(
                *gaussian_stats(features_and_logits(classifier, recon, spec)[0]),
                *real_stats,
            ),
        }
        labels = torch.arange(n) % spec.num_classes
        return cls(spec, probe, classifier, real_stats, labels, cfg.seed + 7, info)

    def describe(self) -> dict[str, Any]:
        """What the measures are, for the run record."""
        return self.info

    def __call__(self, unet, parts: FrozenParts, cfg: RunConfig) -> dict[str, float]:
        """The round's measures of ``unet``."""
        loss = self.probe.loss(unet, parts.scheduler, parts.text)
        z = sample_latents(
            unet,
            parts.scheduler,
            parts.text,
            self.sample_labels,
            steps=cfg.fedddpm.sample_steps,
            guidance_scale=cfg.fedddpm.sample_guidance_scale,
            seed=self.seed,
        )
        images = decode_images(parts.vae, z, self.spec.image_size)
        feats, logits = features_and_logits(self.classifier, images, self.spec)
        return {
            "heldout-denoising-loss": loss,
            "frechet-distance": frechet_distance(
                *gaussian_stats(feats), *self.real_stats
            ),
            "sample-accuracy": float(
                (logits.argmax(1) == self.sample_labels).float().mean()
            ),
        }
