"""Per-round quality measures of a federated diffusion model (our protocol).

- **Held-out denoising loss**: :func:`~.ldm.eps_loss` of the U-Net on a fixed
  set of latents with a fixed noise draw and fixed timesteps (seeded), so two
  rounds or two methods see exactly the same (z0, eps, t) triples.
- **Frechet distance** between generated and real test images in a fixed
  feature space: the 128-d penultimate embedding of a ResNet-10 (width 16)
  trained ONCE on the server's public split and cached (:func:`fixed_classifier`).
  It is not Inception/FID: values compare runs of this protocol only, and with
  small N the estimate is biased upwards (compare at equal N).
- **Sample accuracy**: that classifier's accuracy on class-conditioned samples
  against the class they were conditioned on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from common.datasets import DatasetSpec, to_float
from common.models import build_model

from .ldm import eps_loss

CLASSIFIER_WIDTH = 16
CLASSIFIER_EPOCHS = 3
CLASSIFIER_LR = 0.05
HELDOUT_TIMESTEPS = (50, 200, 350, 500, 650, 800, 950)


@dataclass
class DenoisingProbe:
    """Fixed (z0, label, eps, t) quadruples for a comparable denoising loss."""

    latents: Tensor
    labels: Tensor
    noise: Tensor
    timesteps: Tensor

    @classmethod
    def fixed(cls, latents: Tensor, labels: Tensor, seed: int) -> DenoisingProbe:
        """Each latent at every timestep of ``HELDOUT_TIMESTEPS``, seeded noise."""
        k = len(HELDOUT_TIMESTEPS)
        z = latents.repeat_interleave(k, 0)
        g = torch.Generator().manual_seed(seed)
        return cls(
            z,
            labels.repeat_interleave(k, 0),
            torch.randn(z.shape, generator=g),
            torch.tensor(HELDOUT_TIMESTEPS).repeat(len(latents)),
        )

    @torch.no_grad()
    def loss(self, unet, scheduler, text: Tensor, batch: int = 500) -> float:
        """Mean eps-MSE of ``unet`` on the fixed quadruples (class-conditioned)."""
        unet.eval()
        total = 0.0
        for i in range(0, len(self.latents), batch):
            s = slice(i, i + batch)
            n = len(self.latents[s])
            total += n * float(
                eps_loss(
                    unet,
                    scheduler,
                    self.latents[s],
                    text[self.labels[s]],
                    self.noise[s],
                    self.timesteps[s],
                )
            )
        return total / len(self.latents)


def fixed_classifier(
    images: Tensor,
    labels: Tensor,
    spec: DatasetSpec,
    cache_dir: Path,
    *,
    seed: int = 0,
) -> tuple[torch.nn.Module, dict]:
    """The measures' classifier: trained once on ``images`` (the public split), cached.

    ResNet-10 width 16, SGD (lr 0.05, momentum 0.9, cosine), 3 epochs, batch
    128, seed ``seed``. The cache key hashes the data and these settings.
    """
    key = hashlib.sha256(
        images.numpy().tobytes()
        + labels.numpy().tobytes()
        + json.dumps(
            [CLASSIFIER_WIDTH, CLASSIFIER_EPOCHS, CLASSIFIER_LR, seed]
        ).encode()
    ).hexdigest()[:16]
    path = Path(cache_dir) / f"measure-classifier-{key}.pt"
    torch.manual_seed(seed)
    model = build_model(
        "resnet10",
        spec.in_channels,
        spec.num_classes,
        CLASSIFIER_WIDTH,
        spec.image_size,
    )
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["state"])
        return model.eval(), saved["info"]
    x, y = to_float(images, spec), labels
    g = torch.Generator().manual_seed(seed)
    steps = CLASSIFIER_EPOCHS * (len(x) // 128 or 1)
    opt = torch.optim.SGD(model.parameters(), lr=CLASSIFIER_LR, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (min(128, len(x)),), generator=g)
        loss = F.cross_entropy(model(x[idx]).logits, y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    info = {
        "model": f"resnet10 width {CLASSIFIER_WIDTH}",
        "trained-on": f"public split ({len(x)} images)",
        "steps": steps,
        "final-train-loss": float(loss),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"state": model.state_dict(), "info": info}, tmp)
    tmp.replace(path)
    return model, info


@torch.no_grad()
def features_and_logits(
    model, images: Tensor, spec: DatasetSpec, batch: int = 1000
) -> tuple[Tensor, Tensor]:
    """Penultimate embeddings and logits of uint8 images."""
    model.eval()
    feats, logits = [], []
    for i in range(0, len(images), batch):
        out = model(to_float(images[i : i + batch], spec))
        feats.append(out.embedding)
        logits.append(out.logits)
    return torch.cat(feats).double(), torch.cat(logits)


def gaussian_stats(features: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (rows = samples)."""
    f = features.double().numpy()
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(
    mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray
) -> float:
    """||mu1 - mu2||^2 + Tr(C1 + C2 - 2 (C1 C2)^(1/2)) (Heusel et al. 2017, Eq. 6,
    https://arxiv.org/abs/1706.08500).

    Tr((C1 C2)^(1/2)) is the sum of the square roots of the eigenvalues of
    C1 C2, which equal those of the symmetric PSD s1 C2 s1 (s1 = C1^(1/2)),
    computed with eigh: no complex parts, no scipy.
    """
    w1, v1 = np.linalg.eigh(cov1)
    s1 = (v1 * np.sqrt(np.clip(w1, 0, None))) @ v1.T
    w = np.linalg.eigvalsh(s1 @ cov2 @ s1)
    tr_sqrt = np.sqrt(np.clip(w, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * tr_sqrt)
