"""Loss terms against hand-computed values; teachers get no gradient."""

import math

import torch

from common.losses import moon_contrastive, proximal_term


def test_proximal_term_hand_computed():
    w = [
        torch.tensor([1.0, 2.0], requires_grad=True),
        torch.tensor([[3.0]], requires_grad=True),
    ]
    g = [torch.tensor([0.0, 0.0]), torch.tensor([[1.0]])]
    # mu/2 * (1 + 4 + 4) = 0.1/2 * 9
    value = proximal_term(w, g, mu=0.1)
    assert math.isclose(value.item(), 0.45, rel_tol=1e-6)
    value.backward()
    # d/dw = mu * (w - g)
    assert torch.allclose(w[0].grad, torch.tensor([0.1, 0.2]))
    assert torch.allclose(w[1].grad, torch.tensor([[0.2]]))


def test_moon_contrastive_hand_computed():
    z = torch.tensor([[1.0, 0.0]], requires_grad=True)
    z_glob = torch.tensor([[1.0, 1.0]])  # cos = 1/sqrt(2)
    z_prev = torch.tensor([[0.0, 2.0]])  # cos = 0
    tau = 0.5
    pos, neg = (1 / math.sqrt(2)) / tau, 0.0 / tau
    expected = -math.log(math.exp(pos) / (math.exp(pos) + math.exp(neg)))
    assert math.isclose(
        moon_contrastive(z, z_glob, z_prev, tau).item(), expected, rel_tol=1e-6
    )


def test_moon_is_log2_when_global_equals_previous():
    z = torch.randn(8, 16)
    t = torch.randn(8, 16)
    assert math.isclose(
        moon_contrastive(z, t, t, 0.5).item(), math.log(2), rel_tol=1e-6
    )


def test_moon_teachers_are_detached():
    z = torch.randn(4, 8, requires_grad=True)
    z_glob = torch.randn(4, 8, requires_grad=True)
    z_prev = torch.randn(4, 8, requires_grad=True)
    moon_contrastive(z, z_glob, z_prev, 0.5).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert z_glob.grad is None and z_prev.grad is None
