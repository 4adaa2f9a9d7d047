"""BatchNorm statistics averaged, not stepped, under a server optimiser.

Flower's FedAvgM and FedAdam treat every array of the model as a parameter:
the averaged update is a pseudo-gradient, and momentum or Adam steps it. For
BatchNorm's running means, running variances and batch counters that is
wrong: they are statistics, not parameters, and a momentum or Adam step of a
running variance can take it below zero (an Adam step is about ``eta`` per
element whatever the variance's scale), after which evaluation divides by the
square root of a negative number. This mixin keeps Flower's update for the
parameters and sets the statistics to their plain weighted mean, as FedAvg
would (ours; the FedAvgM and FedOpt papers use models without BatchNorm).
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from common import keys

BATCHNORM_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def is_statistic(name: str) -> bool:
    """Whether a state-dict entry is a BatchNorm statistic (not a parameter)."""
    return name.rsplit(".", 1)[-1] in BATCHNORM_STATISTICS


class StatisticsAveraged:
    """Mixin between :class:`UpdateGuard` and a Flower server-optimiser strategy."""

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The strategy's step for parameters, the weighted mean for statistics."""
        replies = list(replies)
        arrays, metrics = super().aggregate_train(server_round, replies)  # type: ignore[misc]
        if arrays is None or not any(is_statistic(k) for k in arrays):
            return arrays, metrics
        key = self.weighted_by_key  # type: ignore[attr-defined]
        statistics = [  # only the statistics: the parameters' mean is Flower's
            RecordDict(
                {
                    keys.ARRAYS: ArrayRecord(
                        {
                            k: a
                            for k, a in r.content.array_records[keys.ARRAYS].items()
                            if is_statistic(k)
                        }
                    ),
                    keys.METRICS: r.content.metric_records[keys.METRICS],
                }
            )
            for r in replies
            if not r.has_error()
        ]
        mean = aggregate_arrayrecords(statistics, key)
        for name in mean:
            arrays[name] = mean[name]
        return arrays, metrics
