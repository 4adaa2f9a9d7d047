"""Every knob of a pretraining run; the defaults are the shipped model's."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class PretrainConfig:
    """How the embedded guidance model is trained (two stages: VAE, then U-Net).

    The default step counts aim at about 45-50 minutes on 2 idle CPU cores
    (extrapolated from 1-thread throughput measured on a busy machine; the model
    card records the real time); the architecture gives 8x8x4 latents for 32 px
    images and a U-Net with four up blocks.

    Parameters
    ----------
    dataset, public_split_size : str, int
        Training data: the public split of this dataset's training set.
    limit : int
        Train on only the first ``limit`` public images (tests); 0 = all.
    resolution : int
        Image side the VAE sees (Fashion-MNIST's 28 px are resized to it).
    vae_channels, unet_channels : tuple of int
        ``block_out_channels`` of the VAE and the U-Net.
    norm_groups, head_dim : int
        GroupNorm groups (both models) and U-Net attention head width.
    steps_vae, steps_unet : int
        Optimiser steps of stage 1 (VAE) and stage 2 (U-Net).
    vae_batch_size, batch_size : int
        Batch sizes of stage 1 and stage 2.
    lr_vae, lr_unet, weight_decay, warmup, grad_clip : float / int
        AdamW with linear warmup then cosine decay to 10 %, gradient-norm clip.
    kl_weight : float
        Weight of the per-latent-element KL term (keeps latents tame).
    prompt_dropout : float
        Probability that a sample's prompt is replaced by the empty prompt, so
        the model also works unconditionally (classifier-free guidance).
    ema_decay : float
        EMA of the U-Net weights; the EMA weights are the ones saved.
    flip : bool
        Random horizontal flips (both stages).
    seed : int
        Seeds initialisation and every random draw.
    checkpoint_every : int
        Steps between resumable checkpoints.
    """

    dataset: str = "fashion-mnist"
    public_split_size: int = 10_000
    limit: int = 0
    resolution: int = 32
    vae_channels: tuple[int, ...] = (32, 64, 64)
    unet_channels: tuple[int, ...] = (32, 64, 64, 64)
    norm_groups: int = 32
    head_dim: int = 8
    steps_vae: int = 1500
    steps_unet: int = 5500
    vae_batch_size: int = 64
    batch_size: int = 128
    lr_vae: float = 5e-4
    lr_unet: float = 5e-4
    weight_decay: float = 0.01
    warmup: int = 200
    grad_clip: float = 1.0
    kl_weight: float = 1e-3
    prompt_dropout: float = 0.15
    ema_decay: float = 0.999
    flip: bool = True
    seed: int = 0
    checkpoint_every: int = 250

    def __post_init__(self) -> None:
        for name in ("vae_channels", "unet_channels"):
            object.__setattr__(self, name, tuple(int(c) for c in getattr(self, name)))
        if self.resolution % 2 ** (len(self.vae_channels) - 1):
            raise ValueError(
                f"resolution {self.resolution} is not divisible by the VAE factor "
                f"{2 ** (len(self.vae_channels) - 1)}"
            )
        if not 0.0 <= self.prompt_dropout < 1.0:
            raise ValueError(
                f"prompt_dropout must be in [0, 1), got {self.prompt_dropout}"
            )
        for name in (
            "steps_vae",
            "steps_unet",
            "vae_batch_size",
            "batch_size",
            "checkpoint_every",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def latent_size(self) -> int:
        """Side of the latent grid."""
        return self.resolution // 2 ** (len(self.vae_channels) - 1)

    def to_dict(self) -> dict:
        """Plain JSON-able dict (tuples become lists)."""
        return {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, d: dict) -> PretrainConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(**d)
