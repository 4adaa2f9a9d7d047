"""FedAvgM: FedAvg with server momentum, Flower's own strategy."""

from __future__ import annotations

from typing import Any

from flwr.serverapp.strategy import FedAvgM as FlowerFedAvgM

from common.config import BaselineConfig
from server_app.strategies.server_optimiser import StatisticsAveraged
from server_app.strategies.update_guard import UpdateGuard


class FedAvgM(UpdateGuard, StatisticsAveraged, FlowerFedAvgM):
    """FedAvgM (Hsu, Qi, Brown 2019, https://arxiv.org/abs/1909.06335).

    Flower's FedAvgM behind :class:`UpdateGuard`: the server treats the
    averaged update as a pseudo-gradient and applies it with momentum
    (``server-momentum``) and a step size (``server-learning-rate``). Clients
    train with cross-entropy alone, as in FedAvg. BatchNorm statistics are
    averaged, not stepped (:mod:`.server_optimiser`).
    """

    checkpointed = ("momentum_vector",)  # Flower's server momentum

    @classmethod
    def from_config(cls, section: BaselineConfig, **kwargs: Any) -> FedAvgM:
        """Build from the baselines section; ``kwargs`` are Flower's FedAvg arguments."""
        return cls(
            server_learning_rate=section.server_learning_rate,
            server_momentum=section.server_momentum,
            **kwargs,
        )
