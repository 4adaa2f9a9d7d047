"""Strategy registry: method name (run config ``method``) -> strategy class.

Each class subclasses a Flower strategy in its own file and has a
``from_config(cfg, **kwargs)`` constructor; the guided methods also take what
``server_app.guidance.guidance_kwargs`` prepared (anchors or a store path).
"""

from __future__ import annotations

from flwr.serverapp.strategy import Strategy

from server_app.strategies.fedavg import FedAvg
from server_app.strategies.fedavg_adapt import FedAvgAdapt, FedAvgAdaptPlus
from server_app.strategies.fedddpm import FedDDPM, FedDDPMAvg, FedDDPMPlus
from server_app.strategies.feddifrc import FedDifRC
from server_app.strategies.fedprox import FedProx
from server_app.strategies.moon import Moon
from server_app.strategies.semanticfl import SemanticFL

__all__ = [
    "FedAvg",
    "FedAvgAdapt",
    "FedAvgAdaptPlus",
    "FedDDPM",
    "FedDDPMAvg",
    "FedDDPMPlus",
    "FedDifRC",
    "FedProx",
    "Moon",
    "SemanticFL",
    "STRATEGIES",
    "get_strategy_class",
]

STRATEGIES: dict[str, type[Strategy]] = {
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "moon": Moon,
    "feddifrc": FedDifRC,
    "semanticfl": SemanticFL,
    # docs/fedddpm.md: the model is a latent diffusion U-Net (server_app/fedddpm.py)
    "fedddpm-avg": FedDDPMAvg,
    "fedddpm": FedDDPM,
    "fedddpm+": FedDDPMPlus,
    # classification + server-side classifier adaptation on generated images (ours)
    "fedavg-adapt": FedAvgAdapt,
    "fedavg-adapt+": FedAvgAdaptPlus,
}


def get_strategy_class(method: str) -> type[Strategy]:
    """The strategy class of a method, with an error listing the valid ones."""
    if method not in STRATEGIES:
        raise ValueError(
            f"unknown method {method!r}; valid: {', '.join(sorted(STRATEGIES))}"
        )
    return STRATEGIES[method]
