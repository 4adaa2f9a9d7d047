"""A diffusion model's own class evidence: how well each class prompt denoises an image.

Li et al., "Your Diffusion Model is Secretly a Zero-Shot Classifier", ICCV
2023, https://arxiv.org/abs/2303.16203: for an image's latent ``z0`` and a
few fixed (t, eps) pairs, the class ``c`` whose prompt gives the lowest mean
noise-prediction error ``||eps_theta(z_t, t, prompt_c) - eps||^2`` wins. Every
class sees the same pairs, so the comparison is paired. The errors also give a
posterior over classes, ``softmax(-e / tau)``, whose temperature is fitted on
labelled images (:func:`fit_temperature`); SemanticFL's ``kd-form =
"posterior"`` distils it into the clients' classifiers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

ERROR_TIMESTEPS: tuple[int, ...] = (100, 250, 400, 550, 700, 850)
"""The (t) of the (t, eps) pairs: spread over the schedule, as Li et al.
spread theirs; six keep the cost at 6 U-Net calls per image and class."""


@torch.no_grad()
def class_errors(
    unet, scheduler, z0: Tensor, noises: Tensor, timesteps, text_states: Tensor
) -> Tensor:
    """(B, C) mean eps-prediction MSE of each latent under each class prompt.

    Parameters
    ----------
    unet, scheduler
        A diffusers ``UNet2DConditionModel`` and a scheduler with ``add_noise``.
    z0 : Tensor
        (B, c, h, w) scaled VAE latents.
    noises : Tensor
        (B, K, c, h, w): the noise of each (image, timestep) pair.
    timesteps : sequence of int
        The K timesteps.
    text_states : Tensor
        (C, L, w) prompt states, one per class.
    """
    b, k = noises.shape[:2]
    if len(timesteps) != k or noises.shape[0] != len(z0):
        raise ValueError(
            f"noises {tuple(noises.shape)} must be (B={len(z0)}, K={len(timesteps)}, ...)"
        )
    # One U-Net call per class: its rows are every (image, timestep) pair.
    z0k = z0.repeat_interleave(k, 0)
    eps = noises.reshape(b * k, *noises.shape[2:]).to(z0k)
    tk = torch.as_tensor(list(timesteps), device=z0.device).repeat(b)
    zt = scheduler.add_noise(z0k, eps, tk)
    errors = torch.empty(b, len(text_states), device=z0.device)
    for c in range(len(text_states)):
        states = text_states[c : c + 1].expand(len(zt), -1, -1)
        pred = unet(zt, tk, encoder_hidden_states=states).sample
        errors[:, c] = (
            ((pred.float() - eps.float()) ** 2).mean((1, 2, 3)).view(b, k).mean(1)
        )
    return errors


def centred(errors: Tensor) -> Tensor:
    """Errors minus each image's mean over classes.

    The posterior ignores a per-image offset, and the class differences are a
    few thousandths of errors near 1: centred, they keep their digits in fp16.
    """
    return errors - errors.mean(1, keepdim=True)


def posterior(errors: Tensor, tau: float) -> Tensor:
    """(B, C) class posterior ``softmax(-errors / tau)``."""
    if not tau > 0:
        raise ValueError(f"the posterior's temperature must be > 0, got {tau}")
    return F.softmax(-errors.float() / tau, dim=1)


def fit_temperature(errors: Tensor, labels: Tensor) -> float:
    """The ``tau`` minimising the posterior's NLL of ``labels`` (calibration).

    A 1-D search on log tau (golden section over 1e-6 .. 1e2, after a coarse
    grid); the errors' scale depends on the model, so no fixed tau fits all.
    """
    errors, labels = errors.double(), torch.as_tensor(labels, dtype=torch.long)
    if len(errors) != len(labels) or len(labels) == 0:
        raise ValueError("fit_temperature needs one label per row of errors")

    def nll(log_tau: float) -> float:
        logp = F.log_softmax(-errors / math.exp(log_tau), dim=1)
        return float(-logp[torch.arange(len(labels)), labels].mean())

    grid = [
        math.log(1e-6) + i * (math.log(1e2) - math.log(1e-6)) / 40 for i in range(41)
    ]
    best = min(range(len(grid)), key=lambda i: nll(grid[i]))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(40):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if nll(a) < nll(b):
            hi = b
        else:
            lo = a
    return math.exp((lo + hi) / 2)
