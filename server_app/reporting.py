"""The run folder: config, partition table, per-round metrics, summary, model.

Layout of ``<output-dir>/<run-name>/``::

    config.json               the validated run config
    partition_counts.csv      clients x classes label counts (+ public split row)
    partition_heatmap.png
    metrics.jsonl             one line per round (round 0 = initial model)
    checkpoints/round-N.safetensors  the latest two checkpoints (resume from them)
    tensorboard/              TensorBoard event files (``tensorboard = true``)
    accuracy.png              global test accuracy per round (redrawn each round)
    summary.json              final-round and best-round accuracy, labelled
    model.safetensors         the final global model

Every file is written atomically; ``metrics.jsonl`` is appended line by line.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords
from safetensors.torch import save_file
from torch import nn

from common import keys
from common.config import RunConfig
from common.datasets import get_spec
from common.evaluation import EvalResult
from common.federation import cpu_model, describe_device, resolve_device
from common.io import append_jsonl, atomic_write, atomic_write_json, atomic_write_text
from common.partition import DataSplit
from server_app.checkpoint import save_checkpoint
from server_app.tensorboard_sink import TensorBoardSink

try:  # PNG plots are a convenience: a bare GPU machine may lack matplotlib
    from server_app.plots import plot_accuracy, plot_partition_heatmap
except ImportError:
    plot_accuracy = plot_partition_heatmap = None


def default_run_name(cfg: RunConfig) -> str:
    """``<method>-<dataset>-<partitioner>-<UTC timestamp>``."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return f"{cfg.method}-{cfg.data.dataset}-{cfg.data.partitioner}-{stamp}"


def run_folder(cfg: RunConfig) -> Path:
    """The run's folder: the one being resumed, or ``<output-dir>/<run-name>``."""
    if cfg.runtime.resume:
        return Path(cfg.runtime.resume).expanduser().resolve()
    name = cfg.runtime.run_name or default_run_name(cfg)
    return Path(cfg.runtime.output_dir).expanduser().resolve() / name


# A train metric of a weighted loss term -> its weight in the run config.
# (FedProx's term is logged with its mu already applied.)
TERM_WEIGHTS: dict[str, Callable[[RunConfig], float]] = {
    keys.TRAIN_MOON: lambda cfg: cfg.baselines.moon_mu,
    keys.TRAIN_TDCL: lambda cfg: cfg.feddifrc.tdcl_weight,
    keys.TRAIN_NDCR: lambda cfg: cfg.feddifrc.ndcr_weight,
    keys.TRAIN_KD: lambda cfg: cfg.semanticfl.kd_weight,
    keys.TRAIN_CON: lambda cfg: cfg.semanticfl.con_weight,
}


def term_scales(train: dict[str, Any], cfg: RunConfig) -> str:
    """The round's loss terms beside cross-entropy, for the console line.

    ``"ce 0.412, kd 0.120 x 1, con 2.103 x 0.01"``: each method term's mean
    value and its weight, so a term too small to matter (or one that swamps
    cross-entropy) shows while the run goes. Empty when only CE ran.
    """
    parts = []
    if train.get(keys.TRAIN_PROX):
        parts.append(f"prox {train[keys.TRAIN_PROX]:.4g} (x mu)")
    for key, weight in TERM_WEIGHTS.items():
        if train.get(key):
            parts.append(
                f"{key.removeprefix('train-')} {train[key]:.3f} x {weight(cfg):g}"
            )
    if not parts:
        return ""
    return f"ce {train.get(keys.TRAIN_CE, 0.0):.3f}, " + ", ".join(parts)


def balanced_accuracy(correct: list[float], total: list[float]) -> float:
    """Mean per-class accuracy over the classes present (counts in any unit).

    The clients' validation parts follow their skewed label mixes, and so does
    their pooled accuracy; the test set is balanced. Averaging per class
    measures what the test measures.
    """
    rates = [c / t for c, t in zip(correct, total, strict=True) if t > 0]
    if not rates:
        raise ValueError("no class has validation samples")
    return sum(rates) / len(rates)


def validation_score(validation: dict[str, Any]) -> float | None:
    """The number to tune on: the class-balanced validation accuracy (the
    pooled one for rows written before clients sent per-class counts)."""
    return validation.get(
        keys.EVAL_BALANCED_ACCURACY, validation.get(keys.EVAL_ACCURACY)
    )


class RunRecorder:
    """Writes a run's outputs and prints one console line per round.

    ``resumed_rows`` (a checkpoint's metrics rows) continues an interrupted
    run in its own folder: ``metrics.jsonl`` is rewritten to exactly those
    rows (a round logged after the checkpoint is dropped, not duplicated).
    """

    def __init__(
        self, cfg: RunConfig, resumed_rows: list[dict[str, Any]] | None = None
    ) -> None:
        self.cfg = cfg
        self.dir = run_folder(cfg)
        if resumed_rows is None and self.dir.exists() and any(self.dir.iterdir()):
            raise FileExistsError(
                f"run folder {self.dir} already exists and is not empty; choose another "
                "run-name (or leave it empty for a timestamped one) so no results are "
                "overwritten, or continue it with resume (launcher: --resume)"
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.dir / "metrics.jsonl"
        self.rows: list[dict[str, Any]] = []
        self.rounds: list[int] = []
        self.accuracy: list[float] = []
        self._pending_train: dict[str, Any] = {}
        self._pending_validation: dict[str, Any] = {}
        self._pending_server: dict[str, Any] = {}
        self.validation: list[float | None] = []
        self._checkpoints: list[tuple[float, int]] = []
        self._t_start = time.perf_counter()
        if resumed_rows:
            self._restore(resumed_rows)
        self._t_last = time.perf_counter()
        atomic_write_json(self.dir / "config.json", cfg.to_run_config())
        self.tensorboard = (
            TensorBoardSink(
                self.dir / "tensorboard",
                first_step=self.rows[-1]["round"] + 1 if self.rows else 0,
                class_names=list(get_spec(cfg.data.dataset).class_names),
            )
            if cfg.runtime.tensorboard
            else None
        )

    def _restore(self, rows: list[dict[str, Any]]) -> None:
        """Continue after a checkpoint's rows: lists, clock and metrics.jsonl."""
        self.rows = [dict(r) for r in rows]
        atomic_write_text(
            self.metrics_path, "".join(json.dumps(r) + "\n" for r in self.rows)
        )
        for row in self.rows:
            if keys.CENTRAL_ACCURACY in row:
                self.rounds.append(row["round"])
                self.accuracy.append(row[keys.CENTRAL_ACCURACY])
                self.validation.append(validation_score(row.get("validation", {})))
        # Elapsed time goes on from where the interrupted run stopped.
        self._t_start -= float(self.rows[-1].get("elapsed-seconds", 0.0))

    def checkpoint(
        self, server_round: int, arrays: ArrayRecord, strategy: object
    ) -> None:
        """Write this round's checkpoint (after its metrics row); time it for the summary."""
        t0 = time.perf_counter()
        path = save_checkpoint(
            self.dir,
            server_round,
            arrays,
            strategy,
            self.rows,
            self.cfg.runtime.checkpoint_every,
        )
        self._checkpoints.append((time.perf_counter() - t0, path.stat().st_size))

    def checkpoint_summary(self) -> dict[str, Any]:
        if not self._checkpoints:
            return {}
        seconds = [s for s, _ in self._checkpoints]
        rounds = [r["round-seconds"] for r in self.rows if r.get("round", 0) > 0]
        mean = float(np.mean(seconds))
        return {
            "checkpoint": {
                "bytes": self._checkpoints[-1][1],
                "mean-write-seconds": mean,
                "share-of-round-time": mean / float(np.mean(rounds))
                if rounds
                else None,
                "written": len(seconds),
            }
        }

    @property
    def started(self) -> float:
        """``perf_counter`` at the run's start (earlier by the time a resumed run had)."""
        return self._t_start

    def append_row(self, row: dict[str, Any]) -> None:
        """One metrics line: to ``metrics.jsonl``, the checkpoint's rows, TensorBoard."""
        self.rows.append(row)
        append_jsonl(self.metrics_path, row)
        if self.tensorboard is not None:
            self.tensorboard.write(row)

    def save_partition(
        self, split: DataSplit, labels: np.ndarray, class_names: list[str]
    ) -> None:
        """Label-count table (CSV) and heatmap of the client partitions."""
        counts = split.label_counts(labels, len(class_names))
        header = "partition," + ",".join(class_names) + ",total"
        rows = [
            f"{i}," + ",".join(map(str, row)) + f",{row.sum()}"
            for i, row in enumerate(counts)
        ]
        if len(split.public):
            public = np.bincount(labels[split.public], minlength=len(class_names))
            rows.append("public," + ",".join(map(str, public)) + f",{public.sum()}")
        atomic_write_text(
            self.dir / "partition_counts.csv", "\n".join([header, *rows]) + "\n"
        )
        if plot_partition_heatmap is None:
            log(WARNING, "matplotlib is not installed: this run writes no PNG plots")
        else:
            plot_partition_heatmap(
                counts, class_names, self._setting(), self.dir / "partition_heatmap.png"
            )
        log(
            INFO,
            "Partition sizes: %s (public split: %d)",
            [int(c) for c in counts.sum(1)],
            len(split.public),
        )

    def _setting(self) -> str:
        """Plot title: dataset, split and federation size."""
        data = self.cfg.data
        split = data.partitioner
        if "dirichlet" in split:
            split += f" beta={data.dirichlet_beta}"
        if "longtail" in split:
            split += f" rho={data.longtail_rho}"
        return f"{data.dataset}, {split}, {self.cfg.federation.num_clients} clients"

    def aggregate_train_metrics(
        self, records: list[RecordDict], weighting_key: str
    ) -> MetricRecord:
        """Flower's weighted metric mean, remembered for this round's metrics line."""
        aggregated = aggregate_metricrecords(records, weighting_key)
        self._pending_train = dict(aggregated)
        self._pending_train["clients"] = len(records)
        return aggregated

    def aggregate_validation_metrics(
        self, records: list[RecordDict], weighting_key: str
    ) -> MetricRecord:
        """Clients' scores on their validation parts (``fraction-evaluate`` > 0).

        This is the number to tune on; the central test set is for reporting.
        """
        aggregated = aggregate_metricrecords(records, weighting_key)
        self._pending_validation = dict(aggregated)
        correct = self._pending_validation.pop(keys.EVAL_CLASS_CORRECT, None)
        total = self._pending_validation.pop(keys.EVAL_CLASS_TOTAL, None)
        if correct is not None and total is not None:
            self._pending_validation[keys.EVAL_BALANCED_ACCURACY] = balanced_accuracy(
                correct, total
            )
        self._pending_validation["clients"] = len(records)
        return aggregated

    def note_server(self, values: dict[str, Any]) -> None:
        """Server-side work of this round (e.g. a correction), for its metrics line."""
        self._pending_server.update(values)

    def check_round_trained(self, server_round: int) -> None:
        """Fail the run when no client returned a training result this round.

        Flower's FedAvg keeps the previous global model when every reply is an
        error and the run would still end "completed"; a user would then read
        the initial model's accuracy as a result. Stop instead.
        """
        if server_round > 0 and not self._pending_train:
            raise RuntimeError(
                f"round {server_round}: no client returned a usable training result "
                "(every reply was an error or a malformed update; the reasons are "
                "logged above)"
            )
        on_gpu = self._pending_train.get(keys.TRAIN_CUDA)
        if (
            self.cfg.runtime.device.startswith("cuda")
            and on_gpu is not None
            and on_gpu < 1
        ):
            raise RuntimeError(
                f"round {server_round}: device={self.cfg.runtime.device!r} but only "
                f"{on_gpu:.0%} of the training examples were trained on a GPU; the "
                "other clients ran on CPU (give each ClientApp a GPU share: "
                "client-resources-num-gpus, the launcher's --gpus-per-client)"
            )

    def record_round(
        self,
        server_round: int,
        result: EvalResult,
        eval_seconds: float,
        aggregated: EvalResult | None = None,
    ) -> None:
        """Append the round's metrics line, redraw the curve, print one line.

        ``aggregated``: with ``eval-bn-images`` and ``eval-aggregated-too``,
        the same weights scored with their BatchNorm statistics as aggregated
        (``result`` then has them recomputed on public images).
        """
        now = time.perf_counter()
        self.rounds.append(server_round)
        self.accuracy.append(result.accuracy)
        best = int(np.argmax(self.accuracy))
        row = {
            "round": server_round,
            keys.CENTRAL_ACCURACY: result.accuracy,
            keys.CENTRAL_LOSS: result.loss,
            "per-class-accuracy": result.per_class_accuracy,
            "round-seconds": now - self._t_last,
            "eval-seconds": eval_seconds,
            "elapsed-seconds": now - self._t_start,
            "train": self._pending_train,
        }
        if aggregated is not None:
            row[keys.CENTRAL_ACCURACY_AGGREGATED] = aggregated.accuracy
            row[keys.CENTRAL_LOSS_AGGREGATED] = aggregated.loss
            row["per-class-accuracy-aggregated"] = aggregated.per_class_accuracy
        if self._pending_validation:
            row["validation"] = self._pending_validation
        if self._pending_server:
            row["server"] = self._pending_server
        self.validation.append(validation_score(self._pending_validation))
        self.append_row(row)
        if plot_accuracy is not None:
            plot_accuracy(
                self.rounds,
                self.accuracy,
                f"{self.cfg.method}: {self._setting()}",
                self.dir / "accuracy.png",
            )
        train_loss = self._pending_train.get(keys.TRAIN_LOSS)
        terms = term_scales(self._pending_train, self.cfg)
        val_acc = self.validation[-1]
        log(
            INFO,
            "[round %d/%d] test accuracy %.2f%% | test loss %.4f | best %.2f%% (round %d)"
            " | train loss %s%s%s | %.1f s (eval %.1f s)",
            server_round,
            self.cfg.federation.num_server_rounds,
            100 * result.accuracy,
            result.loss,
            100 * self.accuracy[best],
            self.rounds[best],
            "-" if train_loss is None else f"{train_loss:.4f}",
            f" ({terms})" if terms else "",
            "" if val_acc is None else f" | validation (balanced) {100 * val_acc:.2f}%",
            now - self._t_last,
            eval_seconds,
        )
        self._pending_train = {}
        self._pending_validation = {}
        self._pending_server = {}
        self._t_last = time.perf_counter()

    def _validation_summary(self) -> dict[str, Any]:
        """Final and best validation accuracy, and the test accuracy of that round.

        Model selection by validation is the honest counterpart of best-round
        test accuracy; empty when no client evaluated.
        """
        scored = [(a, i) for i, a in enumerate(self.validation) if a is not None]
        if not scored:
            return {}
        best_val, i = max(scored)
        return {
            "final-validation-accuracy": scored[-1][0],
            "best-validation-accuracy": best_val,
            "best-validation-round": self.rounds[i],
            "test-accuracy-at-best-validation-round": self.accuracy[i],
        }

    def finish(
        self,
        arrays: ArrayRecord,
        model: nn.Module,
        rejected: list[tuple[int, int, str]] = (),
    ) -> dict[str, Any]:
        """Save the final global model and ``summary.json``; return the summary.

        ``rejected`` lists the client updates left out of aggregation
        (``server_app.strategies.update_guard``): round, node id, reason.
        """
        model.load_state_dict(arrays.to_torch_state_dict())
        # Aggregation turns BatchNorm's integer counters into floats; saving the
        # model's own state_dict restores the original dtypes.
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        atomic_write(
            self.dir / "model.safetensors", lambda tmp: save_file(state, str(tmp))
        )
        best = int(np.argmax(self.accuracy))
        summary = {
            "method": self.cfg.method,
            "dataset": self.cfg.data.dataset,
            "partitioner": self.cfg.data.partitioner,
            "num-clients": self.cfg.federation.num_clients,
            "num-server-rounds": self.cfg.federation.num_server_rounds,
            "final-round": self.rounds[-1],
            "final-round-accuracy": self.accuracy[-1],
            "best-round": self.rounds[best],
            "best-round-accuracy": self.accuracy[best],
            "best-round-note": "best over evaluated rounds (the papers report this); "
            "final-round-accuracy is the primary result",
            **self._validation_summary(),
            **self.checkpoint_summary(),
            "rejected-updates": [
                {"round": r, "node": n, "reason": why} for r, n, why in rejected
            ],
            "server-device": describe_device(resolve_device(self.cfg.runtime.device)),
            "server-cpu": cpu_model(),
            "wall-seconds": time.perf_counter() - self._t_start,
            "run-dir": str(self.dir),
        }
        atomic_write_json(self.dir / "summary.json", summary)
        if self.tensorboard is not None:
            self.tensorboard.close()
        log(
            INFO,
            "Final-round accuracy %.2f%% | best-round accuracy %.2f%% (round %d) | %s",
            100 * self.accuracy[-1],
            100 * self.accuracy[best],
            self.rounds[best],
            self.dir,
        )
        return summary
