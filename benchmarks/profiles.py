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
- ``decisive``: the two skewed splits with 5 seeds, every method and the two
  controls, for paired gains with 95% intervals (about 6 h 20 min; the
  4-hour target is not met with 12 methods, docs/results.md);
- ``smoke``: a few minutes, to check the whole pipeline end to end.

Adding a method to the comparison is one line: its name in ``METHODS``.

The profiles' types live in ``benchmarks/profile_spec.py`` and the papers'
protocol in ``benchmarks/protocol.py``; every name stays importable from here.
"""

from __future__ import annotations

from benchmarks.profile_spec import (
    TRAIN_SIZE,
    CostModel,
    PerfPlan,
    Profile,
    ProfileError,
)
from benchmarks.protocol import (
    COMMON_DEVIATIONS,
    DECISIVE_METHODS,
    METHODS,
    PAPER_PROTOCOL,
    PAPER_SCENARIOS,
    PAPER_SEEDS,
    REFERENCE,
    SPLITS,
    Deviation,
)

__all__ = [
    "COMMON_DEVIATIONS",
    "CPU_COST",
    "DECISIVE_COST",
    "METHODS",
    "PAPER_PROTOCOL",
    "PAPER_SCENARIOS",
    "PAPER_SEEDS",
    "PROFILES",
    "REFERENCE",
    "SPLITS",
    "TRAIN_SIZE",
    "CostModel",
    "Deviation",
    "PerfPlan",
    "Profile",
    "ProfileError",
    "get_profile",
]


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
        # Not measured yet (the max above is used until they are): FedAvgM and
        # FedAdam add a server step of milliseconds; fedetf a C x C matmul;
        # fedavg-public fedavg-adapt's fine-tune.
        "fedavgm": 1.0,
        "fedadam": 1.0,
        "fedetf": 1.0,
        "fedavg-public": 1.09,
    },
    extraction_s_per_sample=297 / 25_669,
    anchors_s=4.0,
    generation_s=23.0,
    source="benchmarks/results/reduced/cells.csv (the reduced profile's own "
    "cells, idle 2-core machine); FedDifRC extraction: benchmarks/results/"
    "guided-timing",
)

# The decisive profile's own cells (benchmarks/results/decisive-aggregated/
# cells.csv: 100 cells, 10 clients x 1,000 samples every round, medians per
# method, an idle 2-core AMD EPYC of the faster kind): a FedAvg round 10.5 s,
# of which 8.0 s training; a cell 141 s. The slower EPYC part we also get
# takes about 2.5x as long (a FedAvg cell about 6 min); the live ETA, from
# the cells' own times, corrects for the machine.
DECISIVE_COST = CostModel(
    startup_s=15.0,
    eval_s=3.0,  # the 10,000 test images, with BatchNorm recomputed on 2,000
    train_s_per_sample=8.0 / 10_000,
    method_factor={
        "fedavg": 1.0,
        "fedprox": 1.15,
        "moon": 1.69,
        "fedavgm": 1.04,
        "fedadam": 1.04,
        "fedetf": 1.01,
        "feddifrc": 1.10,
        "semanticfl": 0.99,
        "feddifrc-paper": 1.10,
        "semanticfl-paper": 0.99,
        "fedavg-adapt": 1.03,
        "fedavg-public": 0.94,
    },
    extraction_s_per_sample=297 / 25_669,
    anchors_s=8.0,
    generation_s=46.0,
    # The teacher: 8,620 samples' errors in 1,253 s on the slower EPYC part
    # (semanticfl-zs-balanced, Dirichlet 0.05, seed 0), over the parts' 2.5x.
    teacher_s_per_sample=1253 / 8620 / 2.5,
    source="benchmarks/results/decisive-aggregated/cells.csv (this profile's "
    "own cells before eval-bn-images, idle 2-core AMD EPYC, the faster part)",
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
        # Five ClientApps train per round (fraction 0.5 of 10): 0.2 each lets
        # all five share the GPU at once.
        client_gpus=0.2,
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
    "decisive": Profile(
        name="decisive",
        description="the two skewed splits, 5 seeds, every method, the guided "
        "methods' papers' forms and both controls: paired gains with 95% "
        "intervals (about 6 h 20 min on 2 idle CPU cores of the faster kind)",
        methods=DECISIVE_METHODS,
        scenarios=("dir0.05", "extreme"),
        seeds=(0, 1, 2, 3, 4),
        rounds=12,
        config={
            "dataset": "fashion-mnist",
            "model-width": 16,
            "num-clients": 10,
            # Every client every round: the seed alone fixes who trains, so
            # methods are paired on the same rounds (Flower's sampling is not
            # seeded), and the 2-round cycle of full participation cancels in
            # the mean of the last 6 rounds.
            "fraction-train": 1.0,
            "local-epochs": 1,
            "max-samples-per-client": 1000,
            "public-split-size": 10_000,
            "guidance-model": "embedded",
            # Score the global weights with BatchNorm statistics recomputed
            # on 2,000 unlabelled public images (the same for every method):
            # averaged over skewed clients they match no data, and that
            # mismatch, not the weights, made much of the round-to-round
            # swing and the spread over seeds (docs/results.md).
            "eval-bn-images": 2000,
            # One split for every seed: at Dirichlet 0.05 the split itself
            # moved FedAvg's last-6 mean between 43% and 59% over seeds, a
            # spread that paired seeds only partly cancel. The seed still
            # draws the models, the batches and everything else.
            "partition-seed": 0,
            # Every client holds out 10% and scores it each round: the
            # guided methods' settings are chosen on these scores, never
            # on the test set (the same runs report the test accuracy).
            "validation-fraction": 0.1,
            "fraction-evaluate": 1.0,
        },
        deviations=(
            *_CPU_DEVIATIONS,
            _dev(
                "eval-bn-images",
                "2000",
                "the weights scored with BatchNorm statistics that fit them: "
                "less spread over seeds, so smaller gains resolve",
            ),
            _dev("fraction-train", "1.0", "paired seeds: the same clients every round"),
            _dev("num-server-rounds", "12", "time budget (last-6 mean: rounds 7-12)"),
            _dev("local-epochs", "1", "time budget"),
            _dev("max-samples-per-client", "1000", "time budget"),
            _dev(
                "scenarios", "dir0.05, extreme", "the two skewed splits, where drift is"
            ),
            _dev("seeds", "5 (seeds 0-4)", "a 95% interval and an MDE per scenario"),
        ),
        perf=PerfPlan(),
        cost=DECISIVE_COST,
        notes=(
            "Primary statistic: the mean of the central test accuracy over the "
            "last 6 rounds (K even: a 2-round cycle cancels); final and best "
            "round are reported beside it, labelled.",
            "One client split for every seed (partition-seed 0): the spread over "
            "seeds is the training's, not the split's.",
            "Each client holds out 10% of its data (validation-fraction 0.1) and "
            "scores it every round; settings are chosen on those scores, never on "
            "the test set.",
        ),
    ),
    "smoke": Profile(
        name="smoke",
        description="a few minutes: every method and step end to end, numbers "
        "meaningless",
        methods=METHODS,
        scenarios=("dir0.5",),
        seeds=(0, 1),
        rounds=2,
        last_k=2,
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
