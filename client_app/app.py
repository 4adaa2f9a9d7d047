"""ClientApp entry point: thin adapters from Flower Messages to pure functions."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable

from client_app.diffusion_training import diffusion_train
from client_app.guidance import classifier_frame, guidance_for
from client_app.latents import answer_query, opted_in, with_uploaded_features
from client_app.training import LocalSettings
from client_app.training import train as train_fn
from common import keys
from common.config import RunConfig
from common.datasets import get_spec
from common.evaluation import evaluate as evaluate_fn
from common.federation import (
    client_indices,
    client_raw_images,
    client_tensors,
    make_model,
    resolve_device,
)
from common.seeding import client_round_seed, deterministic_torch


def tag_partition(
    msg: Message, context: Context, call_next: ClientAppCallable
) -> Message:
    """Mod: every reply says which partition answered.

    The server sorts replies by it before aggregating, so a float sum has the
    same order in every run (``server_app.ordered_grid``).
    """
    reply = call_next(msg, context)
    if not reply.has_error():
        partition_id = int(context.node_config[keys.PARTITION_ID])
        reply.content[keys.NODE] = ConfigRecord({keys.PARTITION_ID: partition_id})
    return reply


app = ClientApp(mods=[tag_partition])


class NodeSetup(NamedTuple):
    """What every handler needs: config, this node's data, the received model."""

    cfg: RunConfig
    partition_id: int
    indices: np.ndarray
    device: torch.device
    images: torch.Tensor
    labels: torch.Tensor
    model: torch.nn.Module


def _setup(msg: Message, context: Context, part: str = "train") -> NodeSetup:
    """Config, device, this node's data part and the model holding the sent weights.

    ``part`` is ``train`` or ``validation`` (``common.federation.client_indices``).
    """
    cfg = RunConfig.from_run_config(context.run_config)
    partition_id = int(context.node_config[keys.PARTITION_ID])
    num_partitions = int(
        context.node_config.get(keys.NUM_PARTITIONS, cfg.federation.num_clients)
    )
    if num_partitions != cfg.federation.num_clients:
        raise ValueError(
            f"this node is one of {num_partitions} partitions but the run splits the "
            f"data into num-clients={cfg.federation.num_clients}; start the federation with "
            f"num-supernodes={cfg.federation.num_clients} (or set num-clients to match)"
        )
    indices = client_indices(cfg, partition_id, part)
    images, labels = client_tensors(cfg, partition_id, part)
    model = make_model(cfg)
    model.load_state_dict(msg.content[keys.ARRAYS].to_torch_state_dict())
    if cfg.classifier == "anchors":  # the frame the server computed and sent
        model.classifier.set_frame(classifier_frame(msg))
    return NodeSetup(
        cfg,
        partition_id,
        indices,
        resolve_device(cfg.runtime.device),
        images,
        labels,
        model,
    )


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received global model on this node's partition."""
    run_cfg = RunConfig.from_run_config(context.run_config)
    deterministic_torch(run_cfg.runtime.device)  # GPU: bit-identical reruns
    if run_cfg.method_info.model == "diffusion-unet":  # FedDDPM: a U-Net
        return diffusion_train(msg, context, run_cfg)
    cfg, partition_id, indices, device, images, labels, model = _setup(msg, context)
    asked = LocalSettings.from_config(msg.content[keys.CONFIG])
    # FedDifRC: this node's rows of the feature store, or (latent upload) its
    # features from the server; SemanticFL: the anchors.
    settings, uploaded = with_uploaded_features(msg, context.state, asked)
    num_classes = get_spec(cfg.data.dataset).num_classes
    guidance = guidance_for(msg, settings, indices, labels, uploaded, num_classes)
    server_round = int(msg.content[keys.CONFIG][keys.SERVER_ROUND])

    # MOON: z_prev comes from this node's model of its previous round, kept in
    # context.state (stays on the node, persists across rounds of one run).
    prev_model = None
    if settings.moon_mu is not None and keys.PREV_LOCAL_MODEL in context.state:
        prev_model = make_model(cfg)
        prev_model.load_state_dict(
            context.state[keys.PREV_LOCAL_MODEL].to_torch_state_dict()
        )

    metrics = train_fn(
        model,
        images,
        labels,
        settings,
        prev_model=prev_model,
        guidance=guidance,
        augment=cfg.data.augment,
        device=device,
        seed=client_round_seed(cfg.seed, partition_id, server_round),
        bf16=cfg.runtime.autocast == "bf16",
    )
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    if settings.moon_mu is not None:
        context.state[keys.PREV_LOCAL_MODEL] = ArrayRecord(state)

    metrics[keys.NUM_EXAMPLES] = len(labels)
    if asked.needs_instance_features:  # FedDifRC: did its instance terms run?
        metrics[keys.INSTANCE_GUIDED] = int(settings.needs_instance_features)
    content = RecordDict(
        {keys.ARRAYS: ArrayRecord(state), keys.METRICS: MetricRecord(metrics)}
    )
    return Message(content=content, reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """FedDifRC's latent-upload query: this node's VAE latents, if it opted in."""
    cfg = RunConfig.from_run_config(context.run_config)
    partition_id = int(context.node_config[keys.PARTITION_ID])
    indices = client_indices(cfg, partition_id)
    _, labels = client_tensors(cfg, partition_id)
    content = answer_query(
        msg.content[keys.CONFIG],
        cfg,
        share=opted_in(context.node_config, cfg),
        ids=indices,
        images=client_raw_images(cfg, partition_id),
        labels=labels,
    )
    return Message(content=content, reply_to=msg)


@app.query("partition")
def partition(msg: Message, context: Context) -> Message:
    """An empty reply: ``tag_partition`` adds this node's partition id."""
    return Message(content=RecordDict(), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on this node's validation part.

    With ``validation-fraction`` = 0 that is the whole partition.
    """
    cfg, _, _, device, images, labels, model = _setup(msg, context, "validation")
    num_classes = get_spec(cfg.data.dataset).num_classes
    result = evaluate_fn(
        model, images, labels, num_classes, cfg.runtime.eval_batch_size, device
    )
    n = result.num_examples
    metrics = {
        keys.EVAL_LOSS: result.loss,
        keys.EVAL_ACCURACY: result.accuracy,
        keys.NUM_EXAMPLES: n,
        # Per-class counts as shares of n: Flower's weighted mean over the
        # clients then gives the federation's counts over all of them, and
        # the server the class-balanced accuracy (server_app.reporting).
        keys.EVAL_CLASS_CORRECT: [c / n for c in result.per_class_correct],
        keys.EVAL_CLASS_TOTAL: [t / n for t in result.per_class_total],
    }
    return Message(
        content=RecordDict({keys.METRICS: MetricRecord(metrics)}), reply_to=msg
    )
