"""Loading a trained embedded model, class-conditioned DDIM sampling, PNG grids."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .components import class_prompts, encode_prompts, load_text_encoder
from .data import to_uint8_gray


@dataclass
class Embedded:
    """A trained embedded model, frozen, with its prompt states precomputed.

    ``text`` holds the states of the class prompts, then the empty prompt.
    """

    vae: object
    unet: object
    scheduler: object
    text: Tensor
    class_names: tuple[str, ...]

    @property
    def resolution(self) -> int:
        """Image side of the model."""
        return int(self.unet.config.sample_size) * 2 ** (
            len(self.vae.config.block_out_channels) - 1
        )

    @property
    def device(self) -> torch.device:
        """Where the U-Net lives."""
        return next(self.unet.parameters()).device


def load_embedded(
    model_dir: Path, class_names, *, device: str | torch.device = "cpu"
) -> Embedded:
    """Load ``vae/``, ``unet/``, ``scheduler/`` with ``from_pretrained``, offline."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    model_dir = Path(model_dir)
    vae = AutoencoderKL.from_pretrained(
        model_dir, subfolder="vae", local_files_only=True
    )
    unet = UNet2DConditionModel.from_pretrained(
        model_dir, subfolder="unet", local_files_only=True
    )
    scheduler = DDPMScheduler.from_pretrained(
        model_dir, subfolder="scheduler", local_files_only=True
    )
    for m in (vae, unet):
        m.requires_grad_(False).to(device).eval()
    tokenizer, encoder = load_text_encoder(model_dir, device=device)
    text = encode_prompts(tokenizer, encoder, class_prompts(class_names))
    return Embedded(vae, unet, scheduler, text.clone(), tuple(class_names))


@torch.no_grad()
def sample(
    model: Embedded,
    labels: Tensor,
    *,
    guidance_scale: float = 3.0,
    steps: int = 50,
    seed: int = 0,
    batch: int = 100,
) -> Tensor:
    """Class-conditioned DDIM samples with classifier-free guidance.

    Parameters
    ----------
    model : Embedded
        The loaded model.
    labels : Tensor
        (N,) class ids; ``len(class_names)`` means the empty prompt.
    guidance_scale : float
        eps = eps_uncond + s * (eps_cond - eps_uncond); 1.0 = no guidance.
    steps : int
        DDIM steps (``DDIMScheduler.from_config`` of the training scheduler).
    seed : int
        Seeds the initial latent noise (drawn on the CPU, so any device agrees).

    Returns
    -------
    Tensor
        uint8 grayscale images (N, 1, R, R) on the CPU.
    """
    from diffusers import DDIMScheduler

    ddim = DDIMScheduler.from_config(model.scheduler.config)
    ddim.set_timesteps(steps)
    shape = (4, model.unet.config.sample_size, model.unet.config.sample_size)
    noise = torch.randn(
        len(labels), *shape, generator=torch.Generator().manual_seed(seed)
    )
    empty = model.text[-1:]
    out = []
    for i in range(0, len(labels), batch):
        y = labels[i : i + batch]
        z = noise[i : i + batch].to(model.device)
        cond = model.text[y.to(model.device)]
        states = torch.cat([empty.expand_as(cond), cond])
        for t in ddim.timesteps:
            eps_u, eps_c = model.unet(
                torch.cat([z, z]), t, encoder_hidden_states=states
            ).sample.chunk(2)
            eps = eps_u + guidance_scale * (eps_c - eps_u)
            z = ddim.step(eps, t, z).prev_sample
        images = model.vae.decode(z / model.vae.config.scaling_factor).sample
        out.append(to_uint8_gray(images).cpu())
    return torch.cat(out)


def save_grid(
    images: Tensor, path: Path, *, rows: int, row_names=(), scale: int = 2
) -> None:
    """Save uint8 (N, 1, H, W) images as a PNG grid, ``rows`` rows, names at left."""
    from PIL import Image, ImageDraw

    n, _, h, w = images.shape
    cols = -(-n // rows)
    pad, label_w = 2, 90 if row_names else 0
    grid = Image.new(
        "L",
        (label_w + cols * (w * scale + pad) + pad, rows * (h * scale + pad) + pad),
        255,
    )
    draw = ImageDraw.Draw(grid)
    for i in range(n):
        r, c = divmod(i, cols)
        tile = Image.fromarray(images[i, 0].numpy(), "L").resize(
            (w * scale, h * scale), Image.NEAREST
        )
        grid.paste(
            tile, (label_w + pad + c * (w * scale + pad), pad + r * (h * scale + pad))
        )
    for r, name in enumerate(row_names):
        draw.text(
            (4, pad + r * (h * scale + pad) + h * scale // 2 - 6), str(name), fill=0
        )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


def sample_grid(
    model: Embedded,
    path: Path,
    *,
    per_class: int = 8,
    guidance_scale: float = 3.0,
    steps: int = 50,
    seed: int = 0,
) -> Tensor:
    """Rows = classes, ``per_class`` samples each; save the PNG and return images."""
    num_classes = len(model.class_names)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    images = sample(
        model, labels, guidance_scale=guidance_scale, steps=steps, seed=seed
    )
    save_grid(images, path, rows=num_classes, row_names=model.class_names)
    return images
