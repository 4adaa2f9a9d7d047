"""ServerApp entry point: config -> data split -> strategy.start -> outputs."""

from __future__ import annotations

import time

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from common import keys
from common.config import RunConfig
from common.datasets import get_spec, load_dataset
from common.evaluation import evaluate
from common.federation import data_split, make_model, resolve_device, test_tensors
from server_app.reporting import RunRecorder
from server_app.strategies import get_strategy_class

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run one federated training job as configured in the run config."""
    # Everything that can be wrong with the config or the data fails here,
    # before any client trains.
    cfg = RunConfig.from_run_config(context.run_config)
    strategy_cls = get_strategy_class(cfg.method)
    device = resolve_device(cfg.device)
    spec = get_spec(cfg.dataset)
    train_set, _ = load_dataset(cfg.dataset, cfg.data_root)
    split = data_split(cfg)
    test_images, test_labels = test_tensors(cfg)

    recorder = RunRecorder(cfg)
    recorder.save_partition(split, train_set.labels.numpy(), list(spec.class_names))

    torch.manual_seed(cfg.seed)
    model = make_model(cfg, spec)

    def central_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        recorder.check_round_trained(server_round)
        t0 = time.perf_counter()
        model.load_state_dict(arrays.to_torch_state_dict())
        result = evaluate(
            model,
            test_images,
            test_labels,
            spec.num_classes,
            cfg.eval_batch_size,
            device,
        )
        recorder.record_round(server_round, result, time.perf_counter() - t0)
        return MetricRecord(
            {keys.CENTRAL_ACCURACY: result.accuracy, keys.CENTRAL_LOSS: result.loss}
        )

    strategy = strategy_cls.from_config(
        cfg,
        fraction_train=cfg.fraction_train,
        fraction_evaluate=cfg.fraction_evaluate,
        min_train_nodes=1,
        min_evaluate_nodes=1 if cfg.fraction_evaluate > 0 else 0,
        min_available_nodes=cfg.min_available_clients,
        train_metrics_aggr_fn=recorder.aggregate_train_metrics,
    )
    train_config = ConfigRecord(
        {
            keys.LR: cfg.learning_rate,
            keys.MOMENTUM: cfg.momentum,
            keys.WEIGHT_DECAY: cfg.weight_decay,
            keys.LOCAL_EPOCHS: cfg.local_epochs,
            keys.BATCH_SIZE: cfg.batch_size,
        }
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=cfg.num_server_rounds,
        train_config=train_config,
        evaluate_fn=central_evaluate,
    )
    recorder.finish(result.arrays, model)
