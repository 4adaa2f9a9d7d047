"""Strategies, Flower's way: a fake Grid, mock replies, hand-computed values."""

from unittest.mock import Mock

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from common import keys
from common.config import RunConfig
from server_app.strategies import STRATEGIES, FedAvg, FedProx, Moon


class FakeGrid:
    """Only what FedAvg's sampling needs."""

    def __init__(self, node_ids):
        self.node_ids = node_ids

    def get_node_ids(self):
        return list(self.node_ids)


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
    name, defaults, task_identity
):
    # Prepare
    cfg = RunConfig.from_run_config({**defaults, "method": name})
    strategy = STRATEGIES[name].from_config(cfg, fraction_train=0.5, min_train_nodes=1)
    grid = FakeGrid(range(100, 110))
    # Execute
    messages = list(
        strategy.configure_train(3, ArrayRecord([np.ones(2)]), ConfigRecord({}), grid)
    )
    # Assert
    assert len(messages) == 5
    assert len({m.metadata.dst_node_id for m in messages}) == 5
    assert all(m.content[keys.CONFIG][keys.SERVER_ROUND] == 3 for m in messages)


def test_method_keys_in_train_config(defaults, task_identity):
    cfg = RunConfig.from_run_config(
        {**defaults, "proximal-mu": 0.1, "moon-mu": 5.0, "moon-tau": 0.3}
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

    assert config_of(FedAvg.from_config(cfg)) == {keys.SERVER_ROUND: 1}
    assert config_of(FedProx.from_config(cfg)) == {
        keys.SERVER_ROUND: 1,
        keys.PROXIMAL_MU: 0.1,
    }
    assert config_of(Moon.from_config(cfg)) == {
        keys.SERVER_ROUND: 1,
        keys.MOON_MU: 5.0,
        keys.MOON_TAU: 0.3,
    }


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_aggregation_is_the_weighted_mean(name, defaults):
    # Prepare: weights 1 and 3 on arrays of ones and threes -> (1 + 9) / 4 = 2.5
    cfg = RunConfig.from_run_config({**defaults, "method": name})
    strategy = STRATEGIES[name].from_config(cfg)
    replies = [
        create_mock_reply(ArrayRecord([np.ones(3)]), 1),
        create_mock_reply(ArrayRecord([np.full(3, 3.0)]), 3),
    ]
    # Execute
    arrays, _ = strategy.aggregate_train(1, replies)
    # Assert
    np.testing.assert_allclose(arrays.to_numpy_ndarrays()[0], np.full(3, 2.5))
