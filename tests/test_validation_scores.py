"""The clients' validation: the model the server scores, pooled per class."""

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from common import keys
from common.config import RunConfig
from server_app.reporting import RunRecorder, balanced_accuracy
from server_app.strategies.fedavg import FedAvg


def test_balanced_accuracy_averages_the_classes_present():
    # class 0: 8/10, class 1: 1/2, class 2: absent
    assert balanced_accuracy([8, 1, 0], [10, 2, 0]) == pytest.approx(0.65)
    with pytest.raises(ValueError, match="no class"):
        balanced_accuracy([0, 0], [0, 0])


def test_the_server_pools_the_clients_per_class_counts(defaults, tmp_path):
    cfg = RunConfig.from_run_config({**defaults, "output-dir": str(tmp_path)})
    recorder = RunRecorder(cfg)

    def reply(correct, total):
        n = sum(total)
        return RecordDict(
            {
                keys.METRICS: MetricRecord(
                    {
                        keys.EVAL_ACCURACY: sum(correct) / n,
                        keys.NUM_EXAMPLES: n,
                        keys.EVAL_CLASS_CORRECT: [c / n for c in correct],
                        keys.EVAL_CLASS_TOTAL: [t / n for t in total],
                    }
                )
            }
        )

    # Client A: 90 of class 0, 81 right; client B: 10 of class 1, 2 right.
    recorder.aggregate_validation_metrics(
        [reply([81, 0], [90, 0]), reply([0, 2], [0, 10])], keys.NUM_EXAMPLES
    )
    pooled = recorder._pending_validation
    assert pooled[keys.EVAL_ACCURACY] == pytest.approx(83 / 100)  # the skewed mix
    assert pooled[keys.EVAL_BALANCED_ACCURACY] == pytest.approx((0.9 + 0.2) / 2)
    assert keys.EVAL_CLASS_CORRECT not in pooled and pooled["clients"] == 2


class Grid:
    def get_node_ids(self):
        return [4, 5]


@pytest.mark.parametrize("fraction_evaluate", [1.0, 0.0])
def test_clients_get_the_scored_models_arrays(task_identity, fraction_evaluate):
    strategy = FedAvg(fraction_evaluate=fraction_evaluate, min_evaluate_nodes=0)
    calls = []

    def scored(arrays):
        calls.append(arrays)
        return ArrayRecord([np.full(2, 7.0)])

    strategy.scored_arrays = scored
    messages = list(
        strategy.configure_evaluate(
            1, ArrayRecord([np.zeros(2)]), ConfigRecord({}), Grid()
        )
    )
    if fraction_evaluate == 0.0:  # no evaluate round: nothing recomputed
        assert messages == [] and calls == []
        return
    assert len(calls) == 1 and len(messages) == 2
    for msg in messages:
        sent = msg.content[keys.ARRAYS]
        np.testing.assert_array_equal(next(iter(sent.values())).numpy(), [7.0, 7.0])
