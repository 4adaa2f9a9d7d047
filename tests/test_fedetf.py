"""FedETF: the fixed simplex frame, its classifier and the balanced softmax."""

import math

import pytest
import torch
import torch.nn.functional as F

from common.config import RunConfig
from common.federation import make_model
from common.losses import balanced_softmax_ce
from common.models import ETFClassifier, simplex_etf


def test_the_frame_is_a_simplex_etf():
    frame = simplex_etf(10, 10, torch.Generator().manual_seed(0))
    gram = frame.T @ frame
    # unit columns, every pair at cosine -1/(C-1), centred
    torch.testing.assert_close(gram.diag(), torch.ones(10))
    off = gram[~torch.eye(10, dtype=torch.bool)]
    torch.testing.assert_close(off, torch.full_like(off, -1 / 9))
    torch.testing.assert_close(frame.sum(1), torch.zeros(10), atol=1e-5, rtol=0)


def test_the_frame_is_the_same_on_every_side_and_never_sent(defaults):
    cfg = RunConfig.from_run_config({**defaults, "method": "fedetf"})
    torch.manual_seed(1)
    server = make_model(cfg)
    torch.manual_seed(2)  # another process, another init of the trainable weights
    client = make_model(cfg)
    assert isinstance(server.classifier, ETFClassifier)
    torch.testing.assert_close(server.classifier.frame, client.classifier.frame)
    state = server.state_dict()
    assert not any("frame" in k for k in state)  # not aggregated, not sent
    assert {"classifier.scale", "classifier.project.weight"} <= set(state)
    assert not server.classifier.frame.requires_grad
    other = RunConfig.from_run_config({**defaults, "method": "fedetf", "seed": 7})
    assert not torch.equal(make_model(other).classifier.frame, server.classifier.frame)


def test_logits_are_the_scaled_cosine_to_the_frame():
    head = ETFClassifier(embedding_dim=8, num_classes=4, seed=0)
    z = torch.randn(3, 8)
    with torch.no_grad():
        head.scale.fill_(2.0)
        expected = 2.0 * F.normalize(head.project(z), dim=1) @ head.frame
    torch.testing.assert_close(head(z), expected)


def test_balanced_softmax_adds_the_log_prior():
    logits = torch.tensor([[1.0, 2.0, 0.5]])
    counts = torch.tensor([10, 30, 0])
    y = torch.tensor([1])
    # by hand: logits + log(10, 30, 0) = (1 + ln 10, 2 + ln 30, -inf)
    a, b = 1 + math.log(10), 2 + math.log(30)
    expected = -(b - math.log(math.exp(a) + math.exp(b)))
    assert balanced_softmax_ce(logits, y, counts).item() == pytest.approx(expected)
    # a class the client never sees takes no gradient
    logits.requires_grad_(True)
    balanced_softmax_ce(logits, y, counts).backward()
    assert logits.grad[0, 2] == 0 and torch.isfinite(logits.grad).all()


def test_fedetf_switches_the_clients_to_the_balanced_loss(defaults, task_identity):
    from flwr.app import ArrayRecord, ConfigRecord

    from common import keys
    from tests.test_strategies import FakeGrid, build

    strategy = build("fedetf", defaults)
    message = next(
        iter(
            strategy.configure_train(
                1, ArrayRecord({}), ConfigRecord({}), FakeGrid([1, 2])
            )
        )
    )
    assert message.content[keys.CONFIG][keys.BALANCED_CE] is True


def test_fedetf_with_plain_ce_sends_no_balanced_loss(defaults, task_identity):
    """etf-loss = "ce": the one-class clients of the extreme split still train."""
    from flwr.app import ArrayRecord, ConfigRecord

    from common import keys
    from tests.test_strategies import FakeGrid, build

    strategy = build("fedetf", defaults, {"etf-loss": "ce"})
    message = next(
        iter(
            strategy.configure_train(
                1, ArrayRecord({}), ConfigRecord({}), FakeGrid([1, 2])
            )
        )
    )
    assert keys.BALANCED_CE not in message.content[keys.CONFIG]


def test_a_one_class_client_has_zero_balanced_loss_but_not_zero_ce():
    """Why etf-loss = "ce" exists: the balanced softmax of a client that holds
    only class 3 is exactly 0 whatever the logits."""
    import torch.nn.functional as F

    logits = torch.randn(8, 10)
    y = torch.full((8,), 3)
    counts = torch.bincount(y, minlength=10)
    assert balanced_softmax_ce(logits, y, counts).item() == 0.0
    assert F.cross_entropy(logits, y).item() > 0.1


def test_ce_loss_balanced_sends_the_balanced_loss_for_any_classifier_method(defaults):
    from common import keys
    from common.config import ConfigError
    from common.federation import local_training_config

    for method in ("fedavg", "moon", "semanticfl"):
        cfg = RunConfig.from_run_config(
            {**defaults, "method": method, "ce-loss": "balanced"}
        )
        assert local_training_config(cfg)[keys.BALANCED_CE] is True
    plain = RunConfig.from_run_config({**defaults, "method": "fedavg"})
    assert keys.BALANCED_CE not in local_training_config(plain)
    with pytest.raises(ConfigError, match="contradicts etf-loss"):
        RunConfig.from_run_config(
            {**defaults, "method": "fedetf", "etf-loss": "ce", "ce-loss": "balanced"}
        )
    with pytest.raises(ConfigError, match="trains a diffusion model"):
        RunConfig.from_run_config(
            {**defaults, "method": "fedddpm", "ce-loss": "balanced"}
        )
