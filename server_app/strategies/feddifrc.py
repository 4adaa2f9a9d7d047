"""FedDifRC: FedAvg on the server, diffusion-feature terms on the client."""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from common import keys
from common.config import RunConfig
from server_app.strategies.update_guard import UpdateGuard


class FedDifRC(UpdateGuard, FedAvg):
    """FedDifRC (Wang et al., ICCV 2025, https://arxiv.org/abs/2507.06482).

    Aggregation is FedAvg's (the paper's base). The strategy injects the client
    terms into each train config: TDCL (``tdcl-weight``, ``tdcl-tau``) and NDCR
    (``ndcr-weight``, ``ndcr-mode``, ``ndcr-tau``), each only when its weight is
    above 0 (a weight of 0 is the ablation without that term), plus the path of
    the feature store holding every client sample's diffusion features, which
    the server fills once before round 1 (``server_app/guidance.py``).

    Parameters
    ----------
    store_path : str
        Absolute path of the instance-feature store ("" when no term is on).
    tdcl_weight, tdcl_tau : float
        TDCL weight (paper: 1) and temperature (released code: 0.04).
    ndcr_weight : float
        NDCR weight (paper: 1).
    ndcr_mode : str
        ``cosine`` or ``kl`` (``common.losses.ndcr``).
    ndcr_tau : float
        NDCR temperature (kl mode).
    self_supervised : bool
        No labels on the clients: generic-prompt positive, class-name negatives.
    tdcl_negatives : int
        Self-supervised: negatives used per batch (0 = all stored).
    **kwargs
        Flower ``FedAvg`` arguments.
    """

    def __init__(
        self,
        *,
        store_path: str = "",
        tdcl_weight: float = 1.0,
        tdcl_tau: float = 0.04,
        ndcr_weight: float = 1.0,
        ndcr_mode: str = "cosine",
        ndcr_tau: float = 0.1,
        self_supervised: bool = False,
        tdcl_negatives: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (tdcl_weight > 0 or ndcr_weight > 0) and not store_path:
            raise ValueError("FedDifRC with TDCL or NDCR on needs a feature store path")
        self.store_path = store_path
        self.tdcl_weight, self.tdcl_tau = tdcl_weight, tdcl_tau
        self.ndcr_weight, self.ndcr_mode, self.ndcr_tau = (
            ndcr_weight,
            ndcr_mode,
            ndcr_tau,
        )
        self.self_supervised = self_supervised
        self.tdcl_negatives = tdcl_negatives

    @classmethod
    def from_config(cls, cfg: RunConfig, **kwargs: Any) -> FedDifRC:
        """Build from the run config; ``store_path`` comes from the guidance prep."""
        return cls(
            tdcl_weight=cfg.tdcl_weight,
            tdcl_tau=cfg.tdcl_tau,
            ndcr_weight=cfg.ndcr_weight,
            ndcr_mode=cfg.ndcr_mode,
            ndcr_tau=cfg.ndcr_tau,
            self_supervised=cfg.self_supervised,
            tdcl_negatives=cfg.tdcl_negatives,
            **kwargs,
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Inject the enabled terms and the store path, then sample as FedAvg."""
        if self.tdcl_weight > 0:
            config[keys.TDCL_WEIGHT] = self.tdcl_weight
            config[keys.TDCL_TAU] = self.tdcl_tau
            config[keys.TDCL_NEGATIVES] = self.tdcl_negatives
        if self.ndcr_weight > 0:
            config[keys.NDCR_WEIGHT] = self.ndcr_weight
            config[keys.NDCR_MODE] = self.ndcr_mode
            config[keys.NDCR_TAU] = self.ndcr_tau
        if self.store_path:
            config[keys.FEATURE_STORE] = self.store_path
        if self.self_supervised:
            config[keys.SELF_SUPERVISED] = True
        return super().configure_train(server_round, arrays, config, grid)

    def summary(self) -> None:
        """Log FedDifRC's settings, then FedAvg's."""
        log(
            INFO,
            "\t├──> FedDifRC: tdcl %s (tau %s), ndcr %s (%s, tau %s), "
            "self-supervised %s, store %s",
            self.tdcl_weight,
            self.tdcl_tau,
            self.ndcr_weight,
            self.ndcr_mode,
            self.ndcr_tau,
            self.self_supervised,
            self.store_path or "-",
        )
        super().summary()
