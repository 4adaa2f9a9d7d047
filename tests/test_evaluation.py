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
