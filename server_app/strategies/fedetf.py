"""FedETF: a fixed simplex-ETF classifier on every client, FedAvg on the server."""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from common import keys
from server_app.strategies.update_guard import UpdateGuard


class FedETF(UpdateGuard, FedAvg):
    """FedETF (Li et al., ICCV 2023, https://arxiv.org/abs/2303.10058).

    The registry gives the model FedETF's classifier (``classifier = "etf"``:
    a learnable projector onto a fixed, seeded simplex ETF with a learnable
    temperature, ``common.models.ETFClassifier``); the frame is identical on
    every side and never aggregated, the projector and temperature are
    averaged like every other weight. This strategy switches the clients'
    cross-entropy to the balanced softmax of the paper (``balanced-ce``).
    The paper's local personalisation phase is not run: this project scores
    the global model.

    It is the control for the methods that use class anchors as fixed
    targets: a fixed, well-separated classifier without any diffusion model.
    """

    @classmethod
    def from_config(cls, section: None, **kwargs: Any) -> FedETF:
        """Build for the registry (no settings of its own); ``kwargs`` are Flower's."""
        return cls(**kwargs)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Ask for the balanced softmax, then sample and build as FedAvg."""
        config[keys.BALANCED_CE] = True
        return super().configure_train(server_round, arrays, config, grid)

    def summary(self) -> None:
        """Log FedETF's settings, then FedAvg's."""
        log(INFO, "\t├──> FedETF: fixed simplex-ETF classifier, balanced softmax CE")
        super().summary()
