"""A real deployment across network namespaces: TLS, node auth, a lost node.

One SuperLink host (with its ServerApp SuperExec and the diffusion service)
and three SuperNode hosts, each in its own network namespace on a bridge,
plus one more host whose key was never registered. ``flwr run`` must end
``finished:completed`` although one SuperNode is killed mid-round and the
server host's ServerApp is killed after round 2 and resumed; the
unregistered node must be refused, and nothing may be left behind.

Runs as root only (``ip netns``); skipped otherwise. Select it with
``pytest -m deployment``. About 4-6 minutes on 2 shared cores.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from common.io import read_jsonl
from deploy.local_sim import COMPLETED
from deploy.multihost import NODES, SMALL_RUN
from deploy.multihost_run import run_multihost
from deploy.netns import unavailable_reason

APP_DIR = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.deployment


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("multihost")
    overrides = {
        **SMALL_RUN,
        "method": "semanticfl",
        "public-split-size": 300,
        "num-server-rounds": 3,
    }
    result = run_multihost(
        APP_DIR,
        overrides,
        work,
        nodes=NODES,
        kill_node=1,
        kill_round=1,
        rogue=True,
        guidance_service=True,
        isolation="process",
        kill_server_after=2,
        stream=False,
        timeout=900,
    )
    print("multihost summary:", result.summary())
    return result


def test_run_completes_across_hosts_with_tls_and_node_auth(deployment):
    assert deployment.status == COMPLETED, deployment.output[-4000:]
    # The ServerApp got its anchors from the diffusion service over TLS.
    assert "Preparing semanticfl guidance (10.250.0.1:50051)" in deployment.output
    assert "Guidance ready" in deployment.output


def test_unregistered_supernode_is_refused(deployment):
    assert deployment.rogue_rc not in (None, 0)
    assert deployment.rogue_refused
    assert "Exit Code: 305" in deployment.rogue_message


def test_losing_a_supernode_mid_round_does_not_stop_the_run(deployment):
    assert deployment.killed_node == 1 and deployment.killed_at is not None
    # Round 1: three nodes were sent work, the killed one answered with an
    # error (Flower: no heartbeat), two trained; round 2 sampled the two left.
    assert deployment.train_clients == {r: NODES - 1 for r in (1, 2, 3)}
    assert deployment.failures_logged >= 1
    assert "Node Unavailable" in deployment.output
    assert "configure_train: Sampled 2 nodes (out of 2)" in deployment.output


def test_a_killed_serverapp_resumes_with_the_supernodes_connected(deployment):
    assert deployment.server_killed_after == 2
    assert deployment.interrupted_status != COMPLETED
    assert None not in (deployment.interrupted_run_id, deployment.resumed_run_id)
    assert deployment.resumed_run_id != deployment.interrupted_run_id  # a new run
    assert "Resuming after round 2 of 3" in deployment.output
    rows = read_jsonl(Path(deployment.run_dir) / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2, 3]  # none twice, none missing


def test_nothing_is_left_behind(deployment):
    assert deployment.stragglers == []
    tag = f"sfl{os.getpid()}-"
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    assert tag not in names.stdout
