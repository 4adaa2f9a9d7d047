"""Model output shapes for both models, both channel counts and both widths."""

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from common.models import MODELS, build_model
from tests.conftest import APP_DIR


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 32)])
@pytest.mark.parametrize(("width", "dim"), [(64, 512), (16, 128)])
def test_output_shapes(name, channels, size, width, dim):
    torch.manual_seed(0)
    model = build_model(name, channels, 10, width, size).eval()
    out = model(torch.randn(4, channels, size, size))
    assert out.embedding.shape == (4, dim)
    assert out.logits.shape == (4, 10)
    assert model.embedding_dim == dim


def test_resnet10_has_one_block_per_stage():
    model = build_model("resnet10", 3, 10, 64, 32)
    assert len(model.stages) == 4
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(4.9e6, rel=0.02)


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="mobilenetv2, resnet10"):
        build_model("vgg", 3, 10, 64, 32)


@pytest.mark.parametrize("width", [4, 7, 16])
def test_client_models_train_at_small_and_large_widths(width):
    """torch 2.14 corrupts the heap in an NHWC ResNet-10 backward below width 8
    (make_model keeps those NCHW); a subprocess, so an abort fails one test."""
    code = f"""
import torch
from torch import nn
from common.config import RunConfig
from common.federation import make_model
from pathlib import Path
from deploy.local_sim import app_defaults
cfg = RunConfig.from_run_config({{**app_defaults(Path(".")), "model-width": {width}}})
model = make_model(cfg)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for _ in range(3):
    loss = model(torch.randn(32, 1, 28, 28)).logits.square().mean()
    opt.zero_grad(); loss.backward(); opt.step()
print(all(p.is_contiguous() for p in model.parameters()))  # NCHW
"""
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=APP_DIR,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == str(width < 8)


@pytest.mark.parametrize("name", ["resnet10", "mobilenetv2"])
def test_group_norm_models_keep_no_running_statistics(name):
    from common.models import build_model

    model = build_model(name, 1, 10, 16, 28, norm="group")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in model.modules())
    assert not any("running_mean" in k for k in model.state_dict())
    out = model(torch.randn(2, 1, 28, 28))
    assert out.logits.shape == (2, 10)


def test_unknown_norm_lists_valid_ones():
    from common.models import build_model

    with pytest.raises(ValueError, match="valid: batch, group"):
        build_model("resnet10", 1, 10, 16, 28, norm="layer")
