"""ServerApp entry point: config -> data split -> guidance -> rounds -> outputs."""

from __future__ import annotations

import time
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from common import keys, seeding
from common.config import RunConfig
from common.datasets import get_spec, load_dataset, to_float
from common.evaluation import evaluate, linear_probe, recalibrated_copy
from common.federation import (
    data_split,
    local_training_config,
    make_model,
    resolve_device,
    test_tensors,
)
from common.io import atomic_write_json
from server_app.fedddpm import run_fedddpm
from server_app.guidance import guidance_kwargs
from server_app.ordered_grid import OrderedGrid
from server_app.preflight import preflight
from server_app.reporting import RunRecorder
from server_app.resume import resume_point, run_rounds
from server_app.strategies import strategy_class
from server_app.strategies.correcting import CorrectingFedAvg
from server_app.strategies.public_finetune import with_public_finetune

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run one federated training job as configured in the run config."""
    # Everything that can be wrong with the config or the data fails here,
    # before any client trains.
    cfg = RunConfig.from_run_config(context.run_config)
    preflight(cfg)
    resumed = resume_point(cfg)
    grid = ordered_grid(grid, cfg)
    method = cfg.method_info
    if method.model == "diffusion-unet":  # FedDDPM: its own flow
        run_fedddpm(grid, cfg, resumed)
        return
    strategy_cls = strategy_class(method.name)
    if cfg.server_finetune == "public":  # + fedavg-public's server step
        strategy_cls = with_public_finetune(strategy_cls)
    device = resolve_device(cfg.runtime.device)
    spec = get_spec(cfg.data.dataset)
    train_set, _ = load_dataset(cfg.data.dataset, cfg.data.data_root)
    split = data_split(cfg)
    test_images, test_labels = test_tensors(cfg)

    recorder = RunRecorder(cfg, resumed.rows if resumed else None)
    recorder.save_partition(split, train_set.labels.numpy(), list(spec.class_names))

    torch.manual_seed(cfg.seed)
    model = make_model(cfg, spec)

    # What the method needs before round 1 (anchors, instance features,
    # generated images): computed once, here.
    guidance, guidance_record = guidance_kwargs(cfg, split, grid)
    if guidance_record:
        atomic_write_json(recorder.dir / "guidance.json", guidance_record)
    if cfg.classifier == "anchors":  # the frame the clients get too
        model.classifier.set_frame(torch.from_numpy(guidance["frame"]))
    # Self-supervised runs train no classifier: a linear probe fitted on the
    # server's public split scores the global encoder instead.
    probe = (
        (to_float(train_set.images[split.public], spec), train_set.labels[split.public])
        if cfg.feddifrc.self_supervised
        else None
    )

    # eval-bn-images: unlabelled public images the scored copy's BatchNorm
    # statistics are recomputed on (common.evaluation.recalibrated_copy).
    bn_images = None
    if cfg.runtime.eval_bn_images > 0:
        bn_slice = split.public_slice(
            cfg.runtime.eval_bn_images, cfg.seed, seeding.EVAL_BN_SLICE
        )
        bn_images = to_float(train_set.images[torch.from_numpy(bn_slice)], spec)

    def score(scored_model: torch.nn.Module):
        scored = (
            test_images,
            test_labels,
            spec.num_classes,
            cfg.runtime.eval_batch_size,
        )
        if probe is not None:
            return linear_probe(scored_model, *probe, *scored, device)
        return evaluate(scored_model, *scored, device)

    last_scored: dict[str, Any] = {}  # one round's recalibrated model, made once

    def recalibrated(arrays: ArrayRecord) -> torch.nn.Module:
        """The global weights with recomputed BatchNorm statistics; the clients'
        validation and the central test of a round share one copy."""
        if last_scored.get("arrays") is not arrays:
            model.load_state_dict(arrays.to_torch_state_dict())
            batch = cfg.runtime.eval_batch_size
            last_scored.update(
                arrays=arrays, model=recalibrated_copy(model, bn_images, batch, device)
            )
        return last_scored["model"]

    def central_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        recorder.check_round_trained(server_round)
        t0 = time.perf_counter()
        model.load_state_dict(arrays.to_torch_state_dict())
        aggregated = None
        if bn_images is None:
            result = score(model)
        else:
            result = score(recalibrated(arrays))
            if cfg.runtime.eval_aggregated_too:
                aggregated = score(model)
        recorder.record_round(
            server_round, result, time.perf_counter() - t0, aggregated
        )
        recorder.checkpoint(server_round, arrays, strategy)
        return MetricRecord(
            {keys.CENTRAL_ACCURACY: result.accuracy, keys.CENTRAL_LOSS: result.loss}
        )

    strategy = strategy_cls.from_config(
        cfg.section(method.section),
        fraction_train=cfg.federation.fraction_train,
        fraction_evaluate=cfg.federation.fraction_evaluate,
        min_train_nodes=1,
        min_evaluate_nodes=1 if cfg.federation.fraction_evaluate > 0 else 0,
        min_available_nodes=cfg.federation.min_available_clients,
        train_metrics_aggr_fn=recorder.aggregate_train_metrics,
        evaluate_metrics_aggr_fn=recorder.aggregate_validation_metrics,
        **guidance,
    )
    if isinstance(strategy, CorrectingFedAvg):  # its server work goes to metrics
        strategy.round_log = recorder.note_server
    strategy.sampling_seed = cfg.seed  # the same nodes each round, every run
    if bn_images is not None:  # clients validate the model the server scores
        strategy.scored_arrays = lambda a: ArrayRecord(recalibrated(a).state_dict())
    final = run_rounds(
        strategy,
        grid,
        ArrayRecord(model.state_dict()),
        cfg.federation.num_server_rounds,
        central_evaluate,
        resumed,
        train_config=ConfigRecord(local_training_config(cfg)),
    )
    recorder.finish(final, model, strategy.rejected)


def ordered_grid(grid: Grid, cfg: RunConfig) -> OrderedGrid:
    """The Grid in partition order (``server_app.ordered_grid``).

    With the strategy's seeded sampling (``strategies.seeded_sampling``):
    same seed, same config, the same nodes every round and the same
    aggregation order, so runs are bit-identical on CPU and a resumed run
    equals an uninterrupted one.
    """
    seeding.deterministic_torch(cfg.runtime.device)
    ordered = OrderedGrid(grid)
    fed = cfg.federation
    if fed.fraction_train < 1.0 or 0.0 < fed.fraction_evaluate < 1.0:
        # Rounds sample some nodes: list them in a fixed order to draw from.
        ordered.learn_partitions(fed.min_available_clients)
    return ordered
