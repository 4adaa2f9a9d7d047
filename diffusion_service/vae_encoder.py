"""Only the VAE encoder of a guidance model: what a latent-sharing client runs.

In deployment the server does not hold the clients' images. A client that
opts in to latent upload (``share-latents``) encodes its samples with the
guidance model's VAE and sends the posterior means; the server runs the rest
of the feature recipe (``features.LatentFeatureExtractor``). The
client needs neither the U-Net nor the text encoder, so this loads the
``vae/`` subfolder alone.

The latents must be bit-identical to the ones the server's image path would
compute, or a client's features would differ from simulation's. So the
input transform is :func:`~.vae_io.vae_input` (shared with the extractor)
and :func:`~.vae_io.encode_padded` pads every call to ``micro_batch`` rows as
the extractor does (a batch of another size takes other CPU kernels).

Privacy: the VAE decoder turns these latents back into the images (8x8x4
latents of 32 px images decode to recognisable pictures). Sharing them is
sharing the images; the run log and README say so.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from .vae_io import encode_padded, vae_fingerprint, vae_input


class VaeEncoder:
    """A frozen VAE and the geometry the server's feature recipe asks for.

    Parameters
    ----------
    vae : diffusers.AutoencoderKL
        The guidance model's VAE.
    resolution : int
        Image side the recipe runs at (the server sends it in the query).
    micro_batch : int
        Rows per VAE call (the server's recipe value).
    device : str or torch.device
        Where the VAE runs (CPU by default).
    """

    def __init__(
        self,
        vae,
        *,
        resolution: int,
        micro_batch: int,
        device: str | torch.device = "cpu",
    ) -> None:  # noqa: D107
        if resolution <= 0 or micro_batch <= 0:
            raise ValueError(
                f"resolution and micro_batch must be positive, got {resolution}, "
                f"{micro_batch}"
            )
        self.device = torch.device(device)
        self.vae = vae.requires_grad_(False).to(self.device).eval()
        self.resolution, self.micro_batch = int(resolution), int(micro_batch)
        self.channels = int(vae.config.in_channels)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, resolution: int, micro_batch: int, device="cpu"
    ) -> VaeEncoder:
        """Load ``<path>/vae`` (diffusers layout) only."""
        import diffusers

        folder = Path(path)
        if not (folder / "vae" / "config.json").is_file():
            raise FileNotFoundError(
                f"{folder} has no vae/config.json: name the guidance model folder "
                "(diffusers layout, as for guidance-model)"
            )
        # low_cpu_mem_usage=False: the same load as GuidanceModel.from_pretrained.
        vae = diffusers.AutoencoderKL.from_pretrained(
            folder, subfolder="vae", local_files_only=True, low_cpu_mem_usage=False
        )
        return cls(vae, resolution=resolution, micro_batch=micro_batch, device=device)

    @property
    def fingerprint(self) -> str:
        """:func:`~.vae_io.vae_fingerprint` of this VAE."""
        return vae_fingerprint(self.vae)

    def preprocess(self, images: Tensor) -> Tensor:
        """uint8 images -> the VAE's input (:func:`~.vae_io.vae_input`)."""
        return vae_input(
            images,
            channels=self.channels,
            resolution=self.resolution,
            device=self.device,
            dtype=self.vae.dtype,
        )

    def encode(self, images: Tensor) -> Tensor:
        """Posterior means (N, c, h, w) of uint8 images, float32 on the CPU."""
        return encode_padded(self.vae, self.preprocess, images, self.micro_batch)
