"""Run outputs: files written, labelled summary, nothing overwritten, safe IO."""

import json
import os
import stat

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord
from safetensors.torch import load_file

from common.config import RunConfig
from common.evaluation import EvalResult, evaluate
from common.federation import cpu_model
from common.io import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl
from common.models import build_model
from common.partition import DataSplit
from server_app.reporting import RunRecorder


def _result(acc):
    return EvalResult(
        accuracy=acc, loss=1.0 - acc, per_class_accuracy=[acc] * 3, num_examples=30
    )


def test_run_folder_has_every_output(defaults, tmp_path):
    cfg = RunConfig.from_run_config(
        {
            **defaults,
            "output-dir": str(tmp_path),
            "run-name": "r1",
            "num-clients": 2,
            "num-server-rounds": 3,
        }
    )
    rec = RunRecorder(cfg)
    labels = np.array([0, 0, 1, 2, 2, 2])
    rec.save_partition(
        DataSplit(
            public=np.array([5]), clients=[np.array([0, 1]), np.array([2, 3, 4])]
        ),
        labels,
        ["a", "b", "c"],
    )
    for rnd, acc in enumerate([0.1, 0.6, 0.8, 0.7]):
        rec.record_round(rnd, _result(acc), eval_seconds=0.1)
    model = build_model("resnet10", 1, 3, 4, 28)
    summary = rec.finish(ArrayRecord(model.state_dict()), model)

    run = tmp_path / "r1"
    for name in [
        "config.json",
        "partition_counts.csv",
        "partition_heatmap.png",
        "metrics.jsonl",
        "accuracy.png",
        "summary.json",
        "model.safetensors",
    ]:
        assert (run / name).stat().st_size > 0, name
    assert (run / "partition_counts.csv").read_text().splitlines() == [
        "partition,a,b,c,total",
        "0,2,0,0,2",
        "1,0,1,2,3",
        "public,0,0,1,1",
    ]
    assert [r["round"] for r in read_jsonl(run / "metrics.jsonl")] == [0, 1, 2, 3]
    assert summary["final-round-accuracy"] == 0.7
    assert summary["best-round-accuracy"] == 0.8 and summary["best-round"] == 2
    # the CPU model: runs are bit-identical on one model only
    assert summary["server-cpu"] == cpu_model() and summary["server-cpu"]
    assert json.loads((run / "summary.json").read_text()) == summary
    state = load_file(run / "model.safetensors")
    assert state["bn1.num_batches_tracked"].dtype == torch.int64


def test_existing_run_folder_is_never_overwritten(defaults, tmp_path):
    cfg = RunConfig.from_run_config(
        {**defaults, "output-dir": str(tmp_path), "run-name": "r1"}
    )
    (tmp_path / "r1").mkdir()
    (tmp_path / "r1" / "summary.json").write_text("{}")
    with pytest.raises(FileExistsError, match="choose another run-name"):
        RunRecorder(cfg)
    assert (tmp_path / "r1" / "summary.json").read_text() == "{}"


def test_torn_last_jsonl_line_is_skipped_but_a_corrupt_middle_line_is_an_error(
    tmp_path,
):
    path = tmp_path / "m.jsonl"
    append_jsonl(path, {"round": 0})
    append_jsonl(path, {"round": 1})
    with open(path, "a") as f:
        f.write('{"round": 2, "central-acc')  # crash mid-write
    assert [r["round"] for r in read_jsonl(path)] == [0, 1]
    path.write_text('{"round": 0}\n{oops\n{"round": 2}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_jsonl(path)


def test_atomic_write_leaves_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "s.json"
    atomic_write_json(path, {"a": 1})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]


def test_atomic_write_keeps_the_replaced_files_mode_and_gives_new_files_the_umasks(
    tmp_path,
):
    # mkstemp creates 0600; a README rewritten that way stopped a docker build
    # whose user does not own the checkout.
    fresh = tmp_path / "new.txt"
    atomic_write_text(fresh, "a")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~umask
    for mode in (0o664, 0o600):
        kept = tmp_path / f"kept-{mode:o}.txt"
        kept.write_text("x")
        kept.chmod(mode)
        atomic_write_text(kept, "y")
        assert stat.S_IMODE(kept.stat().st_mode) == mode and kept.read_text() == "y"


def test_evaluate_per_class_accuracy_hand_computed():
    class Fixed(torch.nn.Module):
        def forward(self, x):
            from common.models import ModelOutput

            logits = torch.nn.functional.one_hot(x[:, 0, 0, 0].long(), 3).float()
            return ModelOutput(logits, logits)

    # predictions = first pixel; labels differ on 1 of 2 class-1 samples
    x = torch.tensor([0, 1, 2, 2, 2]).float().view(5, 1, 1, 1)
    y = torch.tensor([0, 1, 1, 2, 2])
    result = evaluate(Fixed(), x, y, num_classes=3, batch_size=2)
    assert result.accuracy == pytest.approx(4 / 5)
    assert result.per_class_accuracy == pytest.approx([1.0, 0.5, 1.0])


def test_validation_scores_are_recorded_and_select_a_round(defaults, tmp_path):
    """Clients' validation accuracy goes to metrics.jsonl and picks a round.

    The test accuracy reported for that round is the honest (validation-
    selected) counterpart of best-round test accuracy.
    """
    from flwr.app import MetricRecord, RecordDict

    from common import keys

    cfg = RunConfig.from_run_config(
        {**defaults, "output-dir": str(tmp_path), "run-name": "v", "num-clients": 2}
    )
    rec = RunRecorder(cfg)
    rec.record_round(0, _result(0.1), eval_seconds=0.1)  # no client evaluated
    test_acc = [0.5, 0.9, 0.7]
    val_acc = [(0.4, 0.6), (0.5, 0.5), (0.9, 0.7)]  # weighted means 0.55, 0.5, 0.75
    for rnd, (acc, (a, b)) in enumerate(zip(test_acc, val_acc, strict=True), 1):
        replies = [
            RecordDict(
                {
                    keys.METRICS: MetricRecord(
                        {keys.EVAL_ACCURACY: a, keys.NUM_EXAMPLES: 10}
                    )
                }
            ),
            RecordDict(
                {
                    keys.METRICS: MetricRecord(
                        {keys.EVAL_ACCURACY: b, keys.NUM_EXAMPLES: 30}
                    )
                }
            ),
        ]
        rec.aggregate_validation_metrics(replies, keys.NUM_EXAMPLES)
        rec.record_round(rnd, _result(acc), eval_seconds=0.1)
    model = build_model("resnet10", 1, 3, 4, 28)
    summary = rec.finish(ArrayRecord(model.state_dict()), model)

    rows = read_jsonl(tmp_path / "v" / "metrics.jsonl")
    assert "validation" not in rows[0]
    assert rows[1]["validation"][keys.EVAL_ACCURACY] == pytest.approx(0.55)
    assert rows[1]["validation"]["clients"] == 2
    assert summary["best-validation-round"] == 3
    assert summary["best-validation-accuracy"] == pytest.approx(0.75)
    # test accuracy at the validation-selected round, not the best test round
    assert summary["test-accuracy-at-best-validation-round"] == 0.7
    assert summary["best-round"] == 2


def _record(rec, rounds):
    for r in rounds:
        if r > 0:
            rec.aggregate_train_metrics([], "num-examples")  # no clients: empty mean
            rec._pending_train = {"train-loss": 1.0 / r}
        rec.record_round(r, _result(0.1 * (r + 1)), 0.01)


def test_a_resumed_recorder_continues_the_metrics_without_duplicates(
    defaults, tmp_path
):
    """Rounds 0-2 were checkpointed, round 3 was logged before the crash: the
    resumed run's metrics.jsonl holds 0-2 once, then the new rounds."""
    cfg = RunConfig.from_run_config(
        {
            **defaults,
            "output-dir": str(tmp_path),
            "run-name": "r",
            "num-server-rounds": 5,
        }
    )
    rec = RunRecorder(cfg)
    _record(rec, range(3))
    checkpointed = [dict(r) for r in rec.rows]
    _record(rec, [3])  # logged, never checkpointed
    resumed_cfg = cfg.with_overrides({"resume": str(rec.dir)})
    again = RunRecorder(resumed_cfg, checkpointed)
    assert again.dir == rec.dir and again.rounds == [0, 1, 2]
    _record(again, [3, 4])
    rows = read_jsonl(rec.dir / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2, 3, 4]
    assert rows[:3] == checkpointed
    assert rows[3]["elapsed-seconds"] >= checkpointed[-1]["elapsed-seconds"]


def test_tensorboard_event_files_read_back(defaults, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = RunConfig.from_run_config(
        {
            **defaults,
            "output-dir": str(tmp_path),
            "run-name": "tb",
            "tensorboard": True,
            "dataset": "fashion-mnist",
        }
    )
    rec = RunRecorder(cfg)
    _record(rec, range(3))
    rec.tensorboard.close()
    events = EventAccumulator(str(rec.dir / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"test/central-accuracy", "train/train-loss", "time/round-seconds"} <= set(
        tags
    )
    per_class = sorted(t for t in tags if t.startswith("per-class-accuracy/"))
    assert per_class == [
        f"per-class-accuracy/{c}" for c in ("pullover", "t-shirt", "trouser")
    ]
    accuracy = [
        (e.step, round(e.value, 6)) for e in events.Scalars("test/central-accuracy")
    ]
    assert accuracy == [(0, 0.1), (1, 0.2), (2, 0.3)]
    assert [e.step for e in events.Scalars("train/train-loss")] == [1, 2]


def test_without_matplotlib_a_run_records_everything_but_the_plots(defaults, tmp_path):
    """A bare GPU machine may lack matplotlib: the run goes on without PNGs."""
    import subprocess
    import sys

    script = f"""
import sys
sys.modules["matplotlib"] = None  # import matplotlib now raises ImportError
import numpy as np
from common.config import RunConfig
from common.evaluation import EvalResult
from common.partition import DataSplit
from server_app import reporting
assert reporting.plot_accuracy is None
cfg = RunConfig.from_run_config({{**{defaults!r}, "output-dir": {str(tmp_path)!r},
                                  "run-name": "r", "num-clients": 2}})
rec = reporting.RunRecorder(cfg)
rec.save_partition(DataSplit(public=np.array([], dtype=int),
                             clients=[np.array([0]), np.array([1])]), np.array([0, 1]),
                  ["a", "b"])
rec.record_round(0, EvalResult(0.5, 1.0, [0.5, 0.5], 2), eval_seconds=0.1)
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    run = tmp_path / "r"
    assert (run / "metrics.jsonl").is_file() and (
        run / "partition_counts.csv"
    ).is_file()
    assert not list(run.glob("*.png"))
    assert "writes no PNG plots" in out.stderr + out.stdout


def test_term_scales_show_each_method_term_beside_ce():
    from common.config import RunConfig
    from server_app.reporting import term_scales

    cfg = RunConfig.from_run_config({"method": "semanticfl", "con-weight": 0.01})
    train = {
        "train-ce": 0.4123,
        "train-kd": 0.12,
        "train-con": 2.1034,
        "train-moon": 0.0,
    }
    assert term_scales(train, cfg) == "ce 0.412, kd 0.120 x 3, con 2.103 x 0.01"
    assert term_scales({"train-ce": 0.5, "train-kd": 0.0}, cfg) == ""  # CE alone
    prox = term_scales({"train-ce": 0.5, "train-prox": 0.00123}, cfg)
    assert prox == "ce 0.500, prox 0.00123 (x mu)"
