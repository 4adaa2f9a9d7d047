"""Strategies, Flower's way: a fake Grid, mock replies, hand-computed values."""

from pathlib import Path
from unittest.mock import Mock

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from common import keys
from common.config import RunConfig
from common.methods import methods_where
from server_app.strategies import all_strategies
from server_app.strategies.fedavg import FedAvg
from server_app.strategies.fedavgm import FedAvgM
from server_app.strategies.feddifrc import FedDifRC
from server_app.strategies.fedprox import FedProx
from server_app.strategies.moon import Moon
from server_app.strategies.semanticfl import SemanticFL

STRATEGIES = all_strategies()
GUIDED_METHODS = methods_where(guided=True)

ANCHORS = {
    "text": np.arange(6, dtype=np.float32).reshape(3, 2),
    "visual": -np.arange(6, dtype=np.float32).reshape(3, 2),
}


def _fedddpm_prepared():
    """What server_app/fedddpm.py hands a FedDDPM strategy (a stand-in)."""
    import torch

    from diffusion_service.federated.ldm import FrozenParts

    parts = FrozenParts(None, None, torch.zeros(4, 77, 384), Path("."))
    aux = (torch.zeros(4, 4, 8, 8), torch.zeros(4, dtype=torch.long))
    return {"parts": parts, "aux": aux, "trigger_probe": Mock(), "seed": 0}


def _adaptation_prepared():
    """What server_app/adaptation.py hands fedavg-adapt(+) (a stand-in)."""
    import torch

    from common.models import build_model

    images = (torch.zeros(4, 1, 28, 28), torch.zeros(4, dtype=torch.long))
    model = build_model("resnet10", 1, 10, 16, 28)
    return {
        "generated": images,
        "validation": images,
        "model": model,
        "batch_size": 64,
        "seed": 0,
    }


PREPARED = {
    "feddifrc": {"store_path": "/tmp/store"},
    "semanticfl": {"anchors": ANCHORS},
    **dict.fromkeys(("fedddpm", "fedddpm+", "fedddpm-avg"), _fedddpm_prepared()),
    **dict.fromkeys(("fedavg-adapt", "fedavg-adapt+"), _adaptation_prepared()),
    "fedavg-public": {
        ("public" if k == "generated" else k): v
        for k, v in _adaptation_prepared().items()
    },
}


class FakeGrid:
    """Only what FedAvg's sampling needs."""

    def __init__(self, node_ids):
        self.node_ids = node_ids

    def get_node_ids(self):
        return list(self.node_ids)


def build(name: str, paper_defaults: dict, overrides=None, **kwargs):
    """A strategy from the run config, with what the guidance prep would give."""
    guided = {"public-split-size": 100} if name in GUIDED_METHODS else {}
    cfg = RunConfig.from_run_config(
        {
            **paper_defaults,
            "method": name,
            **guided,
            **(overrides or {}),
        }
    )
    section = cfg.section(cfg.method_info.section)
    return STRATEGIES[name].from_config(section, **PREPARED.get(name, {}), **kwargs)


def one_message(strategy, server_round=1):
    grid = FakeGrid([1, 2])
    return next(
        iter(
            strategy.configure_train(
                server_round, ArrayRecord([np.ones(1)]), ConfigRecord({}), grid
            )
        )
    )


def create_mock_reply(arrays: ArrayRecord, num_examples: float) -> Message:
    message = Mock(spec=Message)
    message.content = RecordDict(
        {"arrays": arrays, "metrics": MetricRecord({"num-examples": num_examples})}
    )
    message.has_error.side_effect = lambda: False
    message.has_content.side_effect = lambda: True
    return message


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_builds_from_config_and_samples_fraction(
    name, paper_defaults, task_identity
):
    # Prepare
    strategy = build(name, paper_defaults, fraction_train=0.5, min_train_nodes=1)
    grid = FakeGrid(range(100, 110))
    # Execute
    messages = list(
        strategy.configure_train(3, ArrayRecord([np.ones(2)]), ConfigRecord({}), grid)
    )
    # Assert
    assert len(messages) == 5
    assert len({m.metadata.dst_node_id for m in messages}) == 5
    assert all(m.content[keys.CONFIG][keys.SERVER_ROUND] == 3 for m in messages)


def test_method_keys_in_train_config(paper_defaults, task_identity):
    cfg = RunConfig.from_run_config(
        {**paper_defaults, "proximal-mu": 0.1, "moon-mu": 5.0, "moon-tau": 0.3}
    )
    grid = FakeGrid([1, 2])

    def config_of(strategy):
        msg = next(
            iter(
                strategy.configure_train(
                    1, ArrayRecord([np.ones(1)]), ConfigRecord({}), grid
                )
            )
        )
        return dict(msg.content[keys.CONFIG])

    assert config_of(FedAvg.from_config(None)) == {keys.SERVER_ROUND: 1}
    assert config_of(FedAvgM.from_config(cfg.baselines)) == {keys.SERVER_ROUND: 1}
    assert config_of(FedProx.from_config(cfg.baselines)) == {
        keys.SERVER_ROUND: 1,
        keys.PROXIMAL_MU: 0.1,
    }
    assert config_of(Moon.from_config(cfg.baselines)) == {
        keys.SERVER_ROUND: 1,
        keys.MOON_MU: 5.0,
        keys.MOON_TAU: 0.3,
    }


# These fine-tune the mean on the server after aggregating (tests/test_fedddpm*.py).
CORRECTING = {"fedavg-adapt", "fedavg-adapt+", "fedavg-public", "fedddpm", "fedddpm+"}
# These step from the previous global model (test_fedavgm_applies_server_momentum,
# test_fedadam_steps_parameters_and_averages_batchnorm_statistics).
SERVER_OPTIMISER = {"fedavgm", "fedadam"}


@pytest.mark.parametrize(
    "name", sorted(set(STRATEGIES) - CORRECTING - SERVER_OPTIMISER)
)
def test_aggregation_is_the_weighted_mean(name, paper_defaults):
    # Prepare: weights 1 and 3 on arrays of ones and threes -> (1 + 9) / 4 = 2.5
    strategy = build(name, paper_defaults)
    replies = [
        create_mock_reply(ArrayRecord([np.ones(3)]), 1),
        create_mock_reply(ArrayRecord([np.full(3, 3.0)]), 3),
    ]
    # Execute
    arrays, _ = strategy.aggregate_train(1, replies)
    # Assert
    np.testing.assert_allclose(arrays.to_numpy_ndarrays()[0], np.full(3, 2.5))


def test_feddifrc_injects_its_terms_and_the_store(paper_defaults, task_identity):
    overrides = {"tdcl-tau": 0.06, "ndcr-mode": "kl", "ndcr-tau": 0.2}
    config = dict(
        one_message(build("feddifrc", paper_defaults, overrides)).content["config"]
    )
    assert config == {
        keys.SERVER_ROUND: 1,
        keys.TDCL_WEIGHT: 1.0,
        keys.TDCL_TAU: 0.06,
        keys.TDCL_NEGATIVES: 0,
        keys.NDCR_WEIGHT: 1.0,
        keys.NDCR_MODE: "kl",
        keys.NDCR_TAU: 0.2,
        keys.FEATURE_STORE: "/tmp/store",
    }


@pytest.mark.parametrize(
    ("overrides", "on", "off"),
    [
        ({"tdcl-weight": 0.0}, keys.NDCR_WEIGHT, keys.TDCL_WEIGHT),
        ({"ndcr-weight": 0.0}, keys.TDCL_WEIGHT, keys.NDCR_WEIGHT),
    ],
)
def test_feddifrc_ablation_is_config_only(
    paper_defaults, task_identity, overrides, on, off
):
    config = one_message(build("feddifrc", paper_defaults, overrides)).content["config"]
    assert on in config and off not in config


def test_feddifrc_self_supervised_flag(paper_defaults, task_identity):
    strategy = build("feddifrc", paper_defaults, {"self-supervised": True})
    assert one_message(strategy).content["config"][keys.SELF_SUPERVISED] is True


def test_feddifrc_without_a_store_refuses_to_run_terms():
    with pytest.raises(ValueError, match="feature store"):
        FedDifRC(store_path="")
    FedDifRC(store_path="", tdcl_weight=0.0, ndcr_weight=0.0)  # FedAvg, no store


def test_semanticfl_attaches_anchors_to_every_message(paper_defaults, task_identity):
    strategy = build("semanticfl", paper_defaults, {"kd-temperature": 0.2})
    messages = list(
        strategy.configure_train(
            2, ArrayRecord([np.ones(1)]), ConfigRecord({}), FakeGrid([4, 5, 6])
        )
    )
    assert len(messages) == 3
    for msg in messages:
        assert dict(msg.content[keys.CONFIG]) == {
            keys.SERVER_ROUND: 2,
            keys.KD_WEIGHT: 1.0,
            keys.KD_TEMPERATURE: 0.2,
            keys.KD_FORM: "coordinates",
            keys.CON_WEIGHT: 0.01,
            keys.CON_TAU: 0.05,
        }
        guidance = msg.content[keys.GUIDANCE]
        np.testing.assert_array_equal(
            guidance[keys.TEXT_ANCHORS].numpy(), ANCHORS["text"]
        )
        np.testing.assert_array_equal(
            guidance[keys.VISUAL_ANCHORS].numpy(), ANCHORS["visual"]
        )
        assert set(msg.content.array_records) == {keys.ARRAYS, keys.GUIDANCE}


@pytest.mark.parametrize(
    ("overrides", "on", "off"),
    [
        ({"kd-weight": 0.0}, keys.CON_WEIGHT, keys.KD_WEIGHT),
        ({"con-weight": 0.0}, keys.KD_WEIGHT, keys.CON_WEIGHT),
    ],
)
def test_semanticfl_ablation_is_config_only(
    paper_defaults, task_identity, overrides, on, off
):
    config = one_message(build("semanticfl", paper_defaults, overrides)).content[
        "config"
    ]
    assert on in config and off not in config


def test_semanticfl_rejects_mismatched_anchors():
    with pytest.raises(ValueError, match=r"\(C, d\)"):
        SemanticFL(anchors={"text": np.ones((3, 2)), "visual": np.ones((3, 4))})


def test_fedavgm_applies_server_momentum(paper_defaults, task_identity):
    # Prepare: the global model is 0; momentum 0.9, server learning rate 1.
    strategy = build("fedavgm", paper_defaults, {"server-momentum": 0.9})
    grid = FakeGrid([1, 2])
    list(
        strategy.configure_train(1, ArrayRecord([np.zeros(2)]), ConfigRecord({}), grid)
    )
    # Execute: round 1, both clients reach 1 (pseudo-gradient -1, momentum -1);
    # round 2, both move on to 2 (pseudo-gradient -1, momentum 0.9 * -1 - 1).
    first, _ = strategy.aggregate_train(
        1, [create_mock_reply(ArrayRecord([np.ones(2)]), n) for n in (1, 3)]
    )
    list(strategy.configure_train(2, first, ConfigRecord({}), grid))
    second, _ = strategy.aggregate_train(
        2, [create_mock_reply(ArrayRecord([np.full(2, 2.0)]), n) for n in (1, 3)]
    )
    # Assert: 0 + 1 = 1, then 1 + 1.9 = 2.9 (plain FedAvg would give 2).
    np.testing.assert_allclose(first.to_numpy_ndarrays()[0], np.ones(2))
    np.testing.assert_allclose(second.to_numpy_ndarrays()[0], np.full(2, 2.9))


def test_fedadam_steps_parameters_and_averages_batchnorm_statistics(
    paper_defaults, task_identity
):
    # Prepare: a weight and a BatchNorm running variance, both 1 on the server.
    strategy = build(
        "fedadam", paper_defaults, {"fedadam-eta": 0.1, "fedadam-tau": 1e-3}
    )
    start = ArrayRecord({"w": Array(np.ones(2)), "bn.running_var": Array(np.ones(2))})
    list(strategy.configure_train(1, start, ConfigRecord({}), FakeGrid([1, 2])))
    # Execute: both clients send 0.5 for each (mean 0.5, pseudo-gradient -0.5).
    update = ArrayRecord(
        {"w": Array(np.full(2, 0.5)), "bn.running_var": Array(np.full(2, 0.5))}
    )
    arrays, _ = strategy.aggregate_train(
        1, [create_mock_reply(update, 1), create_mock_reply(update, 3)]
    )
    # Assert: w takes Flower's bias-corrected Adam step (m = 0.1 * -0.5, v =
    # 0.01 * 0.25, eta_t = 0.1 * sqrt(1 - 0.99^2) / (1 - 0.9^2)); the running
    # variance is the plain mean, never stepped.
    eta_t = 0.1 * np.sqrt(1 - 0.99**2) / (1 - 0.9**2)
    expected_w = 1 + eta_t * (-0.05) / (np.sqrt(0.0025) + 1e-3)
    np.testing.assert_allclose(arrays["w"].numpy(), np.full(2, expected_w))
    np.testing.assert_allclose(arrays["bn.running_var"].numpy(), np.full(2, 0.5))
