"""One command for the comparison table, the plots and the performance figures.

    python -m benchmarks.results --profile smoke               # minutes, end to end
    python -m benchmarks.results --profile reduced             # ~2 h 15 min on 2 idle CPU cores
    python -m benchmarks.results --profile paper \\
        --guidance-model /models/stable-diffusion-v1-5 --data-root /data  # GPU
    python -m benchmarks.results --profile reduced --estimate-only

Runs the profile's matrix (methods x scenarios x seeds, ``benchmarks/profiles.py``)
as real Flower simulations through ``benchmarks.matrix``: a finished cell with
the same settings is read back, not rerun, so an interrupted run resumes. Prints
the estimated time first and progress (cells done, elapsed, ETA) after every
cell. Then measures the performance figures (``benchmarks.perf``) and writes,
under ``--out`` (default ``benchmarks/results/<profile>/``):

    results.md / results.csv   mean ± std over seeds of final- and best-round
                               accuracy, gain over FedAvg (paired by seed)
    cells.csv                  one row per cell
    plots/accuracy.png         accuracy per round, a panel per scenario
    plots/partition-*.png      clients x classes heatmap per scenario
    perf.json, report.json     the raw figures; everything RESULTS.md shows
    RESULTS.md                 the README's results section (protocol,
                               hardware, deviations, tables, plots, performance)

``--update-readme`` then puts RESULTS.md's section between the
``<!-- results:begin -->`` / ``<!-- results:end -->`` markers of README.md
(``python -m benchmarks.report`` does only that step).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from benchmarks import bn_measurement, gains, perf, report
from benchmarks.machine import hardware
from benchmarks.matrix import (
    APP_DIR,
    VALIDATION_ACCURACY,
    Cell,
    cell_done,
    cell_overrides,
    fmt_time,
    run_matrix,
    write_csv,
)
from benchmarks.memory import TreeMemory
from benchmarks.profiles import (
    PAPER_PROTOCOL,
    PAPER_SCENARIOS,
    PAPER_SEEDS,
    PROFILES,
    REFERENCE,
    SPLITS,
    Deviation,
    Profile,
    ProfileError,
    get_profile,
)
from common.io import atomic_write_json, atomic_write_text
from deploy.local_sim import run_simulation


def sampled_runner(app_dir, overrides, stream=False, gpus_per_client=None):
    """``run_simulation`` with the peak memory of its processes saved in the run folder."""
    with TreeMemory() as mem:
        result = run_simulation(
            app_dir, overrides, stream=stream, gpus_per_client=gpus_per_client
        )
    if result.ok:
        atomic_write_json(
            result.run_dir / "peak-memory.json",
            {
                "server-mb": mem.peak_mb["server"],
                "client-mb": mem.peak_mb["client"],
                "how": "VmHWM of this run's processes, sampled every second",
            },
        )
    return result


def customise(profile: Profile, args: argparse.Namespace) -> Profile:
    """The profile with the command line's cells; each change is a declared deviation."""
    changes: dict[str, Any] = {}
    for key in ("methods", "scenarios", "seeds"):
        value = getattr(args, key)
        if value is not None:
            changes[key] = tuple(value)
    if args.rounds is not None:
        changes["rounds"] = args.rounds
    if not changes:
        return profile
    custom = dataclasses.replace(profile, **changes)
    paper = {
        "scenarios": ", ".join(PAPER_SCENARIOS),
        "seeds": f"{PAPER_SEEDS} (seed 7)",
        "num-server-rounds": PAPER_PROTOCOL["num-server-rounds"],
    }
    here = {
        "scenarios": ", ".join(custom.scenarios),
        "seeds": f"{len(custom.seeds)} (seeds {', '.join(map(str, custom.seeds))})",
        "num-server-rounds": custom.rounds,
    }
    key = {"scenarios": "scenarios", "seeds": "seeds", "rounds": "num-server-rounds"}
    changed = {key[k] for k in changes if k in key}
    keep = [d for d in profile.deviations if d.what not in changed]
    extra = [
        Deviation(k, str(paper[k]), str(here[k]), "set on the command line")
        for k in sorted(changed)
        if k in custom.setting_deviations()
    ]
    custom = dataclasses.replace(custom, deviations=(*keep, *extra))
    custom.validate()
    return custom


def given_config(profile: Profile, args: argparse.Namespace) -> dict[str, Any]:
    """The user-supplied keys (``requires``) and overrides, checked before anything runs."""
    given: dict[str, Any] = {}
    if args.device:
        given["device"] = args.device
    if getattr(args, "eval_aggregated_too", False):
        given["eval-aggregated-too"] = True
    for key in ("guidance-model", "data-root"):
        value = getattr(args, key.replace("-", "_"))
        if value:
            given[key] = str(value)
    missing = [k for k in profile.requires if k not in given]
    if missing:
        flags = " ".join(
            f"--{k} <{'folder' if 'model' in k else 'dir'}>" for k in missing
        )
        raise ProfileError(
            f"profile {profile.name!r} needs {flags}: the Stable Diffusion model "
            "folder (diffusers layout: model_index.json, unet/, vae/, text_encoder/, "
            "tokenizer/, scheduler/) and the folder holding the dataset "
            "(torchvision layout, e.g. <dir>/cifar-10-batches-py)"
        )
    model = given.get("guidance-model")
    if model and model != "embedded":
        folder = Path(model).expanduser()
        if not (folder / "unet").is_dir() or not (folder / "vae").is_dir():
            raise ProfileError(
                f"--guidance-model {model}: not a diffusers model folder (no unet/ "
                "and vae/ subfolders); download one, e.g. "
                "`huggingface-cli download stable-diffusion-v1-5/stable-diffusion-v1-5"
                " --local-dir <folder>`"
            )
    root = given.get("data-root")
    if root and not Path(root).expanduser().is_dir():
        raise ProfileError(f"--data-root {root}: no such folder")
    device = given.get("device", profile.config.get("device", "cpu"))
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ProfileError(
                f"profile {profile.name!r} runs on {device} but torch sees no CUDA "
                "device; run it on a GPU machine (or pass --device cpu to try it "
                "here, very slowly)"
            )
    return given


def _repo_path(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(APP_DIR)) if path.is_relative_to(APP_DIR) else str(path)


def cell_machines(run_dirs: Iterable[Path]) -> dict[str, int]:
    """How many cells ran on each CPU model (``server-cpu`` in their summaries).

    Cells reused across invocations may come from different machines, and
    runs are bit-identical only on one CPU model: the report says which.
    Cells from before the key was recorded count as ``"not recorded"``.
    """
    counts: dict[str, int] = {}
    for d in run_dirs:
        summary = json.loads((d / "summary.json").read_text())
        cpu = summary.get("server-cpu", "not recorded")
        counts[cpu] = counts.get(cpu, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def build_report(
    profile: Profile,
    rows: list[dict[str, Any]],
    out: Path,
    runs_dir: Path,
    *,
    figures: dict[str, Any],
    command: str,
    hardware_text: str,
    matrix_wall: float,
    ran: int,
    not_run: Sequence[Cell] = (),
) -> dict[str, Any]:
    """Tables, CSVs, plots, ``report.json`` and ``RESULTS.md`` from the cells' rows."""

    def run_dir(row: dict[str, Any]) -> Path:
        return runs_dir / Cell(row["method"], row["scenario"], row["seed"]).name(
            row["rounds"]
        )

    for row in rows:  # peak memory saved by sampled_runner (absent: not measured)
        mem = run_dir(row) / "peak-memory.json"
        peak = json.loads(mem.read_text()) if mem.exists() else {}
        row["server_mb"], row["client_mb"] = (
            peak.get("server-mb"),
            peak.get("client-mb"),
        )
    agg = report.aggregate(rows)
    machines = cell_machines(run_dir(r) for r in rows)
    write_csv(rows, out / "cells.csv")
    report.write_table_csv(agg, out / "results.csv")
    runs: dict[tuple[str, str], list[Path]] = {}
    for r in rows:
        runs.setdefault((r["scenario"], r["method"]), []).append(run_dir(r))
    plots = report.write_plots(runs, out / "plots", f"profile {profile.name}")
    by_seed: dict[tuple[str, str], dict[int, Path]] = {}
    for r in rows:
        by_seed.setdefault((r["scenario"], r["method"]), {})[r["seed"]] = run_dir(r)
    table = gains.gains_rows(by_seed, profile.last_k, REFERENCE)
    gains.write_gains_csv(table, out / "gains.csv")
    # Runs with validation-fraction: the same table on the clients' held-out
    # parts, which is what settings are chosen on.
    val_text = ""
    scored = gains.scored_runs(by_seed, profile.last_k, VALIDATION_ACCURACY, REFERENCE)
    if scored:
        val_table = gains.gains_rows(
            scored, profile.last_k, REFERENCE, VALIDATION_ACCURACY
        )
        gains.write_gains_csv(val_table, out / "validation.csv")
        val_text = gains.gains_markdown(val_table)
        if left_out := sorted(set(by_seed) - set(scored)):
            val_text += "\n\nLeft out (cells run without the clients' validation): " + (
                ", ".join(f"{m} ({s})" for s, m in left_out)
            )
    else:  # no table rather than one from other cells
        (out / "validation.csv").unlink(missing_ok=True)
    # Cells run with --eval-aggregated-too: both BatchNorm measurements compared.
    both = bn_measurement.with_both_scores(by_seed, profile.last_k)
    bn_text = ""
    if any(method == REFERENCE for _, method in both):
        tables = bn_measurement.compare(both, profile.last_k, REFERENCE)
        bn_text = bn_measurement.markdown(tables, profile.last_k)
        atomic_write_text(out / "bn-measurement.md", bn_text)
    plots.insert(0, gains.plot_gains(table, out / "plots" / "gains.png"))
    settings = profile.settings()
    paper = {**PAPER_PROTOCOL, "scenarios": ", ".join(PAPER_SCENARIOS),
             "seeds": PAPER_SEEDS}  # fmt: skip
    data = {
        "profile": {
            "name": profile.name,
            "description": profile.description,
            "methods": list(profile.methods),
            "scenarios": list(profile.scenarios),
            "seeds": list(profile.seeds),
            "rounds": profile.rounds,
            "config": profile.config,
        },
        "command": command,
        "finished": time.strftime("%Y-%m-%d %H:%M %Z"),
        "runs_dir": _repo_path(runs_dir),
        "cells": len(rows),
        "ran": ran,
        "not_run": [dataclasses.asdict(c) for c in not_run],
        "matrix_wall": fmt_time(matrix_wall),
        # Cells run across several invocations: their own times add up to the
        # profile's cost, whatever this invocation reused.
        "cells_wall": fmt_time(sum(r["wall_s"] for r in rows)),
        "settings": {k: (str(settings[k]), str(paper[k])) for k in paper},
        "hardware": hardware_text,
        "cell_machines": machines,
        "deviations": [dataclasses.asdict(d) for d in profile.all_deviations()],
        "last_k": profile.last_k,
        "gains": table,
        "reading": gains.plain_reading(table),
        "bn_measurement": _repo_path(out / "bn-measurement.md") if bn_text else "",
        "gains_csv": _repo_path(out / "gains.csv"),
        "validation_csv": _repo_path(out / "validation.csv") if val_text else "",
        "tables": {
            "gains": gains.gains_markdown(table),
            "validation": val_text,
            "final": report.pivot_table(agg, "final_acc"),
            "best": report.pivot_table(agg, "best_acc"),
            "cost": report.cost_table(agg),
        },
        "csv": _repo_path(out / "results.csv"),
        "plots": [_repo_path(p) for p in plots],
        "perf": perf.render(figures),
        "figures": figures,
        "aggregate": agg,
    }
    atomic_write_json(out / "report.json", data)
    atomic_write_text(out / "RESULTS.md", report.render_section(data, out))
    atomic_write_text(out / "gains.md", data["tables"]["gains"])
    atomic_write_text(
        out / "results.md",
        f"Last-{profile.last_k} accuracy, paired gains over FedAvg (95% CI)\n\n"
        + data["tables"]["gains"]
        + data["reading"]
        + "\nFinal-round accuracy (%), mean ± std (gain over FedAvg)\n\n"
        + data["tables"]["final"]
        + "\nBest-round accuracy (%), mean ± std (gain over FedAvg)\n\n"
        + data["tables"]["best"],
    )
    return data


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.results",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--profile", required=True, choices=list(PROFILES))
    p.add_argument("--methods", nargs="+", default=None, help="default: the profile's")
    p.add_argument(
        "--scenarios",
        nargs="+",
        default=None,
        help=f"default: the profile's; of {', '.join(SPLITS)}",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=None)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument(
        "--out", type=Path, default=None, help="default: benchmarks/results/<profile>"
    )
    p.add_argument(
        "--guidance-model",
        default=None,
        help="diffusers model folder (paper profile: Stable Diffusion)",
    )
    p.add_argument("--data-root", type=Path, default=None)
    p.add_argument("--device", default=None, help="override the profile's device")
    p.add_argument(
        "--eval-aggregated-too",
        action="store_true",
        help="with a profile that recomputes BatchNorm statistics (eval-bn-images): "
        "also record each round's score as aggregated, to compare the two "
        "measurements on the same runs (python -m benchmarks.bn_measurement)",
    )
    p.add_argument(
        "--skip-perf",
        action="store_true",
        help="no performance measurements (the cost table still shows)",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: the report from the finished cells; a cell not run "
        "(or run with another config) is left out and named in the report",
    )
    p.add_argument(
        "--estimate-only",
        action="store_true",
        help="print the plan and the time estimate, run nothing",
    )
    p.add_argument(
        "--update-readme",
        action="store_true",
        help="then replace the README's results section",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    command = "python -m benchmarks.results " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    try:
        profile = customise(get_profile(args.profile), args)
        given = given_config(profile, args)
    except ProfileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = (args.out or APP_DIR / "benchmarks" / "results" / profile.name).resolve()
    runs_dir = out / "runs"
    base = {
        **profile.config,
        **given,
        "feature-store": str(APP_DIR / "outputs" / "feature-store"),
    }
    # --device cpu on a CUDA profile: no GPU share (Ray would wait for a GPU).
    gpus = (
        profile.client_gpus
        if str(base.get("device", "cpu")).startswith("cuda")
        else 0.0
    )
    cells = len(profile.methods) * len(profile.scenarios) * len(profile.seeds)
    print(
        f"profile {profile.name}: {profile.description}\n"
        f"  {len(profile.methods)} methods x {len(profile.scenarios)} scenarios x "
        f"{len(profile.seeds)} seeds = {cells} cells, {profile.rounds} rounds each\n"
        f"  methods {list(profile.methods)}; scenarios {list(profile.scenarios)}; "
        f"seeds {list(profile.seeds)}\n  shared config {base}\n  deviations from "
        "the papers: "
        + "; ".join(
            f"{d.what}: {d.here} (papers: {d.paper})" for d in profile.all_deviations()
        ),
        flush=True,
    )
    all_cells = [Cell(m, sc, s) for sc in profile.scenarios for m in profile.methods
                 for s in profile.seeds]  # fmt: skip
    total = sum(profile.estimate(all_cells))
    if profile.cost is None:
        print("  estimate: none for this profile's hardware (no cost model)")
    else:
        print(f"  estimated total, every cell from scratch: {fmt_time(total)} "
              f"(cost model: {profile.cost.source})")  # fmt: skip
    if args.estimate_only:
        return 0
    t0 = time.perf_counter()
    missing = [
        c
        for c in all_cells
        if not cell_done(
            cell_overrides(c, base, profile.rounds, runs_dir, SPLITS), runs_dir
        )
    ]
    ran = 0 if args.report_only else len(missing)
    rows = run_matrix(
        list(profile.methods), list(profile.scenarios), list(profile.seeds), base,
        profile.rounds, runs_dir, splits=SPLITS,
        runner=functools.partial(sampled_runner, gpus_per_client=gpus),
        estimate=profile.estimate, last_k=profile.last_k,
        run_missing=not args.report_only,
    )  # fmt: skip
    matrix_wall = time.perf_counter() - t0
    if rows is None:
        print("a cell failed (log above); rerun the same command to resume",
              file=sys.stderr)  # fmt: skip
        return 1
    figures = {} if args.skip_perf else perf.measure_all(profile, base, out / "perf")
    atomic_write_json(out / "perf.json", figures)
    data = build_report(
        profile, rows, out, runs_dir, figures=figures, command=command,
        hardware_text=hardware(), matrix_wall=matrix_wall, ran=ran,
        not_run=missing if args.report_only else [],
    )  # fmt: skip
    print("\n" + (out / "RESULTS.md").read_text())
    print(f"total wall time {fmt_time(time.perf_counter() - t0)}; wrote {out}")
    if args.update_readme:
        readme = APP_DIR / "README.md"
        report.replace_between_markers(readme, report.render_section(data, APP_DIR))
        print(f"replaced the results section of {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
