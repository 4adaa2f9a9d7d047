"""The ServerApp flow of the diffusion methods (fedddpm-avg, fedddpm, fedddpm+).

1. Frozen parts from the guidance-model folder (VAE, scheduler, prompt states)
   and the measures' fixed sets (docs/fedddpm.md, "Measures").
2. FedDDPM(+) only, phase (a): every client trains a local U-Net from the same
   initialisation and uploads it once with its label counts; phase (b): the
   server samples the auxiliary set from those models (``auxiliary.aux_plan``).
3. ``strategy.start``: rounds of local training, FedAvg, correction; after each
   aggregation the measures go to ``metrics.jsonl``.
4. The final U-Net is saved with the frozen parts in the diffusers layout
   (``<run>/model``), loadable as ``guidance-model = "<run>/model"``.
"""

from __future__ import annotations

import time
from logging import INFO
from typing import Any

import numpy as np
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from common import keys, seeding
from common.config import RunConfig
from common.datasets import get_spec, load_dataset
from common.federation import data_split
from common.io import atomic_write_json
from diffusion_service.embedded_model import resolve_guidance_model
from diffusion_service.federated.auxiliary import aux_plan, sample_auxiliary
from diffusion_service.federated.ldm import (
    build_federated_unet,
    decode_images,
    encode_scaled_latents,
    load_frozen_parts,
    save_diffusers,
    unet_bytes,
)
from diffusion_service.federated.measures import DenoisingProbe
from diffusion_service.pretrain.sampling import save_grid
from server_app.checkpoint import Checkpoint
from server_app.measures import RoundMeasures
from server_app.reporting import RunRecorder
from server_app.resume import run_rounds
from server_app.strategies import strategy_class

NODE_WAIT_SECONDS = 300


def pretrain_phase(
    grid: Grid, cfg: RunConfig, initial: ArrayRecord, text: ArrayRecord
) -> tuple[list[dict], np.ndarray, dict[str, Any]]:
    """Phase (a): one local model and the label counts from every client.

    Sent outside the strategy's rounds (Flower's ``start`` has no pre-round
    hook); the replies are checked like FedAvg's, and a failed client fails
    the run (the auxiliary set would silently miss its classes otherwise).
    """
    t0 = time.perf_counter()
    deadline = time.monotonic() + NODE_WAIT_SECONDS
    while len(node_ids := list(grid.get_node_ids())) < cfg.federation.num_clients:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"phase (a) needs all {cfg.federation.num_clients} clients; {len(node_ids)} "
                f"connected within {NODE_WAIT_SECONDS} s"
            )
        time.sleep(1)
    config = ConfigRecord(
        {
            keys.DDPM_PHASE: "pretrain",
            keys.DDPM_STEPS: cfg.fedddpm.ddpm_pretrain_steps,
            keys.DDPM_LR: cfg.fedddpm.ddpm_lr,
            keys.DDPM_BATCH_SIZE: cfg.fedddpm.ddpm_batch_size,
            keys.DDPM_PROMPT_DROPOUT: cfg.fedddpm.ddpm_prompt_dropout,
        }
    )
    messages = [
        Message(
            content=RecordDict(
                {keys.ARRAYS: initial, keys.CONFIG: config, keys.TEXT_STATES: text}
            ),
            dst_node_id=node_id,
            message_type=MessageType.TRAIN,
        )
        for node_id in node_ids
    ]
    log(INFO, "FedDDPM phase (a): %d clients train local models", len(messages))
    replies = list(grid.send_and_receive(messages))
    errors = [r.error.reason for r in replies if r.has_error()]
    if errors or len(replies) != len(messages):
        raise RuntimeError(
            f"phase (a): {len(errors)} client error(s), {len(replies)} of "
            f"{len(messages)} replies: {errors[:3]}"
        )
    ordered = sorted(
        replies, key=lambda r: int(r.content[keys.METRICS][keys.PARTITION_ID])
    )
    states = [r.content[keys.ARRAYS].to_torch_state_dict() for r in ordered]
    counts = np.array(
        [list(r.content[keys.METRICS][keys.CLASS_COUNTS]) for r in ordered]
    )
    losses = [float(r.content[keys.METRICS][keys.TRAIN_DDPM_LOSS]) for r in ordered]
    info = {
        "clients": len(states),
        "steps": cfg.fedddpm.ddpm_pretrain_steps,
        "seconds": time.perf_counter() - t0,
        "mean-final-loss": float(np.mean(losses)),
        "class-counts": counts.tolist(),
    }
    return states, counts, info


def build_auxiliary(cfg, parts, states, counts, run_dir) -> tuple[tuple, dict]:
    """Phase (b): sample the auxiliary latents from the uploaded local models."""
    t0 = time.perf_counter()
    plan = aux_plan(counts, cfg.fedddpm.aux_size)
    unets = []
    for state in states:
        unet = build_federated_unet(cfg.fedddpm.channels, cfg.seed)
        unet.load_state_dict(state)
        unets.append(unet)
    latents, labels, _ = sample_auxiliary(
        unets,
        plan,
        parts.scheduler,
        parts.text,
        steps=cfg.fedddpm.sample_steps,
        guidance_scale=cfg.fedddpm.sample_guidance_scale,
        seed=cfg.seed + seeding.GENERATION_OFFSET,
    )
    seconds = time.perf_counter() - t0
    spec = get_spec(cfg.data.dataset)
    # A look at what the server fine-tunes on: up to 8 samples per class.
    show = torch.cat(
        [torch.nonzero(labels == c)[:8, 0] for c in range(spec.num_classes)]
    )
    grid_images = decode_images(parts.vae, latents[show], spec.image_size)
    save_grid(grid_images, run_dir / "auxiliary_samples.png", rows=spec.num_classes)
    info = {
        "size": len(labels),
        "plan": plan.tolist(),
        "class-counts": np.bincount(
            labels.numpy(), minlength=spec.num_classes
        ).tolist(),
        "mix": "model k: share of aux-size proportional to client k's samples, "
        "classes in proportion to its class counts (ours)",
        "sample-steps": cfg.fedddpm.sample_steps,
        "guidance-scale": cfg.fedddpm.sample_guidance_scale,
        "seconds": seconds,
    }
    return (latents, labels), info


def run_fedddpm(
    grid: Grid, cfg: RunConfig, resumed: Checkpoint | None = None
) -> dict[str, Any]:
    """Run one diffusion-model federation; return its summary.

    A resumed run redoes what comes before round 1 (phase a, the auxiliary
    set: seeded, so the same) and continues the rounds from ``resumed``.
    """
    spec = get_spec(cfg.data.dataset)
    train_set, _ = load_dataset(cfg.data.dataset, cfg.data.data_root)
    split = data_split(cfg)
    recorder = RunRecorder(cfg, resumed.rows if resumed else None)
    t_start = recorder.started
    recorder.save_partition(split, train_set.labels.numpy(), list(spec.class_names))
    folder = resolve_guidance_model(cfg.guidance.model)
    prompts = [cfg.guidance.prompt_template.format(name) for name in spec.class_names]
    parts = load_frozen_parts(folder, prompts)
    measures = RoundMeasures.build(cfg, spec, parts, recorder.dir.parent)
    unet = build_federated_unet(cfg.fedddpm.channels, cfg.seed)
    initial = ArrayRecord(unet.state_dict())
    text = ArrayRecord({keys.TEXT_STATES: Array(parts.text.numpy().copy())})
    record: dict[str, Any] = {
        "guidance-model": folder,
        "unet-parameters": sum(p.numel() for p in unet.parameters()),
        "unet-bytes": unet_bytes(unet),
        "measures": measures.describe(),
    }

    strategy_cls = strategy_class(cfg.method)
    aux = probe = None
    if cfg.method_info.prepares == "generated-set":  # phases (a) and (b)
        states, counts, record["phase-a"] = pretrain_phase(grid, cfg, initial, text)
        record["phase-a"]["upload-bytes"] = len(states) * unet_bytes(unet)
        aux, record["auxiliary"] = build_auxiliary(
            cfg, parts, states, counts, recorder.dir
        )
        del states
    if strategy_cls.correction == "trigger":
        # The trigger's loss: a seeded slice of the server's public split (our
        # choice; the test set is never used to decide anything).
        idx = torch.from_numpy(
            split.public_slice(
                cfg.fedddpm.heldout_size, cfg.seed, seeding.HELDOUT_SLICE
            )
        )
        probe = DenoisingProbe.fixed(
            encode_scaled_latents(parts.vae, train_set.images[idx]),
            train_set.labels[idx],
            seed=cfg.seed + seeding.HELDOUT_SLICE,
        )
    atomic_write_json(recorder.dir / "fedddpm.json", record)

    pending: dict[str, Any] = {}
    server: dict[str, Any] = {}

    def train_metrics(records, weighting_key) -> MetricRecord:
        aggregated = aggregate_metricrecords(records, weighting_key)
        pending.clear()
        pending.update(aggregated, clients=len(records))
        return aggregated

    strategy = strategy_cls.from_config(
        cfg.fedddpm,
        seed=cfg.seed,
        parts=parts,
        aux=aux,
        trigger_probe=probe,
        fraction_train=cfg.federation.fraction_train,
        fraction_evaluate=0.0,
        min_train_nodes=1,
        min_evaluate_nodes=0,
        min_available_nodes=cfg.federation.min_available_clients,
        train_metrics_aggr_fn=train_metrics,
    )
    strategy.round_log = lambda info: server.update(info)
    strategy.sampling_seed = cfg.seed
    rows = recorder.rows
    t_last = time.perf_counter()

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        nonlocal t_last
        if server_round > 0 and not pending:
            raise RuntimeError(f"round {server_round}: no client returned a result")
        t0 = time.perf_counter()
        unet.load_state_dict(arrays.to_torch_state_dict())
        values = measures(unet, parts, cfg)
        server["measure-seconds"] = time.perf_counter() - t0
        compute = ("aggregate", "trigger", "correction")
        server["server-seconds"] = sum(server.get(f"{k}-seconds", 0.0) for k in compute)
        now = time.perf_counter()
        row = {
            "round": server_round,
            **values,
            "server": dict(server),
            "train": dict(pending),
            "round-seconds": now - t_last,
            "elapsed-seconds": now - t_start,
        }
        recorder.append_row(row)
        recorder.checkpoint(server_round, arrays, strategy)
        log(
            INFO,
            "[round %d/%d] denoising loss %.4f | FD %.2f | sample accuracy %.1f%% | "
            "corrected %s | server %.1f s (measures %.1f s)",
            server_round,
            cfg.federation.num_server_rounds,
            values["heldout-denoising-loss"],
            values["frechet-distance"],
            100 * values["sample-accuracy"],
            server.get("corrected", "-"),
            server["server-seconds"],
            server["measure-seconds"],
        )
        pending.clear()
        server.clear()
        t_last = time.perf_counter()
        return MetricRecord(
            {k: float(v) for k, v in values.items() if isinstance(v, int | float)}
        )

    final = run_rounds(
        strategy,
        grid,
        initial,
        cfg.federation.num_server_rounds,
        evaluate_fn,
        resumed,
        train_config=ConfigRecord(),
    )
    unet.load_state_dict(final.to_torch_state_dict())
    model_dir = save_diffusers(recorder.dir / "model", parts, unet)
    trained = [r for r in rows if r["round"] >= 1]
    final = rows[-1]
    summary = {
        "method": cfg.method,
        "dataset": cfg.data.dataset,
        "partitioner": cfg.data.partitioner,
        "num-clients": cfg.federation.num_clients,
        "num-server-rounds": cfg.federation.num_server_rounds,
        "final-round": final["round"],
        "final-heldout-denoising-loss": final["heldout-denoising-loss"],
        "final-frechet-distance": final["frechet-distance"],
        "final-sample-accuracy": final["sample-accuracy"],
        "corrections": strategy.schedule.fired_rounds,
        "mean-server-seconds-per-round": float(
            np.mean([r["server"]["server-seconds"] for r in trained])
        ),
        "mean-measure-seconds-per-round": float(
            np.mean([r["server"]["measure-seconds"] for r in trained])
        ),
        "pre-fl-seconds": record.get("phase-a", {}).get("seconds", 0.0)
        + record.get("auxiliary", {}).get("seconds", 0.0),
        "model-dir": str(model_dir),
        **recorder.checkpoint_summary(),
        "wall-seconds": time.perf_counter() - t_start,
        "run-dir": str(recorder.dir),
    }
    atomic_write_json(recorder.dir / "summary.json", summary)
    log(INFO, "FedDDPM run done: %s", summary)
    return summary
