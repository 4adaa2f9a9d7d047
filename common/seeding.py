"""Seeds derived from the run seed: one mixer, named streams.

Every random draw of a run is seeded from ``seed`` (run config) mixed with the
integers that say which draw it is (client, round, step, sample index) and a
*stream* salt that keeps unrelated draws apart: two draws that share the ids
but not the stream never see the same numbers. The mixer is numpy's
:class:`~numpy.random.SeedSequence`, which is well distributed for any inputs
(adding small offsets to a seed is not).

The salts' values are fixed: stored features, the shipped embedded model and
past results were drawn with them, so changing one changes those bits.
"""

from __future__ import annotations

import numpy as np

# Server-side streams, mixed as (seed, round, SALT) or (seed, SALT).
FEDDDPM_CORRECTION = 17
"""FedDDPM(+)'s server fine-tune of the aggregated U-Net, per round."""
ADAPT_FINETUNE = 23
"""fedavg-adapt(+)'s server fine-tune of the aggregated classifier, per round."""
EVAL_BN_SLICE = 13
"""The public images the central evaluation recomputes BatchNorm statistics
on (``eval-bn-images``), mixed as (seed, SALT)."""
HELDOUT_SLICE = 11
"""The seeded slice of the public split the server checks itself on (trigger
loss, adaptation validation) and FedDDPM+'s probe noise."""
VALIDATION_SPLIT = 7
"""Which samples of a client's partition are held out (``validation-fraction``),
mixed as (seed, partition id, SALT)."""
CLIENT_CAP_OFFSET = 1
"""Added to the seed of the draw that caps each client at
``max-samples-per-client`` (an offset: the partitioners take one int)."""
NEGATIVE_PROMPTS = 1
"""Which negative class prompts a sample gets (``tdcl-negatives``), mixed as
(feature seed, sample index, SALT)."""
PROJECTION_FIT = 2
"""Which samples the feature projection (PCA) is fitted on when none are
given, mixed as (feature seed, SALT)."""
ZERO_SHOT_NOISE = 3
"""The noise of a sample's zero-shot (t, eps) pairs (the ``errors`` kind),
mixed as (feature seed, sample index, SALT)."""
TEACHER_CALIBRATION = 19
"""The public images whose zero-shot errors fit the teacher's temperature
(``kd-form = "posterior"``), a slice mixed as (0, SALT): the same for every
run seed, like the stored errors."""
REAL_REFERENCE = 5
"""Which test images FedDDPM's measures use as the real reference set."""
ETF_FRAME = 31
"""FedETF's fixed classifier frame, mixed as (seed, SALT): built identically
by the server and every client, never sent."""
NODE_SAMPLING = 37
"""Python's ``random``, which Flower's strategies sample nodes with, reseeded
before each draw as (seed, round, draw, SALT)."""
GENERATION_OFFSET = 1000
"""Added to the seed of the server's one-off image generation (auxiliary set,
adaptation set); an offset, not a salt, because the samplers take one int."""

# Diffusion training streams, mixed as (seed, STAGE, step or epoch, part).
PRETRAIN_VAE = 1
"""Pretraining the embedded model's VAE."""
PRETRAIN_UNET = 2
"""Pretraining the embedded model's U-Net."""
FEDERATED_UNET = 3
"""Training a federated diffusion U-Net (client rounds, server corrections)."""

# The draw within a diffusion training stream: its last part.
EPOCH_ORDER = 0
"""Pretraining: one epoch's shuffled sample order, (seed, STAGE, epoch, EPOCH_ORDER)."""
STEP_DRAWS = 1
"""Pretraining: one step's draws besides its batch (flips, posterior noise,
prompt dropout, noise, timesteps), (seed, STAGE, step, STEP_DRAWS)."""
FEDERATED_STEP_DRAWS = 0
"""Federated U-Net training: all of one step's draws (batch, prompt dropout,
noise, timesteps), (seed, FEDERATED_UNET, step, FEDERATED_STEP_DRAWS). 0, not
STEP_DRAWS; the stage keeps it apart from the pretraining streams."""


def mix_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers: run seed, ids and a stream salt.

    Order matters: ``mix_seed(seed, round, FEDDDPM_CORRECTION)`` and
    ``mix_seed(seed, FEDDDPM_CORRECTION, round)`` are different streams.
    """
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint32)
    return ((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def client_round_seed(seed: int, partition_id: int, server_round: int) -> int:
    """A 32-bit seed for one client's local training in one round.

    A distinct, reproducible stream per (run seed, client, round): shuffling,
    augmentation and dropout of a client's round are the same in any run with
    the same seed, whatever node or order the round runs on.
    """
    sequence = np.random.SeedSequence([int(seed), int(partition_id), int(server_round)])
    return int(sequence.generate_state(1)[0])


def deterministic_torch(device: str) -> None:
    """torch's switches for bit-identical results on a CUDA ``device``.

    A no-op on CPU: the ops this project uses are deterministic there for a
    fixed thread count (measured: 10 SGD steps of ResNet-10 give the same
    bits with and without ``use_deterministic_algorithms``), and the switch
    costs about 8% of a client's training time. On a GPU they stop cuDNN's
    autotuner and atomics from reordering sums. ``warn_only``: an op without
    a deterministic kernel warns instead of stopping a run.
    """
    if not device.startswith("cuda"):
        return
    import os

    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
