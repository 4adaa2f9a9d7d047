"""Malformed client updates are left out of aggregation, and the run goes on."""

import logging

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from common import keys
from server_app.strategies.update_guard import UpdateGuard, signature, update_problem
from tests.test_strategies import CORRECTING, SERVER_OPTIMISER, STRATEGIES, build

ADAPTIVE = {"fedadam"}

GLOBAL = {"w": Array(np.zeros((2, 3), np.float32)), "b": Array(np.zeros(3, np.float32))}


def arrays(value: float, **override) -> ArrayRecord:
    """The global model's layout filled with ``value``; ``override`` swaps arrays
    (None drops one)."""
    state = {
        "w": np.full((2, 3), value, np.float32),
        "b": np.full(3, value, np.float32),
        **override,
    }
    return ArrayRecord({k: Array(v) for k, v in state.items() if v is not None})


def reply_to(msg: Message, record: ArrayRecord, n=10) -> Message:
    content = RecordDict(
        {keys.ARRAYS: record, keys.METRICS: MetricRecord({keys.NUM_EXAMPLES: n})}
    )
    return Message(content=content, reply_to=msg)


class ScriptedGrid:
    """A Grid whose nodes answer train Messages with scripted updates."""

    def __init__(self, answers):
        self.answers = answers  # node id -> fn(round) -> ArrayRecord
        self.rounds = 0

    def get_node_ids(self):
        return list(self.answers)

    def send_and_receive(self, messages, timeout=None):
        messages = list(messages)
        if not messages or messages[0].metadata.message_type != "train":
            return []
        self.rounds += 1
        return [
            reply_to(m, self.answers[m.metadata.dst_node_id](self.rounds))
            for m in messages
        ]


BAD = {
    "nan": (arrays(1.0, w=np.full((2, 3), np.nan, np.float32)), "NaN/Inf"),
    "inf": (arrays(1.0, b=np.array([0, np.inf, 0], np.float32)), "NaN/Inf"),
    "shape": (arrays(1.0, w=np.ones((3, 2), np.float32)), "(3, 2)"),
    "dtype": (arrays(1.0, b=np.zeros(3, np.complex64)), "complex64"),
    "missing": (arrays(1.0, b=None), "missing ['b']"),
    "extra": (arrays(1.0, extra=np.zeros(1, np.float32)), "unexpected ['extra']"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_update_problem_names_what_is_wrong(case):
    record, words = BAD[case]
    content = RecordDict(
        {keys.ARRAYS: record, keys.METRICS: MetricRecord({keys.NUM_EXAMPLES: 5})}
    )
    problem = update_problem(content, signature(ArrayRecord(GLOBAL)))
    assert problem is not None and words in problem


@pytest.mark.parametrize("n", [0, -3, float("nan")])
def test_update_without_a_usable_example_count_is_out(n):
    content = RecordDict(
        {keys.ARRAYS: arrays(1.0), keys.METRICS: MetricRecord({keys.NUM_EXAMPLES: n})}
    )
    assert "num-examples" in update_problem(content, signature(ArrayRecord(GLOBAL)))


def test_integer_counters_against_aggregated_float_counters_pass():
    """After one aggregation BatchNorm's counter is float64; clients send int64."""
    aggregated = {**GLOBAL, "n": Array(np.array(4.0))}
    content = RecordDict(
        {
            keys.ARRAYS: arrays(2.0, n=np.array(7, np.int64)),
            keys.METRICS: MetricRecord({keys.NUM_EXAMPLES: 5}),
        }
    )
    assert update_problem(content, signature(ArrayRecord(aggregated))) is None


def test_a_well_formed_update_passes():
    content = RecordDict(
        {keys.ARRAYS: arrays(2.0), keys.METRICS: MetricRecord({keys.NUM_EXAMPLES: 5})}
    )
    assert update_problem(content, signature(ArrayRecord(GLOBAL))) is None


def test_every_strategy_of_the_registry_is_guarded():
    assert [n for n, cls in STRATEGIES.items() if not issubclass(cls, UpdateGuard)] == []


# The correcting strategies fine-tune a real model after aggregating, so they
# cannot run on the toy arrays here; their guard is the same mixin.
@pytest.mark.parametrize("name", sorted(set(STRATEGIES) - CORRECTING))
def test_every_strategy_leaves_malformed_updates_out_and_goes_on(
    name, paper_defaults, task_identity, caplog
):
    """Node 3 sends NaN in round 1 and wrong shapes in round 2; nodes 1, 2 are fine.

    Both rounds aggregate the good updates only (mean of 1 and 3 = 2, then of
    2 and 4 = 3), the run reaches round 2, and each exclusion is logged and
    listed with its reason.
    """
    grid = ScriptedGrid(
        {
            1: lambda r: arrays(float(r)),
            2: lambda r: arrays(float(r) + 2),
            3: lambda r: BAD["nan" if r == 1 else "shape"][0],
        }
    )
    # Server momentum would move the means this test checks: off, FedAvgM is
    # FedAvg behind the same guard. FedAdam always steps (checked apart).
    plain = {"server-momentum": 0.0} if name in SERVER_OPTIMISER else None
    strategy = build(name, paper_defaults, plain)
    seen = []
    with caplog.at_level(logging.WARNING):
        result = strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(GLOBAL),
            num_rounds=2,
            train_config=ConfigRecord({}),
            evaluate_fn=lambda rnd, arr: seen.append(
                (rnd, float(arr["w"].numpy().mean()))
            ),
        )
    if name in ADAPTIVE:  # an Adam step toward the good updates' mean, finite
        assert seen[0] == (0, 0.0) and 0 < seen[1][1] < seen[2][1] < 3.0
        assert np.isfinite(result.arrays["w"].numpy()).all()
    else:
        assert seen == [(0, 0.0), (1, 2.0), (2, 3.0)]
        np.testing.assert_array_equal(result.arrays["w"].numpy(), np.full((2, 3), 3.0))
    assert [(r, n) for r, n, _ in strategy.rejected] == [(1, 3), (2, 3)]
    assert "NaN/Inf" in strategy.rejected[0][2]
    assert "shape (3, 2)" in strategy.rejected[1][2]
    logged = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert len(logged) == 2 and "node 3" in logged[0]


def test_a_round_with_only_malformed_updates_keeps_the_model(paper_defaults, task_identity):
    grid = ScriptedGrid({1: lambda r: BAD["nan"][0], 2: lambda r: BAD["shape"][0]})
    strategy = build("fedavg", paper_defaults)
    result = strategy.start(
        grid=grid, initial_arrays=ArrayRecord(GLOBAL), num_rounds=1
    )
    assert len(strategy.rejected) == 2
    # Nothing was aggregated: Flower's Result holds no new arrays and the next
    # round (there is none here) would start from the previous global model.
    assert len(result.arrays) == 0
