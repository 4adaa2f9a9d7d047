"""FedProx: FedAvg on the server, a proximal term on the client."""

from __future__ import annotations

from typing import Any

from flwr.serverapp.strategy import FedProx as FlowerFedProx

from common.config import BaselineConfig
from server_app.strategies.update_guard import UpdateGuard


class FedProx(UpdateGuard, FlowerFedProx):
    """FedProx (Li et al. 2020, https://arxiv.org/abs/1812.06127).

    Flower's FedProx injects ``proximal-mu`` into every train config; the client
    adds ``mu / 2 * ||w - w_global||^2`` (``common.losses.proximal_term``).
    Run config: ``proximal-mu`` (default 0.01, FedDifRC's code default).
    """

    @classmethod
    def from_config(cls, section: BaselineConfig, **kwargs: Any) -> FedProx:
        """Build from the baselines section; ``kwargs`` are Flower's FedAvg arguments."""
        return cls(proximal_mu=section.proximal_mu, **kwargs)
