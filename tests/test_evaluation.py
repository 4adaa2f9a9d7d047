"""The linear probe that scores self-supervised encoders."""

import torch
from torch import nn

from common.evaluation import linear_probe
from common.models import ModelOutput


class Identity(nn.Module):
    """An 'encoder' whose embedding is its input (and no useful classifier)."""

    def forward(self, x):
        return ModelOutput(embedding=x, logits=torch.zeros(len(x), 3))


def _blobs(n, seed, separation):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    centers = torch.eye(3, 5) * separation
    return centers[y] + torch.randn(n, 5, generator=g), y


def test_probe_reads_linearly_separable_embeddings():
    x_fit, y_fit = _blobs(300, 0, separation=6.0)
    x_test, y_test = _blobs(300, 1, separation=6.0)
    result = linear_probe(Identity(), x_fit, y_fit, x_test, y_test, 3)
    assert result.accuracy > 0.95
    assert result.num_examples == 300 and len(result.per_class_accuracy) == 3


def test_probe_is_near_chance_when_fit_labels_carry_no_signal():
    x_fit, y_fit = _blobs(300, 0, separation=6.0)
    x_test, y_test = _blobs(300, 1, separation=6.0)
    shuffled = y_fit[torch.randperm(300, generator=torch.Generator().manual_seed(2))]
    result = linear_probe(Identity(), x_fit, shuffled, x_test, y_test, 3)
    assert result.accuracy < 0.6


def _bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Flatten())


def test_recalibrated_copy_holds_the_images_statistics_and_leaves_the_model():
    from common.evaluation import recalibrated_copy

    model = _bn_net()
    with torch.no_grad():  # running stats as if averaged over skewed clients
        model[1].running_mean.fill_(5.0)
        model[1].running_var.fill_(0.01)
    images = torch.randn(70, 1, 6, 6) * 2 + 1
    scored = recalibrated_copy(model, images, batch_size=32)
    # By hand: update_bn's cumulative average (momentum None) gives each of
    # the 3 batches (32, 32, 6 images) the same weight; variances unbiased.
    with torch.no_grad():
        feats = model[0](images)
    batches = [feats[s : s + 32] for s in (0, 32, 64)]
    mean = sum(b.mean((0, 2, 3)) for b in batches) / 3
    var = sum(b.transpose(0, 1).flatten(1).var(1) for b in batches) / 3
    torch.testing.assert_close(scored[1].running_mean, mean)
    torch.testing.assert_close(scored[1].running_var, var)
    assert not scored.training
    assert torch.all(model[1].running_mean == 5.0)  # the original is untouched
    assert torch.all(model[1].running_var == 0.01)
