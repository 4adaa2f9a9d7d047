"""Class anchors as the frame of a fixed classifier (SemanticFL's anchor classifier).

Cross-entropy through a free linear head learns each client's skewed label
prior; a fixed frame shared by every client cannot (FedETF, Li et al. ICCV
2023, fixes a random simplex ETF; FedNH, Dai et al. AAAI 2023, smooths class
prototypes toward class semantics). Here the frame's class vectors come from
the diffusion model's class anchors (visual, text, or both), so similar
classes start close.

Only the geometry matters: a learnable projector maps the embedding into the
frame's space, so a frame is fixed by its Gram matrix of class cosines. The
anchors' Gram can be moved toward the simplex ETF's (all off-diagonal cosines
``-1/(C-1)``, the most separated C unit vectors) by a convex mix; because the
ETF's off-diagonal is constant, the mix keeps the anchors' similarity order
exactly while it spreads the confusable classes apart.

The frame is computed once on the server and sent to the clients, so every
side holds the same bits (a factorisation repeated on other machines could
differ in sign or in the last digits).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

SOURCES = ("visual", "text", "fused")


def cosine_gram(anchors: Tensor) -> Tensor:
    """(C, C) cosine similarities of the rows of ``anchors`` (C, d), float64."""
    unit = F.normalize(anchors.double(), dim=1)
    return unit @ unit.T


def etf_gram(num_classes: int) -> Tensor:
    """The simplex ETF's Gram: 1 on the diagonal, ``-1/(C-1)`` elsewhere."""
    c = num_classes
    off = -1.0 / (c - 1)
    return torch.full((c, c), off, dtype=torch.float64).fill_diagonal_(1.0)


def toward_etf(gram: Tensor, mix: float) -> Tensor:
    """``(1 - mix) * gram + mix * ETF``: mix 0 keeps the anchors, 1 is FedETF's frame."""
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"the ETF mix must lie in [0, 1], got {mix}")
    return (1.0 - mix) * gram + mix * etf_gram(len(gram))


def frame_from_gram(gram: Tensor) -> Tensor:
    """(C, C) unit class vectors whose cosines are ``gram`` (float32).

    The symmetric square root: rows of ``U sqrt(L) U^T`` (``gram = U L U^T``,
    negative eigenvalues of a nearly singular mix clipped to 0).
    """
    values, vectors = torch.linalg.eigh(gram.double())
    root = vectors @ torch.diag(values.clamp(min=0.0).sqrt()) @ vectors.T
    return F.normalize(root, dim=1).float()


def anchor_frame(text: Tensor, visual: Tensor, source: str, etf_mix: float) -> Tensor:
    """The classifier frame (C, C) from SemanticFL's anchors (each (C, d)).

    ``source``: ``visual``, ``text`` or ``fused`` (the mean of the two Grams,
    i.e. the concatenation of the unit anchors).
    """
    if source not in SOURCES:
        raise ValueError(
            f"unknown anchor source {source!r}; valid: {', '.join(SOURCES)}"
        )
    if source == "visual":
        gram = cosine_gram(visual)
    elif source == "text":
        gram = cosine_gram(text)
    else:
        gram = 0.5 * (cosine_gram(visual) + cosine_gram(text))
    return frame_from_gram(toward_etf(gram, etf_mix))


def align_rows(source: Tensor, target: Tensor) -> Tensor:
    """``source`` (C, d) rotated onto ``target`` (C, d), rows unit length.

    Orthogonal Procrustes (Schönemann, Psychometrika 1966): the rotation R
    minimising ``||source R - target||_F`` is ``U V^T`` for the SVD
    ``source^T target = U S V^T``. A rotation keeps every cosine among the
    source rows, so SemanticFL's text anchors keep the text encoder's class
    geometry while they move into the visual anchors' axes
    (``text-anchor-map = "aligned"``, ours): a client embedding that sits near
    its class's visual anchor then also sits near its text anchor.
    """
    if source.shape != target.shape:
        raise ValueError(
            f"rows to align must have one shape; got {tuple(source.shape)} "
            f"and {tuple(target.shape)}"
        )
    u, _, vh = torch.linalg.svd(source.double().T @ target.double())
    return F.normalize((source.double() @ (u @ vh)).to(source.dtype), dim=1)
