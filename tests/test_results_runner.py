"""The results runner: profiles, resume, aggregation over seeds, rendering, README."""

import dataclasses
import json
import os
import statistics
from argparse import Namespace
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks import report
from benchmarks.matrix import APP_DIR, Cell, cell_overrides, run_matrix
from benchmarks.profiles import (
    PROFILES,
    SPLITS,
    Deviation,
    ProfileError,
    get_profile,
)
from benchmarks.results import build_report, cell_machines, customise, given_config
from deploy.local_sim import resolve_config

# Synthetic accuracy curves: (scenario, method, seed) -> accuracy per round 0..3.
CURVES = {
    ("dir0.5", "fedavg", 0): [0.1, 0.50, 0.60, 0.70],
    ("dir0.5", "fedavg", 1): [0.1, 0.55, 0.70, 0.66],
    ("dir0.5", "semanticfl", 0): [0.1, 0.60, 0.75, 0.74],
    ("dir0.5", "semanticfl", 1): [0.1, 0.58, 0.72, 0.76],
    ("extreme", "fedavg", 0): [0.1, 0.30, 0.40, 0.35],
    ("extreme", "fedavg", 1): [0.1, 0.32, 0.38, 0.41],
    ("extreme", "semanticfl", 0): [0.1, 0.33, 0.45, 0.40],
    ("extreme", "semanticfl", 1): [0.1, 0.36, 0.40, 0.44],
}
ROUNDS = 3
BASE = {"num-clients": 3, "max-samples-per-client": 100, "public-split-size": 500}


def write_run(runs_dir: Path, overrides: dict, accuracy: list[float]) -> Path:
    """A finished run folder, as the ServerApp writes it."""
    run_dir = runs_dir / overrides["run-name"]
    run_dir.mkdir(parents=True)
    cfg = resolve_config(APP_DIR, overrides).to_run_config()
    (run_dir / "config.json").write_text(json.dumps(cfg))
    rows = [
        {
            "round": r,
            "central-accuracy": a,
            "round-seconds": 2.0 + r,
            "eval-seconds": 1.0,
        }
        for r, a in enumerate(accuracy)
    ]
    (run_dir / "metrics.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    best = max(range(1, len(accuracy)), key=lambda r: accuracy[r])
    summary = {
        "final-round-accuracy": accuracy[-1],
        "best-round-accuracy": accuracy[best],
        "best-round": best,
        "wall-seconds": 10.0,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "partition_counts.csv").write_text(
        "partition,a,b,total\n0,5,0,5\n1,0,7,7\n2,3,3,6\npublic,1,1,2\n"
    )
    return run_dir


class FakeRunner:
    """Stands in for run_simulation: writes the cell's folder, counts calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, app_dir, overrides, stream=False):
        self.calls.append(overrides["run-name"])
        key = (overrides["partitioner"], overrides["method"], overrides["seed"])
        scenario = "dir0.5" if key[0] == "dirichlet" else "extreme"
        run_dir = write_run(
            Path(overrides["output-dir"]), overrides, CURVES[(scenario, *key[1:])]
        )
        return SimpleNamespace(ok=True, status="finished:completed", run_dir=run_dir)


def matrix(runs_dir, runner):
    return run_matrix(
        ["fedavg", "semanticfl"], ["dir0.5", "extreme"], [0, 1], BASE, ROUNDS,
        runs_dir, splits=SPLITS, runner=runner,
        estimate=lambda cells: [5.0] * len(cells),
    )  # fmt: skip


def test_resume_skips_finished_cells_and_runs_only_the_rest(tmp_path, capsys):
    runs_dir = tmp_path / "runs"
    done = Cell("fedavg", "dir0.5", 0)
    write_run(
        runs_dir,
        cell_overrides(done, BASE, ROUNDS, runs_dir, SPLITS),
        CURVES[("dir0.5", "fedavg", 0)],
    )
    runner = FakeRunner()
    rows = matrix(runs_dir, runner)
    assert len(rows) == 8 and len(runner.calls) == 7
    assert done.name(ROUNDS) not in runner.calls
    out = capsys.readouterr().out
    assert "8 cells, 1 already done; estimated 0m35s for the rest" in out
    assert "cells 8/8 done | elapsed" in out and "ETA 0m00s" in out

    # A second pass launches nothing at all.
    def refuse(*args, **kwargs):
        raise AssertionError("a finished cell was run again")

    assert matrix(runs_dir, refuse) == rows


def test_report_only_runs_nothing_and_names_what_it_left_out(tmp_path, capsys):
    runs_dir = tmp_path / "out" / "runs"
    done = [Cell("fedavg", "dir0.5", 0), Cell("fedavg", "dir0.5", 1),
            Cell("semanticfl", "dir0.5", 0)]  # fmt: skip
    for cell in done:
        write_run(
            runs_dir,
            cell_overrides(cell, BASE, ROUNDS, runs_dir, SPLITS),
            CURVES[(cell.scenario, cell.method, cell.seed)],
        )

    def refuse(*args, **kwargs):
        raise AssertionError("--report-only ran a cell")

    rows = run_matrix(
        ["fedavg", "semanticfl"], ["dir0.5"], [0, 1], BASE, ROUNDS, runs_dir,
        splits=SPLITS, runner=refuse, run_missing=False,
    )  # fmt: skip
    assert [(r["method"], r["seed"]) for r in rows] == [
        ("fedavg", 0), ("fedavg", 1), ("semanticfl", 0)
    ]  # fmt: skip
    assert (
        "semanticfl     dir0.5   seed=1: not run, left out" in capsys.readouterr().out
    )
    profile = dataclasses.replace(
        PROFILES["smoke"], methods=("fedavg", "semanticfl"), rounds=ROUNDS
    )
    left = Cell("semanticfl", "dir0.5", 1)
    data = build_report(
        profile, rows, tmp_path / "out", runs_dir, figures={}, command="cmd",
        hardware_text="test CPU", matrix_wall=0.0, ran=0, not_run=[left],
    )  # fmt: skip
    assert data["not_run"] == [
        {"method": "semanticfl", "scenario": "dir0.5", "seed": 1}
    ]
    md = (tmp_path / "out" / "RESULTS.md").read_text()
    assert (
        "Not run yet, so not in these tables (1 cells, `--report-only`): semanticfl (dir0.5 seed 1)."
        in md
    )
    # semanticfl's one seed is paired with fedavg's seed 0 only
    gain = next(g for g in data["gains"] if g["method"] == "semanticfl")
    assert gain["seeds"] == 1


def test_aggregation_over_seeds_with_paired_gain(tmp_path):
    rows = matrix(tmp_path / "runs", FakeRunner())
    agg = {(a["scenario"], a["method"]): a for a in report.aggregate(rows)}
    a = agg[("dir0.5", "semanticfl")]
    assert a["seeds"] == 2
    assert a["final_acc_mean"] == pytest.approx(0.75)
    assert a["final_acc_std"] == pytest.approx(statistics.stdev([0.74, 0.76]))
    assert a["best_acc_mean"] == pytest.approx((0.75 + 0.76) / 2)
    # paired by seed: (0.74 - 0.70, 0.76 - 0.66)
    assert a["final_acc_gain_mean"] == pytest.approx(0.07)
    assert a["final_acc_gain_std"] == pytest.approx(statistics.stdev([0.04, 0.10]))
    # best rounds: semanticfl 0.75, 0.76; fedavg 0.70, 0.70
    assert a["best_acc_gain_mean"] == pytest.approx(0.055)
    assert agg[("dir0.5", "fedavg")]["final_acc_gain_mean"] == pytest.approx(0.0)
    assert a["round_ratio"] == pytest.approx(1.0)
    one = report.aggregate([r for r in rows if r["seed"] == 0])
    assert all(x["final_acc_std"] is None for x in one)


def test_markdown_and_csv_rendering(tmp_path):
    agg = report.aggregate(matrix(tmp_path / "runs", FakeRunner()))
    table = report.pivot_table(agg, "final_acc")
    lines = table.splitlines()
    assert lines[0] == "| method | dir0.5 | extreme |"
    assert lines[2].startswith("| fedavg | 68.00 ± 2.83 | 38.00 ± 4.24 |")
    assert lines[3].startswith("| semanticfl | 75.00 ± 1.41 (+7.00 ± 4.24) |")
    assert "| dir0.5 | semanticfl |" in report.cost_table(agg)
    report.write_table_csv(agg, tmp_path / "t.csv")
    text = (tmp_path / "t.csv").read_text().splitlines()
    assert text[0].startswith("scenario,method,seeds,final_acc_mean,final_acc_std")
    assert len(text) == 5


def test_plots_are_written(tmp_path):
    runs = tmp_path / "runs"
    rows = matrix(runs, FakeRunner())
    dirs = {}
    for r in rows:
        name = Cell(r["method"], r["scenario"], r["seed"]).name(ROUNDS)
        dirs.setdefault((r["scenario"], r["method"]), []).append(runs / name)
    written = report.write_plots(dirs, tmp_path / "plots", "test")
    names = sorted(p.name for p in written)
    assert names == ["accuracy.png", "partition-dir0.5.png", "partition-extreme.png"]
    assert all(p.stat().st_size > 1000 for p in written)
    counts, classes = report.partition_counts(dirs[("dir0.5", "fedavg")][0])
    assert counts.tolist() == [[5, 0], [0, 7], [3, 3]] and classes == ["a", "b"]


def test_build_report_writes_results_md_with_protocol_and_deviations(tmp_path):
    runs = tmp_path / "out" / "runs"
    rows = matrix(runs, FakeRunner())
    profile = dataclasses.replace(
        PROFILES["smoke"], methods=("fedavg", "semanticfl"), rounds=ROUNDS
    )
    figures = {"overhead": {"error": "skipped in a test"}}
    data = build_report(
        profile, rows, tmp_path / "out", runs, figures=figures, command="cmd",
        hardware_text="test CPU", matrix_wall=12.0, ran=7,
    )  # fmt: skip
    md = (tmp_path / "out" / "RESULTS.md").read_text()
    assert "profile `smoke`" in md and "test CPU" in md
    assert "| dataset | fashion-mnist | cifar10 |" in md
    assert "| partitioner | FedDifRC's equal-size Dirichlet" in md
    assert "75.00 ± 1.41 (+7.00 ± 4.24)" in md
    assert "(plots/accuracy.png)" in md  # linked relative to RESULTS.md
    assert "Flower overhead: not measured (skipped in a test)" in md
    # the fake runner records no CPU: every cell says so, counted
    assert "**The cells' machines** (" in md and f"{len(rows)} on not recorded" in md
    assert json.loads((tmp_path / "out" / "report.json").read_text())["ran"] == 7
    assert (tmp_path / "out" / "cells.csv").exists()
    # the README rendering links from the README's folder
    assert (
        f"({os.path.relpath(tmp_path / 'out' / 'plots' / 'accuracy.png', APP_DIR)})"
        in (report.render_section(data, APP_DIR))
    )


def test_cell_machines_counts_each_cpu_model_and_older_cells(tmp_path):
    cpus = ["Xeon", "EPYC", "Xeon", None]
    dirs = []
    for i, cpu in enumerate(cpus):
        d = tmp_path / f"cell{i}"
        d.mkdir()
        summary = {"final-round-accuracy": 0.5} | ({"server-cpu": cpu} if cpu else {})
        (d / "summary.json").write_text(json.dumps(summary))
        dirs.append(d)
    assert cell_machines(dirs) == {"Xeon": 2, "EPYC": 1, "not recorded": 1}
    assert list(cell_machines(dirs)) == ["Xeon", "EPYC", "not recorded"]


def test_marker_replacement_is_atomic_and_refuses_without_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# T\nintro\n{report.BEGIN}\nold\n{report.END}\ntail\n")
    report.replace_between_markers(readme, "new body\n")
    assert readme.read_text() == (
        f"# T\nintro\n{report.BEGIN}\nnew body\n{report.END}\ntail\n"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["README.md"]  # no temp left
    for bad in ("# no markers\n", f"{report.END}\n{report.BEGIN}\n",
                f"{report.BEGIN}\n{report.BEGIN}\n{report.END}\n"):  # fmt: skip
        readme.write_text(bad)
        with pytest.raises(report.MarkerError):
            report.replace_between_markers(readme, "x")
        assert readme.read_text() == bad


def test_profiles_validate_and_declare_their_deviations():
    for name in PROFILES:
        get_profile(name)
    reduced = PROFILES["reduced"]
    assert "seeds" in reduced.setting_deviations()
    assert PROFILES["paper"].setting_deviations() == []
    with pytest.raises(ProfileError, match="unknown profile 'tiny'"):
        get_profile("tiny")
    bad = [
        ({"methods": ("semanticfl",)}, "must include 'fedavg'"),
        ({"scenarios": ("dir0.3",)}, "unknown scenario"),
        ({"seeds": (1, 1)}, "seeds must be distinct"),
        ({"config": {**reduced.config, "num-clients": 0}}, "num-clients"),
        ({"config": {**reduced.config, "seed": 3}}, "set per cell"),
        ({"deviations": reduced.deviations[1:]}, "without a Deviation"),
        ({"methods": ("fedavg", "fedmagic")}, "fedmagic"),
    ]
    for change, message in bad:
        with pytest.raises(ProfileError, match=message):
            dataclasses.replace(reduced, **change).validate()


def test_command_line_cells_become_declared_deviations():
    args = Namespace(methods=None, scenarios=["dir0.5"], seeds=[3, 4, 5], rounds=None)
    custom = customise(PROFILES["paper"], args)
    found = {d.what: d for d in custom.deviations}
    assert found["seeds"] == Deviation(
        "seeds", "1 (seed 7)", "3 (seeds 3, 4, 5)", "set on the command line"
    )
    assert found["scenarios"].here == "dir0.5"


def test_paper_profile_needs_the_model_and_data_folders(tmp_path):
    paper = PROFILES["paper"]
    none = Namespace(device=None, guidance_model=None, data_root=None)
    with pytest.raises(ProfileError, match="--guidance-model <folder> --data-root"):
        given_config(paper, none)
    args = Namespace(device="cpu", guidance_model=str(tmp_path), data_root=tmp_path)
    with pytest.raises(ProfileError, match="not a diffusers model folder"):
        given_config(paper, args)
    (tmp_path / "unet").mkdir()
    (tmp_path / "vae").mkdir()
    missing = Namespace(device="cpu", guidance_model=str(tmp_path),
                        data_root=tmp_path / "nope")  # fmt: skip
    with pytest.raises(ProfileError, match="no such folder"):
        given_config(paper, missing)
    assert given_config(paper, args)["guidance-model"] == str(tmp_path)


def test_estimate_counts_feddifrc_extraction_once_per_sample():
    reduced = PROFILES["reduced"]
    cells = [Cell("feddifrc", "dir0.5", s) for s in range(50)]
    est = reduced.estimate(cells)
    free = dataclasses.replace(
        reduced, cost=dataclasses.replace(reduced.cost, extraction_s_per_sample=0.0)
    )
    training = free.estimate(cells)
    extraction = [e - t for e, t in zip(est, training, strict=True)]
    assert extraction[0] > extraction[1] > extraction[-1] > 0  # stored samples are free
    pool = 60_000 - reduced.config["public-split-size"]
    assert sum(extraction) <= pool * reduced.cost.extraction_s_per_sample + 1e-6
    assert PROFILES["paper"].estimate(cells[:2]) == [0.0, 0.0]  # no GPU cost model


@pytest.mark.integration
def test_one_real_cell_end_to_end(tmp_path):
    """A real Flower simulation (1 cell, 2 rounds, 3 clients x 500 samples)."""
    from benchmarks.results import main

    out = tmp_path / "smoke"
    argv = ["--profile", "smoke", "--methods", "fedavg", "--scenarios", "dir0.5",
            "--seeds", "0", "--skip-perf", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    md = (out / "RESULTS.md").read_text()
    assert "| fedavg | " in md and "set on the command line" in md
    assert (out / "plots" / "accuracy.png").stat().st_size > 1000
    peak = json.loads(
        (out / "runs" / "fedavg-dir0.5-seed0-r2" / "peak-memory.json").read_text()
    )
    assert peak["server-mb"] > 0 and peak["client-mb"] > 0
