"""The benchmark matrix: finished cells are reused only with the same settings."""

import json

import pytest

from benchmarks.matrix import (
    APP_DIR,
    SCENARIOS,
    Cell,
    _config_mismatch,
    method_overrides,
    round_times,
    run_matrix,
)
from deploy.local_sim import resolve_config


def _finished_cell(run_dir, overrides, round_seconds):
    run_dir.mkdir(parents=True)
    cfg = resolve_config(APP_DIR, overrides).to_run_config()
    (run_dir / "config.json").write_text(json.dumps(cfg))
    (run_dir / "summary.json").write_text("{}")
    rows = [{"round": 0, "round-seconds": 99.0, "eval-seconds": 1.0}]
    rows += [
        {"round": r, "round-seconds": s, "eval-seconds": 1.0}
        for r, s in enumerate(round_seconds, 1)
    ]
    (run_dir / "metrics.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")


def test_a_finished_cell_is_reused_only_with_the_same_settings(tmp_path):
    overrides = {"method": "fedavg", **SCENARIOS["dir0.1"], "num-server-rounds": 3}
    run_dir = tmp_path / Cell("fedavg", "dir0.1", 42).name(3)
    _finished_cell(run_dir, overrides, [5.0, 7.0, 6.0])
    assert _config_mismatch(run_dir, overrides) == ""
    stale = _config_mismatch(run_dir, {**overrides, "public-split-size": 500})
    assert "public-split-size=10000 not 500" in stale
    # round 0 (the initial evaluation) is left out of the medians
    assert round_times(run_dir) == (6.0, 5.0)


def test_unknown_scenario_lists_the_valid_ones(tmp_path):
    with pytest.raises(SystemExit, match="dir0.1, dir0.5, extreme"):
        run_matrix(["fedavg"], ["dir0.2"], [42], {}, 1, tmp_path)


def test_a_key_added_since_a_cell_ran_counts_as_its_default(tmp_path):
    overrides = {"method": "fedavg", **SCENARIOS["dir0.1"], "num-server-rounds": 3}
    run_dir = tmp_path / "old"
    _finished_cell(run_dir, overrides, [5.0])
    recorded = json.loads((run_dir / "config.json").read_text())
    del recorded["guidance-head"]  # a run from before the key existed
    (run_dir / "config.json").write_text(json.dumps(recorded))
    assert _config_mismatch(run_dir, overrides) == ""
    assert "guidance-head" in _config_mismatch(
        run_dir, {**overrides, "guidance-head": "mlp"}
    )


def test_another_methods_settings_do_not_make_a_cell_stale(tmp_path):
    # A FedAvg cell does not read SemanticFL's or FedDifRC's keys: changing
    # their defaults must not rerun it. SemanticFL's own keys still count.
    overrides = {"method": "fedavg", **SCENARIOS["dir0.1"], "num-server-rounds": 3}
    run_dir = tmp_path / "fedavg"
    _finished_cell(run_dir, overrides, [5.0])
    other = {"kd-form": "classes", "zero-shot-weight": 2.0, "etf-loss": "ce"}
    assert _config_mismatch(run_dir, {**overrides, **other}) == ""
    assert "seed" in _config_mismatch(run_dir, {**overrides, "seed": 7})

    guided = {**overrides, "method": "semanticfl"}
    run_dir = tmp_path / "semanticfl"
    _finished_cell(run_dir, guided, [5.0])
    assert _config_mismatch(run_dir, {**guided, "zero-shot-weight": 2.0}) == ""
    assert "kd-form" in _config_mismatch(run_dir, {**guided, "kd-form": "classes"})


def test_auto_loss_matches_a_cell_recorded_with_the_loss_it_resolves_to(tmp_path):
    # SemanticFL's default (the teacher, ce-loss "auto" = balanced) is the
    # cell an earlier run recorded with the explicit balanced loss.
    semanticfl = {"method": "semanticfl", **SCENARIOS["dir0.1"], "num-server-rounds": 3}
    run_dir = tmp_path / "old"
    _finished_cell(run_dir, {**semanticfl, "ce-loss": "balanced"}, [5.0])
    assert _config_mismatch(run_dir, semanticfl) == ""
    assert "ce-loss" in _config_mismatch(run_dir, {**semanticfl, "ce-loss": "ce"})
    # without the teacher, "auto" is plain cross-entropy
    paper = {**semanticfl, "kd-form": "coordinates"}
    run_dir = tmp_path / "paper"
    _finished_cell(run_dir, {**paper, "ce-loss": "ce"}, [5.0])
    assert _config_mismatch(run_dir, paper) == ""
    assert "ce-loss='ce' not 'balanced'" in _config_mismatch(
        run_dir, {**paper, "ce-loss": "balanced"}
    )


def test_auto_head_matches_a_cell_recorded_with_the_head_it_resolves_to(tmp_path):
    # FedDifRC's default resolves to the mlp projector: a cell recorded with
    # the explicit mlp head is it; one recorded on the raw embedding is not.
    feddifrc = {"method": "feddifrc", **SCENARIOS["dir0.1"], "num-server-rounds": 3}
    run_dir = tmp_path / "mlp"
    _finished_cell(run_dir, {**feddifrc, "guidance-head": "mlp"}, [5.0])
    assert _config_mismatch(run_dir, feddifrc) == ""
    run_dir = tmp_path / "none"  # as feddifrc-nohead ran: the teacher at weight 1
    raw = {
        **feddifrc,
        "guidance-head": "none",
        "zero-shot-weight": 1.0,
        "server-finetune": "none",
    }
    _finished_cell(run_dir, raw, [5.0])
    assert "guidance-head='none' not 'mlp'" in _config_mismatch(run_dir, feddifrc)
    nohead = {**feddifrc, **method_overrides("feddifrc-nohead")}
    assert _config_mismatch(run_dir, nohead) == ""


def test_a_record_from_before_the_teacher_keys_ran_the_papers_forms(tmp_path):
    overrides = {"method": "semanticfl", **SCENARIOS["dir0.1"], "num-server-rounds": 3}
    run_dir = tmp_path / "old"
    _finished_cell(run_dir, {**overrides, "kd-form": "coordinates"}, [5.0])
    recorded = json.loads((run_dir / "config.json").read_text())
    for key in ("kd-form", "ce-loss"):
        del recorded[key]  # a run from before the keys existed
    (run_dir / "config.json").write_text(json.dumps(recorded))
    assert _config_mismatch(run_dir, {**overrides, "kd-form": "coordinates"}) == ""
    assert "kd-form" in _config_mismatch(run_dir, overrides)  # today's default


def test_a_record_from_before_the_server_finetune_key_ran_without_it(tmp_path):
    # The teacher-only cells ran before server-finetune existed: they are
    # the "-teacher" variants now, not today's default.
    overrides = {"method": "semanticfl", **SCENARIOS["dir0.1"], "num-server-rounds": 3}
    run_dir = tmp_path / "old"
    _finished_cell(run_dir, {**overrides, "server-finetune": "none"}, [5.0])
    recorded = json.loads((run_dir / "config.json").read_text())
    del recorded["server-finetune"]
    (run_dir / "config.json").write_text(json.dumps(recorded))
    teacher = {**overrides, **method_overrides("semanticfl-teacher")}
    assert _config_mismatch(run_dir, teacher) == ""
    assert "server-finetune='none' not 'public'" in _config_mismatch(run_dir, overrides)
