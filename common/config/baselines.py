"""Baseline terms: FedProx, MOON, and the server optimisers FedAvgM and FedAdam."""

from __future__ import annotations

from dataclasses import dataclass

from common.config.fields import check, check_all


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
    # FedAdam: Reddi et al.'s Adam on the server; eta and tau are ours
    # (Flower's defaults, eta 0.1 and tau 1e-3, step the weights by up to 0.1
    # a round, far more than a client's SGD at lr 0.01 moves them).
    fedadam_eta: float = 0.01
    fedadam_beta_1: float = 0.9
    fedadam_beta_2: float = 0.99
    fedadam_tau: float = 1e-3
    # FedETF's local loss: the paper's balanced softmax, or plain
    # cross-entropy. Balanced softmax gives a one-class client exactly zero
    # loss (its log prior makes its only class certain), so on the extreme
    # split 9 of 10 clients do not train at all; "ce" is our variant.
    etf_loss: str = "balanced"

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
        check(self.fedadam_eta > 0, "fedadam-eta", self.fedadam_eta, "a float > 0")
        check(
            self.etf_loss in ("balanced", "ce"),
            "etf-loss",
            self.etf_loss,
            "'balanced' (FedETF's balanced softmax) or 'ce' (plain cross-entropy)",
        )
        check_all(
            self,
            ("fedadam-beta-1", "fedadam-beta-2"),
            lambda v: 0 <= v < 1,
            "a float in [0, 1)",
        )
        check(
            self.fedadam_tau > 0,
            "fedadam-tau",
            self.fedadam_tau,
            "a float > 0 (Adam's epsilon: the smallest denominator)",
        )
