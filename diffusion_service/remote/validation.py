"""Checks on every request before it reaches the model, with messages that say
what was wrong and what is valid.

A request that fails here raises :class:`RequestError` and the server answers
INVALID_ARGUMENT; the batching worker only ever sees well-formed jobs, so one
bad caller cannot break a merged batch of good ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from diffusion_service.projection import Projection
from diffusion_service.recipe import FEATURE_KINDS, FeatureRecipe

from .engine import FeatureJob, GuidanceEngine
from .protocol import (
    IMAGES,
    INDICES,
    LABELS,
    LATENTS,
    PROJECTION_TENSORS,
    PROMPT_IDS,
    REQUEST_TENSORS,
    tensor_bytes,
)

MiB = 1 << 20
_INT_DTYPES = (torch.int64, torch.int32)
_LATENT_DTYPES = (torch.float32, torch.float16)
_RECIPE_FIELDS = tuple(f.name for f in dataclasses.fields(FeatureRecipe))


class RequestError(ValueError):
    """A request the service refuses (INVALID_ARGUMENT); the text says why."""


@dataclass(frozen=True)
class Limits:
    """Size limits of one server (reported by Info)."""

    max_samples: int = 256
    max_message_bytes: int = 64 * MiB
    max_classes: int = 1000
    max_name_chars: int = 256
    max_image_side: int = 1024
    max_resolution: int = 1024
    max_micro_batch: int = 256
    max_dim: int = 8192

    def to_dict(self) -> dict[str, int]:
        """Plain JSON-able form."""
        return dataclasses.asdict(self)


# ------------------------------------------------------------------ recipe
def parse_class_names(obj: Any, limits: Limits) -> tuple[str, ...]:
    """A non-empty list of strings, within the limits."""
    if not isinstance(obj, list) or not obj:
        raise RequestError("class_names must be a non-empty list of strings")
    if len(obj) > limits.max_classes:
        raise RequestError(
            f"{len(obj)} class names; at most {limits.max_classes} are accepted"
        )
    bad = [c for c in obj if not isinstance(c, str) or len(c) > limits.max_name_chars]
    if bad:
        raise RequestError(
            f"class_names must be strings of at most {limits.max_name_chars} "
            f"characters; bad entries: {bad[:3]!r}"
        )
    return tuple(obj)


def parse_recipe(obj: Any, engine: GuidanceEngine, limits: Limits) -> FeatureRecipe:
    """A :class:`FeatureRecipe` this model can run, from its ``to_dict`` form."""
    if not isinstance(obj, dict):
        raise RequestError(
            f"recipe must be a JSON object with keys from {', '.join(_RECIPE_FIELDS)}"
        )
    unknown = sorted(set(obj) - set(_RECIPE_FIELDS))
    if unknown:
        raise RequestError(
            f"unknown recipe keys {unknown}; valid: {', '.join(_RECIPE_FIELDS)}"
        )
    ints = ("timestep", "seed", "dim", "fit_size", "micro_batch")
    for name in ints:
        if name in obj and (type(obj[name]) is not int):
            raise RequestError(f"recipe.{name} must be an integer, got {obj[name]!r}")
    for name in ("prompt_template", "neutral_prompt"):
        if name in obj and not isinstance(obj[name], str):
            raise RequestError(f"recipe.{name} must be a string, got {obj[name]!r}")
    blocks = obj.get("up_blocks", FeatureRecipe.up_blocks)
    if not isinstance(blocks, (list, tuple)) or any(type(i) is not int for i in blocks):
        raise RequestError(
            f"recipe.up_blocks must be a list of integers, got {blocks!r}"
        )
    res = obj.get("resolution")
    if res is not None and type(res) is not int:
        raise RequestError(f"recipe.resolution must be an integer or null, got {res!r}")
    try:
        recipe = FeatureRecipe(**{**obj, "up_blocks": tuple(blocks)})
    except (TypeError, ValueError) as exc:
        raise RequestError(f"invalid recipe: {exc}") from exc
    m = engine.model
    bad = [i for i in recipe.up_blocks if not 0 <= i < m.num_up_blocks]
    if bad:
        raise RequestError(
            f"recipe.up_blocks {bad} out of range: this model's U-Net has "
            f"{m.num_up_blocks} up blocks (valid indices 0..{m.num_up_blocks - 1})"
        )
    steps = int(m.noise_scheduler.config.num_train_timesteps)
    if not 0 <= recipe.timestep < steps:
        raise RequestError(
            f"recipe.timestep must lie in [0, {steps}), got {recipe.timestep}"
        )
    if res is not None and not (
        0 < res <= limits.max_resolution and res % m.vae_scale_factor == 0
    ):
        raise RequestError(
            f"recipe.resolution must be a multiple of {m.vae_scale_factor} in "
            f"(0, {limits.max_resolution}] or null (the model's {m.resolution}), "
            f"got {res}"
        )
    if recipe.micro_batch > limits.max_micro_batch:
        raise RequestError(
            f"recipe.micro_batch {recipe.micro_batch} exceeds this server's limit "
            f"{limits.max_micro_batch}"
        )
    if recipe.dim > limits.max_dim:
        raise RequestError(
            f"recipe.dim {recipe.dim} exceeds the limit {limits.max_dim}"
        )
    return recipe


# ----------------------------------------------------------------- tensors
def _int_vector(t: Tensor, name: str, n: int) -> Tensor:
    if t.dtype not in _INT_DTYPES:
        raise RequestError(f"{name} must be int64 or int32, got {t.dtype}")
    if tuple(t.shape) != (n,):
        raise RequestError(f"{name} must have shape ({n},), got {tuple(t.shape)}")
    return t.to(torch.int64)


def _images(t: Tensor, engine: GuidanceEngine, limits: Limits) -> Tensor:
    if t.dtype != torch.uint8:
        raise RequestError(
            f"images must be uint8 in [0, 255], got {t.dtype} (send VAE latents "
            f"as float16/float32 under '{LATENTS}' instead)"
        )
    if t.ndim == 3:
        t = t.unsqueeze(1)
    want_c = engine.model.image_channels
    if t.ndim != 4:
        raise RequestError(
            f"images must be (N, H, W) or (N, C, H, W), got shape {tuple(t.shape)}"
        )
    if t.shape[1] not in (1, want_c):
        raise RequestError(
            f"images have {t.shape[1]} channels; valid: 1 (grayscale) or {want_c}"
        )
    h, w = t.shape[2:]
    if not (0 < h <= limits.max_image_side and 0 < w <= limits.max_image_side):
        raise RequestError(
            f"image side must lie in [1, {limits.max_image_side}], got {h}x{w}"
        )
    return t


def _latents(t: Tensor, shape: tuple[int, ...]) -> Tensor:
    if t.dtype not in _LATENT_DTYPES:
        raise RequestError(f"latents must be float32 or float16, got {t.dtype}")
    if t.ndim != 4 or tuple(t.shape[1:]) != shape:
        raise RequestError(
            f"latents must be (N, {', '.join(map(str, shape))}) for this recipe's "
            f"resolution (VAE posterior means), got shape {tuple(t.shape)}"
        )
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        raise RequestError(
            f"latents contain {bad} NaN/Inf values; every value must be finite"
        )
    return t.to(torch.float32)


def _prompt_ids(
    tensors: dict[str, Tensor],
    fields: dict[str, Any],
    extractor,
    indices: list[int],
    n: int,
) -> Tensor:
    kind = fields.get("kind")
    num_classes = len(extractor.class_names)
    if (kind is None) == (PROMPT_IDS not in tensors):
        raise RequestError(
            f"give exactly one of 'kind' (one of {', '.join(FEATURE_KINDS)}, with "
            f"'{LABELS}' for noise/cond) or a '{PROMPT_IDS}' tensor (N, S)"
        )
    if kind is not None:
        if kind not in FEATURE_KINDS:
            raise RequestError(
                f"kind must be one of {', '.join(FEATURE_KINDS)}, got {kind!r}"
            )
        if LABELS in tensors:
            labels = _int_vector(tensors[LABELS], LABELS, n)
        elif kind == "neutral":
            labels = torch.zeros(n, dtype=torch.int64)
        else:
            raise RequestError(f"kind {kind!r} needs a '{LABELS}' tensor (N,)")
        if len(labels) and not (
            0 <= int(labels.min()) and int(labels.max()) < num_classes
        ):
            raise RequestError(
                f"labels must lie in [0, {num_classes}) (one per class name)"
            )
        try:
            return extractor.prompt_ids(kind, indices, labels)
        except ValueError as exc:
            raise RequestError(str(exc)) from exc
    ids = tensors[PROMPT_IDS]
    if ids.dtype not in _INT_DTYPES or ids.ndim != 2 or ids.shape[0] != n:
        raise RequestError(
            f"prompt_ids must be int64 (N={n}, S), got {ids.dtype} {tuple(ids.shape)}"
        )
    if not 1 <= ids.shape[1] <= num_classes + 1:
        raise RequestError(f"prompt_ids must have 1..{num_classes + 1} columns")
    if int(ids.min()) < 0 or int(ids.max()) > num_classes:
        raise RequestError(
            f"prompt ids must lie in [0, {num_classes}]: class k, or "
            f"{num_classes} for the neutral prompt"
        )
    return ids.to(torch.int64)


def parse_features(
    tensors: dict[str, Tensor],
    fields: dict[str, Any],
    engine: GuidanceEngine,
    limits: Limits,
) -> FeatureJob:
    """Validate a decoded Features request and resolve it into a job."""
    unknown = sorted(set(tensors) - set(REQUEST_TENSORS))
    if unknown:
        raise RequestError(
            f"unknown tensors {unknown}; valid: {', '.join(REQUEST_TENSORS)}"
        )
    if (IMAGES in tensors) == (LATENTS in tensors):
        raise RequestError(
            f"give exactly one of '{IMAGES}' (uint8) or '{LATENTS}' (float16/float32)"
        )
    if INDICES not in tensors:
        raise RequestError(
            f"'{INDICES}' (N,) int64 is required: per-sample noise seeds"
        )
    recipe = parse_recipe(fields.get("recipe"), engine, limits)
    names = parse_class_names(fields.get("class_names"), limits)
    latent = LATENTS in tensors
    raw = tensors[LATENTS if latent else IMAGES]
    n = int(raw.shape[0]) if raw.ndim else 0
    if not 0 < n <= limits.max_samples:
        raise RequestError(
            f"{n} samples in one request; valid: 1 to {limits.max_samples}"
        )
    try:
        key, ex = engine.extractor(recipe, names, latent=latent)
    except ValueError as exc:
        raise RequestError(f"invalid recipe for this model: {exc}") from exc
    inputs = (
        _latents(raw, tuple(ex.latent_shape))
        if latent
        else _images(raw, engine, limits)
    )
    idx = _int_vector(tensors[INDICES], INDICES, n)
    if int(idx.min()) < 0:
        raise RequestError("indices must be >= 0 (they seed each sample's noise)")
    indices = tuple(int(i) for i in idx)
    ids = _prompt_ids(tensors, fields, ex, list(indices), n)
    pid = fields.get("projection_id")
    projection = None
    width = engine.raw_width(recipe)
    if pid is not None:
        if not isinstance(pid, str):
            raise RequestError("projection_id must be a string or null")
        projection = engine.projection(pid)
        if projection.mean.shape[0] != width:
            raise RequestError(
                f"projection {pid[:16]}... maps raw width {projection.mean.shape[0]}, "
                f"but this recipe's raw features have width {width}"
            )
        width = projection.dim
    out_bytes = tensor_bytes((n, ids.shape[1], width), torch.float32)
    if out_bytes > limits.max_message_bytes:
        raise RequestError(
            f"the response would be {out_bytes} bytes, over this server's message "
            f"limit {limits.max_message_bytes}: send fewer samples or prompts"
        )
    return FeatureJob(key, ex, inputs, indices, ids, pid, projection)


def parse_projection(tensors: dict[str, Tensor], limits: Limits) -> Projection:
    """A :class:`Projection` from its safetensors form (what ``save`` writes)."""
    if set(tensors) != set(PROJECTION_TENSORS):
        raise RequestError(
            f"a projection has exactly the tensors {', '.join(PROJECTION_TENSORS)}; "
            f"got {sorted(tensors)}"
        )
    mean, comps, rank = (tensors[k] for k in PROJECTION_TENSORS)
    if mean.dtype != torch.float32 or comps.dtype != torch.float32:
        raise RequestError("projection mean and components must be float32")
    if mean.ndim != 1 or comps.ndim != 2 or comps.shape[0] != mean.shape[0]:
        raise RequestError(
            f"projection mean must be (r,) and components (r, d); got "
            f"{tuple(mean.shape)} and {tuple(comps.shape)}"
        )
    if not 0 < comps.shape[1] <= limits.max_dim:
        raise RequestError(f"projection dim must lie in [1, {limits.max_dim}]")
    if rank.numel() != 1 or rank.dtype not in _INT_DTYPES:
        raise RequestError("projection rank must be one integer")
    if not (torch.isfinite(mean).all() and torch.isfinite(comps).all()):
        raise RequestError("projection contains NaN/Inf values; all must be finite")
    return Projection(mean, comps, int(rank.item()))
