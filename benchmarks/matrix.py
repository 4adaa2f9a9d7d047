"""A resumable matrix of real Flower simulations: methods x scenarios x seeds.

The benchmarks (``baselines``, ``guided``) are presets of this runner. Every
cell is one ``deploy.local_sim`` run with the same base config; only the
method, the scenario's split keys and the seed differ. A "method" is a
registered method name or a *variant*: a label with its own overrides, such as
``semanticfl-mlp`` = SemanticFL with ``guidance-head = "mlp"`` (``VARIANTS``).

A cell whose ``summary.json`` exists and whose recorded config equals the one
asked for is read, not rerun, so an interrupted matrix resumes where it
stopped. A crashed or stale cell's folder is kept under another name.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from common import keys
from common.config import PAPER_FORMS, SECTIONS, RunConfig
from common.config.fields import section_keys
from common.methods import Section, UnknownMethodError, get_method
from deploy.local_sim import resolve_config, run_simulation

APP_DIR = Path(__file__).resolve().parents[1]

# Scenario name -> the run-config keys that define its client split.
SCENARIOS: dict[str, dict[str, Any]] = {
    "dir0.05": {"partitioner": "dirichlet", "dirichlet-beta": 0.05},
    "dir0.1": {"partitioner": "dirichlet", "dirichlet-beta": 0.1},
    "dir0.5": {"partitioner": "dirichlet", "dirichlet-beta": 0.5},
    "extreme": {"partitioner": "extreme"},
    "longtail": {"partitioner": "longtail-dirichlet", "dirichlet-beta": 0.5},
}


# Variant label -> its run-config overrides (a plain method name needs none).
VARIANTS: dict[str, dict[str, Any]] = {
    # The papers' forms (as we read them): the guided methods without the
    # zero-shot teacher that is their default now (PAPER_FORMS).
    "feddifrc-paper": {"method": "feddifrc", **PAPER_FORMS},
    "semanticfl-paper": {"method": "semanticfl", **PAPER_FORMS},
    "feddifrc-mlp": {"method": "feddifrc", **PAPER_FORMS, "guidance-head": "mlp"},
    "semanticfl-mlp": {"method": "semanticfl", **PAPER_FORMS, "guidance-head": "mlp"},
    # Probes of where FedETF's gain comes from and whether diffusion anchors
    # in its place do better (chosen before looking, not tuned).
    "fedetf-ce": {"method": "fedetf", "etf-loss": "ce"},
    "semanticfl-anchors": {
        "method": "semanticfl",
        "anchor-classifier": "visual",
        "anchor-etf-mix": 0.5,
        "kd-form": "classes",
        "kd-weight": 1.0,
        "server-finetune": "none",
    },
    # A protocol probe for the decisive profile's spread: the client learning
    # rate decaying over the rounds (lr-schedule "cosine") lets FedAvg settle.
    # Paired with each other by seed, against the constant rate's pair, it
    # says whether the seeds' spread is end-of-training noise.
    "fedavg-cosine": {"method": "fedavg", "lr-schedule": "cosine"},
    "semanticfl-cosine": {"method": "semanticfl", "lr-schedule": "cosine"},
    # The loss control: FedAvg's own linear head with FedETF's balanced
    # softmax. What a prior-corrected method gains above it is its own.
    "fedavg-balanced": {"method": "fedavg", "ce-loss": "balanced"},
    # The diffusion anchors as the fixed classifier, now with the balanced
    # loss: against fedetf, that isolates the anchors from the random frame.
    "semanticfl-anchors-balanced": {
        "method": "semanticfl",
        "anchor-classifier": "visual",
        "anchor-etf-mix": 0.5,
        "kd-form": "classes",
        "ce-loss": "balanced",
        "kd-weight": 1.0,
        "server-finetune": "none",
    },
    # The diffusion model's own zero-shot posterior of each client image
    # distilled into the classifier (kd-form "posterior"), with plain and
    # with balanced cross-entropy; fedavg and fedavg-balanced are the same
    # runs without the teacher.
    # (The teacher with the balanced softmax at kd-weight 3 is SemanticFL's
    # default: method "semanticfl". These variants ran at weight 1.)
    "semanticfl-zs": {
        "method": "semanticfl",
        "kd-form": "posterior",
        "ce-loss": "ce",
        "kd-weight": 1.0,
        "server-finetune": "none",
    },
    # The default's distillation weight, on either side: weight 1 (the
    # student ended far below its teacher, 62% against 83.5% at Dirichlet
    # 0.05) and weight 10, nearly pure distillation.
    "semanticfl-kd1": {
        "method": "semanticfl",
        "kd-weight": 1.0,
        "server-finetune": "none",
    },
    "semanticfl-kd10": {
        "method": "semanticfl",
        "kd-weight": 10.0,
        "server-finetune": "none",
    },
    # The default's control: the same loss toward each sample's label
    # smoothed by the teacher's mean off-label mass (no per-image diffusion
    # content), at the default's weight and at weight 1.
    "semanticfl-ls-balanced": {
        "method": "semanticfl",
        "kd-form": "posterior",
        "kd-teacher": "smoothed-labels",
        "ce-loss": "balanced",
        "server-finetune": "none",
    },
    "semanticfl-ls-balanced-kd1": {
        "method": "semanticfl",
        "kd-form": "posterior",
        "kd-teacher": "smoothed-labels",
        "ce-loss": "balanced",
        "kd-weight": 1.0,
        "server-finetune": "none",
    },
    # The defaults without fedavg-public's server fine-tune (the teacher on
    # the clients alone, the defaults until 2026-12-07): paired with the
    # defaults, what the fine-tune adds to the teacher.
    "semanticfl-teacher": {"method": "semanticfl", "server-finetune": "none"},
    "feddifrc-teacher": {"method": "feddifrc", "server-finetune": "none"},
    # The default's control: the smoothed-label loss (no per-image diffusion
    # content) with the same fine-tune; what semanticfl gains above it is the
    # teacher's judgement of each image.
    "semanticfl-ls-balanced-public": {
        "method": "semanticfl",
        "kd-form": "posterior",
        "kd-teacher": "smoothed-labels",
        "ce-loss": "balanced",
        "server-finetune": "public",
    },
    # FedDifRC's default with whitened features (TDCL's and NDCR's targets):
    # the feature study's best nearest-anchor recipe, against the default's
    # PCA. SemanticFL's default reads no visual features (its teacher is the
    # denoising errors), so it has no such pair.
    "feddifrc-whitened": {"method": "feddifrc", "guidance-projection": "whitened"},
    # FedDifRC's default with its teacher at weight 1, not 3.
    "feddifrc-zs1": {
        "method": "feddifrc",
        "zero-shot-weight": 1.0,
        "server-finetune": "none",
    },
    # The teacher with the visual anchors as the fixed classifier, halfway to
    # a simplex ETF: FedETF's recipe (balanced softmax, fixed frame) with the
    # diffusion model's frame and teacher; fedetf is its random-frame control.
    "semanticfl-zs-frame": {
        "method": "semanticfl",
        "kd-form": "posterior",
        "ce-loss": "balanced",
        "anchor-classifier": "visual",
        "anchor-etf-mix": 0.5,
        "kd-weight": 1.0,
        "server-finetune": "none",
    },
    # Its frame control: the same with a simplex ETF (mix 1, every pair of
    # classes equally apart) in place of the anchors' geometry.
    "semanticfl-zs-etf": {
        "method": "semanticfl",
        "kd-form": "posterior",
        "ce-loss": "balanced",
        "anchor-classifier": "visual",
        "anchor-etf-mix": 1.0,
        "kd-weight": 1.0,
        "server-finetune": "none",
    },
    # FedDifRC with the teacher (at weight 1, as it ran), TDCL and NDCR through
    # the mlp projector, with its terms on the non-negative embedding itself:
    # the projector's control (feddifrc-zs1 is its pair). (Against
    # "semanticfl", the default says what FedDifRC's own terms add to the
    # teacher.)
    "feddifrc-nohead": {
        "method": "feddifrc",
        "guidance-head": "none",
        "zero-shot-weight": 1.0,
        "server-finetune": "none",
    },
    # SemanticFL's default with its image-text contrastive term on the same
    # projector (its distillation reads the logits either way): whether the
    # projector should be SemanticFL's default too.
    "semanticfl-zs-mlp": {"method": "semanticfl", "guidance-head": "mlp"},
}


def method_overrides(label: str) -> dict[str, Any]:
    """The run-config keys of a method label (a registered method or a variant)."""
    overrides = VARIANTS.get(label, {"method": label})
    try:
        get_method(overrides["method"])
    except UnknownMethodError as exc:
        raise UnknownMethodError(f"{exc}; variants: {', '.join(VARIANTS)}") from None
    return overrides


LAST_K = (
    6  # rounds averaged in the "last rounds" accuracy (even: a 2-round cycle cancels)
)


@dataclass(frozen=True)
class Cell:
    method: str
    scenario: str
    seed: int

    def name(self, rounds: int) -> str:
        return f"{self.method}-{self.scenario}-seed{self.seed}-r{rounds}"


def fmt_time(seconds: float) -> str:
    """``12m05s``; hours as ``1h02m05s``."""
    if seconds >= 3600:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def _rounds(run_dir: Path) -> list[dict[str, Any]]:
    """The metrics lines of rounds >= 1 (round 0 is the initial model)."""
    rows = [
        json.loads(line)
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        if line.strip()
    ]
    return [r for r in rows if r["round"] >= 1]


def round_times(run_dir: Path) -> tuple[float, float]:
    """Median whole-round and training-phase seconds over rounds >= 1.

    A round's time runs from the end of the previous round's evaluation to the
    end of its own, so it holds sampling, client training, aggregation and the
    central evaluation; the training phase is that minus the evaluation.
    """
    rows = _rounds(run_dir)
    whole = [r["round-seconds"] for r in rows]
    train = [r["round-seconds"] - r["eval-seconds"] for r in rows]
    return statistics.median(whole), statistics.median(train)


def last_rounds_accuracy(
    run_dir: Path, k: int = LAST_K, metric: str = keys.CENTRAL_ACCURACY
) -> float:
    """Mean central test accuracy (fraction) of the last ``k`` trained rounds.

    Under strong skew the global model's accuracy swings by several points
    from one round to the next, so one round (final or best) is a noisy pick;
    this is a steadier summary, reported next to both. ``metric``: the
    metrics line's key (``central-accuracy-aggregated``: the as-aggregated
    score a run with ``eval-aggregated-too`` records beside the primary one).
    """
    rows = _rounds(run_dir)
    if len(rows) < k:
        raise ValueError(f"{run_dir}: {len(rows)} trained rounds, fewer than K={k}")
    values = [_metric(r, metric) for r in rows[-k:]]
    missing = [r["round"] for r, v in zip(rows[-k:], values, strict=True) if v is None]
    if missing:
        raise ValueError(f"{run_dir}: rounds {missing} have no {metric!r}")
    return statistics.fmean(values)


VALIDATION_ACCURACY = f"validation/{keys.EVAL_BALANCED_ACCURACY}"
"""The clients' scores on their held-out parts (``validation-fraction``),
pooled by the server into a class-balanced accuracy (the test set is
balanced): what settings are chosen on, never the test set."""


def _metric(row: dict[str, Any], metric: str) -> float | None:
    """A metrics line's value at ``metric``; ``a/b`` reads ``row[a][b]``."""
    value: Any = row
    for part in metric.split("/"):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def has_metric(run_dir: Path, metric: str, k: int = 1) -> bool:
    """Whether each of a run's last ``k`` rounds records ``metric``."""
    rows = _rounds(run_dir)[-k:]
    return len(rows) == k and all(_metric(r, metric) is not None for r in rows)


# Keys that change where a run writes or how fast it goes, not what it
# computes: a finished cell that differs only in them is reused. Where outputs
# and the feature cache go (a checkout elsewhere reuses the cells); the
# evaluation batch size, which changes float rounding alone (a trained model
# scored at 64, 128, 256 and 1000 images per batch: the same accuracy, losses
# equal to 8 digits); whether the as-aggregated score is recorded beside the
# primary one.
RESULT_NEUTRAL_KEYS = (
    "run-name",
    "output-dir",
    "feature-store",
    "eval-batch-size",
    "eval-aggregated-too",
)

BEFORE_KEYS: dict[str, Any] = {**PAPER_FORMS, "ce-loss": "ce"}
"""How a run behaved before these keys existed: their defaults were first the
papers' forms and plain cross-entropy, then became the zero-shot teacher."""

METHOD_SECTIONS = get_args(Section)
"""The config sections a strategy owns: only the method whose registry entry
names one reads its keys."""


def other_methods_keys(method: str) -> frozenset[str]:
    """Keys of the method sections ``method`` does not read.

    A changed default of, say, SemanticFL's distillation leaves a FedAvg cell
    as it was: without this, every finished cell would be rerun.
    """
    own = get_method(method).section
    return frozenset(
        key
        for name in METHOD_SECTIONS
        if name != own
        for key in section_keys(SECTIONS[name])
    )


AUTO_KEYS = ("ce-loss", "guidance-head", "server-finetune")
"""Keys whose ``"auto"`` each method resolves for itself (``RunConfig``)."""


def _resolved(run_config: dict[str, Any]) -> dict[str, Any]:
    """The ``"auto"`` keys as what they resolve to (``ce-loss``:
    ``RunConfig.balanced_ce``; ``guidance-head``: ``RunConfig.guidance_head``;
    ``server-finetune``: ``RunConfig.server_finetune``).

    A cell recorded with the explicit value that "auto" now picks computed
    the same thing, so it stays reusable.
    """
    if "auto" not in {run_config.get(k) for k in AUTO_KEYS}:
        return run_config
    cfg = RunConfig.from_run_config(run_config)
    return {
        **run_config,
        "ce-loss": "balanced" if cfg.balanced_ce else "ce",
        "guidance-head": cfg.guidance_head,
        "server-finetune": cfg.server_finetune,
    }


def _config_mismatch(run_dir: Path, overrides: dict[str, Any]) -> str:
    """Keys whose value in a finished run differs from the requested one ("" = none).

    A cell is only reused when it ran with the settings asked for now; a
    changed default (say, the public split) would otherwise slip through.
    """
    path = run_dir / "config.json"
    if not (run_dir / "summary.json").exists() or not path.exists():
        return ""
    # Compare whole resolved configs (pyproject defaults + overrides). A key
    # missing from an older run's record did not exist then; that run behaved
    # as the key's default does, or as its first default did (BEFORE_KEYS).
    recorded = json.loads(path.read_text())
    done = {**RunConfig().to_run_config(), **BEFORE_KEYS, **recorded}
    wanted = resolve_config(APP_DIR, overrides).to_run_config()
    done, wanted = _resolved(done), _resolved(wanted)
    neutral = set(RESULT_NEUTRAL_KEYS) | other_methods_keys(wanted["method"])
    differ = [
        f"{k}={done.get(k)!r} not {v!r}"
        for k, v in wanted.items()
        if k not in neutral and done.get(k) != v
    ]
    return ", ".join(differ)


def cell_overrides(
    cell: Cell,
    base: dict[str, Any],
    rounds: int,
    runs_dir: Path,
    splits: Mapping[str, dict[str, Any]] = SCENARIOS,
) -> dict[str, Any]:
    """The run config of one cell: base, its split, its method, seed and rounds."""
    return {
        **base,
        **splits[cell.scenario],
        **method_overrides(cell.method),
        "seed": cell.seed,
        "num-server-rounds": rounds,
        "output-dir": str(runs_dir),
        "run-name": cell.name(rounds),
    }


def cell_done(overrides: dict[str, Any], runs_dir: Path) -> bool:
    """A finished run of exactly these settings is on disk (it will be reused)."""
    run_dir = runs_dir / overrides["run-name"]
    return (run_dir / "summary.json").exists() and not _config_mismatch(
        run_dir, overrides
    )


Runner = Callable[..., Any]
"""``run_simulation(app_dir, overrides, stream=False)`` or a test's fake."""


def run_cell(
    cell: Cell,
    base: dict[str, Any],
    rounds: int,
    runs_dir: Path,
    label: str,
    *,
    splits: Mapping[str, dict[str, Any]] = SCENARIOS,
    runner: Runner | None = None,
    last_k: int = LAST_K,
) -> dict[str, Any] | None:
    """Run (or read back) one cell; its result row, or None if the run failed."""
    name = cell.name(rounds)
    run_dir = runs_dir / name
    overrides = cell_overrides(cell, base, rounds, runs_dir, splits)
    stale = _config_mismatch(run_dir, overrides)
    if (run_dir / "summary.json").exists() and not stale:
        print(f"{label}: already done, skipped", flush=True)
    else:
        if stale:
            print(f"{label}: finished with other settings ({stale}), rerun", flush=True)
        print(f"{label}: running ...", flush=True)
        # Keep an earlier (crashed or stale) folder under another name rather
        # than deleting results.
        if run_dir.exists():
            tag = "stale" if stale else "failed"
            run_dir.rename(runs_dir / f"{name}.{tag}-{int(time.time())}")
        result = (runner or run_simulation)(APP_DIR, overrides, stream=False)
        if not result.ok:
            print(result.output[-3000:], file=sys.stderr)
            print(f"{label}: run ended {result.status}", file=sys.stderr)
            return None
    summary = json.loads((run_dir / "summary.json").read_text())
    whole, train = round_times(run_dir)
    guidance_path = run_dir / "guidance.json"
    guidance = json.loads(guidance_path.read_text()) if guidance_path.exists() else {}
    k = min(last_k, rounds)  # a run shorter than K: all its rounds
    row = {
        "method": cell.method,
        "scenario": cell.scenario,
        "seed": cell.seed,
        "rounds": rounds,
        "final_acc": summary["final-round-accuracy"],
        "best_acc": summary["best-round-accuracy"],
        "best_round": summary["best-round"],
        "last_acc": last_rounds_accuracy(run_dir, k),
        "round_s": whole,
        "train_s": train,
        "guidance_s": guidance.get("seconds", 0.0),
        "guidance_computed": json.dumps(guidance.get("computed", {})),
        "wall_s": summary["wall-seconds"],
    }
    print(
        f"{label}: final {100 * row['final_acc']:.2f}% | best "
        f"{100 * row['best_acc']:.2f}% (round {row['best_round']}) | last-{k} "
        f"mean {100 * row['last_acc']:.2f}% | round "
        f"{whole:.1f} s | guidance {row['guidance_s']:.0f} s | {fmt_time(row['wall_s'])}",
        flush=True,
    )
    return row


def run_matrix(
    methods: list[str],
    scenarios: list[str],
    seeds: list[int],
    base: dict[str, Any],
    rounds: int,
    runs_dir: Path,
    *,
    splits: Mapping[str, dict[str, Any]] = SCENARIOS,
    runner: Runner | None = None,
    estimate: Callable[[list[Cell]], list[float]] | None = None,
    last_k: int = LAST_K,
    run_missing: bool = True,
) -> list[dict[str, Any]] | None:
    """Every cell in order (scenario, method, seed); None if a run failed.

    ``splits`` maps scenario names to their split keys; ``runner`` replaces
    the real simulation (tests); ``estimate`` gives each cell's expected
    seconds, for the ETA printed after every cell (scaled by how long the cells
    run so far actually took against their estimate). ``run_missing=False``
    runs nothing: the rows are the finished cells', the others are left out.
    """
    unknown = [s for s in scenarios if s not in splits]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {unknown}; valid: {', '.join(splits)}")
    cells = [Cell(m, sc, s) for sc in scenarios for m in methods for s in seeds]
    expected = estimate(cells) if estimate else [0.0] * len(cells)
    todo = [
        not cell_done(cell_overrides(c, base, rounds, runs_dir, splits), runs_dir)
        for c in cells
    ]
    print(
        f"{len(cells)} cells, {len(cells) - sum(todo)} already done"
        + (
            f"; estimated {fmt_time(sum(e for e, t in zip(expected, todo, strict=True) if t))} "
            "for the rest"
            if estimate
            else ""
        ),
        flush=True,
    )
    rows = []
    t0 = time.perf_counter()
    spent = planned = 0.0  # seconds run / estimated, of the cells run so far
    for i, cell in enumerate(cells, 1):
        label = (
            f"[{i}/{len(cells)}] {cell.method:14s} {cell.scenario:8s} seed={cell.seed}"
        )
        if not run_missing and todo[i - 1]:
            print(f"{label}: not run, left out", flush=True)
            continue
        t_cell = time.perf_counter()
        row = run_cell(
            cell,
            base,
            rounds,
            runs_dir,
            label,
            splits=splits,
            runner=runner,
            last_k=last_k,
        )
        if row is None:
            return None
        rows.append(row)
        if todo[i - 1]:
            spent += time.perf_counter() - t_cell
            planned += expected[i - 1]
        print(
            progress_line(
                i,
                len(cells),
                time.perf_counter() - t0,
                _eta(expected[i:], todo[i:], spent, planned),
            ),
            flush=True,
        )
    return rows


def _eta(expected: list[float], todo: list[bool], spent: float, planned: float):
    """Seconds left: estimates of the cells still to run, scaled by the
    measured/estimated ratio so far (None without estimates)."""
    rest = sum(e for e, t in zip(expected, todo, strict=True) if t)
    if not any(expected) and any(todo):
        return None
    return rest * (spent / planned if planned > 0 else 1.0)


def progress_line(done: int, total: int, elapsed: float, eta: float | None) -> str:
    """``cells 3/30 done | elapsed 5m10s | ETA 40m00s``."""
    left = "unknown" if eta is None else fmt_time(eta)
    return f"  cells {done}/{total} done | elapsed {fmt_time(elapsed)} | ETA {left}"


def matrix_parser(
    prog: str, doc: str | None, *, methods: list[str], scenarios: list[str], out: str
) -> argparse.ArgumentParser:
    """The options every matrix benchmark shares (cells, protocol, output)."""
    parser = argparse.ArgumentParser(
        prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=methods,
        help="method names or variants (VARIANTS in benchmarks/matrix.py), e.g. "
        "semanticfl-mlp = SemanticFL with a learnable guidance head",
    )
    parser.add_argument(
        "--scenarios", nargs="+", default=scenarios, help=f"of: {', '.join(SCENARIOS)}"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[42])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument(
        "--max-samples-per-client",
        type=int,
        default=3000,
        help="cpu-profile cap per client (0 = all of its partition)",
    )
    parser.add_argument(
        "--out", type=Path, default=APP_DIR / "benchmarks" / "results" / out
    )
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="extra run-config overrides applied to every cell (TOML values)",
    )
    return parser


def set_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The run-config overrides of ``--set`` (Flower's parser: TOML values)."""
    from flwr.common.config import parse_config_args

    return parse_config_args([" ".join(args.set)] if args.set else None)


def base_config(args: argparse.Namespace) -> dict[str, Any]:
    """The run-config keys set from :func:`matrix_parser`'s protocol options."""
    return {
        "num-clients": args.clients,
        "local-epochs": args.local_epochs,
        "max-samples-per-client": args.max_samples_per_client,
    }


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
