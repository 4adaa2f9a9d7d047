"""What every side derives from a :class:`RunConfig`: data split, tensors, model.

The split is a pure function of the config (labels + seeded partitioner), so the
server and each client compute the same one independently; only weights cross
the network. Results are cached per process: Ray actors in simulation serve many
clients and keep the dataset in memory between rounds.
"""

from __future__ import annotations

import functools
import math
import platform
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from common import keys, seeding
from common.config import RunConfig
from common.datasets import DatasetSpec, get_spec, load_dataset, to_float
from common.models import (
    attach_anchor_classifier,
    attach_etf_classifier,
    attach_guidance_head,
    build_model,
)
from common.partition import DataSplit, Partitioning, split_dataset


def partitioning(cfg: RunConfig) -> Partitioning:
    """The partitioning settings of a run."""
    return Partitioning(
        name=cfg.data.partitioner,
        num_partitions=cfg.federation.num_clients,
        beta=cfg.data.dirichlet_beta,
        rho=cfg.data.longtail_rho,
        min_size=cfg.data.min_partition_size,
        max_per_client=cfg.data.max_samples_per_client,
        public_size=cfg.data.public_split_size,
        seed=cfg.seed if cfg.data.partition_seed < 0 else cfg.data.partition_seed,
    )


@functools.lru_cache(maxsize=4)
def _split(dataset: str, data_root: str, p: Partitioning) -> DataSplit:
    train, _ = load_dataset(dataset, data_root)
    return split_dataset(train.labels.numpy(), p)


def data_split(cfg: RunConfig) -> DataSplit:
    """The run's public split and client partitions (indices into the train set)."""
    return _split(cfg.data.dataset, cfg.data.data_root, partitioning(cfg))


def client_indices(cfg: RunConfig, partition_id: int, part: str = "train"):
    """Train-set positions of one client's ``train`` or ``validation`` part.

    With ``validation-fraction`` f > 0, a seeded share f of the partition is
    held out for tuning (the client's evaluate handler scores it) and never
    trained on; the central test set is never used for tuning. With f = 0 both
    parts are the whole partition (training and local evaluation as before).
    """
    if not 0 <= partition_id < cfg.federation.num_clients:
        raise ValueError(
            f"partition-id {partition_id} is out of range for num-clients="
            f"{cfg.federation.num_clients} (valid: 0..{cfg.federation.num_clients - 1})"
        )
    if part not in ("train", "validation"):
        raise ValueError(f"part must be 'train' or 'validation', got {part!r}")
    full = data_split(cfg).clients[partition_id]
    if cfg.data.validation_fraction == 0:
        return full
    rng = np.random.default_rng([cfg.seed, partition_id, seeding.VALIDATION_SPLIT])
    order = rng.permutation(len(full))
    n_val = max(1, round(cfg.data.validation_fraction * len(full)))
    if n_val >= len(full):
        raise ValueError(
            f"validation-fraction={cfg.data.validation_fraction} leaves client "
            f"{partition_id} ({len(full)} samples) nothing to train on"
        )
    chosen = order[:n_val] if part == "validation" else order[n_val:]
    return np.sort(full[chosen])


def client_tensors(
    cfg: RunConfig, partition_id: int, part: str = "train"
) -> tuple[Tensor, Tensor]:
    """Normalised images and labels of one client's part (:func:`client_indices`)."""
    idx = client_indices(cfg, partition_id, part)
    train, _ = load_dataset(cfg.data.dataset, cfg.data.data_root)
    idx = torch.from_numpy(idx)
    return to_float(train.images[idx], get_spec(cfg.data.dataset)), train.labels[idx]


def client_raw_images(cfg: RunConfig, partition_id: int, part: str = "train") -> Tensor:
    """The uint8 images (N, C, H, W) of one client's part, as stored (no transform).

    What the guidance model's VAE takes (latent upload, ``client_app/latents.py``).
    """
    idx = torch.from_numpy(client_indices(cfg, partition_id, part))
    train, _ = load_dataset(cfg.data.dataset, cfg.data.data_root)
    return train.images[idx]


@functools.lru_cache(maxsize=2)
def _test_tensors(dataset: str, data_root: str) -> tuple[Tensor, Tensor]:
    _, test = load_dataset(dataset, data_root)
    return to_float(test.images, get_spec(dataset)), test.labels


def test_tensors(cfg: RunConfig) -> tuple[Tensor, Tensor]:
    """The full central test set, normalised (loaded once per process)."""
    return _test_tensors(cfg.data.dataset, cfg.data.data_root)


CHANNELS_LAST_MIN_WIDTH = 8


def make_model(cfg: RunConfig, spec: DatasetSpec | None = None) -> nn.Module:
    """The run's client model, freshly initialised from the global torch RNG."""
    spec = spec or get_spec(cfg.data.dataset)
    model = build_model(
        cfg.model.name,
        spec.in_channels,
        spec.num_classes,
        cfg.model.width,
        spec.image_size,
        cfg.model.norm,
    )
    if cfg.method_info.guided:  # a projector the guided terms see (optional)
        attach_guidance_head(model, cfg.guidance_head)
    if cfg.classifier == "etf":  # the same frame on every side
        seed = seeding.mix_seed(cfg.seed, seeding.ETF_FRAME)
        attach_etf_classifier(model, spec.num_classes, seed)
    elif cfg.classifier == "anchors":  # its frame comes with the guidance
        attach_anchor_classifier(model, spec.num_classes)
    # NHWC convolutions: on a 2-core CPU a client's round of ResNet-10 (width
    # 16) trains 1.39x faster than NCHW (a FedAvg cell of 12 rounds: 126 s ->
    # 108 s), and it is the layout a GPU's tensor cores want. load_state_dict
    # keeps it (it copies into the existing tensors). Not below width 8:
    # torch 2.14's CPU backward of an NHWC ResNet-10 with fewer than 8 stem
    # channels corrupts the heap (widths 2, 4, 6, 7 abort with "double free";
    # 8, 9, 12, 16, 24 train).
    if cfg.model.width < CHANNELS_LAST_MIN_WIDTH:
        return model
    return model.to(memory_format=torch.channels_last)


def resolve_device(name: str) -> torch.device:
    """A torch device, with a clear error when CUDA is asked for but absent."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"device={name!r} was requested but CUDA is not available on this "
            "machine; use --run-config \"device='cpu'\""
        )
    return torch.device(name)


def describe_device(device: torch.device | str) -> str:
    """``"cpu"`` or ``"cuda:0 (NVIDIA H200)"``: what a run really computed on."""
    device = torch.device(device)
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows.

    Recorded with every run: runs are bit-identical on one CPU model, not
    across models, so a comparison should know which cells shared one.
    """
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def local_training_config(cfg: RunConfig) -> dict[str, float | int | bool]:
    """The local-SGD settings the server sends in every train config."""
    config: dict[str, float | int | bool] = {
        keys.LR: cfg.sgd.learning_rate,
        keys.MOMENTUM: cfg.sgd.momentum,
        keys.WEIGHT_DECAY: cfg.sgd.weight_decay,
        keys.LOCAL_EPOCHS: cfg.sgd.local_epochs,
        keys.BATCH_SIZE: cfg.sgd.batch_size,
    }
    if cfg.balanced_ce:  # sent only when on, as FedETF sends it
        config[keys.BALANCED_CE] = True
    if cfg.sgd.lr_schedule != "constant":  # the client applies it per round
        config[keys.LR_SCHEDULE] = cfg.sgd.lr_schedule
        config[keys.NUM_ROUNDS] = cfg.federation.num_server_rounds
    return config


def scheduled_lr(lr: float, schedule: str, server_round: int, num_rounds: int) -> float:
    """The clients' learning rate in ``server_round`` (1-based) of ``num_rounds``.

    ``constant``: ``lr``. ``cosine``: ``lr * (1 + cos(pi * (r - 1) / R)) / 2``,
    ``lr`` in round 1 and about ``lr * pi^2 / (4 R^2)`` in round R (the
    half-period cosine of SGDR, Loshchilov & Hutter, ICLR 2017, stepped once
    per round; every client of a round uses the same rate).
    """
    if schedule == "constant":
        return lr
    if schedule != "cosine":
        raise ValueError(f"unknown lr-schedule {schedule!r}; valid: constant, cosine")
    if not 1 <= server_round <= num_rounds:
        raise ValueError(f"round {server_round} is outside 1..{num_rounds}")
    return lr * 0.5 * (1.0 + math.cos(math.pi * (server_round - 1) / num_rounds))
