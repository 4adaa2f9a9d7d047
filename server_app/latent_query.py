"""FedDifRC in deployment: the latent-upload query round, before round 1.

In simulation the server holds the training set and fills the feature store
itself. On real machines it holds only the public split, so
``feddifrc-features = "latent-upload"`` runs one query round instead:

1. the server asks every connected node for the VAE latents of its samples,
   naming the recipe's resolution, micro-batch and its VAE's fingerprint;
2. a node that opted in (``share-latents``, its node config first) runs only
   the VAE encoder (``client_app/latents.py``) and answers with the latents
   and its sample ids (and labels, when the recipe's prompts need them); any
   other node answers that it declines;
3. the server checks each upload (same VAE, shapes, finite values), runs the
   rest of the recipe on it (in process or on the guidance service) and keeps
   each node's features; the strategy sends them in that node's next train
   Message (``server_app/strategies/feddifrc.py``).

Nodes that decline, fail or connect later train without FedDifRC's instance
terms. Latents decode back to the images (the VAE's decoder does exactly
that), so opting in shares the images with the server: the run log says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from logging import INFO, WARNING

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common import MessageType, log
from flwr.serverapp import Grid
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from common import keys

PRIVACY_WARNING = (
    "Latent upload: VAE latents decode back to the images, so every node that "
    "opted in (share-latents) shares its training images with the server"
)


@dataclass(frozen=True)
class LatentUpload:
    """One node's answer: latents (N, c, h, w), sample ids (N,), labels or None."""

    latents: torch.Tensor
    ids: np.ndarray
    labels: torch.Tensor | None


def query_message(
    node_id: int, *, resolution: int, micro_batch: int, needs_labels: bool, vae: str
) -> Message:
    """The query Message asking a node for the VAE latents of its samples."""
    config = ConfigRecord(
        {
            keys.QUERY: keys.QUERY_VAE_LATENTS,
            keys.RESOLUTION: resolution,
            keys.MICRO_BATCH: micro_batch,
            keys.NEEDS_LABELS: needs_labels,
            keys.VAE_FINGERPRINT: vae,
        }
    )
    return Message(
        content=RecordDict({keys.CONFIG: config}),
        message_type=MessageType.QUERY,
        dst_node_id=node_id,
    )


def parse_upload(
    content: RecordDict, *, latent_shape: tuple[int, ...], needs_labels: bool, vae: str
) -> LatentUpload | str | None:
    """A node's reply: its upload, None if it declined, or why it is unusable."""
    config = content.config_records.get(keys.CONFIG)
    if config is None or not config.get(keys.SHARED, False):
        return None
    if config.get(keys.VAE_FINGERPRINT) != vae:
        return (
            "its VAE differs from the server's (fingerprint "
            f"{str(config.get(keys.VAE_FINGERPRINT))[:12]} vs {vae[:12]}): "
            "its latents would give wrong features"
        )
    record = content.array_records.get(keys.LATENTS)
    if record is None or keys.LATENTS not in record or keys.SAMPLE_IDS not in record:
        return f"no '{keys.LATENTS}' and '{keys.SAMPLE_IDS}' arrays in the reply"
    latents = torch.from_numpy(record[keys.LATENTS].numpy().copy())
    ids = record[keys.SAMPLE_IDS].numpy().astype(np.int64)
    if latents.ndim != 4 or tuple(latents.shape[1:]) != tuple(latent_shape):
        return (
            f"latents of shape {tuple(latents.shape)}; expected "
            f"(N, {', '.join(map(str, latent_shape))})"
        )
    if not latents.is_floating_point() or not bool(torch.isfinite(latents).all()):
        return f"latents must be finite floats (got {latents.dtype}, or NaN/Inf)"
    if ids.shape != (len(latents),) or len(np.unique(ids)) != len(ids):
        return (
            f"{len(latents)} latents but sample ids of shape {ids.shape} (or repeated)"
        )
    labels = None
    if needs_labels:
        if keys.SAMPLE_LABELS not in record:
            return (
                f"the recipe needs labels but the reply has no '{keys.SAMPLE_LABELS}'"
            )
        labels = torch.from_numpy(record[keys.SAMPLE_LABELS].numpy().astype(np.int64))
        if labels.shape != (len(latents),):
            return f"{len(latents)} latents but labels of shape {tuple(labels.shape)}"
    return LatentUpload(latents.float(), ids, labels)


def query_latents(
    grid: Grid,
    *,
    resolution: int,
    micro_batch: int,
    latent_shape: tuple[int, ...],
    needs_labels: bool,
    vae: str,
    min_nodes: int,
    timeout: float,
) -> tuple[dict[int, LatentUpload], dict]:
    """Run the query round; return each usable upload by node id, and a record.

    Waits until ``min_nodes`` nodes are connected, then asks all of them.
    """
    log(WARNING, PRIVACY_WARNING)
    _, node_ids = sample_nodes(grid, min_nodes, min_nodes)
    messages = [
        query_message(
            n,
            resolution=resolution,
            micro_batch=micro_batch,
            needs_labels=needs_labels,
            vae=vae,
        )
        for n in node_ids
    ]
    log(INFO, "Latent-upload query round: asking %d nodes", len(messages))
    uploads: dict[int, LatentUpload] = {}
    declined, rejected = [], {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node = reply.metadata.src_node_id
        if reply.has_error():
            rejected[node] = f"error reply: {reply.error.reason}"
        else:
            got = parse_upload(
                reply.content,
                latent_shape=latent_shape,
                needs_labels=needs_labels,
                vae=vae,
            )
            if got is None:
                declined.append(node)
            elif isinstance(got, str):
                rejected[node] = got
            else:
                uploads[node] = got
    for node, why in rejected.items():
        log(WARNING, "Latent upload from node %s not used: %s", node, why)
    record = {
        "asked": len(messages),
        "shared": {str(n): len(u.ids) for n, u in uploads.items()},
        "declined": declined,
        "rejected": {str(n): why for n, why in rejected.items()},
    }
    log(INFO, "Latent-upload query round: %s", record)
    return uploads, record


def node_feature_record(
    extractor, projection, kind: str, upload: LatentUpload
) -> ArrayRecord:
    """One node's features of ``kind`` from its latents, as its train Messages carry them.

    ``cond``: (N, S, d) features and (N, S) prompt classes; ``noise``: (N, d).
    Same prompt ids, noise and projection as the store path, so the rows equal
    what the store would hold for the same latents.
    """
    labels = (
        upload.labels
        if upload.labels is not None
        else torch.zeros(len(upload.ids), dtype=torch.long)
    )
    prompt_ids = extractor.prompt_ids(kind, upload.ids, labels)
    feats = extractor.for_latents().features(
        upload.latents, upload.ids, prompt_ids, projection
    )
    arrays = {keys.SAMPLE_IDS: upload.ids}
    if kind == "cond":
        arrays[keys.COND] = feats.numpy()
        arrays[keys.COND_CLASSES] = prompt_ids.numpy().astype(np.int64)
    else:
        arrays[keys.NOISE] = feats[:, 0].numpy()
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})
