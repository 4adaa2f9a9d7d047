"""Image -> guidance feature (the recipe: ``docs/guidance-features.md``).

Per sample: resize to the model's resolution and scale uint8 to [-1, 1]; VAE
latent ``z0 = posterior.mean * scaling_factor``; noise seeded by (seed, sample
index); ``zt = scheduler.add_noise(z0, eps, t)``; one U-Net pass per prompt with
forward hooks on ``up_blocks``; global-average-pool each captured map and
concatenate with the pooled latent (the *raw* feature); project with the fitted
:class:`~.projection.Projection` and L2-normalise.

:class:`LatentFeatureExtractor` is the same extractor taking VAE posterior
means (latents uploaded by clients) instead of images.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from common import seeding
from common.seeding import mix_seed

from .model import GuidanceModel
from .projection import Projection, text_map
from .recipe import FeatureRecipe
from .vae_io import ImageInputError, vae_input
from .zero_shot import ERROR_TIMESTEPS, centred, class_errors


class ModelIdentity(Protocol):
    """What keys a store besides the recipe: which model, on what hardware."""

    fingerprint: str
    device: torch.device
    dtype: torch.dtype


class Extractor(Protocol):
    """The interface the store driver (:mod:`.extract`) uses.

    :class:`FeatureExtractor` runs the model in this process; the guidance
    service's ``RemoteFeatureExtractor`` runs it on another host. Both compute
    the bookkeeping (prompt ids, resolution, input checks) with the helpers
    below, so only the model work differs.
    """

    model: ModelIdentity
    recipe: FeatureRecipe
    class_names: tuple[str, ...]
    resolution: int

    def preprocess(self, images: Tensor) -> Tensor: ...

    def prompt_ids(self, kind: str, indices, labels: Tensor) -> Tensor: ...

    def raw(self, images: Tensor, indices, prompt_ids: Tensor) -> Tensor: ...

    def features(
        self, images: Tensor, indices, prompt_ids: Tensor, projection: Projection
    ) -> Tensor: ...

    def text_anchors(self, dim: int, seed: int) -> Tensor: ...

    def for_latents(self) -> Extractor: ...


def feature_resolution(
    recipe: FeatureRecipe,
    *,
    num_up_blocks: int,
    native_resolution: int,
    vae_scale_factor: int,
) -> int:
    """The image side a recipe runs at on a model of this geometry.

    Raises ``ValueError`` for up blocks the U-Net lacks or a resolution the VAE
    cannot divide, before any image is touched.
    """
    bad = [i for i in recipe.up_blocks if not 0 <= i < num_up_blocks]
    if bad:
        raise ValueError(
            f"up_blocks {bad} out of range: this U-Net has {num_up_blocks} "
            f"up blocks (indices 0..{num_up_blocks - 1})"
        )
    resolution = int(recipe.resolution or native_resolution)
    if resolution % vae_scale_factor:
        raise ValueError(
            f"resolution {resolution} is not a multiple of the VAE factor "
            f"{vae_scale_factor}"
        )
    return resolution


def make_prompt_ids(
    kind: str, indices, labels: Tensor, recipe: FeatureRecipe, num_classes: int
) -> Tensor:
    """(B, S) prompt ids of a feature kind for these samples.

    ``noise``: the true class (S=1); ``neutral``: the neutral prompt, id
    ``num_classes`` (S=1); ``cond``: every class in order (S=C), or the true
    class first then ``recipe.num_negatives`` other classes drawn per sample
    from (seed, index).
    """
    labels = torch.as_tensor(labels, dtype=torch.long).view(-1)
    if kind == "noise":
        return labels.view(-1, 1)
    if kind == "neutral":
        return torch.full((len(labels), 1), num_classes, dtype=torch.long)
    if kind != "cond":
        raise ValueError(f"unknown feature kind {kind!r}")
    C, k = num_classes, recipe.num_negatives
    if k is None:
        return torch.arange(C).expand(len(labels), C).clone()
    if k > C - 1:
        raise ValueError(f"num_negatives={k} but only {C - 1} other classes exist")
    rows = []
    for idx, y in zip(indices, labels.tolist(), strict=True):
        rng = np.random.default_rng([recipe.seed, int(idx), seeding.NEGATIVE_PROMPTS])
        others = np.array([c for c in range(C) if c != y])
        rows.append([y, *rng.choice(others, size=k, replace=False).tolist()])
    return torch.tensor(rows, dtype=torch.long)


class FeatureExtractor:
    """Computes raw and projected guidance features with one model and recipe.

    Parameters
    ----------
    model : GuidanceModel
        The frozen components.
    recipe : FeatureRecipe
        Resolution, timestep, layers, prompts, seed, micro-batch.
    class_names : sequence of str
        Fills the prompt template; prompt id k is class k, id C the neutral one.
    """

    def __init__(
        self, model: GuidanceModel, recipe: FeatureRecipe, class_names: Sequence[str]
    ) -> None:
        self.resolution = feature_resolution(
            recipe,
            num_up_blocks=model.num_up_blocks,
            native_resolution=model.resolution,
            vae_scale_factor=model.vae_scale_factor,
        )
        self.model, self.recipe = model, recipe
        self.class_names = tuple(class_names)
        self.neutral_id = len(self.class_names)
        states, pooled = model.encode_prompts(recipe.prompts(self.class_names))
        self.text_states, self.text_pooled = states, pooled
        self.latent_shape = model.latent_shape(self.resolution)
        sf = model.vae.config.scaling_factor
        self._scale = 1.0 if sf is None else float(sf)
        self._shift = float(getattr(model.vae.config, "shift_factor", None) or 0.0)

    # ---------------------------------------------------------------- inputs
    def preprocess(self, images: Tensor) -> Tensor:
        """uint8 (B, C, H, W) -> float (B, 3, R, R) in [-1, 1] on the model device.

        Grayscale is repeated to the VAE's channels; any other channel mismatch
        is an :class:`ImageInputError`.
        """
        m = self.model
        return vae_input(
            images,
            channels=m.image_channels,
            resolution=self.resolution,
            device=m.device,
            dtype=m.vae.dtype,
        )

    def noise(self, indices) -> Tensor:
        """Per-sample Gaussian noise (B, *latent_shape), float32 on the CPU.

        Drawn on the CPU from a generator seeded by (recipe seed, index), so a
        sample's noise is the same on every device and in every batch.
        """
        out = torch.empty(len(indices), *self.latent_shape)
        g = torch.Generator()
        for row, idx in enumerate(indices):
            g.manual_seed(mix_seed(self.recipe.seed, int(idx)))
            out[row] = torch.randn(self.latent_shape, generator=g)
        return out

    # -------------------------------------------------------------- features
    @contextmanager
    def _taps(self) -> Iterator[dict[int, Tensor]]:
        """Forward hooks pooling each chosen up-block's output as it is made."""
        pooled: dict[int, Tensor] = {}

        def hook(i: int):
            def fn(module, args, output):
                out = output[0] if isinstance(output, tuple) else output
                pooled[i] = out.float().mean(dim=(2, 3))  # GAP; the map is dropped

            return fn

        unet = self.model.unet
        handles = [
            unet.up_blocks[i].register_forward_hook(hook(i))
            for i in self.recipe.up_blocks
        ]
        try:
            yield pooled
        finally:
            for h in handles:
                h.remove()

    @torch.inference_mode()
    def raw(self, images: Tensor, indices, prompt_ids: Tensor) -> Tensor:
        """Raw features (B, S, r): pooled latent + pooled up-blocks per prompt.

        ``prompt_ids`` (B, S) gives, per sample, the S prompts to run (class id or
        :attr:`neutral_id`). Calls run on micro-batches padded to exactly
        ``recipe.micro_batch`` rows (see :class:`~.recipe.FeatureRecipe`).
        """
        return self._run(images, indices, prompt_ids, None)

    @torch.inference_mode()
    def features(
        self, images: Tensor, indices, prompt_ids: Tensor, projection: Projection
    ) -> Tensor:
        """Projected, L2-normalised features (B, S, d), float32 on the CPU."""
        return self._run(images, indices, prompt_ids, projection)

    def _run(self, images, indices, prompt_ids, projection) -> Tensor:
        indices = [int(i) for i in indices]
        prompt_ids = torch.as_tensor(prompt_ids, dtype=torch.long)
        if len(indices) != len(images) or prompt_ids.shape[0] != len(images):
            raise ValueError("images, indices and prompt_ids must have the same length")
        if len(images) == 0:
            raise ValueError("no images given")
        m, mb = self.model, self.recipe.micro_batch
        t = torch.full((mb,), self.recipe.timestep, dtype=torch.long, device=m.device)
        outs = []
        with self._taps() as pooled:
            for start in range(0, len(images), mb):
                n = min(mb, len(images) - start)
                pad = [start] * (mb - n)  # repeat a real row: same shape every call
                rows = list(range(start, start + n)) + pad
                eps = self.noise([indices[r] for r in rows]).to(m.device, m.unet.dtype)
                z0 = self._latents(images[rows])
                zt = m.noise_scheduler.add_noise(z0, eps, t)
                lat = z0.float().mean(dim=(2, 3))
                per_prompt = []
                for s in range(prompt_ids.shape[1]):
                    states = self.text_states[
                        prompt_ids[rows, s].to(self.text_states.device)
                    ]
                    pooled.clear()
                    m.unet(zt, t, encoder_hidden_states=states)
                    raw = torch.cat(
                        [lat] + [pooled[i] for i in self.recipe.up_blocks], 1
                    )
                    raw = raw.cpu()
                    per_prompt.append(raw if projection is None else projection(raw))
                outs.append(torch.stack(per_prompt, 1)[:n])
        return torch.cat(outs)

    def _latents(self, images: Tensor) -> Tensor:
        """Scaled VAE posterior means of a batch, in the U-Net's dtype."""
        m = self.model
        z0 = m.vae.encode(self.preprocess(images)).latent_dist.mean
        return ((z0 - self._shift) * self._scale).to(m.unet.dtype)

    def error_noise(self, indices) -> Tensor:
        """(B, K, *latent_shape) noise of each sample's zero-shot pairs, on the CPU.

        Seeded by (recipe seed, sample index, ``ZERO_SHOT_NOISE``): apart from
        the features' noise, the same on every device and in every batch.
        """
        k = len(ERROR_TIMESTEPS)
        out = torch.empty(len(indices), k, *self.latent_shape)
        g = torch.Generator()
        for row, idx in enumerate(indices):
            g.manual_seed(mix_seed(self.recipe.seed, int(idx), seeding.ZERO_SHOT_NOISE))
            out[row] = torch.randn((k, *self.latent_shape), generator=g)
        return out

    @torch.inference_mode()
    def denoising_errors(self, images: Tensor, indices) -> Tensor:
        """(B, C) centred class-conditional denoising errors, float32 on the CPU.

        :func:`~.zero_shot.class_errors` over :data:`~.zero_shot.ERROR_TIMESTEPS`
        with each sample's own seeded noise (:meth:`error_noise`), minus the
        image's mean over classes (:func:`~.zero_shot.centred`). The lowest
        is the model's zero-shot class. Micro-batches are padded as in
        :meth:`raw`, so a sample's errors do not depend on its batch.
        """
        indices = [int(i) for i in indices]
        if len(indices) != len(images) or not len(images):
            raise ValueError("images and indices must have the same, non-zero length")
        m, mb = self.model, self.recipe.micro_batch
        states = self.text_states[: len(self.class_names)]
        outs = []
        for start in range(0, len(images), mb):
            n = min(mb, len(images) - start)
            rows = list(range(start, start + n)) + [start] * (mb - n)
            eps = self.error_noise([indices[r] for r in rows]).to(
                m.device, m.unet.dtype
            )
            err = class_errors(
                m.unet, m.noise_scheduler, self._latents(images[rows]), eps,
                ERROR_TIMESTEPS, states,
            )  # fmt: skip
            outs.append(centred(err.float().cpu())[:n])
        return torch.cat(outs)

    def for_latents(self) -> FeatureExtractor:
        """This extractor taking VAE posterior means instead of images.

        For latents uploaded by clients (:class:`LatentFeatureExtractor`);
        same recipe, prompts, noise and projection.
        """
        return LatentFeatureExtractor(self)

    # --------------------------------------------------------------- prompts
    def prompt_ids(self, kind: str, indices, labels: Tensor) -> Tensor:
        """(B, S) prompt ids of a feature kind for these samples.

        ``noise``: the true class (S=1); ``neutral``: the neutral prompt (S=1);
        ``cond``: every class in order (S=C), or the true class first then
        ``num_negatives`` other classes drawn per sample from (seed, index).
        See :func:`make_prompt_ids`.
        """
        return make_prompt_ids(
            kind, indices, labels, self.recipe, len(self.class_names)
        )

    def text_anchors(self, dim: int, seed: int) -> Tensor:
        """(C, d) text anchors: pooled class-prompt embeddings, mapped, unit length.

        The map is :func:`~.projection.text_map` (seeded random orthonormal):
        see :func:`diffusion_service.text_anchors` for why.
        """
        pooled = self.text_pooled[: len(self.class_names)].cpu()
        return F.normalize(pooled @ text_map(pooled.shape[1], dim, seed), dim=-1)


# ------------------------------------------------------------ latent inputs
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

    A client that opts in to latent upload (``docs/guided-methods.md``,
    deployment option 2) runs the VAE itself and sends the **VAE posterior
    mean** (``vae.encode(x).latent_dist.mean``, before ``shift_factor`` /
    ``scaling_factor``; :func:`~.vae_io.encode_posterior_mean`), shape
    (N, latent_channels, h, w). This extractor runs the rest of the recipe:
    scaling, per-sample seeded noise, the U-Net with hooks, pooling,
    projection.

    So that the recipe lives in one place, it does not reimplement that tail:
    ``preprocess`` takes latents and the model's VAE is a pass-through, so
    ``FeatureExtractor._run`` (padding, noise, hooks, pooling) runs as is.
    This couples to one detail of ``_run`` (it feeds ``preprocess``'s output to
    ``model.vae.encode(x).latent_dist.mean``); tests/test_diffusion_remote.py
    checks that latents from :func:`~.vae_io.encode_posterior_mean` give
    bit-identical features to the image path, so a change there cannot go
    unnoticed.

    Latents that arrive over the wire are contiguous; they are put back in the
    memory layout the VAE produces (:func:`vae_latent_layout`): on the CPU that
    is channels-last, and the U-Net computes other bits for a contiguous input
    of the same values.

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
