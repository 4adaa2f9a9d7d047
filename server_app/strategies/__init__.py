"""The strategies of the method registry (``common.methods``), one per file.

Each class subclasses a Flower strategy and has a ``from_config(section,
**kwargs)`` constructor: ``section`` is the config section its registry entry
names (None for FedAvg), ``kwargs`` are Flower's strategy arguments plus what
the ServerApp prepared before round 1 (anchors, a store path, generated
images). :func:`strategy_class` loads a method's class from its entry.
"""

from __future__ import annotations

import importlib

from flwr.serverapp.strategy import Strategy

from common.methods import METHODS, get_method


def strategy_class(method: str) -> type[Strategy]:
    """The strategy class of a registered method (an error lists the valid ones)."""
    module_name, _, class_name = get_method(method).strategy.partition(":")
    strategy = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(strategy, type) and issubclass(strategy, Strategy)):
        raise TypeError(f"method {method!r}: {strategy!r} is not a Flower Strategy")
    return strategy


def all_strategies() -> dict[str, type[Strategy]]:
    """Every registered method's strategy class (loads every strategy module)."""
    return {name: strategy_class(name) for name in METHODS}
