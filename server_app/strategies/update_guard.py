"""Leave malformed client updates out of aggregation, with a logged reason.

Flower's FedAvg aggregates every reply that is not an error Message: one
client that sends NaN weights (a diverged step, a bad GPU, a hostile node)
poisons the global model, and one with the wrong shapes stops the run in
``aggregate_arrayrecords``. :class:`UpdateGuard` sits in front of Flower's
``aggregate_train`` in every strategy of the registry: it remembers the
arrays each round sent and drops the replies whose update does not match
them (keys, shapes), holds a non-number or a non-finite value, or carries an unusable
example count. The round goes on with the rest; with none left, Flower keeps
the previous global model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from logging import WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common import log
from flwr.serverapp import Grid

from common import keys
from server_app.strategies.scored_model import ScoredModel
from server_app.strategies.seeded_sampling import SeededSampling

Signature = dict[str, tuple[tuple[int, ...], str]]  # name -> (shape, dtype)


def signature(arrays: ArrayRecord) -> Signature:
    """Name -> (shape, dtype) of every array in a record."""
    return {k: (tuple(a.shape), str(a.dtype)) for k, a in arrays.items()}


def update_problem(content: RecordDict, expected: Signature) -> str | None:
    """Why a train reply cannot be aggregated, or None when it can.

    ``expected`` is the signature of the arrays the server sent this round.
    """
    if keys.ARRAYS not in content.array_records:
        return f"no '{keys.ARRAYS}' ArrayRecord in the reply"
    arrays = content.array_records[keys.ARRAYS]
    got = signature(arrays)
    missing, extra = sorted(expected.keys() - got), sorted(got.keys() - expected)
    if missing or extra:
        return f"arrays do not match the global model (missing {missing}, unexpected {extra})"
    for name, (shape, _) in expected.items():
        if got[name][0] != shape:
            return f"array '{name}' has shape {got[name][0]}; the global model's is {shape}"
    for name, array in arrays.items():
        values = array.numpy()
        # Not the exact dtype: aggregation turns BatchNorm's int64 counters
        # into float64, while clients send them back as int64.
        if values.dtype.kind not in "biuf":
            return f"array '{name}' has dtype {values.dtype}; numbers are needed"
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            bad = int((~np.isfinite(values)).sum())
            return f"array '{name}' holds {bad} NaN/Inf values"
    metrics = content.metric_records.get(keys.METRICS)
    n = None if metrics is None else metrics.get(keys.NUM_EXAMPLES)
    if not isinstance(n, int | float) or not math.isfinite(n) or n <= 0:
        return f"'{keys.NUM_EXAMPLES}' is {n!r}; a positive number is needed to weight the update"
    return None


class UpdateGuard(ScoredModel, SeededSampling):
    """Mixin, first in a Flower strategy's bases: checked ``aggregate_train``
    (and, through :class:`SeededSampling`, a seeded node sample; through
    :class:`ScoredModel`, clients validate the model the server scores).

    ``rejected`` lists ``(round, node id, reason)`` of every reply left out.
    """

    _expected: Signature | None = None
    checkpointed = ("rejected",)  # server_app.checkpoint saves and restores it

    @property
    def rejected(self) -> list[tuple[int, int, str]]:
        """Every reply left out of aggregation so far: (round, node, reason)."""
        return self.__dict__.setdefault("_rejected", [])

    @rejected.setter
    def rejected(self, value: list) -> None:  # a checkpoint's (JSON) lists
        self.__dict__["_rejected"] = [tuple(entry) for entry in value or []]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember what this round sent, then configure as the strategy does."""
        self._expected = signature(arrays)
        return super().configure_train(server_round, arrays, config, grid)  # type: ignore[misc]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        """Aggregate the well-formed replies only; log why each other one is out."""
        kept = []
        for msg in replies:
            problem = None
            if not msg.has_error() and self._expected is not None:
                problem = update_problem(msg.content, self._expected)
            if problem is None:
                kept.append(msg)
                continue
            node = msg.metadata.src_node_id
            self.rejected.append((server_round, node, problem))
            log(
                WARNING,
                "Round %s: update from node %s left out of aggregation: %s",
                server_round,
                node,
                problem,
            )
        return super().aggregate_train(server_round, kept)  # type: ignore[misc]
