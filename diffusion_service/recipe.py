"""The feature recipe and the store key: everything that changes a feature's bits.

A :class:`FeatureRecipe` holds the knobs of ``docs/guidance-features.md``.
:func:`store_key` adds what the recipe cannot know (the model fingerprint, the
data, the class prompts, the fit subset, the compute device and dtype) and
hashes it all. Two extractions share stored features only when their keys are
equal.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from common.config.guidance import PROJECTIONS

FEATURE_KINDS = ("noise", "cond", "neutral")
"""Feature kinds: denoising (true-class prompt), conditional (several class
prompts per sample), and neutral-prompt features."""
KINDS = (*FEATURE_KINDS, "errors")
"""Stored kinds: the feature kinds, and ``errors``, each sample's (C,)
class-conditional denoising errors (:mod:`.zero_shot`), centred, unprojected."""


@dataclass(frozen=True)
class FeatureRecipe:
    """How an image becomes a guidance feature (``docs/guidance-features.md``).

    Parameters
    ----------
    resolution : int or None
        Image side fed to the VAE; None = the model's native resolution.
    timestep : int
        Noise level t of ``scheduler.add_noise`` (papers: 150 to 300).
    up_blocks : tuple of int
        Indices of ``unet.up_blocks`` whose outputs are pooled.
    prompt_template : str
        Class prompt; ``{}`` is replaced by the class name.
    neutral_prompt : str
        Prompt of the neutral-prompt features ("" = unconditional).
    seed : int
        Seeds the per-sample noise, the fit subset, negatives and the text map.
    dim : int
        Output dimension d (the client model's embedding width).
    fit_size : int
        Samples whose raw features fit the PCA projection (once per store).
    projection : str
        ``"pca"``: principal directions; ``"whitened"``: the same directions
        scaled to unit variance on the fit subset (:meth:`.Projection.fit`).
    num_negatives : int or None
        Conditional features: None = one row per class (row k is class k);
        K = the positive first, then K sampled negative classes per sample.
    micro_batch : int
        Rows per model call. Every call is padded to exactly this many rows, so
        kernels always see one shape and a sample's feature does not depend on
        the batch it is in (a batch of 1 takes other CPU kernels: different bits).
    """

    resolution: int | None = None
    timestep: int = 150
    up_blocks: tuple[int, ...] = (1, 2, 3)
    prompt_template: str = "a photo of a {}"
    neutral_prompt: str = ""
    seed: int = 0
    dim: int = 512
    fit_size: int = 2048
    projection: str = "pca"
    num_negatives: int | None = None
    micro_batch: int = 32

    def __post_init__(self) -> None:
        object.__setattr__(self, "up_blocks", tuple(int(i) for i in self.up_blocks))
        if not self.up_blocks or len(set(self.up_blocks)) != len(self.up_blocks):
            raise ValueError(
                f"up_blocks must be distinct indices, got {self.up_blocks}"
            )
        if "{}" not in self.prompt_template:
            raise ValueError(
                f"prompt_template needs a '{{}}': {self.prompt_template!r}"
            )
        for name in ("timestep", "dim", "fit_size", "micro_batch"):
            if getattr(self, name) < (0 if name == "timestep" else 1):
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.projection not in PROJECTIONS:
            raise ValueError(
                f"projection must be one of {', '.join(PROJECTIONS)}, "
                f"got {self.projection!r}"
            )
        if self.num_negatives is not None and self.num_negatives < 1:
            raise ValueError(
                f"num_negatives must be >= 1 or None, got {self.num_negatives}"
            )

    def prompts(self, class_names: tuple[str, ...] | list[str]) -> list[str]:
        """Class prompts, then the neutral prompt (index ``len(class_names)``)."""
        return [self.prompt_template.format(c) for c in class_names] + [
            self.neutral_prompt
        ]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (tuples as lists)."""
        d = dataclasses.asdict(self)
        d["up_blocks"] = list(self.up_blocks)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureRecipe:
        """Inverse of :meth:`to_dict`."""
        return cls(**{**d, "up_blocks": tuple(d["up_blocks"])})


def array_digest(*arrays) -> str:
    """SHA-256 of arrays' dtypes, shapes and bytes (identifies data or indices)."""
    h = hashlib.sha256()
    for a in arrays:
        a = a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def store_key(
    *,
    model_fingerprint: str,
    dataset: str,
    data_digest: str,
    num_samples: int,
    class_names: tuple[str, ...] | list[str],
    recipe: FeatureRecipe,
    resolution: int,
    fit_indices_digest: str,
    compute: str,
) -> dict[str, Any]:
    """Everything a stored feature depends on, as a JSON-able dict.

    ``compute`` is ``"<device type>-<dtype>"``: a CUDA fp16 feature differs from
    a CPU fp32 one, so they never share a store.
    """
    return {
        "format": 1,
        "model": model_fingerprint,
        "dataset": dataset,
        "data": data_digest,
        "num_samples": int(num_samples),
        "prompts": recipe.prompts(class_names),
        "recipe": _keyed_recipe(recipe, resolution),
        "fit_indices": fit_indices_digest,
        "compute": compute,
    }


def _keyed_recipe(recipe: FeatureRecipe, resolution: int) -> dict[str, Any]:
    """The recipe as the key holds it. The default PCA projection is left out,
    as it was before ``projection`` existed, so stores made then stay valid."""
    d = {**recipe.to_dict(), "resolution": int(resolution)}
    if d["projection"] == "pca":
        del d["projection"]
    return d


def key_hash(key: dict[str, Any]) -> str:
    """Stable SHA-256 of a store key."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
