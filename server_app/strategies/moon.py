"""MOON: FedAvg on the server, model-contrastive learning on the client."""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from common import keys
from common.config import BaselineConfig
from server_app.strategies.update_guard import UpdateGuard


class Moon(UpdateGuard, FedAvg):
    """MOON (Li, He, Song, CVPR 2021, https://arxiv.org/abs/2103.16257).

    Aggregation is FedAvg's. Like Flower's FedProx, the strategy only injects
    its client-side settings, ``moon-mu`` and ``moon-tau``, into each train
    config; the client adds ``mu * l_con`` (Eq. 3, ``common.losses``), keeping
    its previous local model in ``context.state``.

    Parameters
    ----------
    mu : float
        Weight of the model-contrastive term (paper: 1 for CIFAR-10, 5 for others).
    tau : float
        Temperature of the contrastive term (paper: 0.5).
    **kwargs
        Flower ``FedAvg`` arguments.
    """

    def __init__(self, mu: float = 1.0, tau: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mu = mu
        self.tau = tau

    @classmethod
    def from_config(cls, section: BaselineConfig, **kwargs: Any) -> Moon:
        """Build from the baselines section (``moon-mu``, ``moon-tau``)."""
        return cls(mu=section.moon_mu, tau=section.moon_tau, **kwargs)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Inject the contrastive settings, then sample and build as FedAvg."""
        config[keys.MOON_MU] = self.mu
        config[keys.MOON_TAU] = self.tau
        return super().configure_train(server_round, arrays, config, grid)

    def summary(self) -> None:
        """Log MOON's settings, then FedAvg's."""
        log(INFO, "\t├──> MOON settings: mu=%s, tau=%s", self.mu, self.tau)
        super().summary()
