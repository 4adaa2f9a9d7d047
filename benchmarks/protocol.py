"""The papers' protocol the result profiles are measured against.

The methods and client splits of the comparison, the FedDifRC / SemanticFL
settings (:data:`PAPER_PROTOCOL`, docs/profiles.md "paper") and the deviations
of ours that hold in every profile. The profiles themselves:
``benchmarks/profiles.py``; their types: ``benchmarks/profile_spec.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from benchmarks.matrix import SCENARIOS

# The methods compared, in table order; FedAvg first (the gains' reference).
METHODS: tuple[str, ...] = (
    "fedavg",
    "fedprox",
    "moon",
    "feddifrc",
    "semanticfl",
    "fedavg-adapt",  # FedDDPM-style classifier adaptation (ours, docs/fedddpm.md)
)
REFERENCE = "fedavg"

# The decisive comparison: the baselines a practitioner tries first (server
# momentum, an adaptive server optimiser), the guided methods, and the two
# controls that say where a gain comes from (fedetf: a fixed classifier with
# no diffusion model; fedavg-public: the labelled data behind the generator).
# The guided methods twice: their defaults (the zero-shot teacher) and their
# papers' forms (benchmarks.matrix.VARIANTS).
DECISIVE_METHODS: tuple[str, ...] = (
    "fedavg",
    "fedprox",
    "moon",
    "fedavgm",
    "fedadam",
    "fedetf",
    "feddifrc",
    "semanticfl",
    "feddifrc-paper",
    "semanticfl-paper",
    "fedavg-adapt",
    "fedavg-public",
)

# Client splits: the matrix's, plus the papers' middle Dirichlet level (NID1
# alpha = 0.2), which only the paper profile runs. It stays out of
# matrix.SCENARIOS, the valid set of the older benchmarks' CLIs.
SPLITS: dict[str, dict[str, Any]] = {
    **SCENARIOS,
    "dir0.2": {"partitioner": "dirichlet", "dirichlet-beta": 0.2},
}

# The FedDifRC / SemanticFL protocol (docs/profiles.md, "paper"): the released
# FedDifRC code's defaults, which SemanticFL's table reuses.
PAPER_PROTOCOL: dict[str, Any] = {
    "dataset": "cifar10",
    "model": "resnet10",
    "model-width": 64,
    "num-clients": 10,
    "fraction-train": 0.5,
    "num-server-rounds": 50,
    "local-epochs": 10,
    "batch-size": 64,
    "learning-rate": 0.01,
    "momentum": 0.9,
    "weight-decay": 1e-5,
    "augment": True,
    "max-samples-per-client": 0,
    "guidance-model": "Stable Diffusion (1.5 or 2.1)",
    # The papers score the global model as aggregated, BatchNorm statistics
    # included (0: none recomputed).
    "eval-bn-images": 0,
}
PAPER_SCENARIOS = ("dir0.05", "dir0.2", "dir0.5", "extreme")
PAPER_SEEDS = 1  # FedDifRC's code: one run, seed 7

# Deviations of ours that hold in every profile (structure, not settings).
COMMON_DEVIATIONS: tuple[tuple[str, str, str, str], ...] = (
    (
        "partitioner",
        "FedDifRC's equal-size Dirichlet (every client the same size)",
        "flwr-datasets DirichletPartitioner (unequal client sizes)",
        "the project's partitioner (docs/profiles.md)",
    ),
    (
        "NID2",
        "not defined in the papers (FedDisco's NIID-2: 2-class clients + 1 unbiased)",
        "'extreme': single-class clients + one client with every class",
        "our reading of NID2 (docs/profiles.md)",
    ),
    (
        "public split",
        "none: every training image goes to a client",
        "public-split-size images held by the server, no client gets them",
        "the guidance projection and SemanticFL's visual anchors are fitted on it",
    ),
)


@dataclass(frozen=True)
class Deviation:
    """One way a profile differs from the papers' protocol, and why."""

    what: str
    paper: str
    here: str
    why: str
