"""The method registry: every entry loads, names a real section, and is used."""

import typing

import pytest
from flwr.serverapp.strategy import Strategy

from common.config import SECTIONS, RunConfig
from common.methods import (
    METHODS,
    Preparation,
    UnknownMethodError,
    get_method,
    methods_where,
)
from server_app.strategies import strategy_class
from server_app.strategies.correcting import CorrectingFedAvg
from server_app.strategies.update_guard import UpdateGuard


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_entry_loads_a_guarded_strategy_built_from_its_section(name):
    method = get_method(name)
    cls = strategy_class(name)
    assert issubclass(cls, Strategy) and issubclass(cls, UpdateGuard)
    assert callable(cls.from_config)
    assert method.section is None or method.section in SECTIONS
    assert method.strategy.startswith("server_app.strategies.")


def test_the_kinds_dispatch_as_the_apps_expect():
    assert set(methods_where(model="diffusion-unet")) == {
        "fedddpm-avg",
        "fedddpm",
        "fedddpm+",
    }
    assert set(methods_where(guided=True)) == {"feddifrc", "semanticfl"}
    assert get_method("semanticfl").prepares == "class-anchors"
    assert get_method("feddifrc").prepares == "instance-features"
    # A strategy that corrects the aggregate on the server is a CorrectingFedAvg.
    correcting = {n for n in METHODS if issubclass(strategy_class(n), CorrectingFedAvg)}
    assert correcting == {
        "fedavg-adapt",
        "fedavg-adapt+",
        "fedavg-public",
        "fedddpm-avg",
        "fedddpm",
        "fedddpm+",
    }
    assert set(typing.get_args(Preparation)) >= {m.prepares for m in METHODS.values()}


def test_every_registered_method_validates_with_the_defaults(defaults):
    for name in METHODS:
        assert (
            RunConfig.from_run_config({**defaults, "method": name}).method_info.name
            == name
        )


def test_an_unknown_method_names_the_closest_and_every_valid_one():
    with pytest.raises(
        UnknownMethodError,
        match=r"'fedprxo' \(did you mean 'fedprox'.*valid: fedadam, fedavg,",
    ):
        get_method("fedprxo")
