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
from common.config import BaselineConfig
from server_app.strategies.update_guard import UpdateGuard


class FedETF(UpdateGuard, FedAvg):
    """FedETF (Li et al., ICCV 2023, https://arxiv.org/abs/2303.10058).

    The registry gives the model FedETF's classifier (``classifier = "etf"``:
    a learnable projector onto a fixed, seeded simplex ETF with a learnable
    temperature, ``common.models.ETFClassifier``); the frame is identical on
    every side and never aggregated, the projector and temperature are
    averaged like every other weight. This strategy switches the clients'
    cross-entropy to the balanced softmax of the paper (``balanced-ce``), or
    keeps plain cross-entropy with ``etf-loss = "ce"`` (ours: the balanced
    softmax gives a one-class client zero loss).
    The paper's local personalisation phase is not run: this project scores
    the global model.

    It is the control for the methods that use class anchors as fixed
    targets: a fixed, well-separated classifier without any diffusion model.
    """

    def __init__(self, *, balanced: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.balanced = balanced

    @classmethod
    def from_config(cls, section: BaselineConfig, **kwargs: Any) -> FedETF:
        """Build from the baselines section (``etf-loss``); ``kwargs`` are Flower's."""
        return cls(balanced=section.etf_loss == "balanced", **kwargs)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Ask for the balanced softmax (if on), then sample and build as FedAvg."""
        if self.balanced:
            config[keys.BALANCED_CE] = True
        return super().configure_train(server_round, arrays, config, grid)

    def summary(self) -> None:
        """Log FedETF's settings, then FedAvg's."""
        loss = "balanced softmax CE" if self.balanced else "plain CE (etf-loss = ce)"
        log(INFO, "\t├──> FedETF: fixed simplex-ETF classifier, %s", loss)
        super().summary()
