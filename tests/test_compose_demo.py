"""The docker-compose demo, for real: images built offline, containers up,
runs completed, one of them losing a SuperNode container.

``pytest -m compose`` (root; CI runs it). Its own data root
($SEMANTICFL_COMPOSE_TEST_DIR, default /var/tmp/semanticfl-compose-test)
holds a private Docker engine's images, so a second run of the test reuses
the Debian base and the image layers; nothing outside it is touched, and the
engine is ended by PID afterwards. It installs docker.io and debootstrap
with apt-get when missing.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy.compose_demo import APP_UID, NODES
from deploy.docker_engine import exec_root
from deploy.local_sim import COMPLETED, free_port

REPO = Path(__file__).resolve().parents[1]
ROOT = Path(os.environ.get("SEMANTICFL_COMPOSE_TEST_DIR",
                           "/var/tmp/semanticfl-compose-test"))  # fmt: skip
pytestmark = pytest.mark.compose


def _processes_naming(text: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


@pytest.fixture(scope="module")
def demo():
    if os.geteuid() != 0:
        pytest.skip("the compose demo test starts a private Docker engine: needs root")
    ROOT.mkdir(parents=True, exist_ok=True)
    out = ROOT / "result.json"
    out.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "deploy.compose_demo", "--dir", str(ROOT),
         "--project", "semanticfl-test", "--port", str(free_port()),
         "--install-missing", "--quiet", "--json", str(out),
         "-c", "num-server-rounds=2", "local-epochs=1",
         "--kill-node", "--kill-round", "1", "--kill-run-config", "method='fedavg'"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    print(done.stdout[-4000:], done.stderr[-4000:], sep="\n")
    print(f"compose demo test: {seconds:.0f} s")
    assert done.returncode in (0, 1), done.stderr[-2000:]
    return json.loads(out.read_text())


def test_images_are_built_and_small_where_the_role_allows(demo):
    sizes = demo["images"]
    (flwr,) = [mb for tag, mb in sizes.items() if tag.startswith("semanticfl/flwr:")]
    (app,) = [mb for tag, mb in sizes.items() if tag.startswith("semanticfl/app:")]
    assert len(sizes) == 2
    assert flwr < 800 < app  # no torch in the SuperLink/SuperNode image


def test_every_container_runs_as_the_app_user(demo):
    services = demo["containers"]
    assert {"superlink", "superexec-serverapp", "diffusion-service",
            *(f"supernode-{i}" for i in range(NODES))} <= set(services)  # fmt: skip
    assert set(services.values()) == {str(APP_UID)}


def test_an_unregistered_supernode_is_refused(demo):
    assert demo["unregistered_refused"] is True


def test_the_semanticfl_run_completes_over_tls(demo):
    first = demo["runs"][0]
    assert first["status"] == COMPLETED, first["tail"]
    summary = json.loads((Path(first["outputs"]) / "summary.json").read_text())
    assert summary["method"] == "semanticfl" and summary["final-round"] == 2


def test_a_run_that_loses_a_supernode_container_still_completes(demo):
    second = demo["runs"][1]
    assert second["killed_at"] is not None
    assert second["status"] == COMPLETED, second["tail"]
    assert (Path(second["outputs"]) / "summary.json").exists()
    assert demo["ok"] is True


def test_keys_are_readable_by_the_containers_user_only(demo):
    certs = ROOT / "certs"
    info = certs.stat()
    assert info.st_uid == APP_UID and stat.S_IMODE(info.st_mode) == 0o700
    for key in [certs / "server.key", certs / "token",
                *(certs / f"supernode_credentials_{i}" for i in range(NODES))]:  # fmt: skip
        mode = key.stat()
        assert mode.st_uid == APP_UID and stat.S_IMODE(mode.st_mode) == 0o600, key


def test_nothing_is_left_running(demo):
    # dockerd names its socket; its containerd and shims name the exec root.
    assert _processes_naming(str(ROOT / "docker" / "docker.sock")) == []
    assert _processes_naming(str(exec_root(ROOT / "docker"))) == []
