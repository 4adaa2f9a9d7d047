"""The model side of the service: cached extractors, projections, batch runs.

One :class:`GuidanceEngine` per server wraps one :class:`GuidanceModel`. It
keeps a small LRU of :class:`FeatureExtractor` objects (one per recipe + class
list: building one encodes every prompt) and of the projections clients
registered, and runs one merged micro-batch at a time (:meth:`run`) for the
batching worker. Only that worker calls the U-Net: forward hooks on a shared
U-Net are not safe to use from two threads at once.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor

from diffusion_service.extract import text_anchors
from diffusion_service.features import FeatureExtractor, LatentFeatureExtractor
from diffusion_service.model import GuidanceModel
from diffusion_service.projection import Projection
from diffusion_service.recipe import FeatureRecipe

from .protocol import REGISTER_PROJECTION, projection_id

V = TypeVar("V")


class ProjectionNotFoundError(KeyError):
    """A request names a projection this server does not hold."""


@dataclass(frozen=True)
class FeatureJob:
    """One validated Features request, ready for the model.

    ``inputs`` are uint8 images (N, C, H, W) or float32 latents (N, c, h, w);
    ``extractor`` and ``projection`` are resolved at validation, so a cache
    eviction between validation and the run cannot change them.
    """

    extractor_key: Hashable
    extractor: FeatureExtractor
    inputs: Tensor
    indices: tuple[int, ...]
    prompt_ids: Tensor
    projection_id: str | None
    projection: Projection | None

    @property
    def size(self) -> int:
        """Samples in the request."""
        return len(self.indices)

    @property
    def batch_key(self) -> Hashable:
        """Jobs with equal keys can be concatenated into one model call."""
        return (
            self.extractor_key,
            isinstance(self.extractor, LatentFeatureExtractor),
            tuple(self.inputs.shape[1:]),
            self.inputs.dtype,
            self.prompt_ids.shape[1],
            self.projection_id,
        )


@dataclass(frozen=True)
class FeatureResult:
    """One request's share of a merged run."""

    features: Tensor
    prompt_ids: Tensor
    batch_samples: int
    batch_requests: int


def extractor_key(recipe: FeatureRecipe, class_names: tuple[str, ...]) -> Hashable:
    """Cache key of the extractor of a recipe and class list."""
    return (json.dumps(recipe.to_dict(), sort_keys=True), tuple(class_names))


class _LRU(OrderedDict):
    """A size-bounded mapping that evicts the least recently used entry."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def get_or_make(self, key: Hashable, make: Callable[[], V]) -> V:
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = make()
        self[key] = value
        while len(self) > self.size:
            self.popitem(last=False)
        return value


class GuidanceEngine:
    """A frozen guidance model plus what the service keeps between requests."""

    def __init__(
        self,
        model: GuidanceModel,
        *,
        max_extractors: int = 8,
        max_projections: int = 32,
    ) -> None:  # noqa: D107
        self.model = model
        self._extractors = _LRU(max_extractors)
        self._projections = _LRU(max_projections)
        self._lock = threading.Lock()

    # ------------------------------------------------------------ extractors
    def extractor(
        self, recipe: FeatureRecipe, class_names: tuple[str, ...], latent: bool = False
    ) -> tuple[Hashable, FeatureExtractor]:
        """The (cached) extractor of a recipe and class list, and its cache key.

        ``latent=True`` gives the :class:`LatentFeatureExtractor` sharing its
        text states. Raises ``ValueError`` for a recipe this model cannot run.
        """
        key = extractor_key(recipe, class_names)
        with self._lock:
            base = self._extractors.get_or_make(
                (key, False), lambda: FeatureExtractor(self.model, recipe, class_names)
            )
            if not latent:
                return key, base
            return key, self._extractors.get_or_make(
                (key, True), lambda: LatentFeatureExtractor(base)
            )

    def raw_width(self, recipe: FeatureRecipe) -> int:
        """Width r of this recipe's raw features: latent channels + up-block channels."""
        blocks = self.model.unet.up_blocks
        return int(self.model.vae.config.latent_channels) + sum(
            int(blocks[i].resnets[-1].out_channels) for i in recipe.up_blocks
        )

    # ----------------------------------------------------------- projections
    def register_projection(self, projection: Projection) -> str:
        """Keep a projection for later Features requests; return its id."""
        pid = projection_id(projection)
        with self._lock:
            self._projections.get_or_make(pid, lambda: projection)
        return pid

    def projection(self, pid: str) -> Projection:
        """A registered projection; :class:`ProjectionNotFoundError` if unknown."""
        with self._lock:
            if pid not in self._projections:
                raise ProjectionNotFoundError(
                    f"projection {pid[:16]}... is not registered on this server (it "
                    "was never registered, was evicted, or the server restarted): "
                    f"register it again with {REGISTER_PROJECTION}"
                )
            self._projections.move_to_end(pid)
            return self._projections[pid]

    # ------------------------------------------------------------------ work
    def run(self, jobs: list[FeatureJob]) -> list[FeatureResult]:
        """Features of jobs sharing one batch key, in one extractor call.

        The extractor pads every model call to ``recipe.micro_batch`` rows, so a
        sample's features do not depend on which requests it was merged with.
        """
        first = jobs[0]
        inputs = torch.cat([j.inputs for j in jobs])
        indices = [i for j in jobs for i in j.indices]
        ids = torch.cat([j.prompt_ids for j in jobs])
        ex = first.extractor
        if first.projection is None:
            out = ex.raw(inputs, indices, ids)
        else:
            out = ex.features(inputs, indices, ids, first.projection)
        results, start = [], 0
        for j in jobs:
            results.append(
                FeatureResult(
                    features=out[start : start + j.size].contiguous(),
                    prompt_ids=j.prompt_ids,
                    batch_samples=len(indices),
                    batch_requests=len(jobs),
                )
            )
            start += j.size
        return results

    def text_anchors(
        self, recipe: FeatureRecipe, class_names: tuple[str, ...]
    ) -> Tensor:
        """(C, d) text anchors, exactly :func:`diffusion_service.text_anchors`."""
        _, ex = self.extractor(recipe, class_names)
        return text_anchors(ex, recipe.dim, recipe.seed)

    # ------------------------------------------------------------------ info
    def describe(self) -> dict[str, Any]:
        """Model facts a client needs to build valid requests."""
        m = self.model
        res = m.resolution
        blocks = m.unet.up_blocks
        return {
            "fingerprint": m.fingerprint,
            "vae_fingerprint": m.vae_fingerprint,
            "device": str(m.device),
            "dtype": str(m.dtype).removeprefix("torch."),
            "resolution": res,
            "vae_scale_factor": m.vae_scale_factor,
            "image_channels": m.image_channels,
            "latent_shape": list(m.latent_shape(res)),
            "num_up_blocks": m.num_up_blocks,
            "up_block_channels": [int(b.resnets[-1].out_channels) for b in blocks],
            "num_train_timesteps": int(m.noise_scheduler.config.num_train_timesteps),
            "default_recipe": FeatureRecipe().to_dict(),
        }
