"""The compose demo's pieces that need no Docker engine: the image
requirements, the two image paths, and the refusals that come before
anything starts."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

import pytest

from deploy import compose_demo, docker_engine, images
from deploy.local_sim import free_port


def test_image_requirements_pin_flower_and_leave_out_torch_and_ray():
    reqs = images.app_requirements(flwr="1.42.0")
    names = [images._name(r) for r in reqs]
    assert "flwr==1.42.0" in reqs
    assert not any("simulation" in r for r in reqs)
    assert "torch" not in names and "torchvision" not in names
    assert {"diffusers", "transformers", "safetensors", "flwr-datasets"} <= set(names)


def test_image_requirements_without_a_pin_keep_the_range(tmp_path):
    py = tmp_path / "pyproject.toml"
    py.write_text(
        '[project]\ndependencies = ["flwr[simulation]>=1.41,<1.43", "torch==2.14.1", "numpy>=1"]\n'
    )
    assert images.app_requirements(py) == ["flwr>=1.41,<1.43", "numpy>=1"]
    assert images.torch_pin(py) == "torch==2.14.1"


def test_the_two_image_paths():
    online = images.Images.for_path(online=True, flwr="1.42.0")
    assert online.superlink == "flwr/superlink:1.42.0"
    assert online.app_base == "flwr/superexec:1.42.0" and online.pip_source == "index"
    offline = images.Images.for_path(online=False, flwr="1.42.0")
    assert offline.superlink == offline.supernode == "semanticfl/flwr:1.42.0"
    assert offline.app_runtime == images.RUNTIME_IMAGE
    assert offline.pip_source == "wheelhouse"
    env = offline.compose_env()
    assert env["APP_IMAGE"] == "semanticfl/app:1.42.0-offline"


def _args(tmp_path: Path, **kw) -> argparse.Namespace:
    base = dict(
        dir=tmp_path / "demo", port=8000, data_dir=tmp_path, install_missing=False
    )
    return argparse.Namespace(**{**base, **kw})


def test_a_port_in_use_is_refused_before_anything_starts(tmp_path):
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(compose_demo.DemoError, match=f"port {port} is in use"):
            compose_demo.demo(_args(tmp_path, port=port), progress=lambda m: None)
    assert not (tmp_path / "demo").exists()


def test_a_missing_dataset_is_refused_with_the_fix(tmp_path):
    with pytest.raises(compose_demo.DemoError, match="dataset-fashion-mnist"):
        compose_demo.demo(_args(tmp_path, port=free_port()), progress=lambda m: None)


def test_no_engine_and_no_dockerd_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(docker_engine.shutil, "which", lambda name: None)
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    with pytest.raises(
        docker_engine.DockerUnavailableError, match="apt-get install docker.io"
    ):
        docker_engine.engine(tmp_path / "docker")


def test_installing_the_engine_needs_root(monkeypatch):
    monkeypatch.setattr(docker_engine.shutil, "which", lambda name: None)
    monkeypatch.setattr(docker_engine.os, "geteuid", lambda: 1000)
    with pytest.raises(docker_engine.DockerUnavailableError, match="needs root"):
        docker_engine.install_missing(progress=lambda m: None)


def test_the_exec_root_is_short_enough_for_unix_sockets(tmp_path):
    deep = tmp_path / ("x" * 80) / "docker"
    # containerd puts sockets some 60 characters below it; the limit is 108.
    assert len(str(docker_engine.exec_root(deep))) < 40
    assert docker_engine.exec_root(deep) == docker_engine.exec_root(deep)
