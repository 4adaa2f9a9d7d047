"""FedAdam: an adaptive server optimiser over FedAvg's update, Flower's own strategy."""

from __future__ import annotations

from typing import Any

from flwr.serverapp.strategy import FedAdam as FlowerFedAdam

from common.config import BaselineConfig
from server_app.strategies.server_optimiser import StatisticsAveraged
from server_app.strategies.update_guard import UpdateGuard


class FedAdam(UpdateGuard, StatisticsAveraged, FlowerFedAdam):
    """FedAdam (Reddi et al., ICLR 2021, https://arxiv.org/abs/2003.00295).

    Flower's FedAdam behind :class:`UpdateGuard`: the averaged update is the
    pseudo-gradient of an Adam step on the server (``fedadam-eta``,
    ``fedadam-beta-1``, ``fedadam-beta-2``, ``fedadam-tau``); BatchNorm
    statistics are averaged, not stepped (:mod:`.server_optimiser`). Clients
    train with cross-entropy alone, as in FedAvg.
    """

    checkpointed = ("m_t", "v_t")  # Flower's Adam moments

    @classmethod
    def from_config(cls, section: BaselineConfig, **kwargs: Any) -> FedAdam:
        """Build from the baselines section; ``kwargs`` are Flower's FedAvg arguments."""
        return cls(
            eta=section.fedadam_eta,
            beta_1=section.fedadam_beta_1,
            beta_2=section.fedadam_beta_2,
            tau=section.fedadam_tau,
            **kwargs,
        )
