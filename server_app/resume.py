"""Continue a run from its last checkpoint, through Flower's own round loop.

``resume = "<run folder>"`` (or the launcher's ``--resume RUN_DIR``) names an
interrupted run. :func:`resume_point` checks that the folder's config is the
one asked for (only ``num-server-rounds`` may differ, to extend a run) and
returns its newest usable checkpoint; :func:`run_rounds` then runs the rounds
left. Flower's ``Strategy.start`` always counts from round 1, so a resumed
run hands it :class:`ResumedStrategy`, which shows the wrapped strategy the
real round numbers. What a resumed run cannot have is what lived only on the
nodes: MOON's previous local model starts empty again, as in round 1.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from logging import INFO
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from common.config import ConfigError, RunConfig
from server_app.checkpoint import Checkpoint, load_latest, restore_rng, restore_strategy

# Keys that may differ between a run and its resumption.
RESUMABLE_CHANGES = ("num-server-rounds", "resume", "output-dir", "run-name")

EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]


def config_differences(run_dir: Path, cfg: RunConfig) -> list[str]:
    """Keys whose value in the run folder's ``config.json`` differs from ``cfg``."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise ConfigError(
            f"resume = {str(run_dir)!r}: no config.json there; not a run folder"
        )
    done = {**RunConfig().to_run_config(), **json.loads(path.read_text())}
    wanted = cfg.to_run_config()
    return [
        f"{k} (run: {done.get(k)!r}, now: {v!r})"
        for k, v in wanted.items()
        if k not in RESUMABLE_CHANGES and done.get(k) != v
    ]


def resume_point(cfg: RunConfig) -> Checkpoint | None:
    """The checkpoint to continue from, or None for a fresh run.

    Raises ConfigError when the folder ran another config or has no usable
    checkpoint.
    """
    if not cfg.runtime.resume:
        return None
    run_dir = Path(cfg.runtime.resume).expanduser().resolve()
    differ = config_differences(run_dir, cfg)
    if differ:
        raise ConfigError(
            f"resume = {str(run_dir)!r}: that run used another config; only "
            f"{', '.join(RESUMABLE_CHANGES[:1])} may change. Differences: "
            + "; ".join(differ)
        )
    checkpoint = load_latest(run_dir)
    if checkpoint is None:
        raise ConfigError(
            f"resume = {str(run_dir)!r}: no usable checkpoint in "
            f"{run_dir / 'checkpoints'}; start the run again without resume"
        )
    rounds = cfg.federation.num_server_rounds
    if checkpoint.server_round > rounds:
        raise ConfigError(
            f"resume = {str(run_dir)!r}: its checkpoint is after round "
            f"{checkpoint.server_round}, beyond num-server-rounds={rounds}"
        )
    return checkpoint


class ResumedStrategy(Strategy):
    """``inner`` as Flower's loop sees it when ``done`` rounds are already done.

    Flower numbers the remaining rounds 1, 2, ...; the wrapped strategy (and
    what it sends to clients) sees ``done + 1``, ``done + 2``, ...
    """

    def __init__(self, inner: Strategy, done: int) -> None:
        self.inner, self.done = inner, done

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_train(
            server_round + self.done, arrays, config, grid
        )

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        return self.inner.aggregate_train(server_round + self.done, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_evaluate(
            server_round + self.done, arrays, config, grid
        )

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]):
        return self.inner.aggregate_evaluate(server_round + self.done, replies)

    def summary(self) -> None:
        log(
            INFO,
            "\t├──> resumed after round %d: Flower's round counter below counts "
            "the remaining rounds (round 1 = round %d)",
            self.done,
            self.done + 1,
        )
        self.inner.summary()


def run_rounds(
    strategy: Strategy,
    grid: Grid,
    initial_arrays: ArrayRecord,
    num_rounds: int,
    evaluate_fn: EvaluateFn,
    resumed: Checkpoint | None,
    **start_kwargs: Any,
) -> ArrayRecord:
    """Run the rounds left (all of them for a fresh run); the final global arrays."""
    if resumed is None:
        result = strategy.start(
            grid=grid,
            initial_arrays=initial_arrays,
            num_rounds=num_rounds,
            evaluate_fn=evaluate_fn,
            **start_kwargs,
        )
        return result.arrays
    done = resumed.server_round
    log(
        INFO,
        "Resuming after round %d of %d from %s",
        done,
        num_rounds,
        resumed.path,
    )
    restore_strategy(strategy, resumed.strategy_state)
    restore_rng(resumed.rng)
    if done == num_rounds:
        return resumed.arrays

    def shifted(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0:  # round `done`: evaluated and recorded before
            return None
        return evaluate_fn(server_round + done, arrays)

    result = ResumedStrategy(strategy, done).start(
        grid=grid,
        initial_arrays=resumed.arrays,
        num_rounds=num_rounds - done,
        evaluate_fn=shifted,
        **start_kwargs,
    )
    return result.arrays
