"""FedAvg, then a server-side correction of the aggregate: the shared round.

FedDDPM(+) fine-tunes the aggregated diffusion U-Net on its auxiliary set;
fedavg-adapt(+) fine-tunes the aggregated classifier on generated images.
Both run the same round: aggregate (timed), decide whether to correct (every
round, never, or when the slow-learning trigger fires on a server-side
loss), correct, and report the round's server work to ``round_log``. This
base holds that skeleton; a subclass says only how to load the aggregate,
measure its loss and correct it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg

from diffusion_service.federated.trigger import CorrectionSchedule
from server_app.strategies.update_guard import UpdateGuard


class CorrectingFedAvg(UpdateGuard, FedAvg):
    """FedAvg whose aggregate the server may correct each round.

    Class attributes
    ----------------
    correction : "every", "trigger" or "never"
        When to correct (:class:`~diffusion_service.federated.trigger.CorrectionSchedule`).
    measures_every_round : bool
        Measure the aggregate's loss even when the schedule does not need it
        (the adaptation's keep-if-not-worse check uses it).

    Parameters
    ----------
    trigger_window, trigger_eps :
        The slow-learning trigger (``trigger.slow_learning``).
    **kwargs
        Flower ``FedAvg`` arguments.
    """

    checkpointed = ("schedule",)  # the trigger's loss history and cool-down
    correction: ClassVar[str] = "every"
    measures_every_round: ClassVar[bool] = False

    def __init__(
        self, *, trigger_window: int, trigger_eps: float, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.schedule = CorrectionSchedule(self.correction, trigger_window, trigger_eps)
        # Set by the ServerApp: where each round's server work is reported.
        self.round_log: Callable[[dict[str, Any]], None] | None = None

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """FedAvg, then the correction this method calls for (each part timed)."""
        t0 = time.perf_counter()
        arrays, metrics = super().aggregate_train(server_round, replies)
        info: dict[str, Any] = {"aggregate-seconds": time.perf_counter() - t0}
        if arrays is not None and self.correction == "never":
            info["corrected"] = False  # the baseline: FedAvg's mean as it is
        elif arrays is not None:
            arrays = self._maybe_correct(server_round, arrays, info)
        if self.round_log is not None:
            self.round_log(info)
        return arrays, metrics

    def _maybe_correct(
        self, server_round: int, arrays: ArrayRecord, info: dict[str, Any]
    ) -> ArrayRecord:
        self.load_aggregate(arrays)
        loss = None
        if self.schedule.needs_loss or self.measures_every_round:
            t0 = time.perf_counter()
            # Measured on the aggregate, before any correction: the trigger's
            # series follows federated progress (trigger.py).
            loss = self.aggregate_loss()
            if self.schedule.needs_loss:
                info["trigger-loss"] = loss
            info["trigger-seconds"] = time.perf_counter() - t0
        info["corrected"] = self.schedule.decide(server_round, loss)
        if not info["corrected"]:
            return arrays
        return self.correct(server_round, arrays, loss, info)

    def load_aggregate(self, arrays: ArrayRecord) -> None:
        """Load the aggregate into the server's work model."""
        raise NotImplementedError

    def aggregate_loss(self) -> float:
        """The work model's loss on the server's own data (trigger, checks)."""
        raise NotImplementedError

    def correct(
        self,
        server_round: int,
        arrays: ArrayRecord,
        loss: float | None,
        info: dict[str, Any],
    ) -> ArrayRecord:
        """The corrected global arrays (``arrays`` to keep the aggregate).

        ``loss`` is :meth:`aggregate_loss` of the aggregate when it was
        measured; ``info`` collects what the round log should show.
        """
        raise NotImplementedError
