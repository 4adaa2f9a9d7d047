"""Node sampling that depends on the seed and the round alone.

Flower's strategies draw each round's nodes with ``random.sample`` from
Python's global generator, which other parts of Flower also draw from at
times that vary from run to run (retry back-off and heartbeat jitter). A
seeded generator at the start of the run therefore does not give the same
sample twice. :class:`SeededSampling` reseeds it from (``sampling_seed``,
round, stream) just before the strategy samples, so with the nodes listed
in partition order (``server_app.ordered_grid``) the same partitions train
in the same round of every run, resumed runs included.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from common import seeding

TRAIN_SAMPLE, EVALUATE_SAMPLE = 0, 1  # the two draws of a round


class SeededSampling:
    """Mixin before a Flower strategy; ``sampling_seed`` None leaves Flower's draw alone."""

    sampling_seed: int | None = None  # set by the ServerApp from the run's seed

    def _reseed(self, server_round: int, draw: int) -> None:
        if self.sampling_seed is not None:
            random.seed(
                seeding.mix_seed(
                    self.sampling_seed, server_round, draw, seeding.NODE_SAMPLING
                )
            )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._reseed(server_round, TRAIN_SAMPLE)
        return super().configure_train(server_round, arrays, config, grid)  # type: ignore[misc]

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._reseed(server_round, EVALUATE_SAMPLE)
        return super().configure_evaluate(server_round, arrays, config, grid)  # type: ignore[misc]
