"""The node's side of FedDifRC's latent upload (``server_app/latent_query.py``).

A node opts in with ``share-latents = true`` in its node config (its
operator's choice; the run config's ``share-latents`` is only the default for
nodes that say nothing, e.g. in simulation). It then answers the server's
query with the VAE latents of its training samples, computed with the
guidance model's VAE encoder alone, and later finds its features in a train
Message, which it keeps in ``context.state`` for the rest of the run.

Latents decode back to the images: opting in shares them with the server.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from logging import INFO
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common import log

from client_app.training import LocalSettings
from common import keys
from common.config import RunConfig


def opted_in(node_config: Mapping[str, Any], cfg: RunConfig) -> bool:
    """Whether this node shares latents: its node config, else the run's default."""
    value = node_config.get(keys.SHARE_LATENTS)
    if value is None:
        return cfg.feddifrc.share_latents
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "false"):
        return str(value).lower() == "true"
    raise ValueError(
        f"node-config '{keys.SHARE_LATENTS}' must be true or false, got {value!r}"
    )


def answer_query(
    config: ConfigRecord,
    cfg: RunConfig,
    *,
    share: bool,
    ids: np.ndarray,
    images: torch.Tensor,
    labels: torch.Tensor,
) -> RecordDict:
    """The reply to a latent query: a refusal, or latents + sample ids (+ labels).

    ``images`` are the node's raw uint8 training images (N, C, H, W).
    """
    from diffusion_service.embedded_model import resolve_guidance_model
    from diffusion_service.vae_encoder import VaeEncoder

    asked = config.get(keys.QUERY)
    if asked != keys.QUERY_VAE_LATENTS:
        raise ValueError(
            f"unknown query {asked!r}; this ClientApp answers "
            f"'{keys.QUERY}' = '{keys.QUERY_VAE_LATENTS}'"
        )
    if not share:
        log(INFO, "Latent query: this node does not share latents (share-latents)")
        return RecordDict({keys.CONFIG: ConfigRecord({keys.SHARED: False})})
    encoder = VaeEncoder.from_pretrained(
        resolve_guidance_model(cfg.guidance.model),
        resolution=int(config[keys.RESOLUTION]),
        micro_batch=int(config[keys.MICRO_BATCH]),
        device=cfg.runtime.device,
    )
    latents = encoder.encode(images)
    arrays = {keys.LATENTS: latents.numpy(), keys.SAMPLE_IDS: ids.astype(np.int64)}
    if config[keys.NEEDS_LABELS]:  # the query round always says
        arrays[keys.SAMPLE_LABELS] = labels.numpy().astype(np.int64)
    log(
        INFO,
        "Latent query: sharing %d latents %s (they decode back to the images)",
        len(latents),
        tuple(latents.shape[1:]),
    )
    return RecordDict(
        {
            keys.CONFIG: ConfigRecord(
                {keys.SHARED: True, keys.VAE_FINGERPRINT: encoder.fingerprint}
            ),
            keys.LATENTS: ArrayRecord({k: Array(v) for k, v in arrays.items()}),
        }
    )


def held_features(msg: Message, state: RecordDict) -> ArrayRecord | None:
    """This node's uploaded-latent features: from the Message, else from state.

    The server sends them until the node reports holding them; they are kept
    in ``state`` (node-local, for the rest of the run). None: the node did
    not share latents (or lost its state; the server then sends them again).
    """
    record = msg.content.array_records.get(keys.INSTANCE_FEATURES)
    if record is not None:
        state[keys.INSTANCE_FEATURES] = record
        return record
    return state.array_records.get(keys.INSTANCE_FEATURES)


def with_uploaded_features(
    msg: Message, state: RecordDict, settings: LocalSettings
) -> tuple[LocalSettings, ArrayRecord | None]:
    """The round's settings and this node's uploaded-latent features.

    A node without features (it declined, or its upload was not usable)
    trains with FedDifRC's instance terms off; self-supervised FedDifRC has
    nothing else to train with, so that is an error.
    """
    if (
        settings.feature_source != "latent-upload"
        or not settings.needs_instance_features
    ):
        return settings, None
    record = held_features(msg, state)
    if record is not None:
        return settings, record
    if settings.self_supervised:
        raise ValueError(
            "self-supervised FedDifRC trains only on the instance terms, but this "
            "node holds no features: set node-config share-latents=true"
        )
    log(INFO, "No uploaded-latent features here: FedDifRC's instance terms are off")
    return dataclasses.replace(settings, tdcl_weight=None, ndcr_weight=None), None
