"""Whitened features from the PCA store of the same recipe, without a U-Net pass.

A stored PCA feature is ``normalize(u)`` with ``u = (x - mean) @ V`` (V
orthonormal); its whitened twin is ``normalize(u / std)``, ``std`` the fit
set's spread along each direction. Normalising first changes only ``u``'s
length, so ``normalize(f_pca / std) == normalize(u / std)`` exactly: the
whitened store can be filled from its PCA sibling by a per-direction rescale.
The difference to extracting directly is the fp16 rounding of the stored PCA
feature (relative, per coordinate). The class-conditional denoising errors
(kind ``errors``) are unprojected, so they are copied as they are.

This turns the first ``guidance-projection = "whitened"`` run of a recipe from
every client sample's U-Net passes into one pass over the fit set (the
whitened projection's own fit) and a copy.
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .projection import Projection
from .store import CorruptShardError, FeatureStore, store_path

log = logging.getLogger(__name__)


def pca_sibling(store: FeatureStore) -> FeatureStore | None:
    """The existing store of the same key under the PCA projection, else None."""
    key = copy.deepcopy(store.key)
    if key["recipe"].pop("projection", "pca") == "pca":
        return None  # this store is the PCA one
    path = store_path(store.path.parent, key)
    if not (path / "manifest.json").is_file():
        return None
    return FeatureStore(path, key)


def whitening_scale(pca: Projection, whitened: Projection) -> Tensor | None:
    """(d,) per-direction factor with ``whitened(x) = normalize(pca(x) * scale)``.

    The whitened projection's columns are PCA's divided by the fit set's
    standard deviation, so the factor is their norm. None when the two were
    not fitted on the same raw features (another mean, rank or directions):
    the rescale would then be wrong, not merely rounded.
    """
    scale = whitened.components.norm(dim=0)
    same = (
        pca.rank == whitened.rank
        and pca.components.shape == whitened.components.shape
        and torch.allclose(pca.mean, whitened.mean, rtol=1e-5, atol=1e-6)
        and torch.allclose(
            whitened.components / scale.clamp_min(1e-30), pca.components, atol=1e-4
        )
    )
    return scale if same else None


def derive_from_pca(
    store: FeatureStore, projection: Projection, kind: str, indices
) -> int:
    """Fill ``kind`` features of ``indices`` missing from a whitened ``store``
    from its PCA sibling; return how many samples were derived.

    Derives nothing (returns 0) when there is no sibling, its projection is
    unusable or does not match ``projection``'s fit; the caller then extracts
    as usual. The sibling's bad shards are skipped (left for it to repair).
    """
    sibling = pca_sibling(store)
    if sibling is None:
        return 0
    pca = sibling.load_projection()
    scale = None if pca is None else whitening_scale(pca, projection)
    if scale is None:
        log.warning(
            "%s: the PCA store %s has no projection matching this one; extracting",
            store.path,
            sibling.path,
        )
        return 0
    missing = store.missing(kind, indices)
    derived = 0
    for entry in sibling.shards(kind):
        rows = np.asarray(entry["indices"], dtype=np.int64)
        take = rows[np.isin(rows, missing)]
        if not len(take):
            continue
        try:  # read() checks the shard; a bad one is the twin's to repair
            feats, classes = sibling.read(kind, take)
        except CorruptShardError:
            continue
        if kind != "errors":
            feats = F.normalize(feats.float() * scale, dim=-1)
        store.write_shard(kind, take, feats, classes)
        missing = np.setdiff1d(missing, take, assume_unique=True)
        derived += len(take)
    if derived:
        log.info("%s: %d %s features derived from %s", store.path, derived, kind,
                 sibling.path)  # fmt: skip
    return derived
