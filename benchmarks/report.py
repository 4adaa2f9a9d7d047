"""The results report: aggregation over seeds, tables, plots, RESULTS.md, README.

Pure functions of the matrix rows (``benchmarks.matrix.run_cell``) and the run
folders they came from; nothing here runs a simulation. ``report.json`` holds
everything a rendering needs, so the README section can be rendered again
later (``python -m benchmarks.report``) without rerunning anything.

    python -m benchmarks.report --profile reduced --readme README.md

replaces the text between ``<!-- results:begin -->`` and
``<!-- results:end -->`` in README.md with the profile's section (atomic
write; refuses when the markers are missing or out of order).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

from common.io import atomic_write_text, read_jsonl

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
APP_DIR = Path(__file__).resolve().parents[1]


class MarkerError(ValueError):
    """The target file lacks the results markers (or has them out of order)."""


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    std = statistics.stdev(values) if len(values) > 1 else None
    return statistics.fmean(values), std


def aggregate(rows: list[dict[str, Any]], reference: str = "fedavg") -> list[dict]:
    """One record per (scenario, method): mean/std over seeds, gain over the reference.

    Gains are paired by seed (each seed's accuracy minus the reference's on
    the same seed and split), then averaged; None when the reference did not
    run that scenario. Round-time ratios are of medians over seeds.
    """
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["scenario"], r["method"]), []).append(r)
    out = []
    for (scenario, method), cells in groups.items():
        ref = {r["seed"]: r for r in groups.get((scenario, reference), [])}
        rec: dict[str, Any] = {
            "scenario": scenario,
            "method": method,
            "seeds": len(cells),
        }
        for key in ("final_acc", "best_acc", "last_acc"):
            rec[f"{key}_mean"], rec[f"{key}_std"] = mean_std([r[key] for r in cells])
            paired = [r[key] - ref[r["seed"]][key] for r in cells if r["seed"] in ref]
            gain = mean_std(paired) if len(paired) == len(cells) else (None, None)
            rec[f"{key}_gain_mean"], rec[f"{key}_gain_std"] = gain
        rec["round_s"] = statistics.median(r["round_s"] for r in cells)
        rec["train_s"] = statistics.median(r["train_s"] for r in cells)
        rec["guidance_s"] = statistics.fmean(r["guidance_s"] for r in cells)
        for key in ("server_mb", "client_mb"):
            seen = [r[key] for r in cells if r.get(key)]
            rec[key] = max(seen) if seen else None
        if ref:
            rec["round_ratio"] = rec["round_s"] / statistics.median(
                r["round_s"] for r in ref.values()
            )
            rec["train_ratio"] = rec["train_s"] / statistics.median(
                r["train_s"] for r in ref.values()
            )
        else:
            rec["round_ratio"] = rec["train_ratio"] = None
        out.append(rec)
    return out


def _pct(mean: float | None, std: float | None, signed: bool = False) -> str:
    if mean is None:
        return "-"
    text = f"{100 * mean:+.2f}" if signed else f"{100 * mean:.2f}"
    return text + (f" ± {100 * std:.2f}" if std is not None else "")


def pivot_table(agg: list[dict], key: str, reference: str = "fedavg") -> str:
    """Methods x scenarios: ``mean ± std (gain over the reference)`` of ``key``."""
    scenarios = list(dict.fromkeys(a["scenario"] for a in agg))
    methods = list(dict.fromkeys(a["method"] for a in agg))
    cell = {(a["method"], a["scenario"]): a for a in agg}
    out = io.StringIO()
    out.write("| method | " + " | ".join(scenarios) + " |\n")
    out.write("|---" * (len(scenarios) + 1) + "|\n")
    for m in methods:
        parts = []
        for s in scenarios:
            a = cell.get((m, s))
            if a is None:
                parts.append("-")
                continue
            text = _pct(a[f"{key}_mean"], a[f"{key}_std"])
            if m != reference and a[f"{key}_gain_mean"] is not None:
                gain = _pct(a[f"{key}_gain_mean"], a[f"{key}_gain_std"], signed=True)
                text += f" ({gain})"
            parts.append(text)
        out.write(f"| {m} | " + " | ".join(parts) + " |\n")
    return out.getvalue()


def cost_table(agg: list[dict]) -> str:
    """Round time of each method over FedAvg's, one-off guidance, peak memory."""
    out = io.StringIO()
    out.write(
        "| scenario | method | median round (s) | round / FedAvg | training phase / "
        "FedAvg | one-off guidance (s) | peak RSS server / one client (MB) |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    for a in agg:
        ratio = "-" if a["round_ratio"] is None else f"{a['round_ratio']:.2f}x"
        train = "-" if a["train_ratio"] is None else f"{a['train_ratio']:.2f}x"
        mem = (
            f"{a['server_mb']:.0f} / {a['client_mb']:.0f}"
            if a.get("server_mb") and a.get("client_mb")
            else "-"
        )
        out.write(
            f"| {a['scenario']} | {a['method']} | {a['round_s']:.1f} | {ratio} | "
            f"{train} | {a['guidance_s']:.0f} | {mem} |\n"
        )
    return out.getvalue()


def write_table_csv(agg: list[dict], path: Path) -> None:
    """The aggregated table, long form, accuracies as fractions."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(agg[0]))
    writer.writeheader()
    writer.writerows(agg)
    atomic_write_text(path, buf.getvalue())


# --- plots -----------------------------------------------------------------


def curves(runs: dict[tuple[str, str], list[Path]]) -> dict[str, dict[str, tuple]]:
    """Per scenario, per method: (rounds, mean, std) of test accuracy over seeds.

    Rounds run 0 (initial model) .. R; seeds are cut to their common length.
    """
    panels: dict[str, dict[str, tuple]] = {}
    for (scenario, method), dirs in runs.items():
        accs = []
        for d in dirs:
            rows = read_jsonl(d / "metrics.jsonl")
            accs.append([r["central-accuracy"] for r in rows])
        n = min(len(a) for a in accs)
        arr = np.array([a[:n] for a in accs])
        std = arr.std(0, ddof=1) if len(arr) > 1 else np.zeros(n)
        panels.setdefault(scenario, {})[method] = (list(range(n)), arr.mean(0), std)
    return panels


def partition_counts(run_dir: Path) -> tuple[np.ndarray, list[str]]:
    """Clients x classes counts of a run (the public split row left out)."""
    lines = (run_dir / "partition_counts.csv").read_text().splitlines()
    names = lines[0].split(",")[1:-1]
    rows = [ln.split(",") for ln in lines[1:] if ln and not ln.startswith("public")]
    return np.array([[int(v) for v in r[1:-1]] for r in rows]), names


def write_plots(
    runs: dict[tuple[str, str], list[Path]], out: Path, title: str
) -> list[Path]:
    """Accuracy panels (one per scenario) and one partition heatmap per scenario."""
    from server_app.plots import plot_curves_panels, plot_partition_heatmap

    out.mkdir(parents=True, exist_ok=True)
    written = [out / "accuracy.png"]
    plot_curves_panels(
        curves(runs), f"{title}: mean over seeds, band = ±1 std", written[0]
    )
    for scenario in dict.fromkeys(s for s, _ in runs):
        first = next(dirs[0] for (s, _), dirs in runs.items() if s == scenario)
        counts, names = partition_counts(first)
        path = out / f"partition-{scenario}.png"
        plot_partition_heatmap(
            counts, names, f"{scenario}: clients x classes ({first.name})", path
        )
        written.append(path)
    return written


# --- the Markdown section --------------------------------------------------


def not_run_text(cells: list[dict[str, Any]]) -> str:
    """``moon (dir0.05 seeds 3, 4; extreme seed 4), ...``: cells by method."""
    by: dict[str, dict[str, list[int]]] = {}
    for c in cells:
        by.setdefault(c["method"], {}).setdefault(c["scenario"], []).append(c["seed"])
    parts = []
    for method, scenarios in by.items():
        where = "; ".join(
            f"{sc} seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, sorted(seeds)))}"
            for sc, seeds in scenarios.items()
        )
        parts.append(f"{method} ({where})")
    return ", ".join(parts)


def render_section(report: dict[str, Any], link_from: Path) -> str:
    """The results section (Markdown) with links relative to ``link_from``."""

    def link(path: str) -> str:
        return os.path.relpath(APP_DIR / path, link_from).replace(os.sep, "/")

    p = report["profile"]
    out = io.StringIO()
    out.write(
        f"### Results: profile `{p['name']}` ({p['description']})\n\n"
        f"Generated by `{report['command']}` on {report['finished']}; every number "
        "below comes from that run's cells (run folders in "
        f"`{report['runs_dir']}`). {report['cells']} cells, "
        f"{report['ran']} run now, {report['cells'] - report['ran']} reused; "
        f"matrix wall time {report['matrix_wall']}"
        + (
            f"; the cells' own run times add up to {report['cells_wall']}"
            if report.get("cells_wall")
            else ""
        )
        + ".\n\n"
    )
    if report.get("not_run"):
        out.write(
            f"Not run yet, so not in these tables ({len(report['not_run'])} "
            f"cells, `--report-only`): {not_run_text(report['not_run'])}.\n\n"
        )
    k = report.get("last_k")
    if k:  # profiles with the paired-gain table
        out.write(
            "**Protocol.** After every round the server evaluates the global model "
            f"on the full central test set. The primary statistic of a cell is the "
            f"mean accuracy of its last {k} rounds (K even: with full participation "
            "the global model swings between confusable classes on a 2-round "
            "cycle, which cancels); *final* (the last round) and *best* (the best "
            "round, the papers' metric, which rewards variance) are reported "
            f"below it, labelled. Over {len(p['seeds'])} seeds {list(p['seeds'])}, "
            "each method's gain over FedAvg is paired by seed (same split, same "
            "clients every round) with a 95% Student-t interval; a method is "
            "called better or worse only when the interval excludes 0, and each "
            "scenario states its minimum detectable effect (80% power).\n\n"
        )
    else:
        out.write(
            "**Protocol.** After every round the server evaluates the global model "
            "on the full central test set. *Final* = the last round's accuracy (our "
            "primary number); *best* = the best round's, as the papers report it. "
            f"Mean ± sample std over {len(p['seeds'])} seed(s) {list(p['seeds'])}; "
            "the gain over FedAvg is paired by seed (same split), in points.\n\n"
        )
    out.write("| setting | this profile | papers |\n|---|---|---|\n")
    for key, (here, paper) in report["settings"].items():
        out.write(f"| {key} | {here} | {paper} |\n")
    out.write(f"\n**Hardware.** {report['hardware']}\n\n")
    if machines := report.get("cell_machines"):
        out.write(
            "**The cells' machines** (runs are bit-identical on one CPU model, "
            "not across models): "
            + "; ".join(f"{n} on {cpu}" for cpu, n in machines.items())
            + ".\n\n"
        )
    out.write("**Deviations from the papers.**\n\n| what | papers | here | why |\n")
    out.write("|---|---|---|---|\n")
    for d in report["deviations"]:
        out.write(f"| {d['what']} | {d['paper']} | {d['here']} | {d['why']} |\n")
    if k:
        csv_path = report["gains_csv"]
        out.write(
            f"\n**Last-{k} accuracy and paired gains over FedAvg** (the primary "
            f"table; CSV: [{csv_path}]({link(csv_path)})):\n\n"
            + report["tables"]["gains"]
        )
        if report.get("reading"):
            out.write("**Reading.** " + report["reading"])
        if report["tables"].get("validation"):
            path = report["validation_csv"]
            out.write(
                f"\n**The same on the clients' validation parts** (last-{k} mean "
                "of the accuracy each client scores on its held-out share, "
                "aggregated by the server; settings are chosen on this table, "
                f"never on the test set; CSV: [{path}]({link(path)})):\n\n"
                + report["tables"]["validation"]
            )
        if report.get("bn_measurement"):
            path = report["bn_measurement"]
            out.write(
                "\nThe same runs scored with BatchNorm statistics as aggregated "
                f"(the papers' measurement) beside the primary one: [{path}]"
                f"({link(path)}).\n"
            )
    out.write(
        "\n**Final-round accuracy (%)**, mean ± std (gain over FedAvg, points):\n\n"
        + report["tables"]["final"]
        + "\n**Best-round accuracy (%)** (the papers' metric), mean ± std (gain "
        "over FedAvg, points):\n\n"
        + report["tables"]["best"]
        + f"\nCSV: [{report['csv']}]({link(report['csv'])}).\n\n"
    )
    out.write("**Plots.**\n\n")
    for path in report["plots"]:
        out.write(f"- [{path}]({link(path)})\n")
    out.write(f"\n![accuracy per round]({link(report['plots'][0])})\n\n")
    out.write("**Performance** (measured in this run, side by side).\n\n")
    out.write(report["tables"]["cost"])
    for section in report.get("perf", []):
        out.write(f"\n{section}\n")
    if report.get("failed"):
        out.write(f"\n**Failed cells:** {', '.join(report['failed'])}\n")
    return out.getvalue()


def replace_between_markers(path: Path, body: str) -> None:
    """Put ``body`` between the results markers of ``path`` (atomic write).

    The markers must each occur exactly once, begin before end; the file is
    left untouched otherwise.
    """
    text = Path(path).read_text(encoding="utf-8")
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        raise MarkerError(
            f"{path} must hold each of {BEGIN} and {END} exactly once (found "
            f"{text.count(BEGIN)} and {text.count(END)}); add them where the "
            "results section goes"
        )
    i, j = text.index(BEGIN) + len(BEGIN), text.index(END)
    if i > j:
        raise MarkerError(f"{path}: {END} comes before {BEGIN}")
    atomic_write_text(path, text[:i] + "\n" + body.strip() + "\n" + text[j:])


def main(argv: list[str] | None = None) -> int:
    """Render a profile's ``report.json`` into a file's results markers."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--profile", default="reduced")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="the profile's output folder (default benchmarks/results/<profile>)",
    )
    parser.add_argument("--readme", type=Path, default=APP_DIR / "README.md")
    args = parser.parse_args(argv)
    out = args.out or APP_DIR / "benchmarks" / "results" / args.profile
    report = json.loads((out / "report.json").read_text())
    try:
        replace_between_markers(args.readme, render_section(report, args.readme.parent))
    except (MarkerError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"replaced the results section of {args.readme} from {out / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
