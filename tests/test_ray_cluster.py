"""A simulation on a Ray cluster that is already running (``--ray-address``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.local_sim import check_ray_address, main, run_simulation
from deploy.ray_cluster import RayHead, running

APP_DIR = Path(__file__).resolve().parents[1]

# What the cluster's control store (GCS) recorded: the simulation's ClientApp
# actors, with the node each ran on. Ray has no public API for this without
# its dashboard, so the debugging module ray._private.state it is.
CLUSTER_RECORD = """
import json, sys, ray
from ray._private import state
ray.init(address=sys.argv[1], logging_level="ERROR")
head = {n["NodeID"] for n in ray.nodes()}
actors = [a for a in state.actors().values()]
print(json.dumps({"head": sorted(head), "actors": [
    {"class": a["ActorClassName"], "node": a["Address"]["NodeID"]} for a in actors]}))
"""


def test_a_bad_ray_address_is_refused_before_anything_starts(capsys):
    with pytest.raises(ValueError, match="HOST:PORT of a running Ray head"):
        check_ray_address("ray://head")
    assert main(["--ray-address", "head", "--quiet"]) == 2
    assert "--ray-address must be HOST:PORT" in capsys.readouterr().err


@pytest.mark.integration
def test_a_simulation_runs_on_an_existing_ray_cluster(tmp_path):
    with RayHead(num_cpus=2) as head:
        result = run_simulation(
            APP_DIR,
            {"method": "fedavg", "num-clients": 2, "num-server-rounds": 2, "model-width": 4,
             "max-samples-per-client": 64, "public-split-size": 0,
             "output-dir": str(tmp_path), "run-name": "on-cluster"},
            ray_address=head.address,
            stream=False,
            timeout=600,
        )  # fmt: skip
        assert result.ok, result.output[-3000:]
        record = subprocess.run(
            [sys.executable, "-c", CLUSTER_RECORD, head.address],
            capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
        seen = json.loads(record.stdout.strip().splitlines()[-1])
        pids = head.processes()
    clients = [a for a in seen["actors"] if a["class"] == "ClientAppActor"]
    assert clients, seen  # the run's ClientApps were actors of this cluster
    assert {a["node"] for a in clients} <= set(seen["head"])
    assert pids and not any(map(running, pids))  # ended by PID, nothing left
    rows = (tmp_path / "on-cluster" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["round"] for r in rows] == [0, 1, 2]
