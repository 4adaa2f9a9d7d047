"""ClientApp side of FedDDPM: local training of the latent diffusion U-Net.

One handler for both phases (``ddpm-phase`` in the train config):

- ``pretrain`` (phase a, once): train a local model from the sent
  initialisation for ``ddpm-steps`` steps and upload it with this client's
  label counts, which the server uses to sample the auxiliary set.
- ``round``: train the received global U-Net for ``ddpm-steps`` steps; the
  reply is a normal FedAvg reply (one ArrayRecord, one MetricRecord).

The VAE is frozen and comes from the guidance-model folder on this node (our
choice: only the U-Net is federated); the prompt states ride in the Message
(``text-states``), so a client needs no text encoder. Raw images never leave
the node; their latents are computed here once per process.
"""

from __future__ import annotations

import functools
import time

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict

from common import keys
from common.config import RunConfig
from common.datasets import get_spec, load_dataset
from common.federation import client_indices
from common.seeding import client_round_seed
from diffusion_service.embedded_model import resolve_guidance_model
from diffusion_service.federated.ldm import (
    FrozenParts,
    build_federated_unet,
    encode_scaled_latents,
    load_vae,
    train_unet,
)


@functools.lru_cache(maxsize=2)
def _parts(folder: str) -> tuple[object, object]:
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_pretrained(
        folder, subfolder="scheduler", local_files_only=True
    )
    return load_vae(folder), scheduler


@functools.lru_cache(maxsize=16)
def _client_latents(cfg: RunConfig, partition_id: int) -> tuple[torch.Tensor, ...]:
    """Scaled VAE latents and labels of this client's training part (cached)."""
    idx = torch.from_numpy(client_indices(cfg, partition_id))
    train, _ = load_dataset(cfg.data.dataset, cfg.data.data_root)
    vae, _ = _parts(resolve_guidance_model(cfg.guidance.model))
    return encode_scaled_latents(vae, train.images[idx]), train.labels[idx]


def diffusion_train(msg: Message, context: Context, cfg: RunConfig) -> Message:
    """Train the received U-Net on this node's latents; reply with weights."""
    partition_id = int(context.node_config[keys.PARTITION_ID])
    config = msg.content[keys.CONFIG]
    phase = str(config[keys.DDPM_PHASE])
    folder = resolve_guidance_model(cfg.guidance.model)
    vae, scheduler = _parts(folder)
    text = torch.from_numpy(
        msg.content[keys.TEXT_STATES][keys.TEXT_STATES].numpy().copy()
    )
    parts = FrozenParts(vae, scheduler, text, folder)

    t0 = time.perf_counter()
    latents, labels = _client_latents(cfg, partition_id)
    encode_seconds = time.perf_counter() - t0
    unet = build_federated_unet(cfg.fedddpm.channels, cfg.seed)
    unet.load_state_dict(msg.content[keys.ARRAYS].to_torch_state_dict())
    server_round = int(config[keys.SERVER_ROUND]) if phase == "round" else 0
    t0 = time.perf_counter()
    result = train_unet(
        unet,
        parts,
        latents,
        labels,
        steps=int(config[keys.DDPM_STEPS]),
        lr=float(config[keys.DDPM_LR]),
        batch_size=int(config[keys.DDPM_BATCH_SIZE]),
        prompt_dropout=float(config[keys.DDPM_PROMPT_DROPOUT]),
        seed=client_round_seed(cfg.seed, partition_id, server_round),
    )
    metrics: dict = {
        keys.TRAIN_DDPM_LOSS: result["loss"],
        keys.TRAIN_STEPS: result["steps"],
        keys.TRAIN_SECONDS: time.perf_counter() - t0,
        "encode-seconds": encode_seconds,
        keys.NUM_EXAMPLES: len(labels),
    }
    if phase == "pretrain":
        num_classes = get_spec(cfg.data.dataset).num_classes
        counts = np.bincount(labels.numpy(), minlength=num_classes)
        metrics[keys.CLASS_COUNTS] = [int(c) for c in counts]
        metrics[keys.PARTITION_ID] = partition_id
    state = {k: v.detach().cpu() for k, v in unet.state_dict().items()}
    content = RecordDict(
        {keys.ARRAYS: ArrayRecord(state), keys.METRICS: MetricRecord(metrics)}
    )
    return Message(content=content, reply_to=msg)
