"""Batched extraction into the store, the fitted projection, and class anchors.

:func:`open_session` binds a model, a recipe and a dataset to their store
(:func:`open_extractor_session` does the same for an extractor built elsewhere,
e.g. one backed by the remote guidance service);
:func:`extract` fills the store with what is missing (a rerun computes nothing,
an interrupted run resumes, bad shards are dropped and recomputed);
:func:`build_anchors` computes text and visual class anchors.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm

from common import seeding
from common.io import atomic_write

from .derive import derive_from_pca, pca_sibling
from .features import Extractor, FeatureExtractor
from .model import GuidanceModel
from .projection import Projection
from .recipe import KINDS, FeatureRecipe, array_digest, store_key
from .store import FeatureStore, store_path

log = logging.getLogger(__name__)


@dataclass
class Session:
    """A model + recipe + dataset bound to the store that holds their features."""

    extractor: Extractor
    store: FeatureStore
    images: Tensor
    labels: Tensor
    fit_indices: np.ndarray

    @property
    def recipe(self) -> FeatureRecipe:
        """The feature recipe."""
        return self.extractor.recipe


def default_fit_indices(num_samples: int, recipe: FeatureRecipe) -> np.ndarray:
    """A seeded random subset of ``fit_size`` samples (sorted) for the PCA fit."""
    rng = np.random.default_rng([recipe.seed, seeding.PROJECTION_FIT])
    size = min(recipe.fit_size, num_samples)
    return np.sort(rng.choice(num_samples, size=size, replace=False)).astype(np.int64)


def open_session(
    model: GuidanceModel,
    recipe: FeatureRecipe,
    *,
    dataset: str,
    images: Tensor,
    labels: Tensor,
    class_names,
    root: str | Path,
    fit_indices=None,
) -> Session:
    """Bind everything that keys the features, and open (or create) their store.

    ``images`` are uint8 (N, C, H, W) and sample index i means ``images[i]``.
    ``fit_indices`` (default: :func:`default_fit_indices`) choose the PCA fit
    subset; pass the server's public split for client-side extraction.
    """
    return open_extractor_session(
        FeatureExtractor(model, recipe, class_names),
        dataset=dataset,
        images=images,
        labels=labels,
        root=root,
        fit_indices=fit_indices,
    )


def open_extractor_session(
    extractor: Extractor,
    *,
    dataset: str,
    images: Tensor,
    labels: Tensor,
    root: str | Path,
    fit_indices=None,
) -> Session:
    """:func:`open_session` for an extractor that is already built.

    The store key takes the model fingerprint, device and dtype from
    ``extractor.model``, so features share a store only when they come from
    the same weights on the same kind of compute, wherever that runs.
    """
    model, recipe = extractor.model, extractor.recipe
    extractor.preprocess(images[:1])  # fail early on a bad image shape
    labels = torch.as_tensor(labels, dtype=torch.long)
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    fit = (
        default_fit_indices(len(images), recipe)
        if fit_indices is None
        else np.sort(np.asarray(fit_indices, dtype=np.int64))
    )
    key = store_key(
        model_fingerprint=model.fingerprint,
        dataset=dataset,
        data_digest=array_digest(images, labels),
        num_samples=len(images),
        class_names=extractor.class_names,
        recipe=recipe,
        resolution=extractor.resolution,
        fit_indices_digest=array_digest(fit),
        compute=f"{model.device.type}-{str(model.dtype).removeprefix('torch.')}",
    )
    store = FeatureStore(store_path(Path(root), key), key)
    return Session(extractor, store, images, labels, fit)


def _batches(indices: np.ndarray, size: int):
    for start in range(0, len(indices), size):
        yield indices[start : start + size]


def ensure_projection(session: Session, *, progress: bool = True) -> Projection:
    """The store's projection; fitted once (raw true-class features) if absent.

    A whitened recipe whose PCA twin store exists whitens the twin's
    projection, so the twin's features can fill this store (:mod:`.derive`).
    """
    proj = session.store.load_projection()
    if proj is not None:
        return proj
    ex, fit = session.extractor, session.fit_indices
    raws = []
    step = ex.recipe.micro_batch * 4
    with tqdm(
        total=len(fit), unit="img", desc="fit projection", disable=not progress
    ) as bar:
        for idx in _batches(fit, step):
            ids = ex.prompt_ids("noise", idx, session.labels[idx])
            raws.append(ex.raw(session.images[idx], idx, ids)[:, 0])
            bar.update(len(idx))
    raw = torch.cat(raws)
    if raw.shape[1] < ex.recipe.dim:
        log.info(
            "raw width %d < d=%d: projection zero-pads", raw.shape[1], ex.recipe.dim
        )
    whiten = ex.recipe.projection == "whitened"
    twin = pca_sibling(session.store) if whiten else None
    base = twin.load_projection() if twin is not None else None
    if base is not None:
        # The PCA twin's own directions, so its stored features rescale exactly.
        proj = base.whitened(raw)
    else:
        proj = Projection.fit(raw, ex.recipe.dim, whiten=whiten)
    session.store.save_projection(proj, fit)
    return proj


def extract(
    session: Session,
    *,
    kinds=("noise",),
    indices=None,
    shard_size: int = 1024,
    progress: bool = True,
) -> dict[str, dict]:
    """Compute and store the missing features of ``kinds`` for ``indices``.

    Bad shards are dropped first (:meth:`FeatureStore.verify`) so their samples
    are recomputed. Work goes in shards of ``shard_size`` samples, each written
    as soon as it is done: killing the process loses only the current shard.
    A whitened recipe first takes what its PCA twin's store holds
    (:mod:`.derive`, a rescale, no U-Net pass). Returns, per kind, how many
    samples were computed and derived, and the problems found.
    """
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"unknown feature kinds {bad}; valid: {', '.join(KINDS)}")
    n = len(session.images)
    want = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64)
    if len(want) and (want.min() < 0 or want.max() >= n):
        raise IndexError(f"sample indices must lie in [0, {n})")
    ex, store = session.extractor, session.store
    # The projection first: shards made with another projection fail verify().
    proj = ensure_projection(session, progress=progress)
    stats: dict[str, dict] = {}
    todo = {}
    for kind in kinds:
        problems = store.verify(kind)
        for p in problems:
            log.warning("dropping bad shard %s", p)
        todo[kind] = store.missing(kind, want)
        derived = 0
        if len(todo[kind]) and session.recipe.projection == "whitened":
            derived = derive_from_pca(store, proj, kind, todo[kind])
            todo[kind] = store.missing(kind, want)
        stats[kind] = {
            "computed": int(len(todo[kind])),
            "derived": derived,
            "problems": problems,
        }
    step = ex.recipe.micro_batch * 4  # bar update granularity, not a batch size
    for kind, missing in todo.items():
        if not len(missing):
            continue
        bar = tqdm(
            total=len(missing),
            unit="img",
            desc=f"extract {kind}",
            disable=not progress,
            smoothing=0.1,
        )
        with bar:
            for shard in _batches(missing, shard_size):
                if kind == "errors":
                    store.write_shard(
                        kind, shard, _errors(ex, session, shard, step, bar)
                    )
                    continue
                ids = ex.prompt_ids(kind, shard, session.labels[shard])
                parts = []
                for b in range(0, len(shard), step):
                    sl = slice(b, b + step)
                    parts.append(
                        ex.features(session.images[shard[sl]], shard[sl], ids[sl], proj)
                    )
                    bar.update(len(shard[sl]))
                feats = torch.cat(parts)
                if kind == "cond":
                    store.write_shard(kind, shard, feats, ids)
                else:
                    store.write_shard(kind, shard, feats[:, 0])
    return stats


def _errors(
    ex: Extractor, session: Session, shard: np.ndarray, step: int, bar
) -> Tensor:
    """(n, C) zero-shot denoising errors of a shard (in-process models only)."""
    if not hasattr(ex, "denoising_errors"):
        raise NotImplementedError(
            "the 'errors' kind (zero-shot denoising errors) is computed by a model "
            "in this process; the guidance service does not offer it"
        )
    parts = []
    for b in range(0, len(shard), step):
        sl = shard[b : b + step]
        parts.append(ex.denoising_errors(session.images[sl], sl))
        bar.update(len(sl))
    return torch.cat(parts)


def text_anchors(extractor: Extractor, dim: int, seed: int) -> Tensor:
    """(C, d) text anchors: pooled class-prompt embeddings, mapped, unit length.

    The map is :func:`~.projection.text_map` (seeded random orthonormal): an
    isometry when the text width is at most d (MiniLM 384 -> 512), so the
    anchors keep the text encoder's cosine geometry exactly. They do not live in
    the visual features' PCA coordinates; the client learns to align with them.
    Computed by the extractor (``FeatureExtractor.text_anchors``), in this
    process or on the guidance service.
    """
    return extractor.text_anchors(dim, seed)


def visual_anchors(session: Session, indices, *, kind: str = "noise") -> Tensor:
    """(C, d) class means of stored projected features of ``indices``, unit length.

    A class with no sample among ``indices`` gets a zero row (logged).
    """
    idx = np.asarray(indices, dtype=np.int64)
    feats, _ = session.store.read(kind, idx)
    feats = feats.float().reshape(len(idx), -1, feats.shape[-1])[:, 0]
    num_classes = len(session.extractor.class_names)
    y = session.labels[idx]
    sums = torch.zeros(num_classes, feats.shape[1]).index_add_(0, y, feats)
    counts = torch.bincount(y, minlength=num_classes)
    if (counts == 0).any():
        log.warning(
            "classes without samples get zero anchors: %s",
            torch.nonzero(counts == 0).view(-1).tolist(),
        )
    return F.normalize(sums / counts.clamp_min(1).unsqueeze(1), dim=-1)


def build_anchors(
    session: Session, indices, *, kind: str = "noise", progress: bool = True
) -> dict[str, Tensor]:
    """Text and visual anchors from server-held ``indices``; saved in the store.

    Extracts the missing ``kind`` features of ``indices`` first. Writes
    ``anchors.safetensors`` (``text``, ``visual``, ``counts``) atomically.
    """
    extract(session, kinds=(kind,), indices=indices, progress=progress)
    r = session.recipe
    anchors = {
        "text": text_anchors(session.extractor, r.dim, r.seed).contiguous(),
        "visual": visual_anchors(session, indices, kind=kind).contiguous(),
        "counts": torch.bincount(
            session.labels[np.asarray(indices, dtype=np.int64)],
            minlength=len(session.extractor.class_names),
        ),
    }
    meta = {
        "key_hash": session.store.key_hash,
        "kind": kind,
        "indices": array_digest(np.asarray(indices, dtype=np.int64)),
    }
    path = session.store.path / "anchors.safetensors"
    atomic_write(path, lambda tmp: save_file(anchors, tmp, metadata=meta))
    return anchors
