"""Two measurements of the same runs: BatchNorm statistics as aggregated or recomputed.

    python -m benchmarks.bn_measurement                      # benchmarks/results/decisive
    python -m benchmarks.bn_measurement --dir DIR --k 6

Training uses each batch's own BatchNorm statistics; the running statistics
only matter when the global model is scored. FedAvg averages them over
clients, and under label skew that average fits no data. A run with
``eval-bn-images`` > 0 and ``eval-aggregated-too`` (``python -m
benchmarks.results --profile decisive --eval-aggregated-too``) records, every
round, the same weights scored both ways. This reads every such cell under
``DIR/runs`` and compares, per scenario:

- per method, the last-K mean ± std over seeds under each measurement, and
  its paired spread against FedAvg (the std over seeds of the per-seed gain);
- the scenario's pooled paired spread and minimum detectable effect under
  each (``benchmarks.gains``), which is what decides how small a gain the
  seeds resolve;
- the round-to-round swing: the mean absolute change of the test accuracy
  between consecutive rounds of the last K.

Writes ``DIR/bn-measurement.md``. Only cells that recorded both scores count,
and only methods whose seeds all have a FedAvg partner.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmarks import gains
from benchmarks.matrix import APP_DIR, LAST_K
from common import keys
from common.io import atomic_write_text

RUN_NAME = re.compile(r"^(?P<method>.+)-(?P<scenario>[^-]+)-seed(?P<seed>\d+)-r\d+$")

MEASUREMENTS = {
    "recomputed": keys.CENTRAL_ACCURACY,
    "aggregated": keys.CENTRAL_ACCURACY_AGGREGATED,
}


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in (json.loads(x) for x in lines if x.strip()) if r["round"] >= 1]


def has_both_scores(run_dir: Path, k: int) -> bool:
    """Whether a finished run's last ``k`` rounds all hold both scores."""
    if not (run_dir / "summary.json").exists():
        return False
    rows = _metrics(run_dir)[-k:]
    return len(rows) == k and all(keys.CENTRAL_ACCURACY_AGGREGATED in r for r in rows)


def with_both_scores(
    cells: Mapping[tuple[str, str], Mapping[int, Path]], k: int
) -> dict[tuple[str, str], dict[int, Path]]:
    """The cells of ``cells`` ((scenario, method) -> {seed: run folder}) that
    recorded both scores in their last ``k`` rounds."""
    out: dict[tuple[str, str], dict[int, Path]] = {}
    for key, seeds in cells.items():
        kept = {s: d for s, d in seeds.items() if has_both_scores(d, k)}
        if kept:
            out[key] = kept
    return out


def paired_cells(runs_dir: Path, k: int) -> dict[tuple[str, str], dict[int, Path]]:
    """(scenario, method) -> {seed: run folder} of the cells under ``runs_dir``
    (named as the matrix names them) that recorded both scores."""
    cells: dict[tuple[str, str], dict[int, Path]] = {}
    for run_dir in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        match = RUN_NAME.match(run_dir.name)
        if match:
            key = (match["scenario"], match["method"])
            cells.setdefault(key, {})[int(match["seed"])] = run_dir
    return with_both_scores(cells, k)


def round_swing(run_dir: Path, k: int, metric: str) -> float:
    """Mean |accuracy change| (points) between consecutive rounds of the last ``k``."""
    acc = [100 * r[metric] for r in _metrics(run_dir)[-k:]]
    return statistics.fmean(abs(b - a) for a, b in zip(acc, acc[1:], strict=False))


def compare(
    cells: Mapping[tuple[str, str], Mapping[int, Path]],
    k: int,
    reference: str = "fedavg",
) -> dict[str, list[dict[str, Any]]]:
    """Per measurement, the gains table (``benchmarks.gains.gains_rows``) of
    the cells, each row with the mean round-to-round swing added."""
    keep = {
        key: seeds
        for key, seeds in cells.items()
        if (key[0], reference) in cells
        and set(seeds) <= set(cells[(key[0], reference)])
    }
    if not keep:
        raise ValueError(
            f"no cells with both scores and a {reference!r} partner; run "
            "python -m benchmarks.results --profile decisive --eval-aggregated-too"
        )
    tables = {}
    for name, metric in MEASUREMENTS.items():
        rows = gains.gains_rows(keep, k, reference, metric)
        for row in rows:
            runs = keep[(row["scenario"], row["method"])].values()
            row["swing"] = statistics.fmean(round_swing(d, k, metric) for d in runs)
        tables[name] = rows
    return tables


def _f(value: float | None, fmt: str = "{:.2f}") -> str:
    return "n/a" if value is None else fmt.format(value)


def markdown(tables: dict[str, list[dict[str, Any]]], k: int) -> str:
    """The comparison, a table per scenario (points)."""
    rec, agg = tables["recomputed"], tables["aggregated"]
    out = [
        "# BatchNorm statistics: as aggregated vs recomputed on public images\n\n",
        f"The same runs scored both ways every round; last-{k} mean ± std over "
        "seeds, paired spread = std over seeds of the gain over FedAvg, swing = "
        "mean |change| between consecutive rounds. Points.\n\n",
    ]
    for scenario in dict.fromkeys(r["scenario"] for r in rec):
        pairs = [
            (a, r) for a, r in zip(agg, rec, strict=True) if r["scenario"] == scenario
        ]
        n = pairs[0][1]["seeds"]
        out.append(
            f"## {scenario} ({n} seeds)\n\n"
            "| method | last-K, aggregated | last-K, recomputed | paired spread, "
            "aggregated | paired spread, recomputed | swing, aggregated | "
            "swing, recomputed |\n|---|---|---|---|---|---|---|\n"
        )
        for a, r in pairs:
            out.append(
                f"| {r['method']} | {_f(a['mean'])} ± {_f(a['std'])} | "
                f"{_f(r['mean'])} ± {_f(r['std'])} | "
                f"{_f(a['paired_std']) if a['verdict'] != 'reference' else ''} | "
                f"{_f(r['paired_std']) if r['verdict'] != 'reference' else ''} | "
                f"{_f(a['swing'])} | {_f(r['swing'])} |\n"
            )
        pooled = {
            name: gains.pooled_paired_std(rows, scenario)[0]
            for name, rows in tables.items()
        }
        mde = {
            name: next(
                r["mde"]
                for r in rows
                if r["scenario"] == scenario and r["verdict"] == "reference"
            )
            for name, rows in tables.items()
        }
        out.append(
            f"\nPooled paired spread: aggregated {_f(pooled['aggregated'])}, "
            f"recomputed {_f(pooled['recomputed'])}; MDE at {n} seeds: aggregated "
            f"{_f(mde['aggregated'])}, recomputed {_f(mde['recomputed'])}.\n\n"
        )
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bn_measurement",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--dir", type=Path, default=APP_DIR / "benchmarks" / "results" / "decisive"
    )
    p.add_argument("--k", type=int, default=LAST_K, help="rounds averaged (even)")
    args = p.parse_args(argv)
    runs = args.dir / "runs"
    if not runs.is_dir():
        print(f"error: {runs} does not exist", file=sys.stderr)
        return 2
    try:
        tables = compare(paired_cells(runs, args.k), args.k)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = markdown(tables, args.k)
    atomic_write_text(args.dir / "bn-measurement.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
