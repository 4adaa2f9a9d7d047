"""Clients validate the model the server scores.

With ``eval-bn-images`` > 0 the central evaluation scores the global weights
with BatchNorm statistics recomputed on public images
(``common.evaluation.recalibrated_copy``): the averaged statistics of skewed
clients fit no data. The clients' validation (``fraction-evaluate`` > 0)
must score the same model, or settings tuned on it are tuned for another
measurement than the test's. :class:`ScoredModel` hands each evaluate round
the arrays ``scored_arrays`` maps the global ones to (the ServerApp sets it
to the same recalibration); None sends the global arrays as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid


class ScoredModel:
    """Mixin before a Flower strategy: evaluate Messages carry the scored model."""

    scored_arrays: Callable[[ArrayRecord], ArrayRecord] | None = None

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Configure as the strategy does, with the scored model's arrays."""
        if self.scored_arrays is not None and getattr(self, "fraction_evaluate", 0) > 0:
            arrays = self.scored_arrays(arrays)
        return super().configure_evaluate(server_round, arrays, config, grid)  # type: ignore[misc]
