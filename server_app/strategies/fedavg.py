"""FedAvg: cross-entropy on the client, weighted mean on the server."""

from __future__ import annotations

from typing import Any

from flwr.serverapp.strategy import FedAvg as FlowerFedAvg

from server_app.strategies.update_guard import UpdateGuard


class FedAvg(UpdateGuard, FlowerFedAvg):
    """Federated averaging (McMahan et al. 2017, https://arxiv.org/abs/1602.05629).

    Flower's FedAvg behind :class:`UpdateGuard` (malformed updates are left out),
    with a constructor from the run config so the registry can build every
    method the same way. The client trains with
    cross-entropy alone because the train config carries no method key.
    """

    @classmethod
    def from_config(cls, section: None, **kwargs: Any) -> FedAvg:
        """Build for the registry (FedAvg has no section); ``kwargs`` are Flower's."""
        return cls(**kwargs)
