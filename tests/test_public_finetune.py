"""A guided method with fedavg-public's server fine-tune (``server-finetune``)."""

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord

from common import keys
from common.config import ConfigError, RunConfig
from common.models import build_model
from server_app.checkpoint import checkpointed_attributes
from server_app.strategies import strategy_class
from server_app.strategies.fedavg_adapt import finetune_settings
from server_app.strategies.fedavg_public import FedAvgPublic
from server_app.strategies.public_finetune import with_public_finetune

ANCHORS = {
    "text": np.eye(3, dtype=np.float32),
    "visual": -np.eye(3, dtype=np.float32),
}


class FakeGrid:
    def __init__(self, node_ids):
        self.node_ids = node_ids

    def get_node_ids(self):
        return list(self.node_ids)


def _semanticfl_with_finetune(paper_defaults, labels):
    """SemanticFL + the fine-tune, built as the ServerApp builds it.

    The public split and the validation slice are the same learnable images
    (classes shifted by their label), labelled ``labels(y)`` in the
    fine-tune set: the true labels can only help the validation loss.
    """
    cfg = RunConfig.from_run_config(
        {
            **paper_defaults,
            "method": "semanticfl",
            "public-split-size": 100,
            "server-finetune": "public",
            "adapt-steps": 15,
            "adapt-lr": 0.1,
        }
    )
    torch.manual_seed(0)
    model = build_model("resnet10", 1, 3, 4, 28)
    y = torch.arange(48) % 3
    x = torch.randn(48, 1, 28, 28) + y.view(-1, 1, 1, 1).float()
    cls = with_public_finetune(strategy_class(cfg.method))
    strategy = cls.from_config(
        cfg.semanticfl,
        anchors=ANCHORS,
        public=(x, labels(y)),
        validation=(x, y),
        model=model,
        batch_size=16,
        seed=0,
        **finetune_settings(cfg.fedddpm),
    )
    return strategy, model


def _one_reply(model, train_reply):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return state, train_reply(state, 48)


@pytest.mark.usefixtures("task_identity")
def test_the_clients_get_semanticfls_terms_and_the_server_fine_tunes(
    paper_defaults, train_reply
):
    strategy, model = _semanticfl_with_finetune(paper_defaults, lambda y: y)
    # The clients' side is SemanticFL's: its keys and anchors in every message.
    messages = list(
        strategy.configure_train(
            1, ArrayRecord(model.state_dict()), ConfigRecord({}), FakeGrid([4, 5])
        )
    )
    assert len(messages) == 2
    for message in messages:
        assert message.content[keys.CONFIG][keys.KD_WEIGHT] == 1.0
        np.testing.assert_array_equal(
            message.content[keys.GUIDANCE][keys.VISUAL_ANCHORS].numpy(),
            ANCHORS["visual"],
        )
    # The server's side is fedavg-public's: the aggregate fine-tuned, checked, kept.
    logged = []
    strategy.round_log = logged.append
    sent, reply = _one_reply(model, train_reply)
    arrays, _ = strategy.aggregate_train(1, [reply])
    info = logged[0]
    assert info["corrected"] and info["kept"], info
    assert info["validation-loss"]["after"] < info["validation-loss"]["before"]
    got = arrays.to_torch_state_dict()
    assert any(not torch.equal(got[k], sent[k].to(got[k].dtype)) for k in sent)
    # A resumed run restores both sides' state.
    assert {"rejected", "schedule"} <= set(checkpointed_attributes(strategy))


def test_a_fine_tune_that_hurts_is_dropped(paper_defaults, train_reply):
    strategy, model = _semanticfl_with_finetune(paper_defaults, lambda y: (y + 1) % 3)
    logged = []
    strategy.round_log = logged.append
    sent, reply = _one_reply(model, train_reply)
    arrays, _ = strategy.aggregate_train(1, [reply])
    assert logged[0]["corrected"] and not logged[0]["kept"]
    got = arrays.to_torch_state_dict()
    for name, tensor in sent.items():  # FedAvg's mean of one reply: as sent
        np.testing.assert_array_equal(
            got[name].numpy(), tensor.numpy().astype(got[name].numpy().dtype)
        )


def test_the_combined_class_is_made_once_per_strategy():
    for method in ("semanticfl", "feddifrc"):
        base = strategy_class(method)
        combined = with_public_finetune(base)
        assert combined is with_public_finetune(base)
        assert issubclass(combined, base) and issubclass(combined, FedAvgPublic)
    with pytest.raises(TypeError, match="already fine-tunes"):
        with_public_finetune(FedAvgPublic)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"method": "fedavg"}, "method 'fedavg': set server-finetune = 'none'"),
        (
            {"method": "feddifrc", "self-supervised": True},
            "is self-supervised",
        ),
        (
            {"method": "semanticfl", "server-finetune": "generated"},
            "valid: auto, none, public",
        ),
    ],
)
def test_server_finetune_is_for_guided_methods_with_labels(defaults, override, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_run_config(
            {
                **defaults,
                "public-split-size": 500,
                "server-finetune": "public",
                **override,
            }
        )


@pytest.mark.parametrize(
    ("overrides", "resolved"),
    [
        ({"method": "semanticfl"}, "public"),
        ({"method": "feddifrc"}, "public"),
        ({"method": "feddifrc", "self-supervised": True}, "none"),
        ({"method": "fedavg"}, "none"),
        ({"method": "fedavg-public"}, "none"),  # its own step, not this key's
        ({"method": "semanticfl", "server-finetune": "none"}, "none"),
    ],
)
def test_auto_is_the_fine_tune_for_guided_methods_with_labels(
    defaults, overrides, resolved
):
    cfg = RunConfig.from_run_config({**defaults, **overrides})
    assert cfg.guidance.server_finetune == overrides.get("server-finetune", "auto")
    assert cfg.server_finetune == resolved


def test_the_papers_forms_have_no_server_fine_tune(paper_defaults):
    for method in ("semanticfl", "feddifrc"):
        cfg = RunConfig.from_run_config({**paper_defaults, "method": method})
        assert cfg.server_finetune == "none"


@pytest.mark.parametrize(("public", "checked"), [(10_000, 500), (300, 150)])
def test_a_small_public_split_keeps_half_for_the_fine_tune(defaults, public, checked):
    from common.federation import data_split
    from server_app.adaptation import prepare_public_split

    cfg = RunConfig.from_run_config(
        {**defaults, "method": "semanticfl", "public-split-size": public}
    )
    kwargs, info = prepare_public_split(cfg, data_split(cfg))
    assert info["validation-images"] == checked == len(kwargs["validation"][1])
    assert info["public-images"] == public - checked == len(kwargs["public"][1])
