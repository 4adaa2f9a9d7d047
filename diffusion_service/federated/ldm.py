"""The class-conditional latent diffusion model FedDDPM trains, and its loop.

Same components and loss as the embedded model's pretraining
(``diffusion_service/pretrain``): a frozen ``AutoencoderKL`` (latents scaled by
its ``scaling_factor``), a text-conditioned ``UNet2DConditionModel`` attending to
MiniLM states of "a photo of a {class}" (the empty prompt for classifier-free
guidance) and the DDPM scheduler. Only the U-Net is trained and federated (our
choice: the VAE and the text encoder come frozen from the guidance-model folder,
which was trained on the server's public split only).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from common.seeding import FEDERATED_STEP_DRAWS, FEDERATED_UNET, mix_seed

from ..pretrain.components import (
    build_scheduler,
    build_unet,
    encode_prompts,
    load_text_encoder,
)
from ..pretrain.data import to_uint8_gray
from ..text_encoder_ref import REFERENCE_FILE
from ..vae_io import to_model_input

LATENT_SIZE = 8  # the embedded VAE: 32 px -> 4 x 8 x 8
HEAD_DIM = 8  # attention head width, as the embedded U-Net


@dataclass
class FrozenParts:
    """What every side holds fixed: VAE, noise scheduler, prompt states.

    ``text`` is (C + 1, L, w): the class prompts, then the empty prompt.
    """

    vae: object
    scheduler: object
    text: Tensor
    folder: Path

    @property
    def empty_id(self) -> int:
        """Row of ``text`` holding the empty (unconditional) prompt."""
        return len(self.text) - 1

    @property
    def resolution(self) -> int:
        """Image side the VAE takes (32 for the embedded model)."""
        return LATENT_SIZE * 2 ** (len(self.vae.config.block_out_channels) - 1)


def load_vae(folder: str | Path):
    """The frozen VAE of a diffusers-layout folder."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(
        folder, subfolder="vae", local_files_only=True, low_cpu_mem_usage=False
    )
    return vae.requires_grad_(False).eval()


def load_frozen_parts(folder: str | Path, prompts: list[str]) -> FrozenParts:
    """VAE and scheduler of ``folder``, and the states of ``prompts`` (+ "")."""
    from diffusers import DDPMScheduler

    folder = Path(folder)
    scheduler = DDPMScheduler.from_pretrained(
        folder, subfolder="scheduler", local_files_only=True
    )
    tokenizer, encoder = load_text_encoder(folder)
    text = encode_prompts(tokenizer, encoder, [*prompts, ""]).clone()
    return FrozenParts(load_vae(folder), scheduler, text, folder)


def build_federated_unet(channels: tuple[int, ...], seed: int):
    """The federated U-Net (``ddpm-unet-channels``), initialised from ``seed``.

    Same block recipe as the embedded U-Net (``build_unet``); 8 GroupNorm
    groups so small CPU widths work.
    """
    torch.manual_seed(seed)
    return build_unet(channels, 8, LATENT_SIZE, HEAD_DIM)


@torch.no_grad()
def encode_scaled_latents(vae, images: Tensor, batch: int = 256) -> Tensor:
    """uint8 (N, C, H, W) -> scaled latents ``posterior.mean * scaling_factor``.

    What the U-Net is trained on and samples; not the unscaled posterior mean
    a latent-sharing client uploads
    (:func:`~diffusion_service.vae_io.encode_posterior_mean`).
    """
    res = LATENT_SIZE * 2 ** (len(vae.config.block_out_channels) - 1)
    out = [
        vae.encode(to_model_input(images[i : i + batch], res)).latent_dist.mean
        for i in range(0, len(images), batch)
    ]
    return torch.cat(out) * vae.config.scaling_factor


@torch.no_grad()
def decode_images(
    vae, z: Tensor, size: int, channels: int = 1, batch: int = 256
) -> Tensor:
    """Scaled latents -> uint8 (N, channels, size, size), the dataset's format.

    ``channels`` 1: the grayscale mean of the decoded RGB (as the embedded
    model's sampler does); 3: RGB.
    """
    out = []
    for i in range(0, len(z), batch):
        x = vae.decode(z[i : i + batch] / vae.config.scaling_factor).sample
        if channels == 1:
            x = to_uint8_gray(x).float()
        else:
            x = ((x.clamp(-1, 1) + 1) * 127.5).round()
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        out.append(x.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)


def eps_loss(unet, scheduler, z0: Tensor, states: Tensor, noise: Tensor, t: Tensor):
    """Epsilon-prediction MSE, E ||eps - eps_theta(z_t, t, c)||^2.

    DDPM's simplified objective (Ho et al. 2020, https://arxiv.org/abs/2006.11239,
    Eq. 14) in latent space with text conditioning (Rombach et al. 2022,
    https://arxiv.org/abs/2112.10752, Eq. 2); the embedded model's pretraining
    loss. ``z_t = scheduler.add_noise(z0, noise, t)``.
    """
    zt = scheduler.add_noise(z0, noise, t)
    return F.mse_loss(unet(zt, t, encoder_hidden_states=states).sample, noise)


def train_unet(
    unet,
    parts: FrozenParts,
    latents: Tensor,
    labels: Tensor,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    prompt_dropout: float,
    seed: int,
) -> dict[str, float]:
    """``steps`` AdamW steps of :func:`eps_loss` on (latents, labels); mean loss.

    A fresh optimiser each call: clients are stateless between rounds, and the
    server's correction is a separate short fine-tune.
    """
    if steps == 0 or len(latents) == 0:
        return {"loss": float("nan"), "steps": 0}
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    num_t = parts.scheduler.config.num_train_timesteps
    batch_size = min(batch_size, len(latents))
    unet.train()
    total = 0.0
    for step in range(steps):
        # Every draw is a pure function of (seed, step): reproducible runs.
        g = torch.Generator().manual_seed(
            mix_seed(seed, FEDERATED_UNET, step, FEDERATED_STEP_DRAWS)
        )
        idx = torch.randint(0, len(latents), (batch_size,), generator=g)
        drop = torch.rand(batch_size, generator=g) < prompt_dropout
        cond = torch.where(drop, torch.full_like(idx, parts.empty_id), labels[idx])
        noise = torch.randn(latents[idx].shape, generator=g)
        t = torch.randint(0, num_t, (batch_size,), generator=g)
        loss = eps_loss(unet, parts.scheduler, latents[idx], parts.text[cond], noise, t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        total += float(loss.detach())
    unet.eval()
    return {"loss": total / steps, "steps": steps}


@torch.no_grad()
def sample_latents(
    unet,
    scheduler,
    text: Tensor,
    labels: Tensor,
    *,
    steps: int,
    guidance_scale: float,
    seed: int,
    batch: int = 250,
) -> Tensor:
    """Class-conditioned DDIM latents with classifier-free guidance.

    ``text[-1]`` is the empty prompt. Same sampler as the embedded model's
    ``pretrain.sampling.sample``, but returns latents (the auxiliary set is
    kept in latent space; decode with :func:`decode_images`).
    """
    from diffusers import DDIMScheduler

    ddim = DDIMScheduler.from_config(scheduler.config)
    ddim.set_timesteps(steps)
    size = unet.config.sample_size
    noise = torch.randn(
        len(labels), 4, size, size, generator=torch.Generator().manual_seed(seed)
    )
    unet.eval()
    out = []
    for i in range(0, len(labels), batch):
        z = noise[i : i + batch]
        cond = text[labels[i : i + batch]]
        states = torch.cat([text[-1:].expand_as(cond), cond])
        for t in ddim.timesteps:
            eps_u, eps_c = unet(
                torch.cat([z, z]), t, encoder_hidden_states=states
            ).sample.chunk(2)
            z = ddim.step(eps_u + guidance_scale * (eps_c - eps_u), t, z).prev_sample
        out.append(z)
    return torch.cat(out)


def save_diffusers(out: Path, parts: FrozenParts, unet) -> Path:
    """The trained model in the embedded model's diffusers layout.

    ``vae/`` and ``scheduler/`` are the frozen parts, ``unet/`` the federated
    U-Net, ``text_encoder.json`` the same reference to the PyPI MiniLM the
    guidance model used; ``GuidanceModel.from_pretrained(out)`` loads it, so
    ``guidance-model = "<out>"`` runs FedDifRC / SemanticFL on it.
    """
    import diffusers

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    parts.vae.save_pretrained(out / "vae")
    unet.save_pretrained(out / "unet")
    parts.scheduler.save_pretrained(out / "scheduler")
    shutil.copyfile(parts.folder / REFERENCE_FILE, out / REFERENCE_FILE)
    index = {
        "_class_name": "SemanticFLEmbeddedLDM",
        "_diffusers_version": diffusers.__version__,
        "_text_encoder": REFERENCE_FILE,
        "scheduler": ["diffusers", type(parts.scheduler).__name__],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return out


def unet_bytes(unet) -> int:
    """Bytes of the U-Net's float32 weights (what one upload carries)."""
    return sum(t.numel() * t.element_size() for t in unet.state_dict().values())


__all__ = [
    "FrozenParts",
    "build_federated_unet",
    "build_scheduler",
    "decode_images",
    "encode_scaled_latents",
    "eps_loss",
    "load_frozen_parts",
    "load_vae",
    "sample_latents",
    "save_diffusers",
    "train_unet",
    "unet_bytes",
]
