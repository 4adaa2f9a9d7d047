"""Model output shapes for both models, both channel counts and both widths."""

import pytest
import torch

from common.models import MODELS, build_model


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
