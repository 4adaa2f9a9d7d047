"""Features from VAE latents, through the unchanged :class:`FeatureExtractor`.

A client that opts in to latent upload (docs/guided-methods.md, deployment
option 2) runs the VAE itself and sends the **VAE posterior mean**
(``vae.encode(x).latent_dist.mean``, before ``shift_factor`` /
``scaling_factor``), shape (N, latent_channels, h, w). The service then runs
the rest of the recipe: scaling, per-sample seeded noise, the U-Net with
hooks, pooling, projection.

So that the recipe lives in one place, the service does not reimplement that
tail: :class:`LatentFeatureExtractor` is a ``FeatureExtractor`` whose
``preprocess`` takes latents and whose model's VAE is a pass-through, so
``FeatureExtractor._run`` (padding, noise, hooks, pooling) runs as is. This
couples to one detail of ``_run`` (it feeds ``preprocess``'s output to
``model.vae.encode(x).latent_dist.mean``); tests/test_diffusion_remote.py
checks that latents from :func:`encode_latents` give bit-identical features to
the image path, so a change there cannot go unnoticed.

Latents that arrive over the wire are contiguous; the service puts them back
in the memory layout the VAE produces (:func:`vae_latent_layout`): on the CPU
that is channels-last, and the U-Net computes other bits for a contiguous
input of the same values.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from diffusion_service.features import FeatureExtractor, ImageInputError
from diffusion_service.model import GuidanceModel
from diffusion_service.vae_encoder import encode_padded


class _PassThroughVAE:
    """Stands in for the VAE: its "posterior mean" is the latent it is given."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype

    def encode(self, latents: Tensor) -> Any:
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=latents))


class _LatentInputModel:
    """The real :class:`GuidanceModel` with the VAE replaced by a pass-through."""

    def __init__(self, model: GuidanceModel) -> None:
        self._model = model
        self.vae = _PassThroughVAE(model.vae.dtype)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


class LatentFeatureExtractor(FeatureExtractor):
    """A :class:`FeatureExtractor` whose inputs are VAE posterior means.

    Built from an image extractor: shares its recipe, prompts and text states
    (no prompt is encoded again).
    """

    def __init__(self, base: FeatureExtractor) -> None:  # noqa: D107
        # Not super().__init__: that would encode every prompt again.
        self.__dict__.update(base.__dict__)
        self.model = _LatentInputModel(base.model)
        self.layout = vae_latent_layout(base)

    def preprocess(self, images: Tensor) -> Tensor:
        """Latents (B, c, h, w) float -> the VAE's dtype on the model device."""
        want = tuple(self.latent_shape)
        if images.ndim != 4 or tuple(images.shape[1:]) != want:
            raise ImageInputError(
                f"latents must be (N, {', '.join(map(str, want))}), "
                f"got {tuple(images.shape)}"
            )
        if not images.is_floating_point():
            raise ImageInputError(f"latents must be floating point, got {images.dtype}")
        x = images.to(self.model.device, self.model.vae.dtype)
        return x.contiguous(memory_format=self.layout)


@torch.inference_mode()
def vae_latent_layout(extractor: FeatureExtractor) -> torch.memory_format:
    """The memory layout of the latents the VAE hands to the U-Net.

    On the CPU, oneDNN convolutions return channels-last tensors, and the U-Net
    then picks other kernels (other bits) than for a contiguous input of the
    same values. Latents that arrive over the wire are contiguous, so they are
    put back in the layout the VAE would have produced, found by one probe.
    """
    mb, res = extractor.recipe.micro_batch, extractor.resolution
    vae = extractor.model.vae
    x = torch.zeros(mb, extractor.model.image_channels, res, res, dtype=vae.dtype)
    mean = vae.encode(x.to(extractor.model.device)).latent_dist.mean
    channels_last = mean.shape[1] > 1 and mean.stride(1) == 1
    return torch.channels_last if channels_last else torch.contiguous_format


def encode_latents(extractor: FeatureExtractor, images: Tensor) -> Tensor:
    """What a client uploads: VAE posterior means (N, c, h, w), float32, CPU.

    :func:`~diffusion_service.vae_encoder.encode_padded` with the extractor's
    VAE and input transform, so the latents are bit-identical to the ones the
    in-process image path computes (and to :class:`~..vae_encoder.VaeEncoder`'s).
    """
    return encode_padded(
        extractor.model.vae, extractor.preprocess, images, extractor.recipe.micro_batch
    )
