"""benchmarks.bn_measurement against a hand-computed table of fake runs."""

import json
import math

import pytest

from benchmarks import bn_measurement


def _run(runs, name, recomputed, aggregated=None):
    d = runs / name
    d.mkdir()
    lines = [{"round": 0, "central-accuracy": 0.1}]
    for i, acc in enumerate(recomputed, start=1):
        row = {"round": i, "central-accuracy": acc}
        if aggregated is not None:
            row["central-accuracy-aggregated"] = aggregated[i - 1]
        lines.append(row)
    (d / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    (d / "summary.json").write_text("{}")


@pytest.fixture
def runs(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    # Round 1 lies outside the last K = 2 and must not count.
    fedavg = {
        0: ([0.9, 0.5, 0.6], [0.9, 0.3, 0.6]),
        1: ([0.9, 0.4, 0.4], [0.9, 0.4, 0.2]),
        2: ([0.9, 0.7, 0.5], [0.9, 0.5, 0.3]),
    }
    other = {0: [0.1, 0.6, 0.6], 1: [0.1, 0.5, 0.4], 2: [0.1, 0.6, 0.7]}
    for seed, (rec, agg) in fedavg.items():
        _run(runs, f"fedavg-extreme-seed{seed}-r3", rec, agg)
        _run(runs, f"fedavg-public-extreme-seed{seed}-r3", other[seed], other[seed])
    _run(runs, "fedavg-public-extreme-seed9-r3", [0.1, 0.2, 0.3])  # one score only
    (runs / "not-a-cell").mkdir()
    return runs


def test_cells_need_both_scores_and_a_cell_name(runs):
    cells = bn_measurement.paired_cells(runs, k=2)
    assert set(cells) == {("extreme", "fedavg"), ("extreme", "fedavg-public")}
    assert sorted(cells[("extreme", "fedavg-public")]) == [0, 1, 2]


def test_the_two_measurements_by_hand(runs):
    tables = bn_measurement.compare(bn_measurement.paired_cells(runs, k=2), k=2)
    rec = {r["method"]: r for r in tables["recomputed"]}
    agg = {r["method"]: r for r in tables["aggregated"]}
    # Recomputed: fedavg 55, 40, 60; fedavg-public 60, 45, 65: gain 5 every seed.
    assert rec["fedavg"]["mean"] == pytest.approx((55 + 40 + 60) / 3)
    assert rec["fedavg-public"]["gain"] == pytest.approx(5.0)
    assert rec["fedavg-public"]["paired_std"] == pytest.approx(0.0, abs=1e-9)
    # Aggregated: fedavg 45, 30, 40: gains 15, 15, 25.
    assert agg["fedavg-public"]["gain"] == pytest.approx(55 / 3)
    assert agg["fedavg-public"]["paired_std"] == pytest.approx(math.sqrt(100 / 3))
    # Swing over the last 2 rounds: |0.6-0.5|, |0.4-0.4|, |0.5-0.7| -> 10 points;
    # aggregated |0.6-0.3|, |0.2-0.4|, |0.3-0.5| -> 23.33.
    assert rec["fedavg"]["swing"] == pytest.approx(10.0)
    assert agg["fedavg"]["swing"] == pytest.approx(70 / 3)
    text = bn_measurement.markdown(tables, k=2)
    assert "Pooled paired spread: aggregated 5.77, recomputed 0.00" in text


def test_no_usable_cells_is_a_clear_error(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    _run(runs, "fedavg-extreme-seed0-r3", [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="--eval-aggregated-too"):
        bn_measurement.compare(bn_measurement.paired_cells(runs, k=2), k=2)
    assert bn_measurement.main(["--dir", str(tmp_path), "--k", "2"]) == 2
