"""The model card, rendered from ``training_log.json`` (+ ``evidence.json``) and hashes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from common.io import atomic_write_text

from .config import PretrainConfig

WEIGHT_FILES = (
    "vae/diffusion_pytorch_model.safetensors",
    "unet/diffusion_pytorch_model.safetensors",
)
CONFIG_FILES = (
    "vae/config.json",
    "unet/config.json",
    "scheduler/scheduler_config.json",
)


def weights_sha256(model_dir: Path) -> dict:
    """SHA-256 and size of each weight/config file, plus one hash over them all.

    ``combined`` hashes the lines ``"<sha256>  <path>\\n"`` in a fixed order, so
    one value pins the whole model.
    """
    from .components import sha256_file

    model_dir = Path(model_dir)
    files = {}
    for rel in WEIGHT_FILES + CONFIG_FILES:
        p = model_dir / rel
        files[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    lines = "".join(f"{v['sha256']}  {k}\n" for k, v in files.items())
    return {"files": files, "combined": hashlib.sha256(lines.encode()).hexdigest()}


def reproduce_command(
    cfg: PretrainConfig, out: str = "diffusion_service/embedded"
) -> str:
    """The exact command that retrains this model (every non-default flag shown)."""
    return (
        f"python -m diffusion_service.pretrain --out {out}"
        f" --steps-vae {cfg.steps_vae} --steps-unet {cfg.steps_unet}"
        f" --batch-size {cfg.batch_size} --vae-batch-size {cfg.vae_batch_size}"
        f" --seed {cfg.seed} --public-split-size {cfg.public_split_size}"
        + (f" --limit {cfg.limit}" if cfg.limit else "")
    )


def _fmt_min(seconds: float) -> str:
    return f"{seconds / 60:.1f} min ({seconds:.0f} s)"


FEATURE_STUDY = "feature_study.json"
"""The feature study's result in a model folder (``python -m
benchmarks.feature_study --model-card``), rendered into the card."""


def feature_study_table(study: dict) -> list[str]:
    """Markdown rows of a feature study, best nearest-anchor accuracy first,
    each with its difference to raw pixels (percentage points)."""
    base = next(
        r
        for r in study["rows"]
        if r["recipe"] == "raw pixels" and r["projection"] == "none"
    )
    lines = [
        "| recipe | projection | d | probe | vs pixels | nearest anchor | vs pixels "
        "| anchor cos mean | max (pair) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in sorted(study["rows"], key=lambda r: -r["nearest-anchor"]):
        lines.append(
            f"| {r['recipe']} | {r['projection']} | {r['dim']} | {r['probe']:.3f} | "
            f"{100 * (r['probe'] - base['probe']):+.1f} | {r['nearest-anchor']:.3f} | "
            f"{100 * (r['nearest-anchor'] - base['nearest-anchor']):+.1f} | "
            f"{r['anchor-cos-mean']:.2f} | {r['anchor-cos-max']:.2f} ({r['closest-pair']}) |"
        )
    return lines


def _feature_study_section(study: dict) -> list[str]:
    p = study["protocol"]
    return [
        "## Feature study",
        f"Which of this model's features carry the classes, scored on held-out "
        f"public images (never the test set): {p['fit']} public images fit a "
        f"linear probe and the class anchors (class means of the unit-length "
        f"features), {p['held-out']} held out score them (stratified). Zero-shot "
        f"classification by the lowest denoising error on the same held-out "
        f"images: {p['zero-shot-held-out']:.3f}. "
        f"{study['seconds'] / 60:.1f} min on {study['machine'].split(';')[0]}.",
        "",
        *feature_study_table(study),
        "",
        "The guided runs take their features as the `today` rows do (t=150, "
        "up blocks 1-3, mean-pooled; with each image's class prompt, where the "
        "study uses the neutral one since a held-out image's class is unknown), "
        "projected by `guidance-projection`: `pca` (the default) or `whitened`. "
        "The zero-shot teacher of the guided defaults is the denoising-error "
        "classifier above, used as a posterior, not as features. Reproduce:",
        "",
        "```",
        study["command"],
        "```",
        "",
    ]


def render_model_card(log: dict, hashes: dict, evidence: dict | None = None) -> str:
    """Markdown model card from a training log, file hashes and optional evidence."""
    cfg = PretrainConfig.from_dict(log["config"])
    data, te, lat = log["data"], log["text_encoder"], log["latents"]
    st = log["stages"]
    size = sum(v["bytes"] for v in hashes["files"].values())
    out = [
        "# Embedded guidance model (SemanticFL)",
        "",
        "A small text-conditioned latent diffusion model in the diffusers layout "
        "(`vae/`, `unet/`, `scheduler/`), the offline default guidance model. "
        "Trained from scratch by `python -m diffusion_service.pretrain` on a public "
        "split of Fashion-MNIST that no federated client receives.",
        "",
        "## Components",
        f"- VAE: `AutoencoderKL`, channels {list(cfg.vae_channels)}, "
        f"{log['params']['vae']:,} parameters; 3-channel [-1, 1] images at "
        f"{cfg.resolution} px -> latents {lat['shape']}; `scaling_factor` "
        f"{lat['scaling_factor']:.5f} (latent std before scaling {lat['raw_std']:.4f}).",
        f"- U-Net: `UNet2DConditionModel`, channels {list(cfg.unet_channels)}, "
        f"{log['params']['unet']:,} parameters, cross-attention width 384 "
        "(EMA weights saved).",
        "- Scheduler: `DDPMScheduler`, 1000 steps, scaled-linear betas "
        "0.00085-0.012, epsilon prediction, no sample clipping.",
        f"- Text encoder (frozen, not shipped): `{te['package']}=={te['version']}`, "
        f"subfolder `{te['subfolder']}`, `{te['weights']}` SHA-256 `{te['sha256']}`; "
        f"`last_hidden_state`, prompts padded to {te['max_length']} tokens "
        "(see `text_encoder.json`).",
        f'- Prompts: "a photo of a {{class name}}"; empty prompt with '
        f"probability {cfg.prompt_dropout} during training (classifier-free guidance).",
        "",
        "## Data",
        f"- {data['dataset']} training set, public split of "
        f"{data['public_split_size']:,} images ({data['num_images']:,} used), "
        f"carved by `common.partition.carve_public_split` with the fixed seed "
        f"{data['public_split_seed']}; a federated run with `public-split-size = "
        f"{data['public_split_size']}` gives these images to no client.",
        f"- SHA-256 of the sorted public indices (int64 LE): `{data['indices_sha256']}`.",
        f"- Class counts: {data['class_counts']}.",
        "",
        "## Training",
        "| stage | steps | batch | wall time | samples/s | final loss (mean of last "
        f"{st['unet'].get('final_window', 100)} steps) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in ("vae", "unet"):
        s = st[name]
        final = ", ".join(f"{k} {v:.4f}" for k, v in s["final"].items())
        out.append(
            f"| {name} | {s['steps']:,} | {s['batch_size']} | "
            f"{_fmt_min(s['wall_seconds'])} | {s['samples_per_second']:.0f} | "
            f"{final} |"
        )
    first = {k: st[k]["loss_curve"][0][1] for k in st if st[k]["loss_curve"]}
    out += [
        "",
        f"- Loss of the first {50} steps: "
        + ", ".join(f"{k} {v:.4f}" for k, v in first.items())
        + ".",
        f"- Total training wall time: {_fmt_min(log['total_wall_seconds'])} on "
        f"{log['device']} with {log['threads']} threads (torch "
        f"{log['versions']['torch']}, diffusers {log['versions']['diffusers']}).",
        f"- AdamW (lr VAE {cfg.lr_vae}, U-Net {cfg.lr_unet}, weight decay "
        f"{cfg.weight_decay}), {cfg.warmup} warmup steps then cosine to 10 %, "
        f"grad clip {cfg.grad_clip}, KL weight {cfg.kl_weight}, EMA {cfg.ema_decay}, "
        f"horizontal flips {'on' if cfg.flip else 'off'}, seed {cfg.seed}.",
        "",
        "Reproduce:",
        "",
        "```",
        reproduce_command(cfg),
        "```",
        "",
    ]
    evidence = evidence or {}
    if "zero_shot" in evidence:
        zs, sm = evidence["zero_shot"], evidence["samples"]
        out += [
            "## Evidence",
            f"- Class-conditioned samples: `{sm['file']}` (rows = classes, "
            f"{sm['per_class']} each, DDIM {sm['ddim_steps']} steps, guidance "
            f"{sm['guidance_scale']}).",
            f"- Zero-shot diffusion classification on {zs['num_images']} "
            f"{data['dataset']} test images: accuracy {zs['accuracy']:.3f} "
            f"(chance {zs['chance']:.3f}).",
        ]
        if "probe" in evidence:
            pr = evidence["probe"]
            out.append(
                f"- Linear probe ({pr['protocol']}): guidance features "
                f"{pr['guidance_features_accuracy']:.3f}, raw pixels "
                f"{pr['raw_pixels_accuracy']:.3f}, chance {pr['chance']:.3f} "
                "(`python -m diffusion_service.pretrain.probe`)."
            )
        out.append("")
    if "feature_study" in evidence:
        out += _feature_study_section(evidence["feature_study"])
    out += [
        "## Files and hashes",
        f"Total size of weights and configs: {size / 1e6:.2f} MB. Combined SHA-256 "
        f"(over the lines `<sha256>  <path>` below): `{hashes['combined']}`.",
        "",
        "| file | bytes | SHA-256 |",
        "| --- | --- | --- |",
    ]
    out += [
        f"| `{k}` | {v['bytes']:,} | `{v['sha256']}` |"
        for k, v in hashes["files"].items()
    ]
    return "\n".join(out) + "\n"


def write_model_card(model_dir: Path, path: Path | None = None) -> Path:
    """Render the card of ``model_dir`` into ``path`` (default ``model_dir/MODEL_CARD.md``)."""
    model_dir = Path(model_dir)
    log = json.loads((model_dir / "training_log.json").read_text())
    ev_path = model_dir / "evidence.json"
    evidence = json.loads(ev_path.read_text()) if ev_path.is_file() else {}
    probe_path = model_dir / "probe.json"
    if evidence and probe_path.is_file():
        evidence["probe"] = json.loads(probe_path.read_text())
    study_path = model_dir / FEATURE_STUDY
    if study_path.is_file():
        evidence["feature_study"] = json.loads(study_path.read_text())
    path = Path(path) if path else model_dir / "MODEL_CARD.md"
    atomic_write_text(path, render_model_card(log, weights_sha256(model_dir), evidence))
    return path
