"""Run-config validation: defaults valid, every bad value a clear error."""

import pytest

from common.config import ConfigError, RunConfig
from server_app.strategies import STRATEGIES, get_strategy_class


def test_pyproject_defaults_are_valid_and_complete(defaults):
    cfg = RunConfig.from_run_config(defaults)
    # every field is exposed in pyproject.toml, so every tunable is overridable
    assert set(defaults) == set(cfg.to_run_config())
    assert cfg.method in STRATEGIES


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"dirichlet-beta": 0.0}, "dirichlet-beta"),
        ({"dirichlet-beta": -1.0}, "dirichlet-beta"),
        ({"longtail-rho": 0.5}, "longtail-rho"),
        ({"num-clients": 0}, "num-clients"),
        ({"fraction-train": 0.0}, r"fraction-train.*\(0, 1\]"),
        ({"fraction-train": 1.5}, "fraction-train"),
        ({"num-server-rounds": 0}, "num-server-rounds"),
        ({"learning-rate": 0}, "learning-rate"),
        ({"min-available-clients": 11}, "min-available-clients"),
        ({"device": "tpu"}, "device"),
        ({"dataset": "imagenet"}, "cifar10, cifar100, fashion-mnist, mnist"),
        ({"model": "vgg"}, "mobilenetv2, resnet10"),
        ({"partitioner": "shards"}, "dirichlet, extreme, iid, longtail-dirichlet"),
        ({"batch-size": 2.5}, "batch-size.*int"),
        ({"dataset": 3}, "dataset.*string"),
        ({"augment": "yes"}, "augment.*true or false"),
        ({"dirichlet_beta": 0.1}, "unknown run-config key"),
    ],
)
def test_bad_values_fail_with_a_message_naming_the_key(defaults, override, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_run_config({**defaults, **override})


def test_ints_are_accepted_for_floats_and_cast(defaults):
    cfg = RunConfig.from_run_config(
        {**defaults, "dirichlet-beta": 1, "num-clients": 4.0}
    )
    assert cfg.dirichlet_beta == 1.0 and isinstance(cfg.dirichlet_beta, float)
    assert cfg.num_clients == 4 and isinstance(cfg.num_clients, int)


def test_unknown_method_lists_valid_ones():
    with pytest.raises(ValueError, match="fedavg, fedprox, moon"):
        get_strategy_class("scaffold")
