"""The GPU check and its offline bundle, as far as a machine without a GPU allows.

What needs CUDA (throughput on the GPU, clients sharing it) runs only on a GPU
machine through ``scripts/gpu_check.sh``; here: the bundle's content and size,
the one-line exit without a GPU, the models it times, and its federation on
Flower's deployment engine with local SuperNodes (on the CPU).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_bundle, gpu_check
from benchmarks.random_components import save_embedded, save_sd2_shaped
from common.datasets import load_dataset
from deploy.local_deploy import run_deployment

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_sh_without_a_gpu_says_so_in_one_line(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    out = subprocess.run(
        [str(ROOT / "scripts" / "gpu_check.sh"), "--out", str(tmp_path / "out")],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no GPU here")
    assert "sees no CUDA device" in lines[0]
    assert not (tmp_path / "semanticfl-gpu-venv").exists()  # nothing installed
    assert not (tmp_path / "out").exists()  # nothing run


def test_gpu_check_module_without_cuda_exits_0_and_writes_nothing(tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path / "out")]) == 0
    assert "no GPU here" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["sd2", "embedded"])
def test_the_timed_models_load_and_extract(kind, tmp_path):
    if kind == "sd2":
        folder = save_sd2_shaped(tmp_path / "m")
        unet = json.loads((folder / "unet" / "config.json").read_text())
        assert unet["use_linear_projection"] and unet["layers_per_block"] == 2
        assert unet["up_block_types"][0] == "UpBlock2D"  # SD2's order
        assert unet["up_block_types"][1:] == ["CrossAttnUpBlock2D"] * 3
    else:
        folder, _ = save_embedded(tmp_path / "m")
    train, _ = load_dataset("fashion-mnist")
    rate, feats = gpu_check._throughput(folder, train.images[:4], "cpu", "fp32", 1)
    assert rate > 0 and feats.shape[:2] == (4, 1) and torch.isfinite(feats).all()


def test_a_cuda_only_dtype_on_the_cpu_is_refused(tmp_path):
    folder = save_sd2_shaped(tmp_path / "m")
    train, _ = load_dataset("fashion-mnist")
    with pytest.raises(ValueError, match="CUDA-only"):
        gpu_check._throughput(folder, train.images[:2], "cpu", "bf16", 1)


def test_the_federation_report_and_checks(tmp_path):
    report = {
        "devices": {"gpu": "G", "gpu-memory-mib": 1, "capability": "9.0", "driver": "d",
                    "torch": "t", "cuda": "c", "python": "3.12", "cpus": 16},
        "seconds": 1.0,
        "federation": {"status": "finished:completed", "server-device": "cuda:0 (G)",
                       "train-cuda": [1.0, 0.9], "round-seconds": [1.0, 1.0],
                       "client-gpu-peak-mib": [10.0, 10.0],
                       "gpu-peak-mib-all-processes": 900.0, "final-accuracy": 0.5},
    }  # fmt: skip
    assert gpu_check.checks(report) == [
        "not every ClientApp trained on CUDA: [1.0, 0.9]"
    ]
    report["federation"]["train-cuda"] = [1.0, 1.0]
    assert gpu_check.checks(report) == []
    report["failed"] = []
    page = gpu_check.markdown(report)
    assert "ServerApp device: cuda:0 (G)" in page and "all checks held" in page
    report["federation"]["server-device"] = "cpu"
    assert gpu_check.checks(report) == ["the ServerApp evaluated on 'cpu'"]


def test_local_deploy_needs_one_supernode_per_client(tmp_path):
    with pytest.raises(ValueError, match="each SuperNode holds one partition"):
        run_deployment(ROOT, {"num-clients": 3}, nodes=2)


@pytest.mark.integration
def test_the_check_federation_runs_on_the_deployment_engine(tmp_path):
    """The check's own federation code on the CPU: 3 local SuperNodes, no Ray."""
    changes = {"device": "cpu", "num-clients": 3, "model-width": 4,
               "max-samples-per-client": 64}  # fmt: skip
    fed = gpu_check.federation(tmp_path, "", changes)
    assert fed["status"] == "finished:completed", fed.get("log-tail")
    assert fed["engine"].startswith("deployment (flower-superlink + 3 flower-supernode")
    assert fed["server-device"] == "cpu"
    assert fed["train-cuda"] == [0.0, 0.0] and fed["client-gpu-peak-mib"] == [0.0, 0.0]
    assert len(fed["round-seconds"]) == 2
    # On a GPU machine this is the check that fails a run trained on the CPU.
    assert gpu_check.checks({"federation": fed}) == ["the ServerApp evaluated on 'cpu'"]


@pytest.mark.integration
def test_the_bundle_has_what_a_bare_gpu_machine_lacks_and_fits(tmp_path):
    """Downloads from PyPI (about 30 MB), as scripts/gpu_bundle.sh does."""
    m = gpu_bundle.build(tmp_path / "b", 600, 200)
    projects = {
        gpu_bundle.wheel_project(Path(e["path"]))
        for e in m["files"]
        if e["path"].endswith(".whl")
    }
    needed = {"flwr", "diffusers", "cryptography", "sqlalchemy", "uvicorn", "fastapi",
              "pydantic", "requests", "grpcio-health-checking"}  # fmt: skip
    assert needed <= projects
    assert not projects & (set(gpu_bundle.PREINSTALLED) | set(gpu_bundle.NOT_NEEDED))
    assert all(p.endswith(("none-any.whl", "x86_64.whl")) for p in
               (e["path"] for e in m["files"] if e["path"].endswith(".whl")))  # fmt: skip
    assert "cp312" in " ".join(e["path"] for e in m["files"])
    assert m["total-bytes"] == m["bundle-bytes"] + m["checkout-bytes"]
    assert m["total-bytes"] <= 64 * 2**20
    for entry in m["files"]:  # the manifest says what is there
        data = (tmp_path / "b" / entry["path"]).read_bytes()
        assert len(data) == entry["bytes"]
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    train, test = load_dataset.__wrapped__("fashion-mnist", str(tmp_path / "b" /
                                                              "fashion-mnist"))
    full_train, _ = load_dataset("fashion-mnist")
    assert len(train.labels) == 600 and len(test.labels) == 200
    assert torch.equal(train.images, full_train.images[:600])
    assert torch.equal(train.labels, full_train.labels[:600])
