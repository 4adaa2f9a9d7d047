"""Linear maps into the d-dim guidance space: the (whitened) PCA projection and the text map.

The projection is fitted ONCE per store on the raw features of a fit subset and
saved next to the features (FedDifRC refits PCA on every batch, so its component
k means something else in every batch; see ``docs/guidance-features.md``,
"Two bugs of FedDifRC's released code").
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor

from common.io import atomic_write


@dataclass(frozen=True)
class Projection:
    """x -> normalize((x - mean) @ components): raw width r to d, then unit length.

    Attributes
    ----------
    mean : Tensor
        (r,) float32 mean of the fit subset's raw features.
    components : Tensor
        (r, d) float32, principal directions as columns: orthonormal (PCA), or
        each divided by the fit subset's standard deviation along it
        (whitened). When the raw width (or the fit subset) has rank k < d, the
        last d - k columns are zero: the features then span a k-dim subspace
        of R^d. Unwhitened, the map is a rotation of the centred data, so
        cosine similarities are exactly those of the centred raw features.
    rank : int
        Number of non-zero columns.
    """

    mean: Tensor
    components: Tensor
    rank: int

    @property
    def dim(self) -> int:
        """Output dimension d."""
        return int(self.components.shape[1])

    @classmethod
    def fit(cls, raw: Tensor, dim: int, *, whiten: bool = False) -> Projection:
        """PCA of ``raw`` (n, r) keeping ``dim`` directions (zero-padded if fewer).

        Done in float64 with a sign convention (each direction's largest entry
        positive), so the same fit data gives the same projection. ``whiten``
        scales each direction to unit variance on ``raw``: in the embedded
        model's features a handful of directions carry most of the variance,
        so unwhitened cosines, and the class anchors built from them, are
        nearly those few directions (docs/guidance-features.md).
        """
        x = raw.double()
        mean = x.mean(0)
        _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
        tol = s.max().clamp_min(1e-300) * max(x.shape) * torch.finfo(torch.float64).eps
        rank = int(min(dim, (s > tol).sum().item()))
        comps = vh[:rank].T  # (r, rank)
        idx = comps.abs().argmax(0)
        comps = comps * torch.sign(comps[idx, torch.arange(rank)])
        if whiten:
            comps = comps / (s[:rank] / max(len(x) - 1, 1) ** 0.5)
        full = torch.zeros(x.shape[1], dim, dtype=torch.float64)
        full[:, :rank] = comps
        return cls(mean.float(), full.float(), rank)

    def whitened(self, raw: Tensor) -> Projection:
        """These directions, each scaled to unit variance on ``raw`` (n, r).

        Equals :meth:`fit` with ``whiten=True`` on the data this projection was
        fitted on, and keeps exactly this projection's mean and directions, so
        its features are this projection's rescaled (:mod:`.derive`).
        """
        coords = (raw.double() - self.mean.double()) @ self.components.double()
        std = coords[:, : self.rank].std(0, correction=1).clamp_min(1e-30)
        comps = self.components.double().clone()
        comps[:, : self.rank] /= std
        return Projection(self.mean.clone(), comps.float(), self.rank)

    def __call__(self, raw: Tensor) -> Tensor:
        """Project (..., r) raw features to unit-length (..., d) features."""
        out = (raw.float() - self.mean) @ self.components
        return F.normalize(out, dim=-1)

    def save(self, path: Path, metadata: dict[str, str] | None = None) -> str:
        """Write atomically as safetensors; return the file's SHA-256."""
        tensors = {
            "mean": self.mean.contiguous(),
            "components": self.components.contiguous(),
            "rank": torch.tensor([self.rank]),
        }
        atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))
        return file_sha256(path)

    @classmethod
    def load(cls, path: Path) -> Projection:
        """Read a projection written by :meth:`save`."""
        t = load_file(str(path))
        return cls(t["mean"], t["components"], int(t["rank"].item()))


def text_map(width: int, dim: int, seed: int) -> Tensor:
    """A seeded random orthonormal map (width, dim) for text embeddings.

    When ``width <= dim`` its rows are orthonormal, so the map is an isometry
    (dot products and cosines of text embeddings are kept exactly); when
    ``width > dim`` its columns are orthonormal: a projection on a random
    d-dim subspace, which keeps cosines only approximately.
    """
    g = torch.Generator().manual_seed(int(seed))
    big, small = max(width, dim), min(width, dim)
    q, r = torch.linalg.qr(torch.randn(big, small, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))  # QR is unique only up to signs
    return (q.T if width <= dim else q).float()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
