"""Non-IID partitioning of a training set across clients.

:func:`split_dataset` is the one entry point. It works on labels only and returns
indices into the training set, so every process (each client, the server) computes
the same split from the same config without moving data around:

1. carve the server-held **public split** first (stratified, ``public_size``
   samples, drawn with the fixed :data:`PUBLIC_SPLIT_SEED`, not the run seed, so
   the same size always means the same images: a guidance model pretrained on
   the public split has seen no client's data whatever seed a run uses); no
   client ever gets those indices;
2. split the remaining pool across ``num_partitions`` clients with the named
   partitioner;
3. cap each client at ``max_per_client`` samples (the cpu profile's knob).

Partitioners (:data:`PARTITIONERS`):

- ``iid``: flwr-datasets ``IidPartitioner`` over a seeded shuffle;
- ``dirichlet``: flwr-datasets ``DirichletPartitioner`` (label skew,
  concentration ``beta``; seeded, at most 10 resamplings to meet the minimum
  partition size);
- ``extreme``: FedDifRC's "NID2"-style pathological split as our issue defines it:
  ``num_partitions - 1`` single-class clients (class ``i mod C``) plus one client
  that holds every class. Each class gives ``1 / num_partitions`` of its samples
  to the all-class client and splits the rest evenly among its single-class
  clients; a class with no single-class client goes wholly to the all-class
  client. (The papers do not define NID2; FedDisco's NIID-2 uses 2 classes per
  biased client. This is our reading of "single-class clients".)
- ``longtail-dirichlet``: exponential long-tail subsampling first (class ``c``
  keeps ``n_c * rho ** (-c / (C - 1))`` samples, FedDifRC's
  ``long_tailed_cifar10.py`` with ``imb = 1 / rho``), then ``dirichlet``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from common import seeding


@dataclass(frozen=True)
class Partitioning:
    """How to split a training set (mirrors the data keys of the run config)."""

    name: str
    num_partitions: int
    beta: float = 0.5
    rho: float = 10.0
    min_size: int = 10
    max_per_client: int = 0
    public_size: int = 0
    seed: int = 42


@dataclass(frozen=True)
class DataSplit:
    """Indices into the training set: the public split and one array per client."""

    public: np.ndarray
    clients: list[np.ndarray]

    def label_counts(self, labels: np.ndarray, num_classes: int) -> np.ndarray:
        """(num_clients, num_classes) table of how many samples of each class."""
        return np.stack(
            [np.bincount(labels[idx], minlength=num_classes) for idx in self.clients]
        )

    def public_slice(self, size: int, seed: int, salt: int) -> np.ndarray:
        """Training-set indices of a seeded slice of the public split (sorted).

        For the server's own checks (FedDDPM+'s trigger loss, the classifier
        adaptation's validation); ``salt`` keeps each user's draw its own.
        """
        rng = np.random.default_rng([seed, salt])
        size = min(size, len(self.public))
        return self.public[np.sort(rng.choice(len(self.public), size, replace=False))]


Partitioner = Callable[[np.ndarray, Partitioning], list[np.ndarray]]


def _flwr_partition(labels: np.ndarray, partitioner) -> list[np.ndarray]:
    """Run a flwr-datasets partitioner on in-memory labels; return positions."""
    import datasets  # imported lazily: ~1 s, and only partitioning needs it

    ds = datasets.Dataset.from_dict(
        {"label": labels.tolist(), "position": np.arange(len(labels)).tolist()}
    )
    partitioner.dataset = ds
    return [
        np.asarray(partitioner.load_partition(i)["position"], dtype=np.int64)
        for i in range(partitioner.num_partitions)
    ]


def iid(labels: np.ndarray, p: Partitioning) -> list[np.ndarray]:
    """Uniformly random, equal-size partitions."""
    from flwr_datasets.partitioner import IidPartitioner

    # IidPartitioner takes contiguous shards; shuffle first so shards are random.
    order = np.random.default_rng(p.seed).permutation(len(labels))
    parts = _flwr_partition(labels[order], IidPartitioner(p.num_partitions))
    return [order[part] for part in parts]


def dirichlet(labels: np.ndarray, p: Partitioning) -> list[np.ndarray]:
    """Label skew: each class is split across clients by Dir(beta) proportions."""
    from flwr_datasets.partitioner import DirichletPartitioner

    partitioner = DirichletPartitioner(
        num_partitions=p.num_partitions,
        partition_by="label",
        alpha=p.beta,
        min_partition_size=p.min_size,
        self_balancing=False,
        shuffle=True,
        seed=p.seed,
    )
    try:
        # flwr-datasets warns on every resampling; the outcome is what matters.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return _flwr_partition(labels, partitioner)
    except ValueError as exc:
        raise ValueError(
            f"dirichlet split of {len(labels)} samples into {p.num_partitions} "
            f"clients with beta={p.beta} could not give every client at least "
            f"min-partition-size={p.min_size} samples ({exc}). Raise dirichlet-beta, "
            "lower min-partition-size or use fewer clients."
        ) from exc


def extreme(labels: np.ndarray, p: Partitioning) -> list[np.ndarray]:
    """Single-class clients plus one client holding every class (module docstring)."""
    if p.num_partitions < 2:
        raise ValueError("the extreme split needs num-clients >= 2")
    rng = np.random.default_rng(p.seed)
    num_classes = int(labels.max()) + 1
    biased = p.num_partitions - 1
    parts: list[list[np.ndarray]] = [[] for _ in range(p.num_partitions)]
    for c in range(num_classes):
        idx = rng.permutation(np.flatnonzero(labels == c))
        owners = [i for i in range(biased) if i % num_classes == c]
        if not owners:
            parts[-1].append(idx)
            continue
        n_all = len(idx) // p.num_partitions
        parts[-1].append(idx[:n_all])
        for owner, chunk in zip(
            owners, np.array_split(idx[n_all:], len(owners)), strict=True
        ):
            parts[owner].append(chunk)
    return [rng.permutation(np.concatenate(chunks)) for chunks in parts]


def longtail_subsample(labels: np.ndarray, rho: float, seed: int) -> np.ndarray:
    """Positions kept by exponential long-tail subsampling (class 0 keeps all)."""
    rng = np.random.default_rng(seed)
    num_classes = int(labels.max()) + 1
    kept = []
    for c in range(num_classes):
        idx = rng.permutation(np.flatnonzero(labels == c))
        keep = int(len(idx) * rho ** (-c / max(num_classes - 1, 1)))
        kept.append(idx[: max(keep, 1)])
    return np.sort(np.concatenate(kept))


def longtail_dirichlet(labels: np.ndarray, p: Partitioning) -> list[np.ndarray]:
    """Long-tail subsampling with ratio rho, then a Dirichlet(beta) split."""
    kept = longtail_subsample(labels, p.rho, p.seed)
    return [kept[part] for part in dirichlet(labels[kept], p)]


PARTITIONERS: dict[str, Partitioner] = {
    "iid": iid,
    "dirichlet": dirichlet,
    "extreme": extreme,
    "longtail-dirichlet": longtail_dirichlet,
}


PUBLIC_SPLIT_SEED = 20_260_000


def carve_public_split(
    labels: np.ndarray, size: int, seed: int = PUBLIC_SPLIT_SEED
) -> np.ndarray:
    """A stratified, seeded subset of ``size`` positions held by the server."""
    if size == 0:
        return np.zeros(0, dtype=np.int64)
    if size >= len(labels):
        raise ValueError(
            f"public-split-size={size} leaves no data for clients "
            f"(the training set has {len(labels)} samples)"
        )
    rng = np.random.default_rng(seed)
    num_classes = int(labels.max()) + 1
    per_class = np.bincount(labels, minlength=num_classes)
    # Largest-remainder allocation keeps the class mix of the full set.
    quota = per_class / per_class.sum() * size
    take = np.floor(quota).astype(int)
    take[np.argsort(quota - take)[::-1][: size - take.sum()]] += 1
    chosen = [
        rng.permutation(np.flatnonzero(labels == c))[: take[c]]
        for c in range(num_classes)
    ]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def split_dataset(labels: np.ndarray, p: Partitioning) -> DataSplit:
    """Public split + per-client index arrays into ``labels`` (module docstring)."""
    if p.name not in PARTITIONERS:
        raise ValueError(
            f"unknown partitioner {p.name!r}; valid: {', '.join(sorted(PARTITIONERS))}"
        )
    if p.num_partitions < 1:
        raise ValueError(f"num-clients must be >= 1, got {p.num_partitions}")
    labels = np.asarray(labels, dtype=np.int64)
    public = carve_public_split(labels, p.public_size)
    pool = np.setdiff1d(np.arange(len(labels)), public, assume_unique=True)
    if p.num_partitions > len(pool):
        raise ValueError(
            f"num-clients={p.num_partitions} is more than the {len(pool)} training "
            "samples available to clients; use fewer clients"
        )
    parts = PARTITIONERS[p.name](labels[pool], p)
    clients = [pool[part] for part in parts]
    if p.max_per_client > 0:
        rng = np.random.default_rng(p.seed + seeding.CLIENT_CAP_OFFSET)
        clients = [
            np.sort(rng.choice(c, p.max_per_client, replace=False))
            if len(c) > p.max_per_client
            else c
            for c in clients
        ]
    empty = [i for i, c in enumerate(clients) if len(c) == 0]
    if empty:
        raise ValueError(
            f"partitioner {p.name!r} left client(s) {empty} with no data; use fewer "
            "clients or a less extreme split"
        )
    return DataSplit(public=public, clients=clients)
