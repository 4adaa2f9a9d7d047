"""Write a model folder: at the end of pretraining, or from a checkpoint part-way.

:func:`save_model` is the folder layout (diffusers components, the index and
where the text encoder comes from). :func:`export_checkpoint` writes the model
as a stopped run holds it in ``checkpoint.pt`` (the U-Net's EMA weights, the
frozen VAE with its latent scale), so a run can be scored part-way
(``--stop-after N``, export, score, ``--resume``) without changing what the
finished run computes.
"""

from __future__ import annotations

from pathlib import Path

import torch

from common.io import atomic_write_json

from .components import build_scheduler, build_unet, build_vae, text_encoder_spec
from .config import PretrainConfig
from .loop import save_component

SNAPSHOT = "snapshot.json"


def save_model(out: Path, vae, unet, scheduler) -> None:
    """``vae/``, ``unet/``, ``scheduler/``, ``model_index.json``, ``text_encoder.json``."""
    import diffusers

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_component(vae, out / "vae")
    save_component(unet, out / "unet")
    save_component(scheduler, out / "scheduler")
    atomic_write_json(
        out / "model_index.json",
        {
            "_class_name": "SemanticFLEmbeddedLDM",
            "_diffusers_version": diffusers.__version__,
            "_text_encoder": "text_encoder.json",
            "scheduler": ["diffusers", type(scheduler).__name__],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        },
    )
    atomic_write_json(out / "text_encoder.json", text_encoder_spec())


def export_checkpoint(checkpoint: Path, out: Path) -> dict:
    """Write the model of a U-Net-stage ``checkpoint`` into ``out``; return its step.

    ``out`` gets the :func:`save_model` layout and ``snapshot.json`` (the
    U-Net step, the total steps, the config), and no ``training_log.json``:
    it is a snapshot, not a finished run.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"no checkpoint at {checkpoint}")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if state.get("stage") != "unet" or "ema" not in state:
        raise ValueError(
            f"{checkpoint} is at stage {state.get('stage')!r}: only a U-Net-stage "
            "checkpoint (after the VAE is trained) holds a usable model; resume "
            "with a larger --stop-after first"
        )
    cfg = PretrainConfig.from_dict(state["config"])
    vae = build_vae(cfg.vae_channels, cfg.norm_groups, cfg.resolution)
    vae.load_state_dict(state["vae"])
    vae.register_to_config(scaling_factor=state["log"]["latents"]["scaling_factor"])
    unet = build_unet(cfg.unet_channels, cfg.norm_groups, cfg.latent_size, cfg.head_dim)
    unet.load_state_dict(state["ema"])
    save_model(out, vae, unet, build_scheduler())
    info = {"unet_step": int(state["step"]), "steps_unet": cfg.steps_unet,
            "config": cfg.to_dict()}  # fmt: skip
    atomic_write_json(out / SNAPSHOT, info)
    return info
