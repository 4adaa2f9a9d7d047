"""Loss terms against hand-computed values; teachers get no gradient."""

import math

import pytest
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


def _unit(*rows):
    return torch.nn.functional.normalize(
        torch.tensor(rows, dtype=torch.float32), dim=-1
    )


def test_tdcl_hand_computed_and_per_sample_aligned():
    from common.losses import tdcl

    z = _unit([1.0, 0.0], [0.0, 1.0])
    f_pos = _unit([1.0, 0.0], [1.0, 1.0])  # cos 1 and 1/sqrt(2)
    f_neg = torch.stack([_unit([0.0, 1.0]), _unit([0.0, -1.0])])  # cos 0 and -1
    tau = 0.5
    l0 = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + math.exp(0)))
    c = 1 / math.sqrt(2)
    l1 = -math.log(math.exp(c / tau) / (math.exp(c / tau) + math.exp(-1 / tau)))
    assert math.isclose(tdcl(z, f_pos, f_neg, tau).item(), (l0 + l1) / 2, rel_tol=1e-5)
    # swapping the negatives between samples changes the loss: they are aligned
    assert not math.isclose(
        tdcl(z, f_pos, f_neg.flip(0), tau).item(), (l0 + l1) / 2, rel_tol=1e-3
    )


def test_ndcr_cosine_and_kl():
    from common.losses import ndcr

    z = _unit([1.0, 0.0], [0.0, 1.0])
    f = _unit([1.0, 0.0], [1.0, 0.0])
    assert math.isclose(ndcr(z, f, "cosine").item(), 0.5, rel_tol=1e-6)  # (0 + 1) / 2
    assert ndcr(f, f, "kl").item() < 1e-7
    # at tau 1 (the released code) the KL is ~1/d, a near no-op; at tau 0.1 it counts
    a, b = torch.randn(64, 128), torch.randn(64, 128)
    weak, real = ndcr(a, b, "kl", tau=1.0).item(), ndcr(a, b, "kl", tau=0.1).item()
    assert weak < 0.02 and real > 50 * weak


def test_anchor_distillation_zero_at_the_anchor_and_detached():
    from common.losses import anchor_distillation

    v = torch.randn(4, 16, requires_grad=True)
    assert anchor_distillation(v.detach() * 3, v, 0.1).item() < 1e-6  # scale-free
    z = torch.randn(4, 16, requires_grad=True)
    anchor_distillation(z, v, 0.1).backward()
    assert z.grad.abs().sum() > 0 and v.grad is None


def test_image_text_infonce_hand_computed():
    from common.losses import image_text_infonce

    anchors = _unit([1.0, 0.0], [0.0, 1.0], [-1.0, 0.0])
    z = _unit([1.0, 0.0])
    tau = 0.5
    denom = math.exp(1 / tau) + math.exp(0) + math.exp(-1 / tau)
    expected = -math.log(math.exp(0) / denom)  # label 1: cos(z, T_1) = 0
    value = image_text_infonce(z, anchors, torch.tensor([1]), tau).item()
    assert math.isclose(value, expected, rel_tol=1e-5)


def test_class_distillation_by_hand_and_zero_on_the_own_anchor():
    """kd-form = "classes": KL(q_y || p(h)) over classes, hand-computed for C = 2."""
    import math

    from common.losses import class_distillation

    anchors = torch.tensor([[1.0, 0.0], [0.6, 0.8]], requires_grad=True)  # cos 0.6
    labels = torch.tensor([0])
    t = 0.5
    # On its own anchor the student's distribution is the teacher's: loss 0.
    zero = class_distillation(anchors.detach()[labels], anchors, labels, t)
    assert abs(zero.item()) < 1e-7
    # h along the other anchor: p = softmax([0.6, 1] / t), q = softmax([1, 0.6] / t).
    h = torch.tensor([[0.6, 0.8]], requires_grad=True)
    loss = class_distillation(h, anchors, labels, t)
    q = [1 / (1 + math.exp(-0.8)), 1 / (1 + math.exp(0.8))]
    p = [1 / (1 + math.exp(0.8)), 1 / (1 + math.exp(-0.8))]
    want = sum(qi * math.log(qi / pi) for qi, pi in zip(q, p, strict=True))
    assert loss.item() == pytest.approx(want, rel=1e-5)
    loss.backward()
    assert h.grad is not None and anchors.grad is None  # the anchors stay constants
