"""GPU runs without a GPU: the federation config a CUDA run gets, the clear
errors, bf16 autocast, and the train metric that says where a client trained."""

import dataclasses

import pytest
import torch

from benchmarks.profile_spec import ProfileError
from benchmarks.profiles import PROFILES
from client_app.training import LocalSettings, train
from common import keys
from common.config import RunConfig
from common.federation import describe_device, resolve_device
from common.models import build_model
from deploy import local_sim
from server_app.preflight import PreflightError, preflight
from server_app.reporting import RunRecorder


def _cfg(defaults, **changes):
    return RunConfig.from_run_config({**defaults, **changes})


def test_a_cuda_run_gets_a_gpu_share_per_client(defaults, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cuda = _cfg(defaults, device="cuda")
    assert (
        local_sim.federation_config(cuda, 10, 1, None)
        == "num-supernodes=10 client-resources-num-cpus=1 client-resources-num-gpus=0.25"
    )
    assert local_sim.federation_config(cuda, 4, 2, 0.5).endswith(
        "client-resources-num-cpus=2 client-resources-num-gpus=0.5"
    )


def test_a_cpu_run_reserves_no_gpu(defaults):
    assert (
        local_sim.federation_config(_cfg(defaults), 10, 1, None)
        == "num-supernodes=10 client-resources-num-cpus=1"
    )


def test_cuda_without_a_gpu_share_is_refused(defaults, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ValueError, match="--gpus-per-client 0.25"):
        local_sim.federation_config(_cfg(defaults, device="cuda"), 10, 1, 0.0)


def test_a_gpu_share_on_a_machine_without_cuda_is_refused(defaults, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA device"):
        local_sim.federation_config(_cfg(defaults), 10, 1, 0.25)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_machine_without_it_fails_before_anything_starts(defaults, tmp_path):
    cfg = _cfg(defaults, device="cuda", **{"output-dir": str(tmp_path)})
    with pytest.raises(
        PreflightError, match="'device' = 'cuda' but torch sees no CUDA"
    ):
        preflight(cfg)


def test_the_paper_profile_shares_the_gpu_and_a_cuda_profile_must():
    paper = PROFILES["paper"]
    assert paper.config["device"] == "cuda" and paper.client_gpus == pytest.approx(0.2)
    with pytest.raises(ProfileError, match="GPU share"):
        dataclasses.replace(paper, client_gpus=0.0).validate()
    with pytest.raises(ProfileError, match="GPU share"):
        dataclasses.replace(PROFILES["smoke"], client_gpus=0.5).validate()


def _train(bf16):
    torch.manual_seed(0)
    model = build_model("resnet10", 1, 10, 8, 28)
    images, labels = torch.randn(64, 1, 28, 28), torch.arange(64) % 10
    settings = LocalSettings(
        lr=0.01, momentum=0.9, weight_decay=0.0, epochs=1, batch_size=32
    )
    return train(model, images, labels, settings, seed=1, bf16=bf16)


def test_train_metrics_say_where_the_client_trained():
    metrics = _train(False)
    assert metrics[keys.TRAIN_CUDA] == 0.0
    assert metrics[keys.TRAIN_GPU_PEAK_MB] == 0.0  # no GPU memory on the CPU


def test_the_server_device_is_described_as_it_ran():
    assert describe_device("cpu") == "cpu"
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        resolve_device("cuda")


def test_bf16_autocast_trains_and_changes_the_arithmetic():
    fp32, bf16 = _train(False), _train(True)
    assert torch.isfinite(torch.tensor(bf16[keys.TRAIN_LOSS]))
    assert bf16[keys.TRAIN_LOSS] != fp32[keys.TRAIN_LOSS]  # autocast was on
    assert abs(bf16[keys.TRAIN_LOSS] - fp32[keys.TRAIN_LOSS]) < 0.1


def test_autocast_takes_only_known_values(defaults):
    with pytest.raises(ValueError, match="autocast"):
        _cfg(defaults, autocast="fp8")


def test_a_cuda_run_whose_clients_trained_on_cpu_stops(defaults, tmp_path):
    cfg = _cfg(
        defaults, device="cuda", **{"output-dir": str(tmp_path), "run-name": "r"}
    )
    recorder = RunRecorder(cfg)
    recorder._pending_train = {keys.TRAIN_LOSS: 1.0, keys.TRAIN_CUDA: 0.5}
    with pytest.raises(RuntimeError, match="only 50% of the training examples"):
        recorder.check_round_trained(1)
    recorder._pending_train[keys.TRAIN_CUDA] = 1.0
    recorder.check_round_trained(1)
