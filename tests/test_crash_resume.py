"""Crash safety with real processes: a run whose ServerApp is SIGKILLed after
round 3 resumes to the same end, digit for digit, as an uninterrupted run of
the same seed (which also shows that the same seed gives the same digits).

FedAvgM (server momentum: state the checkpoint must carry) with 2 of 3
clients sampled per round (Flower's seeded sampling over partition-ordered
nodes).
"""

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from common.io import read_jsonl
from deploy.local_sim import descendants, resume_overrides, run_simulation
from server_app.checkpoint import CHECKPOINT_DIR, checkpoint_path

APP_DIR = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration

RUN = {
    "method": "fedavgm",
    "server-momentum": 0.9,
    "num-clients": 3,
    "fraction-train": 0.67,  # 2 of 3 nodes each round
    "num-server-rounds": 6,
    "partitioner": "dirichlet",
    "dirichlet-beta": 0.5,
    "max-samples-per-client": 200,
    "model-width": 4,
}
COMPARED = ("round", "central-accuracy", "central-loss", "per-class-accuracy")


def _digits(run_dir: Path) -> list[tuple]:
    """What must match bit for bit: every round's scores and train metrics."""
    rows = read_jsonl(run_dir / "metrics.jsonl")
    return [
        (
            *(r[k] for k in COMPARED),
            r["train"].get("train-loss"),
            r["train"].get("clients"),
        )
        for r in rows
    ]


def _our_processes(matches) -> list[int]:
    """PIDs of this test's descendants whose argv (a list of bytes) ``matches``."""
    found = []
    for pid in descendants(os.getpid()):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if matches(argv):
            found.append(pid)
    return found


def _simulation_pids() -> list[int]:
    """This test's ServerApp processes (Flower's ``flwr-simulation``)."""
    return _our_processes(lambda argv: any(b"flwr-simulation" in a for a in argv))


def _flwr_run_pids() -> list[int]:
    return _our_processes(
        lambda argv: len(argv) > 1 and argv[0].endswith(b"flwr") and argv[1] == b"run"
    )


def _run(folder: Path, name: str):
    """One simulation of RUN into ``folder/name``; it must complete."""
    result = run_simulation(
        APP_DIR, {**RUN, "output-dir": str(folder), "run-name": name},
        stream=False, timeout=600,
    )  # fmt: skip
    assert result.ok, result.output[-3000:]
    return result


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("whole"), "a")


def test_a_run_killed_after_round_3_resumes_to_the_same_end(uninterrupted, tmp_path):
    overrides = {**RUN, "output-dir": str(tmp_path), "run-name": "crash"}
    box = {}
    worker = threading.Thread(
        target=lambda: box.update(
            result=run_simulation(APP_DIR, overrides, stream=False, timeout=600)
        )
    )
    worker.start()
    run_dir = tmp_path / "crash"
    deadline = time.monotonic() + 300
    while not checkpoint_path(run_dir, 3).exists():
        assert time.monotonic() < deadline and worker.is_alive(), box
        time.sleep(0.05)
    servers = _simulation_pids()
    assert servers, "no flwr-simulation process found"
    for pid in servers:  # the ServerApp's whole process group, no clean-up
        os.killpg(os.getpgid(pid), signal.SIGKILL)
    killed_after = max(r["round"] for r in read_jsonl(run_dir / "metrics.jsonl"))
    # `flwr run --stream` may keep waiting on a run whose server is gone.
    worker.join(timeout=60)
    for pid in _flwr_run_pids():
        os.kill(pid, signal.SIGKILL)
    worker.join(timeout=120)
    assert not worker.is_alive()
    assert not box["result"].ok  # the run did not complete
    assert not (run_dir / "summary.json").exists()
    assert killed_after >= 3

    resumed = run_simulation(
        APP_DIR, resume_overrides(run_dir, {}), stream=False, timeout=600
    )
    assert resumed.ok, resumed.output[-3000:]
    assert resumed.run_dir == run_dir
    assert "Resuming after round" in resumed.output
    whole, after = _digits(uninterrupted.run_dir), _digits(run_dir)
    assert [r[0] for r in after] == list(range(7))  # no round twice, none missing
    # Rounds 0..killed_after come from the killed process, a separate run of
    # the same seed: their equality is the same-seed reproducibility check,
    # the later rounds' is the resume's.
    assert after == whole
    print(f"\nkilled after round {killed_after}; resumed; final round:")
    print(f"  uninterrupted {whole[-1][1]!r} {whole[-1][2]!r}")
    print(f"  resumed       {after[-1][1]!r} {after[-1][2]!r}")
    cost = json.loads((run_dir / "summary.json").read_text())["checkpoint"]
    assert cost["bytes"] > 0 and 0 < cost["share-of-round-time"] < 1
    print(
        f"  checkpoint {cost['bytes']} bytes, {cost['share-of-round-time']:.2%} of a round"
    )
    assert sorted(p.name for p in (run_dir / CHECKPOINT_DIR).iterdir()) == [
        "round-0005.safetensors",
        "round-0006.safetensors",
    ]
