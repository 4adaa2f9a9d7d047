"""The types of a result profile: :class:`Profile`, its validation and cost model.

A :class:`Profile` is typed, validated data (the methods, scenarios, seeds and
rounds of the matrix, the shared run-config keys, the performance measurements,
a :class:`CostModel` for the time estimate, its :class:`Deviation` entries);
validation refuses one that changes a paper setting without declaring it. The
concrete profiles: ``benchmarks/profiles.py``; the papers' protocol they are
compared with: ``benchmarks/protocol.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from benchmarks.matrix import APP_DIR, method_overrides
from benchmarks.protocol import (
    COMMON_DEVIATIONS,
    PAPER_PROTOCOL,
    PAPER_SCENARIOS,
    PAPER_SEEDS,
    REFERENCE,
    SPLITS,
    Deviation,
)
from common.methods import get_method
from deploy.local_sim import resolve_config

TRAIN_SIZE = 60_000  # Fashion-MNIST train set (the cost model is CPU-only)


class ProfileError(ValueError):
    """A profile is inconsistent, names unknown cells or hides a deviation."""


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
    # The zero-shot teacher (the guided methods' default): every client
    # sample's denoising errors, 60 U-Net passes each, once per store.
    teacher_s_per_sample: float = 0.0


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
    last_k: int = 6  # the primary statistic: mean accuracy of the last K rounds
    client_gpus: float = 0.0  # GPU share Ray reserves per ClientApp (CUDA profiles)

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
        cuda = str(self.config.get("device", "cpu")).startswith("cuda")
        if cuda != (self.client_gpus > 0) or self.client_gpus < 0:
            raise ProfileError(
                f"profile {self.name!r}: client_gpus = {self.client_gpus} with device "
                f"{self.config.get('device', 'cpu')!r}; a CUDA profile needs a GPU "
                "share per client (Ray hides the GPU from a client with none), a "
                "CPU profile none"
            )
        if self.last_k < 2 or self.last_k % 2 or self.last_k > self.rounds:
            raise ProfileError(
                f"profile {self.name!r}: last_k = {self.last_k} is invalid; expected "
                f"an even number of rounds in [2, rounds={self.rounds}] (even, so "
                "the 2-round cycle of full participation cancels)"
            )
        reserved = {"method", "seed", "num-server-rounds", "run-name", "output-dir"}
        clash = sorted(reserved & set(self.config) | set(self.requires) & reserved)
        if clash:
            raise ProfileError(
                f"profile {self.name!r}: {clash} are set per cell, not in config"
            )
        # Every method and the shared config must pass the apps' own validation.
        for method in self.methods:
            try:
                overrides = {**self.config, **method_overrides(method)}
                overrides.update({k: "<given>" for k in self.requires})
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
        per_round = max(
            1, round(cfg.federation.fraction_train * cfg.federation.num_clients)
        )
        trained = per_round * cap * cfg.sgd.local_epochs
        pool = TRAIN_SIZE - cfg.data.public_split_size
        seen, taught, out = 0.0, 0.0, []
        for label in (cell.method for cell in cells):
            factor = c.method_factor.get(label, max(c.method_factor.values()))
            seconds = c.startup_s + self.rounds * (
                c.eval_s + factor * c.train_s_per_sample * trained
            )
            # The one-off work before round 1, by what the method prepares.
            method = get_method(method_overrides(label)["method"])
            prepares = method.prepares
            if prepares == "instance-features":  # the store fills up once
                new = min(cfg.federation.num_clients * cap, pool) * (1 - seen / pool)
                seen += new
                seconds += new * c.extraction_s_per_sample
            if prepares == "class-anchors":
                seconds += c.anchors_s
            if cfg.with_overrides(method_overrides(label)).zero_shot_teacher:
                new = min(cfg.federation.num_clients * cap, pool) * (1 - taught / pool)
                taught += new
                seconds += new * c.teacher_s_per_sample
            if prepares == "generated-set" and method.model == "classifier":
                seconds += c.generation_s  # fedavg-adapt's images
            out.append(seconds)
        return out
