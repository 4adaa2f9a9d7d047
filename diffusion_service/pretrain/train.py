"""The pretraining loop: stage 1 trains the VAE, stage 2 the U-Net on its latents.

nanoGPT-plain: one step function per stage, one shared loop (:mod:`.loop`) that
times, logs, checkpoints and shows progress. Every random draw is a pure function of
(seed, stage, step) (:func:`common.seeding.mix_seed`, streams ``PRETRAIN_VAE`` and
``PRETRAIN_UNET``), so a run resumed from a checkpoint computes exactly what an
uninterrupted run computes.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F

from common.io import atomic_write_json
from common.seeding import PRETRAIN_UNET, PRETRAIN_VAE, STEP_DRAWS, mix_seed

from ..vae_io import to_model_input
from .components import (
    build_scheduler,
    build_unet,
    build_vae,
    class_prompts,
    encode_prompts,
    load_text_encoder,
    text_encoder_spec,
)
from .config import PretrainConfig
from .data import public_split
from .export import save_model
from .loop import Interrupted, batch_indices, checkpoint, run_stage, save_component

CHECKPOINT = "checkpoint.pt"

__all__ = ["CHECKPOINT", "Interrupted", "pretrain"]


def pretrain(
    cfg: PretrainConfig,
    out: Path,
    *,
    resume: bool = False,
    stop_after: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict:
    """Train the embedded model into ``out`` (diffusers layout); return the log.

    Parameters
    ----------
    cfg : PretrainConfig
        What to train.
    out : Path
        Output folder: ``vae/``, ``unet/``, ``scheduler/``, ``model_index.json``,
        ``text_encoder.json``, ``training_log.json``; ``checkpoint.pt`` while
        training (removed at the end).
    resume : bool
        Continue from ``out/checkpoint.pt`` (its config must equal ``cfg``).
    stop_after : int or None
        Stop (checkpoint, raise :class:`Interrupted`) once this many steps of
        both stages together are done: a deterministic stand-in for a crash.
    device : torch device
        CPU by default; the loop itself is device-agnostic (float32).
    progress : bool
        Show tqdm bars.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT
    state = None
    if not ckpt_path.exists() and (out / "training_log.json").exists():
        raise FileExistsError(
            f"{out} already holds a trained model (training_log.json); use a new "
            "--out or delete it first"
        )
    if ckpt_path.exists():
        if not resume:
            raise FileExistsError(
                f"{ckpt_path} exists: pass --resume, or use a new --out"
            )
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if state["config"] != cfg.to_dict():
            diff = {
                k: (v, cfg.to_dict()[k])
                for k, v in state["config"].items()
                if cfg.to_dict().get(k) != v
            }
            raise ValueError(f"checkpoint config differs (checkpoint, now): {diff}")
    device = torch.device(device)

    # Data and the frozen text states (11 prompts, encoded once).
    data = public_split(cfg.dataset, cfg.public_split_size, limit=cfg.limit)
    images = to_model_input(data.images, cfg.resolution)
    labels = data.labels
    prompts = class_prompts(data.class_names)
    tokenizer, encoder = load_text_encoder(device=device)
    # clone(): a normal tensor, not an inference-mode one autograd cannot save.
    text = encode_prompts(tokenizer, encoder, prompts).clone().to(device)
    del tokenizer, encoder  # 90 MB we no longer need
    empty_id = len(prompts) - 1

    torch.manual_seed(cfg.seed)
    vae = build_vae(cfg.vae_channels, cfg.norm_groups, cfg.resolution).to(device)
    torch.manual_seed(cfg.seed + 1)
    unet = build_unet(cfg.unet_channels, cfg.norm_groups, cfg.latent_size, cfg.head_dim)
    unet.to(device)
    scheduler = build_scheduler()
    log = (
        state["log"]
        if state
        else {
            "format": 1,
            "config": cfg.to_dict(),
            "data": data.spec(cfg.dataset, cfg.public_split_size),
            "text_encoder": text_encoder_spec(),
            "prompts": prompts,
            "params": {
                "vae": sum(p.numel() for p in vae.parameters()),
                "unet": sum(p.numel() for p in unet.parameters()),
            },
            "stages": {},
        }
    )
    stage = state["stage"] if state else "vae"
    done_before = 0 if stage == "vae" else cfg.steps_vae

    # ---------------------------------------------------------------- stage 1
    if stage == "vae":
        opt = torch.optim.AdamW(
            vae.parameters(), lr=cfg.lr_vae, weight_decay=cfg.weight_decay
        )
        if state:
            vae.load_state_dict(state["vae"])
            opt.load_state_dict(state["opt"])

        vae_cache: dict = {}

        def vae_step(step: int) -> dict:
            g = torch.Generator().manual_seed(
                mix_seed(cfg.seed, PRETRAIN_VAE, step, STEP_DRAWS)
            )
            idx = batch_indices(
                len(images), cfg.vae_batch_size, cfg.seed, PRETRAIN_VAE, step, vae_cache
            )
            x = images[idx]
            if cfg.flip:
                flip = torch.rand(len(idx), generator=g) < 0.5
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
            x = x.to(device)
            post = vae.encode(x).latent_dist
            noise = torch.randn(post.mean.shape, generator=g).to(device)
            z = post.mean + post.std * noise  # reparameterised sample
            rec = vae.decode(z).sample
            l1 = (rec - x).abs().mean()
            kl = post.kl().mean() / z[0].numel()  # per latent element
            loss = l1 + cfg.kl_weight * kl
            return {"loss": loss, "l1": l1.detach(), "kl": kl.detach()}

        def vae_save(step: int, wall: float, done: bool) -> None:
            checkpoint(
                ckpt_path,
                cfg,
                log,
                "unet" if done else "vae",
                0 if done else step,
                vae=vae.state_dict(),
                opt=None if done else opt.state_dict(),
            )

        run_stage(
            "vae",
            vae,
            opt,
            vae_step,
            vae_save,
            cfg.steps_vae,
            state["step"] if state else 0,
            cfg.lr_vae,
            cfg,
            log,
            stop_after,
            progress,
        )
        state, done_before = None, cfg.steps_vae
    else:
        vae.load_state_dict(state["vae"])

    # Frozen VAE: latents of every public image (and its mirror), encoded once.
    vae.requires_grad_(False).eval()
    with torch.no_grad():
        means = [
            vae.encode(images[i : i + 256].to(device)).latent_dist.mean
            for i in range(0, len(images), 256)
        ]
        lat = torch.cat(means)
        mirrored = torch.cat(
            [
                vae.encode(images[i : i + 256].flip(-1).to(device)).latent_dist.mean
                for i in range(0, len(images), 256)
            ]
        )
    # scaling_factor makes latents ~unit variance, as SD's 0.18215 does for its VAE.
    scale = float(1.0 / lat.std())
    vae.register_to_config(scaling_factor=scale)
    log["latents"] = {
        "scaling_factor": scale,
        "raw_std": float(lat.std()),
        "scaled_mean": float(lat.mean() * scale),
        "shape": list(lat.shape[1:]),
    }
    latents = torch.stack([lat, mirrored]).clone() * scale
    save_component(vae, out / "vae")  # the frozen VAE is final from here on

    # ---------------------------------------------------------------- stage 2
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(
        unet.parameters(), lr=cfg.lr_unet, weight_decay=cfg.weight_decay
    )
    if state:
        unet.load_state_dict(state["unet"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])

    unet_cache: dict = {}

    def unet_step(step: int) -> dict:
        g = torch.Generator().manual_seed(
            mix_seed(cfg.seed, PRETRAIN_UNET, step, STEP_DRAWS)
        )
        idx = batch_indices(
            len(images), cfg.batch_size, cfg.seed, PRETRAIN_UNET, step, unet_cache
        )
        n = len(idx)
        view = (
            (torch.rand(n, generator=g) < 0.5).long()
            if cfg.flip
            else torch.zeros(n).long()
        )
        z0 = latents[view.to(device), idx.to(device)]
        drop = torch.rand(n, generator=g) < cfg.prompt_dropout
        cond = torch.where(drop, torch.full_like(labels[idx], empty_id), labels[idx])
        noise = torch.randn(z0.shape, generator=g).to(device)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (n,), generator=g)
        zt = scheduler.add_noise(z0, noise, t.to(device))
        pred = unet(
            zt, t.to(device), encoder_hidden_states=text[cond.to(device)]
        ).sample
        return {"loss": F.mse_loss(pred, noise)}

    def after_unet_step(step: int) -> None:
        # EMA with a warmup so early weights do not dominate a short run.
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), unet.parameters(), strict=True):
                e.lerp_(p, 1 - decay)

    def unet_save(step: int, wall: float, done: bool) -> None:
        checkpoint(
            ckpt_path,
            cfg,
            log,
            "unet",
            step,
            vae=vae.state_dict(),
            unet=unet.state_dict(),
            ema=ema.state_dict(),
            opt=opt.state_dict(),
        )

    run_stage(
        "unet",
        unet,
        opt,
        unet_step,
        unet_save,
        cfg.steps_unet,
        state["step"] if state else 0,
        cfg.lr_unet,
        cfg,
        log,
        None if stop_after is None else stop_after - done_before,
        progress,
        after_step=after_unet_step,
    )

    # ------------------------------------------------------------------ save
    save_model(out, vae, ema, scheduler)
    import diffusers

    log["versions"] = {"torch": torch.__version__, "diffusers": diffusers.__version__}
    log["threads"] = torch.get_num_threads()
    log["device"] = str(device)
    log["total_wall_seconds"] = sum(s["wall_seconds"] for s in log["stages"].values())
    atomic_write_json(out / "training_log.json", log)
    ckpt_path.unlink(missing_ok=True)
    return log
