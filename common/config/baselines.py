"""Baseline terms: FedProx, MOON, FedAvgM (papers' defaults)."""

from __future__ import annotations

from dataclasses import dataclass

from common.config.fields import check


@dataclass(frozen=True)
class BaselineConfig:
    """The baselines' settings; each method reads only its own keys.

    ``proximal-mu`` 0.01 is FedDifRC's code default for FedProx; MOON's
    ``moon-mu`` 1 and ``moon-tau`` 0.5 are the MOON paper's CIFAR-10 values;
    FedAvgM's server momentum 0.9 (the usual SGD momentum; Hsu et al. 2019
    study a range) with server learning rate 1.0 is ours: Flower's FedAvgM
    defaults to momentum 0, which is plain FedAvg.
    """

    proximal_mu: float = 0.01
    moon_mu: float = 1.0
    moon_tau: float = 0.5
    server_learning_rate: float = 1.0
    server_momentum: float = 0.9

    def validate(self) -> None:
        check(self.proximal_mu >= 0, "proximal-mu", self.proximal_mu, "a float >= 0")
        check(self.moon_mu >= 0, "moon-mu", self.moon_mu, "a float >= 0")
        check(self.moon_tau > 0, "moon-tau", self.moon_tau, "a float > 0")
        check(
            self.server_learning_rate > 0,
            "server-learning-rate",
            self.server_learning_rate,
            "a float > 0 (1 = apply the averaged update as it is)",
        )
        check(
            0 <= self.server_momentum < 1,
            "server-momentum",
            self.server_momentum,
            "a float in [0, 1) (0 = FedAvg)",
        )
