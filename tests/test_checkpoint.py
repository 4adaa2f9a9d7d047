"""Checkpoints: a verified file per round, strategy state and RNGs restored, and
a resumed strategy ending where an uninterrupted one does, bit for bit."""

import json
import random

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord

from common.config import ConfigError, RunConfig
from diffusion_service.federated.trigger import CorrectionSchedule
from server_app import checkpoint as ckpt
from server_app.resume import (
    ResumedStrategy,
    config_differences,
    resume_point,
    run_rounds,
)
from tests.test_strategies import build
from tests.test_update_guard import ScriptedGrid, arrays

GLOBAL = ArrayRecord(
    {
        "w": Array(np.arange(6, dtype=np.float32).reshape(2, 3)),
        "n": Array(np.array(7.0)),  # an aggregated BatchNorm counter: 0-d float64
        "b": Array(np.ones(3, np.float32)),
    }
)


class Stateful:
    """A strategy stand-in with one attribute of every kind a checkpoint keeps."""

    checkpointed = ("momentum", "moments", "schedule", "rejected", "empty")

    def __init__(self):
        self.momentum = [np.full(3, 0.5), np.eye(2, dtype=np.float32), np.float64(4.0)]
        self.moments = {"w": np.full((2, 3), 0.25, np.float32)}
        self.schedule = CorrectionSchedule("trigger", 3, 0.01)
        for loss in (1.0, 0.9, 0.89, 0.889):
            self.schedule.decide(len(self.schedule.losses) + 1, loss)
        self.rejected = [(2, 17, "array 'w' holds 1 NaN/Inf values")]
        self.empty = None


def test_a_checkpoint_reads_back_what_was_saved(tmp_path):
    strategy = Stateful()
    rows = [
        {"round": 0, "central-accuracy": 0.1},
        {"round": 1, "central-accuracy": 0.5},
    ]
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    path = ckpt.save_checkpoint(tmp_path, 1, GLOBAL, strategy, rows)
    after_save = (random.random(), np.random.rand(), torch.rand(1).item())

    got = ckpt.read_checkpoint(path)
    assert got.server_round == 1 and got.rows == rows
    assert list(got.arrays.keys()) == ["w", "n", "b"]  # the model's key order
    for name in GLOBAL:
        a, b = GLOBAL[name].numpy(), got.arrays[name].numpy()
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)

    fresh = Stateful()
    fresh.momentum = fresh.moments = fresh.rejected = None
    fresh.schedule = CorrectionSchedule("trigger", 3, 0.01)
    ckpt.restore_strategy(fresh, got.strategy_state)
    for a, b in zip(fresh.momentum, strategy.momentum, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(fresh.moments["w"], strategy.moments["w"])
    assert fresh.schedule.state_dict() == strategy.schedule.state_dict()
    # JSON lists; UpdateGuard's setter turns them back into tuples.
    assert [tuple(r) for r in fresh.rejected] == strategy.rejected
    assert fresh.empty is None

    ckpt.restore_rng(got.rng)  # the generators continue exactly as after the save
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == after_save


def test_an_attribute_that_cannot_be_saved_is_named(tmp_path):
    class Odd:
        checkpointed = ("thing",)
        thing = object()

    with pytest.raises(TypeError, match="'thing'"):
        ckpt.save_checkpoint(tmp_path, 0, GLOBAL, Odd(), [])


def test_the_latest_two_and_every_nth_are_kept(tmp_path):
    for r in range(8):
        ckpt.save_checkpoint(tmp_path, r, GLOBAL, Stateful(), [], keep_every=3)
    names = sorted(p.name for p in (tmp_path / ckpt.CHECKPOINT_DIR).iterdir())
    assert names == [f"round-{r:04d}.safetensors" for r in (0, 3, 6, 7)]


def _damage(path, how):
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:  # one flipped bit in the last tensor's bytes
        data[-3] ^= 0x10
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "bit-flip"])
def test_a_damaged_checkpoint_is_detected_and_the_round_before_used(
    tmp_path, how, monkeypatch
):
    for r in (4, 5):
        ckpt.save_checkpoint(tmp_path, r, GLOBAL, Stateful(), [{"round": r}])
    _damage(ckpt.checkpoint_path(tmp_path, 5), how)
    with pytest.raises(ckpt.CheckpointError):
        ckpt.read_checkpoint(ckpt.checkpoint_path(tmp_path, 5))
    logged = []
    monkeypatch.setattr(
        ckpt, "log", lambda level, msg, *args: logged.append(msg % args)
    )
    got = ckpt.load_latest(tmp_path)
    assert got.server_round == 4 and got.rows == [{"round": 4}]
    assert (
        len(logged) == 1 and "round-0005" in logged[0] and "round before" in logged[0]
    )


def test_a_run_folder_without_checkpoints_has_none(tmp_path):
    assert ckpt.load_latest(tmp_path) is None


def _run_folder(tmp_path, defaults, **changes):
    cfg = RunConfig.from_run_config({**defaults, "num-server-rounds": 4})
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_run_config()))
    return RunConfig.from_run_config(
        {**defaults, "num-server-rounds": 4, "resume": str(tmp_path), **changes}
    )


def test_resume_refuses_another_config_naming_the_keys(tmp_path, defaults):
    cfg = _run_folder(tmp_path, defaults, **{"learning-rate": 0.5, "seed": 9})
    differ = [d.split(" ")[0] for d in config_differences(tmp_path, cfg)]
    assert differ == ["seed", "learning-rate"]
    with pytest.raises(ConfigError, match=r"seed \(run: 42, now: 9\).*learning-rate"):
        resume_point(cfg)


def test_resume_may_extend_the_rounds_but_needs_a_checkpoint(tmp_path, defaults):
    cfg = _run_folder(tmp_path, defaults, **{"num-server-rounds": 10})
    assert config_differences(tmp_path, cfg) == []
    with pytest.raises(ConfigError, match="no usable checkpoint"):
        resume_point(cfg)
    ckpt.save_checkpoint(tmp_path, 2, GLOBAL, Stateful(), [])
    assert resume_point(cfg).server_round == 2


def test_resume_names_a_folder_that_is_not_a_run(tmp_path, defaults):
    cfg = RunConfig.from_run_config({**defaults, "resume": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match="not a run folder"):
        resume_point(cfg)


class RoundsSeen:
    """A strategy stand-in that records the round numbers it is called with."""

    def __init__(self):
        self.seen = []

    def configure_train(self, server_round, arrays, config, grid):
        self.seen.append(("train", server_round))
        return []

    def aggregate_train(self, server_round, replies):
        self.seen.append(("aggregate", server_round))
        return None, None

    def configure_evaluate(self, server_round, arrays, config, grid):
        return []

    def aggregate_evaluate(self, server_round, replies):
        return None

    def summary(self):
        pass


def test_a_resumed_strategy_sees_the_real_round_numbers():
    inner = RoundsSeen()
    evaluated = []
    ResumedStrategy(inner, done=3).start(
        grid=ScriptedGrid({}),
        initial_arrays=GLOBAL,
        num_rounds=2,
        evaluate_fn=lambda r, a: evaluated.append(r),
    )
    assert inner.seen == [
        ("train", 4),
        ("aggregate", 4),
        ("train", 5),
        ("aggregate", 5),
    ]
    assert evaluated == [0, 1, 2]  # Flower's own numbering, shifted by run_rounds


@pytest.mark.parametrize("name", ["fedavg", "fedavgm", "fedadam"])
def test_resumed_after_round_2_ends_bit_identical_to_4_rounds(
    name, defaults, task_identity, tmp_path
):
    """Server momentum and Adam moments carry over: the same final arrays."""
    answers = {
        1: lambda r: arrays(float(r) ** 0.5),
        2: lambda r: arrays(1.0 / (r + 1)),
        3: lambda r: arrays(0.3 * r),
    }
    initial = arrays(0.0)

    def run(strategy, rounds, resumed, folder):
        rows = []

        def evaluate(r, a):
            rows.append({"round": r, "w": float(a["w"].numpy().sum())})
            ckpt.save_checkpoint(folder, r, a, strategy, rows)

        final = run_rounds(
            strategy,
            ScriptedGrid(answers),
            initial,
            rounds,
            evaluate,
            resumed,
            train_config=ConfigRecord({}),
        )
        return final, rows

    whole, whole_rows = run(build(name, defaults), 4, None, tmp_path / "whole")
    run(build(name, defaults), 2, None, tmp_path / "part")
    resumed = ckpt.load_latest(tmp_path / "part")
    assert resumed.server_round == 2
    strategy = build(name, defaults)
    grid_rounds_done = ScriptedGrid(answers)
    grid_rounds_done.rounds = 2  # the scripted clients answer rounds 3 and 4

    rows = list(resumed.rows)

    def evaluate(r, a):
        rows.append({"round": r, "w": float(a["w"].numpy().sum())})

    final = run_rounds(
        strategy,
        grid_rounds_done,
        initial,
        4,
        evaluate,
        resumed,
        train_config=ConfigRecord({}),
    )
    assert rows == whole_rows
    for k in whole:
        np.testing.assert_array_equal(final[k].numpy(), whole[k].numpy())
