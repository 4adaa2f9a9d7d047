"""FedDDPM and FedDDPM+ as real Flower simulations (deploy.local_sim), tiny model."""

import json

import pytest

from common.io import read_jsonl
from deploy.local_sim import descendants, run_simulation
from tests.test_integration import APP_DIR, _gone

pytestmark = pytest.mark.integration

TINY = {
    "num-clients": 2,
    "num-server-rounds": 2,
    "max-samples-per-client": 60,
    "public-split-size": 200,
    "heldout-size": 20,
    "measure-samples": 20,
    "aux-size": 20,
    "sample-steps": 2,
    "ddpm-unet-channels": "8,16,16,16",
    "ddpm-pretrain-steps": 3,
    "ddpm-local-steps": 2,
    "ddpm-batch-size": 8,
    "aux-steps": 2,
    # FedDDPM+: window 1 and a generous eps, so the tiny run must fire at round 2
    "trigger-window": 1,
    "trigger-eps": 0.9,
}


def test_fedddpm_plus_federation_completes(tmp_path):
    # FedDDPM+ only: its run takes both branches (no correction in round 1, a
    # triggered one in round 2), and plain FedDDPM is the same strategy with
    # the trigger always on (tests/test_fedddpm.py), so a second real run
    # adds ~75 s of start-up and no path.
    result = run_simulation(
        APP_DIR,
        {**TINY, "method": "fedddpm+", "output-dir": str(tmp_path), "run-name": "it"},
        stream=False,
        timeout=900,
    )
    assert result.status == "finished:completed", result.output[-3000:]
    rows = read_jsonl(result.run_dir / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2]
    for r in rows:
        assert r["heldout-denoising-loss"] > 0 and r["frechet-distance"] >= 0
        assert 0 <= r["sample-accuracy"] <= 1
    assert rows[-1]["train"]["clients"] == 2
    # round 1 has no window yet; round 2 fires (eps 0.9)
    assert [r["server"]["corrected"] for r in rows[1:]] == [False, True]
    assert all("trigger-loss" in r["server"] for r in rows[1:])
    record = json.loads((result.run_dir / "fedddpm.json").read_text())
    assert record["auxiliary"]["size"] == 20
    assert record["phase-a"]["clients"] == 2
    for part in ("vae", "unet", "scheduler"):
        assert (result.run_dir / "model" / part).is_dir()
    assert (result.run_dir / "model" / "text_encoder.json").is_file()
    assert _gone(result.superlink_pid) and not descendants(result.superlink_pid)


def test_classifier_adaptation_federation_completes(tmp_path):
    # fedavg-adapt: the server generates its labelled set before round 1
    # (server_app/adaptation.py) and fine-tunes the aggregate every round.
    result = run_simulation(
        APP_DIR,
        {
            **TINY,
            "method": "fedavg-adapt",
            "output-dir": str(tmp_path),
            "run-name": "it",
            "adapt-steps": 2,
        },
        stream=False,
        timeout=900,
    )
    assert result.status == "finished:completed", result.output[-3000:]
    rows = read_jsonl(result.run_dir / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2]
    for r in rows[1:]:
        assert r["server"]["corrected"] is True
        assert isinstance(r["server"]["kept"], bool)  # the real-slice check ran
        assert "instance-guided" not in r["train"]  # FedDifRC only
    record = json.loads((result.run_dir / "guidance.json").read_text())
    assert record["generated-images"] == 20 and record["validation-images"] == 20
    assert record["seconds"] > 0
    assert _gone(result.superlink_pid) and not descendants(result.superlink_pid)
