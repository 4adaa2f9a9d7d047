"""The decisive table: last-K means, paired gains with intervals, MDE, the CSV."""

import dataclasses
import json
import math
import statistics

import pytest

from benchmarks.gains import (
    COLUMNS,
    gains_markdown,
    gains_rows,
    last_k_accuracy,
    plain_reading,
    plot_gains,
    scored_runs,
    write_gains_csv,
)
from benchmarks.matrix import VALIDATION_ACCURACY, has_metric
from benchmarks.profiles import ProfileError, get_profile
from benchmarks.stats import minimum_detectable_effect


def _run(tmp_path, name, accuracies):
    """A run folder whose rounds 1.. have the given accuracies (round 0 at 0.1)."""
    folder = tmp_path / name
    folder.mkdir()
    rows = [{"round": 0, "central-accuracy": 0.1}]
    rows += [{"round": i + 1, "central-accuracy": a} for i, a in enumerate(accuracies)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_last_k_is_the_mean_of_the_last_k_rounds_and_cancels_a_2_cycle(tmp_path):
    # a model swinging 0.6 / 0.8 every other round: any even K gives 70%
    run = _run(tmp_path, "swing", [0.5, 0.6, 0.8, 0.6, 0.8, 0.6, 0.8])
    assert last_k_accuracy(run, 2) == pytest.approx(70.0)
    assert last_k_accuracy(run, 6) == pytest.approx(70.0)
    with pytest.raises(ValueError, match="fewer than K=8"):
        last_k_accuracy(run, 8)


def test_the_validation_table_reads_the_clients_held_out_scores(tmp_path):
    # Test accuracy 50% throughout; the clients' validation 0.6 / 0.8 by turns.
    folder = tmp_path / "val"
    folder.mkdir()
    rows = [{"round": 0, "central-accuracy": 0.1}] + [
        {
            "round": r,
            "central-accuracy": 0.5,
            "validation": {
                "eval-balanced-accuracy": 0.6 if r % 2 else 0.8,
                "clients": 3,
            },
        }
        for r in range(1, 5)
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert has_metric(folder, VALIDATION_ACCURACY)
    assert last_k_accuracy(folder, 4, VALIDATION_ACCURACY) == pytest.approx(70.0)
    assert last_k_accuracy(folder, 4) == pytest.approx(50.0)
    plain = _run(tmp_path, "plain", [0.5, 0.5])
    assert not has_metric(plain, VALIDATION_ACCURACY)
    with pytest.raises(ValueError, match="have no .validation/eval-balanced-accuracy."):
        last_k_accuracy(plain, 2, VALIDATION_ACCURACY)
    # The validation table keeps the groups scored throughout, in scenarios
    # whose reference was scored too.
    runs = {
        ("a", "fedavg"): {0: folder, 1: folder},
        ("a", "x"): {0: folder, 1: plain},  # one cell without validation
        ("a", "y"): {0: folder},
        ("b", "fedavg"): {0: plain},
        ("b", "y"): {0: folder},  # nothing to pair with
    }
    kept = scored_runs(runs, 2, VALIDATION_ACCURACY, "fedavg")
    assert list(kept) == [("a", "fedavg"), ("a", "y")]


def test_a_known_table_of_seeds(tmp_path):
    # Last-2 means per seed: fedavg 50, 60, 70; method 53, 61, 75 -> gains 3, 1, 5
    # (mean 3, sample std 2); other 50, 60, 70 -> gains 0, 0, 0.
    fedavg = {
        s: _run(tmp_path, f"a{s}", [0.1, v, v]) for s, v in enumerate([0.5, 0.6, 0.7])
    }
    method = {
        s: _run(tmp_path, f"m{s}", [0.1, v, v])
        for s, v in enumerate([0.53, 0.61, 0.75])
    }
    runs = {("dir", "fedavg"): fedavg, ("dir", "m"): method}
    rows = gains_rows(runs, k=2)
    ref, m = rows
    half = 4.302653 * 2 / math.sqrt(3)  # t(0.975, 2) * s / sqrt(n)
    # method's last-2 means 53, 61, 75: mean 63, sample std sqrt(124)
    assert m["mean"] == pytest.approx(63.0) and m["std"] == pytest.approx(
        math.sqrt(124)
    )
    assert m["gain"] == pytest.approx(3.0)
    assert (m["gain_low"], m["gain_high"]) == pytest.approx(
        (3 - half, 3 + half), abs=1e-4
    )
    assert m["verdict"] == "not resolved"  # [-1.97, 7.97] holds 0
    assert m["mde"] == pytest.approx(minimum_detectable_effect(2.0, 3))
    assert ref["gain"] == 0 and ref["gain_low"] == 0 and ref["gain_high"] == 0
    assert ref["mde"] == pytest.approx(
        minimum_detectable_effect(2.0, 3)
    )  # pooled: one method
    assert ref["mean"] == pytest.approx(60.0) and ref["std"] == pytest.approx(10.0)


def test_the_csv_has_exactly_the_columns_and_the_markdown_a_verdict(tmp_path):
    fedavg = {s: _run(tmp_path, f"a{s}", [v, v]) for s, v in enumerate([0.5, 0.6, 0.7])}
    better = {
        s: _run(tmp_path, f"b{s}", [v, v]) for s, v in enumerate([0.55, 0.66, 0.74])
    }
    rows = gains_rows({("x", "fedavg"): fedavg, ("x", "better"): better}, k=2)
    write_gains_csv(rows, tmp_path / "gains.csv")
    lines = (tmp_path / "gains.csv").read_text().splitlines()
    assert lines[0] == ",".join(COLUMNS)
    assert lines[2].startswith("x,better,3,2,65.00,")
    md = gains_markdown(rows)
    assert "| better |" in md and "better |" in md.splitlines()[-2]
    assert "minimum detectable effect" in md
    # gains 5, 6, 4: paired std 1 -> 4 seeds reach an MDE of 3 (3 give 3.10)
    assert "(pooled paired std 1.00) 4 seeds reach an MDE of 3" in md
    assert plot_gains(rows, tmp_path / "gains.png").stat().st_size > 1000


def test_the_plain_reading_says_what_is_resolved_and_whether_the_mde_is_met(tmp_path):
    # Last-2 gains over fedavg (50, 60, 70): up +10, +11, +12 (resolved, mean 11);
    # down -10, -11, -12 (resolved); flat +3, +1, +5 (holds 0).
    def method(name, values):
        return {s: _run(tmp_path, f"{name}{s}", [v, v]) for s, v in enumerate(values)}

    runs = {
        ("x", "fedavg"): method("a", [0.5, 0.6, 0.7]),
        ("x", "up"): method("u", [0.6, 0.71, 0.82]),
        ("x", "down"): method("d", [0.4, 0.49, 0.58]),
        ("x", "flat"): method("f", [0.53, 0.61, 0.75]),
    }
    text = plain_reading(gains_rows(runs, k=2), target=3.0)
    half = 4.302653 * 1 / math.sqrt(3)  # paired std 1 for up and down
    assert (
        f"resolved better than FedAvg: up (+11.0 [{11 - half:+.1f}, {11 + half:+.1f}])"
        in text
    )
    assert "resolved worse than FedAvg: down (-11.0 [" in text
    assert "not resolved (the interval contains 0): flat" in text
    # pooled paired std sqrt((1 + 1 + 4) / 3) = sqrt(2) over 3 seeds
    mde = minimum_detectable_effect(math.sqrt(2), 3)
    assert f"MDE {mde:.1f} points, above the 3-point target" in text and mde > 3
    assert "about 4 seeds would reach it" in text  # sqrt(2): 4 seeds give 2.94
    assert "within the 9-point target" in plain_reading(gains_rows(runs, k=2), target=9)


def test_an_unpaired_scenario_is_refused(tmp_path):
    method = {0: _run(tmp_path, "m0", [0.5, 0.5])}
    with pytest.raises(ValueError, match="no 'fedavg' runs to pair with"):
        gains_rows({("x", "m"): method}, k=2)


@pytest.mark.parametrize("last_k", [0, 3, 14])
def test_a_profile_with_a_bad_last_k_is_refused(last_k):
    bad = dataclasses.replace(get_profile("decisive"), last_k=last_k)
    with pytest.raises(ProfileError, match=r"last_k = .* even number of rounds"):
        bad.validate()


def test_the_decisive_profile_is_what_the_comparison_needs():
    profile = get_profile("decisive")
    assert set(profile.scenarios) == {"dir0.05", "extreme"}
    assert len(profile.seeds) >= 5 and profile.last_k == 6
    for method in ("fedavgm", "fedadam", "fedetf", "fedavg-public", "fedavg-adapt"):
        assert method in profile.methods


def test_the_scenario_mde_pools_the_methods_that_ran_every_seed(tmp_path):
    # fedavg and "full" ran 4 seeds, "short" 3: the scenario's MDE is at 4
    # seeds from "full"'s spread alone; "short" keeps its own in its row.
    def cells(name, values):
        return {s: _run(tmp_path, f"{name}{s}", [v, v]) for s, v in enumerate(values)}

    rows = gains_rows(
        {
            ("x", "fedavg"): cells("a", [0.50, 0.60, 0.70, 0.80]),
            ("x", "full"): cells("f", [0.55, 0.66, 0.74, 0.85]),  # gains 5, 6, 4, 5
            ("x", "short"): cells("s", [0.40, 0.70, 0.70]),  # gains -10, 10, 0
        },
        k=2,
    )
    by = {r["method"]: r for r in rows}
    spread = statistics.stdev([5, 6, 4, 5])
    assert by["fedavg"]["mde"] == pytest.approx(minimum_detectable_effect(spread, 4))
    assert by["short"]["mde"] == pytest.approx(minimum_detectable_effect(10.0, 3))
