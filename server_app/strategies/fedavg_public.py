"""fedavg-public: FedAvg + a server fine-tune on its labelled public split (a control).

fedavg-adapt fine-tunes the aggregate on images that the embedded generator
makes, and that generator was trained on the server's labelled public split.
This control fine-tunes on those labelled images directly, with the same
steps, learning rate and keep-if-validation-does-not-worsen rule, so that
fedavg-adapt earns credit only for what its generated images add over the
data behind them (ours).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from server_app.strategies.fedavg_adapt import FedAvgAdapt


class FedAvgPublic(FedAvgAdapt):
    """FedAvg, then fine-tune the aggregate on the labelled public split every round.

    Parameters
    ----------
    public : (Tensor, Tensor)
        The public split's normalised images and labels, without the
        validation slice (``server_app.adaptation.prepare_public_split``).
    **kwargs
        :class:`FedAvgAdapt` arguments (``validation``, ``model``, steps, ...).
    """

    finetune_set = "labelled public"

    def __init__(self, *, public: tuple[Tensor, Tensor], **kwargs: Any) -> None:
        super().__init__(generated=public, **kwargs)
