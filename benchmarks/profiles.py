"""Result profiles: which cells the comparison runs, and how far from the papers.

A :class:`Profile` is typed, validated data: the methods, scenarios, seeds and
rounds of the matrix, the run-config keys every cell shares, the performance
measurements to take, a cost model for the time estimate, and every deviation
from the papers' protocol (:data:`PAPER_PROTOCOL`). Validation refuses a
profile that changes a paper setting without declaring it.

- ``paper``: the papers' protocol on a GPU (CIFAR-10, Stable Diffusion from a
  folder the user names, ResNet-10 at full width, 10 clients with 5 per round,
  50 rounds of 10 local epochs);
- ``reduced``: what 2 idle CPU cores finish in about 2 h 15 min (Fashion-MNIST,
  the embedded guidance model, ResNet-10 at width 16);
- ``smoke``: a few minutes, to check the whole pipeline end to end.

Adding a method to the comparison is one line: its name in ``METHODS``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from benchmarks.matrix import APP_DIR, SCENARIOS, VARIANTS
from deploy.local_sim import resolve_config

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
}
PAPER_SCENARIOS = ("dir0.05", "dir0.2", "dir0.5", "extreme")
TRAIN_SIZE = 60_000  # Fashion-MNIST train set (the cost model is CPU-only)
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


class ProfileError(ValueError):
    """A profile is inconsistent, names unknown cells or hides a deviation."""


@dataclass(frozen=True)
class Deviation:
    """One way a profile differs from the papers' protocol, and why."""

    what: str
    paper: str
    here: str
    why: str


@dataclass(frozen=True)
class PerfPlan:
    """Sizes of the side-by-side performance measurements (kept cheap on CPU)."""

    extraction_samples: int = 256  # batched extraction (and bare passes)
    naive_samples: int = 64  # one image per call
    repeats: int = 1
    overhead_rounds: int = 3  # Flower round vs plain PyTorch
    overhead_clients: int = 4
    overhead_samples: int = 1000  # per client


@dataclass(frozen=True)
class CostModel:
    """Seconds a cell takes, for the estimate printed before a profile runs.

    ``round_s`` = ``eval_s`` + ``train_s_per_sample`` x samples trained per
    round (clients per round x samples per client x local epochs), times the
    method's factor; a cell adds ``startup_s`` and its one-off guidance work.
    """

    startup_s: float
    eval_s: float
    train_s_per_sample: float
    method_factor: dict[str, float]
    extraction_s_per_sample: float  # FedDifRC: every client sample, 10 prompts
    anchors_s: float  # SemanticFL: class anchors per cell
    generation_s: float  # fedavg-adapt: its labelled images, once per cell
    source: str


@dataclass(frozen=True)
class Profile:
    """Everything the results runner needs to reproduce one comparison."""

    name: str
    description: str
    methods: tuple[str, ...]
    scenarios: tuple[str, ...]
    seeds: tuple[int, ...]
    rounds: int
    config: dict[str, Any]  # run-config keys every cell shares
    deviations: tuple[Deviation, ...]
    perf: PerfPlan
    cost: CostModel | None = None  # None: no estimate (other hardware)
    requires: tuple[str, ...] = ()  # run-config keys the user must give
    hardware: str = "2 CPU cores"
    notes: tuple[str, ...] = field(default_factory=tuple)

    def validate(self) -> None:
        """Raise :class:`ProfileError` naming the first problem."""
        if not self.methods or REFERENCE not in self.methods:
            raise ProfileError(
                f"profile {self.name!r}: methods {list(self.methods)} must include "
                f"{REFERENCE!r}, the reference of every gain"
            )
        for label, items in (("method", self.methods), ("scenario", self.scenarios)):
            if len(set(items)) != len(items) or not items:
                raise ProfileError(f"profile {self.name!r}: repeated or no {label}s")
        unknown = [s for s in self.scenarios if s not in SPLITS]
        if unknown:
            raise ProfileError(
                f"profile {self.name!r}: unknown scenario(s) {unknown}; valid: "
                f"{', '.join(SPLITS)}"
            )
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ProfileError(f"profile {self.name!r}: seeds must be distinct, >= 1")
        if self.rounds < 1:
            raise ProfileError(f"profile {self.name!r}: rounds must be >= 1")
        reserved = {"method", "seed", "num-server-rounds", "run-name", "output-dir"}
        clash = sorted(reserved & set(self.config) | set(self.requires) & reserved)
        if clash:
            raise ProfileError(
                f"profile {self.name!r}: {clash} are set per cell, not in config"
            )
        # Every method and the shared config must pass the apps' own validation.
        for method in self.methods:
            overrides = {**self.config, **VARIANTS.get(method, {"method": method})}
            overrides.update({k: "<given>" for k in self.requires})
            try:
                resolve_config(APP_DIR, overrides)
            except ValueError as exc:
                raise ProfileError(f"profile {self.name!r}, {method}: {exc}") from None
        undeclared = [k for k in self.setting_deviations() if k not in self._declared()]
        if undeclared:
            raise ProfileError(
                f"profile {self.name!r} differs from the papers in {undeclared} "
                "without a Deviation entry saying so"
            )

    def _declared(self) -> set[str]:
        return {d.what for d in self.deviations}

    def settings(self) -> dict[str, Any]:
        """The resolved value of every papers' key in this profile."""
        cfg = resolve_config(
            APP_DIR, {**self.config, **{k: "<given>" for k in self.requires}}
        ).to_run_config()
        out = {k: cfg[k] for k in PAPER_PROTOCOL if k != "guidance-model"}
        out["guidance-model"] = self.config.get("guidance-model", "<given>")
        out["num-server-rounds"] = self.rounds
        out["scenarios"] = ", ".join(self.scenarios)
        out["seeds"] = len(self.seeds)
        return out

    def setting_deviations(self) -> list[str]:
        """Papers' keys whose value here differs from :data:`PAPER_PROTOCOL`."""
        paper = {
            **PAPER_PROTOCOL,
            "scenarios": ", ".join(PAPER_SCENARIOS),
            "seeds": PAPER_SEEDS,
        }
        here = self.settings()
        keys = [k for k in paper if k != "guidance-model" and here[k] != paper[k]]
        if self.config.get("guidance-model") == "embedded":
            keys.append("guidance-model")
        return keys

    def all_deviations(self) -> list[Deviation]:
        """The profile's deviations, then the ones every profile shares."""
        return [*self.deviations, *(Deviation(*d) for d in COMMON_DEVIATIONS)]

    def estimate(self, cells: list[Any]) -> list[float]:
        """Seconds each :class:`~benchmarks.matrix.Cell` is expected to take, in order.

        FedDifRC's extraction fills one shared store: a cell pays only for the
        samples no earlier cell extracted (expected share under random
        overlap). All zeros without a cost model.
        """
        c = self.cost
        if c is None:
            return [0.0] * len(cells)
        cfg = resolve_config(
            APP_DIR, {**self.config, **{k: "<given>" for k in self.requires}}
        )
        cap = cfg.data.max_samples_per_client or TRAIN_SIZE
        per_round = max(1, round(cfg.federation.fraction_train * cfg.federation.num_clients))
        trained = per_round * cap * cfg.sgd.local_epochs
        pool = TRAIN_SIZE - cfg.data.public_split_size
        seen, out = 0.0, []
        for method in (cell.method for cell in cells):
            factor = c.method_factor.get(method, max(c.method_factor.values()))
            seconds = c.startup_s + self.rounds * (
                c.eval_s + factor * c.train_s_per_sample * trained
            )
            if method.startswith("feddifrc"):
                new = min(cfg.federation.num_clients * cap, pool) * (1 - seen / pool)
                seen += new
                seconds += new * c.extraction_s_per_sample
            if method.startswith("semanticfl"):
                seconds += c.anchors_s
            if method.startswith("fedavg-adapt"):
                seconds += c.generation_s
            out.append(seconds)
        return out


def _dev(what: str, here: str, why: str) -> Deviation:
    paper = {**PAPER_PROTOCOL, "scenarios": ", ".join(PAPER_SCENARIOS)}
    paper["seeds"] = f"{PAPER_SEEDS} (seed 7)"
    return Deviation(what, str(paper[what]), here, why)


# Fitted to the reduced profile's own 36 cells (benchmarks/results/reduced/
# cells.csv, idle 2 cores, 2026-11-24): a FedAvg round of 5 clients x 1,500
# samples x 2 epochs takes 11.5 s, of which 3.5 s central evaluation -> 7.9 s /
# 15,000 samples; the method factors are the training phase over FedAvg's
# there; fedavg-adapt's one-off generation about 23 s; a cell's start (flwr
# run, SuperLink, Ray, data) about 30 s. FedDifRC's extraction into an empty
# store: 297 s for 25,669 samples x 10 prompts (benchmarks/results/guided-timing);
# SemanticFL's anchors about 4 s once the projection is in the store.
CPU_COST = CostModel(
    startup_s=30.0,
    eval_s=3.5,
    train_s_per_sample=7.9 / 15_000,
    method_factor={
        "fedavg": 1.0,
        "fedprox": 1.05,
        "moon": 1.52,
        "feddifrc": 0.95,
        "semanticfl": 0.97,
        "fedavg-adapt": 1.09,  # + ~0.7 s of server fine-tuning per round
    },
    extraction_s_per_sample=297 / 25_669,
    anchors_s=4.0,
    generation_s=23.0,
    source="benchmarks/results/reduced/cells.csv (the reduced profile's own "
    "cells, idle 2-core machine); FedDifRC extraction: benchmarks/results/"
    "guided-timing",
)

_CPU_DEVIATIONS = (
    _dev("dataset", "fashion-mnist", "offline default; 28x28 gray fits 2 CPU cores"),
    _dev(
        "model-width",
        "16 (128-d embedding)",
        "4.9 M -> 0.31 M parameters: about 9x faster on CPU (docs/profiles.md)",
    ),
    _dev(
        "guidance-model",
        "embedded (the project's small latent diffusion model)",
        "no GPU and no network here",
    ),
    _dev("augment", "false", "Fashion-MNIST; the papers augment CIFAR"),
)

PROFILES: dict[str, Profile] = {
    "paper": Profile(
        name="paper",
        description="the papers' protocol (FedDifRC / SemanticFL) on a GPU machine",
        methods=METHODS,
        scenarios=PAPER_SCENARIOS,
        seeds=(7,),
        rounds=50,
        config={
            "dataset": "cifar10",
            "model-width": 64,
            "num-clients": 10,
            "fraction-train": 0.5,
            "local-epochs": 10,
            "max-samples-per-client": 0,
            "augment": True,
            "public-split-size": 5000,
            "device": "cuda",
        },
        deviations=(),
        perf=PerfPlan(
            extraction_samples=512,
            naive_samples=128,
            repeats=2,
            overhead_rounds=3,
            overhead_clients=10,
            overhead_samples=2000,
        ),
        requires=("guidance-model", "data-root"),
        hardware="one CUDA GPU",
    ),
    "reduced": Profile(
        name="reduced",
        description="the comparison 2 idle CPU cores finish in about 2 h 15 min",
        methods=METHODS,
        scenarios=("dir0.05", "dir0.5", "extreme"),
        seeds=(0, 1),
        rounds=15,
        config={
            "dataset": "fashion-mnist",
            "model-width": 16,
            "num-clients": 10,
            "fraction-train": 0.5,
            "local-epochs": 2,
            "max-samples-per-client": 1500,
            "public-split-size": 10_000,
            "guidance-model": "embedded",
        },
        deviations=(
            *_CPU_DEVIATIONS,
            _dev("num-server-rounds", "15", "time budget"),
            _dev("local-epochs", "2", "time budget"),
            _dev("max-samples-per-client", "1500", "time budget"),
            _dev(
                "scenarios",
                "dir0.05, dir0.5, extreme",
                "time budget: the papers' extremes, alpha = 0.2 left out",
            ),
            _dev("seeds", "2 (seeds 0, 1)", "a spread over seeds, within the budget"),
        ),
        perf=PerfPlan(),
        cost=CPU_COST,
    ),
    "smoke": Profile(
        name="smoke",
        description="a few minutes: every method and step end to end, numbers "
        "meaningless",
        methods=METHODS,
        scenarios=("dir0.5",),
        seeds=(0, 1),
        rounds=2,
        config={
            "dataset": "fashion-mnist",
            "model-width": 16,
            "num-clients": 3,
            "fraction-train": 1.0,
            "local-epochs": 1,
            "max-samples-per-client": 500,
            "public-split-size": 500,
            "guidance-model": "embedded",
        },
        deviations=(
            *_CPU_DEVIATIONS,
            _dev("num-clients", "3", "smoke test"),
            _dev("fraction-train", "1.0", "smoke test"),
            _dev("num-server-rounds", "2", "smoke test"),
            _dev("local-epochs", "1", "smoke test"),
            _dev("max-samples-per-client", "500", "smoke test"),
            _dev("scenarios", "dir0.5", "smoke test"),
            _dev("seeds", "2 (seeds 0, 1)", "smoke test"),
        ),
        perf=PerfPlan(
            extraction_samples=64,
            naive_samples=16,
            repeats=1,
            overhead_rounds=2,
            overhead_clients=2,
            overhead_samples=200,
        ),
        cost=CPU_COST,
    ),
}


def get_profile(name: str) -> Profile:
    """The named profile, validated."""
    if name not in PROFILES:
        raise ProfileError(f"unknown profile {name!r}; valid: {', '.join(PROFILES)}")
    profile = PROFILES[name]
    profile.validate()
    return profile
