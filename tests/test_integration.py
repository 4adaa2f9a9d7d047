"""Real Flower simulations through the same launcher users run.

Checked by the run's *status* (``flwr ls``), not the CLI's exit code, and by
what the run wrote. Afterwards no process of the run may be left.
"""

import json
import os
from pathlib import Path

import pytest

from common.config import ConfigError
from common.io import read_jsonl
from deploy.local_sim import descendants, run_simulation

APP_DIR = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration

# A federation small enough for a test that still learns in 2 rounds.
SMALL_RUN = {
    "num-clients": 3,
    "num-server-rounds": 2,
    "local-epochs": 2,
    "partitioner": "dirichlet",
    "dirichlet-beta": 1.0,
    "max-samples-per-client": 600,
    "run-name": "it",
}


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_failing_run_is_reported_as_failed(tmp_path):
    # 2 SuperNodes for a 3-client split: every ClientApp refuses to train.
    result = run_simulation(
        APP_DIR,
        {
            # fedavg: the default method would first compute guidance anchors,
            # which this test of failure reporting does not need.
            "method": "fedavg",
            "num-clients": 3,
            "num-server-rounds": 1,
            "max-samples-per-client": 100,
            "output-dir": str(tmp_path),
            "run-name": "bad",
        },
        num_supernodes=2,
        stream=False,
        timeout=600,
    )
    assert result.status != "finished:completed"
    assert not result.ok
    assert "num-supernodes=3" in result.output
    assert _gone(result.superlink_pid)


def test_bad_config_fails_before_anything_starts(tmp_path):
    with pytest.raises(ConfigError, match="dirichlet-beta"):
        run_simulation(APP_DIR, {"dirichlet-beta": 0.0, "output-dir": str(tmp_path)})
    with pytest.raises(ValueError, match="more than the"):
        run_simulation(
            APP_DIR,
            {
                "num-clients": 70000,
                "min-partition-size": 0,
                "partitioner": "iid",
                "output-dir": str(tmp_path),
            },
        )


def _completed_small_run(tmp_path, overrides):
    """A SMALL_RUN with a 1,000-image public split: completed, 2 rounds, learning.

    Returns the result and its metrics rows.
    """
    result = run_simulation(
        APP_DIR,
        {
            **SMALL_RUN,
            "public-split-size": 1000,
            **overrides,
            "output-dir": str(tmp_path),
        },
        stream=False,
        timeout=600,
    )
    assert result.status == "finished:completed", result.output[-3000:]
    rows = read_jsonl(result.run_dir / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert rows[-1]["central-accuracy"] > 0.2, rows[-1]  # chance is 0.1
    return result, rows


@pytest.mark.parametrize("method", ["fedetf", "fedavg-public"])
def test_the_controls_complete_in_a_real_federation(method, tmp_path):
    """FedETF (fixed frame, balanced CE) and fedavg-public (server fine-tune on
    the labelled public split) as real Flower runs: completed, learning."""
    result, rows = _completed_small_run(
        tmp_path,
        {"method": method, "heldout-size": 200, "adapt-steps": 5},
    )
    if method == "fedavg-public":
        server = rows[-1]["server"]  # the fine-tune ran and was checked
        assert server["corrected"] is True and "kept" in server
        record = json.loads((result.run_dir / "guidance.json").read_text())
        assert record["public-images"] == 800 and record["validation-images"] == 200
    assert _gone(result.superlink_pid) and not descendants(result.superlink_pid)


def test_moon_with_balanced_ce_learns_and_is_scored_both_ways(tmp_path):
    """MOON (its contrastive term on the clients) with ce-loss = balanced and
    eval-bn-images + eval-aggregated-too, in one real run: it completes,
    learns, and records every round the score with BatchNorm statistics
    recomputed on public images beside the same weights' score as
    aggregated; the clients validate that recomputed model and the server
    pools their per-class counts into a balanced accuracy."""
    result, rows = _completed_small_run(
        tmp_path,
        {
            "method": "moon",
            "ce-loss": "balanced",
            "eval-bn-images": 300,
            "eval-aggregated-too": True,
            "validation-fraction": 0.2,
            "fraction-evaluate": 1.0,
        },
    )
    assert rows[-1]["central-accuracy"] > 0.3, rows[-1]  # chance is 0.1
    assert rows[-1]["train"]["clients"] == 3
    assert rows[-1]["train"]["train-moon"] > 0  # MOON's term ran on the clients
    assert (result.run_dir / "model.safetensors").exists()
    assert all("central-accuracy-aggregated" in r for r in rows)
    # Different statistics, different losses (the weights are the same).
    assert any(r["central-loss"] != r["central-loss-aggregated"] for r in rows[1:])
    validation = rows[-1]["validation"]
    assert validation["clients"] == 3 and 0 < validation["eval-balanced-accuracy"] <= 1
    assert "eval-class-correct" not in validation  # pooled into the balanced score
    assert _gone(result.superlink_pid) and not descendants(result.superlink_pid)
