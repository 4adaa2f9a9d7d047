"""The comparison table: last-K accuracy, paired gains over FedAvg, 95% intervals, MDE.

Per cell, the primary statistic is the mean central test accuracy over the
last K rounds (K even, so the 2-round cycle of full participation cancels).
Per scenario and method: the mean and std of that statistic over seeds, and
the gain over the reference paired by seed with its 95% interval
(``benchmarks.stats``); a method is called better or worse only when the
interval excludes 0. The scenario's minimum detectable effect is the MDE at
the pooled paired spread of its methods (root mean square of their paired
standard deviations): the smallest true gain this many seeds resolve with 80%
power.

Written as ``gains.csv`` (columns :data:`COLUMNS`, percentage points),
``gains.md`` and ``plots/gains.png``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmarks.matrix import has_metric, last_rounds_accuracy
from benchmarks.stats import minimum_detectable_effect, paired_gain, seeds_for_mde
from common import keys
from common.io import atomic_write_text

TARGET_MDE = 3.0  # points: the effect the decisive profile must be able to resolve

COLUMNS = (
    "scenario",
    "method",
    "seeds",
    "last_k",
    "mean",
    "std",
    "gain",
    "gain_low",
    "gain_high",
    "mde",
)


def last_k_accuracy(
    run_dir: Path, k: int, metric: str = keys.CENTRAL_ACCURACY
) -> float:
    """Mean central test accuracy (%) of a run's last ``k`` trained rounds."""
    return 100 * last_rounds_accuracy(run_dir, k, metric)


def gains_rows(
    runs: Mapping[tuple[str, str], Mapping[int, Path]],
    k: int,
    reference: str = "fedavg",
    metric: str = keys.CENTRAL_ACCURACY,
) -> list[dict[str, Any]]:
    """One row per (scenario, method), in the order of ``runs``; points.

    ``metric``: which score of the metrics lines (the primary one, or the
    as-aggregated one of ``eval-aggregated-too`` runs).
    """
    stat = {
        key: {s: last_k_accuracy(d, k, metric) for s, d in seeds.items()}
        for key, seeds in runs.items()
    }
    rows = []
    for (scenario, method), values in stat.items():
        ref = stat.get((scenario, reference))
        if ref is None:
            raise ValueError(
                f"scenario {scenario!r} has no {reference!r} runs to pair with"
            )
        gain = paired_gain(values, ref)
        std = statistics.stdev(values.values()) if len(values) > 1 else None
        rows.append(
            {
                "scenario": scenario,
                "method": method,
                "seeds": len(values),
                "last_k": k,
                "mean": statistics.fmean(values.values()),
                "std": std,
                "gain": gain.mean,
                "gain_low": gain.low if method != reference else 0.0,
                "gain_high": gain.high if method != reference else 0.0,
                "mde": gain.mde,
                "verdict": "reference" if method == reference else gain.verdict,
                "paired_std": gain.std,
            }
        )
    for scenario, mde in scenario_mde(rows, reference).items():
        for row in rows:
            if row["scenario"] == scenario and row["method"] == reference:
                row["mde"] = mde  # the reference's row holds the scenario's MDE
    return rows


def scored_runs(
    runs: Mapping[tuple[str, str], Mapping[int, Path]],
    k: int,
    metric: str,
    reference: str = "fedavg",
) -> dict[tuple[str, str], Mapping[int, Path]]:
    """The (scenario, method) groups whose every cell recorded ``metric`` in
    its last ``k`` rounds, in scenarios whose ``reference`` did too."""
    scored = {
        key: seeds
        for key, seeds in runs.items()
        if all(has_metric(d, metric, k) for d in seeds.values())
    }
    paired = {scenario for scenario, method in scored if method == reference}
    return {key: seeds for key, seeds in scored.items() if key[0] in paired}


def pooled_paired_std(
    rows: list[dict[str, Any]], scenario: str, reference: str = "fedavg"
) -> tuple[float | None, int]:
    """Root mean square of a scenario's paired spreads, and their seeds.

    Pooled over the methods that ran every seed the reference ran (the
    protocol's count), at that count; a method run on fewer seeds has its own
    MDE in its row. When none ran them all, over every method at the fewest.
    """
    part = [r for r in rows if r["scenario"] == scenario]
    others = [r for r in part if r["method"] != reference]
    ref_seeds = next((r["seeds"] for r in part if r["method"] == reference), 0)
    full = [r for r in others if r["seeds"] == ref_seeds]
    if full:
        others = full
    spreads = [r["paired_std"] for r in others if r["paired_std"] is not None]
    n = min((r["seeds"] for r in others), default=0)
    if not spreads or n < 2:
        return None, n
    return math.sqrt(statistics.fmean(s * s for s in spreads)), n


def scenario_mde(
    rows: list[dict[str, Any]], reference: str = "fedavg"
) -> dict[str, float | None]:
    """Per scenario: the MDE at the pooled paired spread of its methods."""
    out: dict[str, float | None] = {}
    for scenario in dict.fromkeys(r["scenario"] for r in rows):
        pooled, n = pooled_paired_std(rows, scenario, reference)
        out[scenario] = None if pooled is None else minimum_detectable_effect(pooled, n)
    return out


def seeds_needed(
    rows: list[dict[str, Any]], scenario: str, target: float = TARGET_MDE
) -> tuple[float | None, int | None]:
    """A scenario's pooled paired std and the seeds that reach an MDE of ``target``."""
    pooled, _ = pooled_paired_std(rows, scenario)
    return pooled, (seeds_for_mde(pooled, target) if pooled else None)


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return ""
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def write_gains_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """``gains.csv`` with exactly :data:`COLUMNS` (points, 2 decimals)."""
    lines = [",".join(COLUMNS)]
    for r in rows:
        cells = [
            str(r["scenario"]),
            str(r["method"]),
            str(r["seeds"]),
            str(r["last_k"]),
        ]
        cells += [
            _fmt(r[c]) for c in ("mean", "std", "gain", "gain_low", "gain_high", "mde")
        ]
        lines.append(",".join(cells))
    atomic_write_text(path, "\n".join(lines) + "\n")


def gains_markdown(rows: list[dict[str, Any]]) -> str:
    """The table: last-K mean ± std, paired gain [95% CI], verdict; MDE per scenario."""
    out = []
    k = rows[0]["last_k"] if rows else 0
    for scenario in dict.fromkeys(r["scenario"] for r in rows):
        part = [r for r in rows if r["scenario"] == scenario]
        ref = next(r for r in part if r["verdict"] == "reference")
        mde = _fmt(ref["mde"]) or "n/a (fewer than 2 seeds)"
        pooled, needed = seeds_needed(rows, scenario)
        reach = (
            f"; at this spread (pooled paired std {pooled:.2f}) {needed} seeds "
            f"reach an MDE of {TARGET_MDE:g}"
            if needed
            else ""
        )
        out.append(
            f"**{scenario}**: {ref['seeds']} seeds; minimum detectable effect "
            f"(80% power, 5% level) {mde} points{reach}.\n\n"
            f"| method | last-{k} accuracy (%) | gain over fedavg (points) | 95% CI | verdict |\n"
            "|---|---|---|---|---|\n"
        )
        for r in part:
            acc = f"{r['mean']:.2f}" + (
                f" ± {r['std']:.2f}" if r["std"] is not None else ""
            )
            if r["verdict"] == "reference":
                out.append(f"| {r['method']} | {acc} | (reference) | | |\n")
                continue
            ci = (
                f"[{r['gain_low']:+.2f}, {r['gain_high']:+.2f}]"
                if r["gain_low"] is not None
                else "n/a"
            )
            out.append(
                f"| {r['method']} | {acc} | {r['gain']:+.2f} | {ci} | {r['verdict']} |\n"
            )
        out.append("\n")
    return "".join(out)


def plain_reading(rows: list[dict[str, Any]], target: float = TARGET_MDE) -> str:
    """One paragraph per scenario, in words: what is resolved, what is not, and
    whether the scenario's MDE reaches ``target``. Generated from the table,
    so the words cannot drift from the numbers."""

    def listed(part: list[dict[str, Any]]) -> str:
        return ", ".join(
            f"{r['method']} ({r['gain']:+.1f} [{r['gain_low']:+.1f}, {r['gain_high']:+.1f}])"
            for r in sorted(part, key=lambda r: -r["gain"])
        )

    out = []
    for scenario in dict.fromkeys(r["scenario"] for r in rows):
        part = [r for r in rows if r["scenario"] == scenario]
        ref = next(r for r in part if r["verdict"] == "reference")
        said = []
        for verdict, words in (("better", "resolved better than FedAvg"),
                               ("worse", "resolved worse than FedAvg")):  # fmt: skip
            hits = [r for r in part if r["verdict"] == verdict]
            if hits:
                said.append(f"{words}: {listed(hits)}")
        open_ = [r["method"] for r in part if r["verdict"] == "not resolved"]
        if open_:
            said.append("not resolved (the interval contains 0): " + ", ".join(open_))
        mde = ref["mde"]
        if mde is None:
            reach = "no MDE (fewer than 2 seeds)"
        elif mde <= target:
            reach = f"MDE {mde:.1f} points, within the {target:g}-point target"
        else:
            _, needed = seeds_needed(rows, scenario, target)
            more = f"; about {needed} seeds would reach it" if needed else ""
            reach = (
                f"MDE {mde:.1f} points, above the {target:g}-point target: a true "
                f"gain smaller than that is likely to be missed at {ref['seeds']} "
                f"seeds{more}"
            )
        out.append(f"*{scenario}* ({ref['seeds']} seeds): " + "; ".join(said)
                   + f". {reach}.")  # fmt: skip
    return "\n\n".join(out) + "\n"


def plot_gains(rows: list[dict[str, Any]], path: Path) -> Path:
    """Paired gains with their 95% intervals, a panel per scenario."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
    fig, axes = plt.subplots(
        1, len(scenarios), figsize=(5.5 * len(scenarios), 4.2), squeeze=False
    )
    for ax, scenario in zip(axes[0], scenarios, strict=True):
        part = [
            r for r in rows if r["scenario"] == scenario and r["verdict"] != "reference"
        ]
        y = list(range(len(part)))[::-1]
        for yi, r in zip(y, part, strict=True):
            color = {"better": "tab:green", "worse": "tab:red"}.get(
                r["verdict"], "tab:gray"
            )
            if r["gain_low"] is not None:
                ax.plot([r["gain_low"], r["gain_high"]], [yi, yi], color=color, lw=2)
            ax.plot(r["gain"], yi, "o", color=color)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(y, [r["method"] for r in part])
        ax.set_xlabel("gain over fedavg, points (95% CI)")
        ax.set_title(scenario)
    fig.suptitle("Paired gains over FedAvg: green/red resolved, gray not resolved")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
