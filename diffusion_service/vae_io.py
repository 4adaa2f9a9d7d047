"""The VAE's input and its posterior means: one transform for every caller.

A leaf module (torch only, nothing else of this package): the feature
extractor (:mod:`.features`), a client that runs only the VAE
(:mod:`.vae_encoder`), the model's VAE fingerprint (:mod:`.model`),
pretraining (:mod:`.pretrain.data`) and FedDDPM's latents
(:mod:`.federated.ldm`) all feed the VAE through :func:`vae_input`, so they
give it the same bits. Two different latents come out of a VAE here, and the
names say which:

- the **posterior mean** ``vae.encode(x).latent_dist.mean``, what a
  latent-sharing client uploads (:func:`encode_padded`,
  :func:`encode_posterior_mean`);
- the **scaled latent** ``posterior.mean * scaling_factor`` (the VAE's
  ``shift_factor`` subtracted first where it has one), what the U-Net sees:
  computed inside ``FeatureExtractor`` and by
  ``federated.ldm.encode_scaled_latents``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


class ImageInputError(ValueError):
    """Images the VAE cannot take (wrong rank, dtype or channels)."""


def check_images(images: Tensor, channels: int) -> Tensor:
    """uint8 (N, C, H, W) images with C = ``channels`` (grayscale repeated).

    Any other rank, dtype or channel count is an :class:`ImageInputError`.
    """
    if images.ndim != 4:
        raise ImageInputError(
            f"images must be (N, C, H, W), got shape {tuple(images.shape)}"
        )
    if images.dtype != torch.uint8:
        raise ImageInputError(f"images must be uint8 in [0, 255], got {images.dtype}")
    c = images.shape[1]
    if c != channels:
        if c != 1:
            raise ImageInputError(
                f"images have {c} channels; the VAE takes {channels} (or 1, "
                "grayscale, which is repeated)"
            )
        images = images.expand(-1, channels, -1, -1)
    return images


def vae_input(
    images: Tensor,
    *,
    channels: int,
    resolution: int,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor:
    """uint8 (B, C, H, W) -> float (B, channels, R, R) in [-1, 1]: the VAE's input.

    One function for the extractor and for a client that runs only the VAE
    (:mod:`.vae_encoder`), so both give the VAE the same bits.
    """
    images = check_images(images, channels)
    # Scale from uint8 once: [0, 255] -> [0, 1] -> [-1, 1] (not ToTensor + /255).
    x = images.to(device, torch.float32) / 255.0
    if x.shape[-2:] != (resolution, resolution):
        x = F.interpolate(
            x,
            size=(resolution, resolution),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        ).clamp_(0.0, 1.0)
    return (x * 2.0 - 1.0).to(dtype)


def to_model_input(images: Tensor, resolution: int) -> Tensor:
    """uint8 (N, C, H, W) -> float32 (N, 3, R, R) in [-1, 1], contiguous.

    :func:`vae_input` with 3 channels on the images' own device: what the
    embedded model's VAE was pretrained on (``pretrain.data``) and what
    FedDDPM encodes with it, so the VAE is trained on exactly what it is fed.
    """
    x = vae_input(
        images, channels=3, resolution=resolution, device=images.device,
        dtype=torch.float32,
    )  # fmt: skip
    return x.contiguous()


@torch.inference_mode()
def encode_padded(
    vae, preprocess: Callable[[Tensor], Tensor], images: Tensor, micro_batch: int
) -> Tensor:
    """VAE posterior means (N, c, h, w), float32 on the CPU.

    Each call runs on exactly ``micro_batch`` rows (the last one padded with
    a repeated real row), as ``FeatureExtractor`` does.
    """
    out = []
    for start in range(0, len(images), micro_batch):
        n = min(micro_batch, len(images) - start)
        rows = list(range(start, start + n)) + [start] * (micro_batch - n)
        x = preprocess(images[rows])
        out.append(vae.encode(x).latent_dist.mean[:n].float().cpu())
    if not out:
        raise ValueError("no images given")
    return torch.cat(out)


def encode_posterior_mean(extractor, images: Tensor) -> Tensor:
    """What a client uploads: VAE posterior means (N, c, h, w), float32, CPU.

    Unscaled (before ``shift_factor`` / ``scaling_factor``; the service scales
    them as the image path does). :func:`encode_padded` with a
    ``FeatureExtractor``'s VAE, input transform and micro-batch, so the latents
    are bit-identical to the ones its image path computes (and to
    :class:`~.vae_encoder.VaeEncoder`'s).
    """
    return encode_padded(
        extractor.model.vae, extractor.preprocess, images, extractor.recipe.micro_batch
    )


def vae_fingerprint(vae: torch.nn.Module) -> str:
    """SHA-256 over the VAE's parameter names, shapes and bytes.

    The server compares it with its own VAE's before it trusts uploaded
    latents: latents of another VAE give features without any error.
    """
    h = hashlib.sha256()
    for name, tensor in sorted(vae.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
