"""The scale benchmark's settings and arithmetic (its runs are the benchmark)."""

import math

import pytest

from benchmarks import scale


def test_every_scale_trains_the_same_clients_and_samples():
    small, large = scale.run_config("fedavg", 10, 4), scale.run_config("fedavg", 1000, 4)
    for cfg in (small, large):
        assert cfg["fraction-train"] * cfg["num-clients"] == pytest.approx(scale.SAMPLED)
        assert cfg["max-samples-per-client"] == 40 and cfg["partitioner"] == "iid"
    # 1,000 IID clients of the 59,000 images left after the public split hold 59.
    assert (60_000 - small["public-split-size"]) // 1000 >= small["max-samples-per-client"]
    assert {k: v for k, v in small.items() if k not in ("num-clients", "fraction-train",
            "min-available-clients")} == {k: v for k, v in large.items() if k not in (
            "num-clients", "fraction-train", "min-available-clients")}  # fmt: skip


def test_fewer_clients_than_sampled_is_refused():
    with pytest.raises(ValueError, match=">= 10"):
        scale.run_config("fedavg", 5, 4)
    assert scale.main(["--clients", "5,10"]) == 2


def _row(method, n, round_s, setup, server, client):
    return {"method": method, "clients": n, "round-seconds": round_s, "overhead-seconds": 1.0,
            "setup-seconds": setup, "server-mb": server, "client-mb": client}  # fmt: skip


def test_ratios_are_to_the_same_methods_fewest_clients():
    rows = scale.with_ratios([
        _row("fedavg", 10, 2.0, 10.0, 500.0, 400.0),
        _row("fedavg", 1000, 2.3, 40.0, 550.0, 0.0),
        _row("semanticfl", 10, 4.0, 20.0, 1000.0, 500.0),
    ])  # fmt: skip
    big = rows[1]
    assert big["round-seconds-ratio"] == pytest.approx(1.15)
    assert big["setup-seconds-ratio"] == pytest.approx(4.0)
    assert big["server-mb-ratio"] == pytest.approx(1.1)
    assert big["baseline-clients"] == 10
    assert rows[2]["round-seconds-ratio"] == 1.0  # its own baseline
    assert math.isnan(scale.with_ratios([_row("x", 10, 1, 1, 1, 0)])[0]["client-mb-ratio"])
    page = scale.markdown(rows, "test machine", "python -m benchmarks.scale")
    assert "fedavg, 1,000 clients, round-seconds: 1.15x (goal 1.2x): met" in page
    assert "fedavg, 1,000 clients, server-mb: 1.10x (goal 1.2x): met" in page
