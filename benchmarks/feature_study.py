"""Which diffusion features are worth aligning clients to? A study on the public split.

Every score is on held-out *public* images (the server's split, never the test
set): the public split is cut into a fit part and a held-out part, stratified.
For each feature recipe:

- **probe**: multinomial logistic regression fitted on the fit part
  (``diffusion_service.pretrain.probe.linear_probe_accuracy``), accuracy on the
  held-out part;
- **nearest anchor**: each held-out image's class is that of the nearest class
  anchor by cosine, the anchors being the fit part's class means of the
  L2-normalised features (what the guided methods align to);
- **anchor geometry**: the mean and the largest cosine between two different
  classes' anchors, and which pair that is (confusable classes whose anchors
  coincide cannot pull apart).

Recipes (one U-Net pass per timestep and prompt gives every up-block and every
pooling at once): timestep; up-block set; spatial pooling (mean, as today;
FedDifRC's per-channel spatial L2 norm; mean and standard deviation);
projection (none, PCA, whitened PCA, a discriminant projection fitted on the
fit part's labels); prompt (neutral; the mean over the class prompts); and
features made of the class-conditional denoising errors (the embedded model's
zero-shot classifier: lowest error wins). Raw pixels are the baseline.

    python -m benchmarks.feature_study [--public 3000] [--held-out 1000] [--model-card]

Writes ``benchmarks/results/feature-study/`` (``study.json``, ``results.md``);
``--model-card`` also records the study in the model's folder
(``feature_study.json``) and re-renders its ``MODEL_CARD.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks.machine import hardware
from common.datasets import get_spec, load_dataset
from common.io import atomic_write_json, atomic_write_text
from common.partition import carve_public_split
from diffusion_service import FeatureExtractor, FeatureRecipe, GuidanceModel
from diffusion_service.embedded_model import resolve_guidance_model
from diffusion_service.pretrain.card import (
    FEATURE_STUDY,
    feature_study_table,
    write_model_card,
)
from diffusion_service.pretrain.probe import linear_probe_accuracy

OUT = Path(__file__).resolve().parent / "results" / "feature-study"
TIMESTEPS = (50, 150, 300, 500)
ERROR_TIMESTEPS = (100, 250, 400, 550, 700, 850)  # the zero-shot classifier's
POOLINGS = ("mean", "l2", "meanstd")


# ------------------------------------------------------------------ features
def pool(h: Tensor, how: str) -> Tensor:
    """(B, C, H, W) -> (B, C) or (B, 2C): a spatial summary of a feature map."""
    h = h.float()
    if how == "mean":
        return h.mean((2, 3))
    if how == "l2":  # FedDifRC: each component's L2 norm over positions
        return h.flatten(2).norm(dim=2) / (h.shape[2] * h.shape[3]) ** 0.5
    if how == "meanstd":
        return torch.cat([h.mean((2, 3)), h.flatten(2).std(dim=2)], 1)
    raise ValueError(f"pooling must be one of {POOLINGS}, got {how!r}")


@contextmanager
def taps(unet):
    """Every up-block's output map, by index, as the U-Net makes it."""
    maps: dict[int, Tensor] = {}
    hooks = [
        block.register_forward_hook(
            lambda m, a, out, i=i: maps.__setitem__(
                i, out[0] if isinstance(out, tuple) else out
            )
        )
        for i, block in enumerate(unet.up_blocks)
    ]
    try:
        yield maps
    finally:
        for h in hooks:
            h.remove()


@torch.inference_mode()
def unet_passes(ex: FeatureExtractor, images: Tensor, timestep: int, prompts: list[int],
                batch: int = 100) -> dict[str, Tensor]:  # fmt: skip
    """Per prompt id: pooled up-block features under every pooling, the pooled
    latent, and the noise-prediction error, for one timestep.

    Returns ``{"latent": (N, 4), "err": (N, P), f"{pooling}/{block}": (N, P, c)}``.
    The noise is the production recipe's: per sample, seeded by its index.
    """
    m = ex.model
    out: dict[str, list[Tensor]] = {}
    with taps(m.unet) as maps:
        for start in range(0, len(images), batch):
            rows = list(range(start, min(start + batch, len(images))))
            x = ex.preprocess(images[rows])
            eps = ex.noise(rows).to(m.device, m.unet.dtype)
            z0 = m.vae.encode(x).latent_dist.mean * m.vae.config.scaling_factor
            t = torch.full((len(rows),), timestep, dtype=torch.long)
            zt = m.noise_scheduler.add_noise(z0, eps, t)
            out.setdefault("latent", []).append(z0.mean((2, 3)))
            per: dict[str, list[Tensor]] = {}
            for p in prompts:
                states = ex.text_states[torch.full((len(rows),), p)]
                pred = m.unet(zt, t, encoder_hidden_states=states).sample
                per.setdefault("err", []).append(((pred - eps) ** 2).mean((1, 2, 3)))
                for (i, h), how in itertools.product(maps.items(), POOLINGS):
                    per.setdefault(f"{how}/{i}", []).append(pool(h, how))
            for key, values in per.items():
                out.setdefault(key, []).append(torch.stack(values, 1))
    return {k: torch.cat(v) for k, v in out.items()}


# ---------------------------------------------------------------- projections
def project(fit: Tensor, held: Tensor, y_fit: Tensor, how: str, dim: int = 128):
    """Fit a projection on the fit part; apply it to both parts."""
    if how == "none":
        return fit, held
    mean = fit.mean(0)
    a, b = fit - mean, held - mean
    if how in ("pca", "whitened"):
        _, s, v = torch.linalg.svd(a, full_matrices=False)
        k = min(dim, v.shape[0])
        w = v[:k].T
        if how == "whitened":
            w = w / (s[:k] / (len(a) - 1) ** 0.5).clamp_min(1e-6)
        return a @ w, b @ w
    if how == "lda":  # Fisher discriminant: C - 1 axes of between/within scatter
        classes = y_fit.unique()
        sw = torch.zeros(a.shape[1], a.shape[1], dtype=torch.float64)
        sb = torch.zeros_like(sw)
        a64 = a.double()
        for c in classes:
            xc = a64[y_fit == c]
            mc = xc.mean(0)
            sw += (xc - mc).T @ (xc - mc)
            sb += len(xc) * torch.outer(mc, mc)
        sw += 1e-3 * sw.trace() / len(sw) * torch.eye(len(sw), dtype=sw.dtype)
        evals, evecs = torch.linalg.eig(torch.linalg.solve(sw, sb))
        order = evals.real.argsort(descending=True)[: len(classes) - 1]
        w = evecs.real[:, order].float()
        return a @ w, b @ w
    raise ValueError(f"projection must be none, pca, whitened or lda, got {how!r}")


# ------------------------------------------------------------------- scoring
def score(fit: Tensor, held: Tensor, y_fit: Tensor, y_held: Tensor,
          names: tuple[str, ...]) -> dict[str, Any]:  # fmt: skip
    """Probe accuracy, nearest-anchor accuracy and the anchors' similarity."""
    probe = linear_probe_accuracy(fit, y_fit, held, y_held)
    centred = fit.mean(0)  # anchors of centred features: signs carry meaning
    f, h = F.normalize(fit - centred, dim=1), F.normalize(held - centred, dim=1)
    anchors = F.normalize(
        torch.stack([f[y_fit == c].mean(0) for c in range(len(names))]), dim=1
    )
    nearest = float(((h @ anchors.T).argmax(1) == y_held).float().mean())
    gram = anchors @ anchors.T
    off = gram[~torch.eye(len(names), dtype=torch.bool)]
    i, j = divmod(int((gram - 2 * torch.eye(len(names))).argmax()), len(names))
    return {
        "probe": probe,
        "nearest-anchor": nearest,
        "anchor-cos-mean": float(off.mean()),
        "anchor-cos-max": float(off.max()),
        "closest-pair": f"{names[i]}-{names[j]}",
        "dim": fit.shape[1],
    }


def recipes(feats: dict[int, dict[str, Tensor]]):
    """(name, group, features (N, r)) of every recipe in the study."""
    blocks = sorted({int(k.split("/")[1]) for k in feats[150] if "/" in k})
    default = (1, 2, 3) if max(blocks) >= 3 else tuple(blocks[1:])

    def build(t: int, blocks_: tuple[int, ...], how: str, prompt: str) -> Tensor:
        parts = [feats[t]["latent"]]
        for b in blocks_:
            x = feats[t][f"{how}/{b}"]
            parts.append(x[:, 0] if prompt == "neutral" else x[:, 1:].mean(1))
        return torch.cat(parts, 1)

    yield (
        "today: t=150, blocks 1-3, mean, neutral",
        "today",
        build(150, default, "mean", "neutral"),
    )
    for t in TIMESTEPS:
        yield f"t={t}", "timestep", build(t, default, "mean", "neutral")
    for bs in [(b,) for b in blocks] + [tuple(blocks)]:
        yield (
            f"blocks {','.join(map(str, bs))}",
            "up-blocks",
            build(150, bs, "mean", "neutral"),
        )
    for how in POOLINGS:
        yield f"pooling {how}", "pooling", build(150, default, how, "neutral")
    yield (
        "prompt: mean over class prompts",
        "prompt",
        build(150, default, "mean", "class"),
    )
    errs = feats["errors"]  # (N, T, C): lower = more like that class
    yield "denoising errors, mean over t", "denoising", -errs.mean(1)
    yield "denoising errors, every t", "denoising", -errs.flatten(1)
    yield (
        "denoising errors, every t, per-image centred",
        "denoising",
        -(errs - errs.mean(2, keepdim=True)).flatten(1),
    )


def command(args: argparse.Namespace) -> str:
    """The command that recomputes this study (its non-default sizes shown)."""
    sizes = (
        ""
        if (args.public, args.held_out) == (3000, 1000)
        else (f" --public {args.public} --held-out {args.held_out}")
    )
    model = "" if args.model == "embedded" else f" --model {args.model}"
    return f"python -m benchmarks.feature_study{model}{sizes}"


def rerender(study_json: Path, out: Path, args: argparse.Namespace) -> int:
    """Re-render a saved study (results.md, and the card with --model-card)."""
    try:
        result = json.loads(study_json.read_text())
        result.setdefault("command", command(args))
        feature_study_table(result)  # a study without its rows fails here
    except (OSError, ValueError, KeyError, StopIteration) as exc:
        raise SystemExit(
            f"--from-json {study_json}: not a feature study ({exc!r})"
        ) from None
    out.mkdir(parents=True, exist_ok=True)
    if study_json.resolve() != (out / "study.json").resolve():
        atomic_write_json(out / "study.json", result)
    atomic_write_text(out / "results.md", markdown(result))
    if args.model_card:
        print(
            f"model card: {record_in_model_card(result, result['protocol']['model'])}"
        )
    print((out / "results.md").read_text())
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.feature_study",
                                 description=__doc__.split("\n")[0])  # fmt: skip
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--public", type=int, default=3000, help="public images used")
    ap.add_argument("--held-out", type=int, default=1000, help="of them, held out")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument(
        "--model-card",
        action="store_true",
        help="also record the study in the model's folder and its MODEL_CARD.md",
    )
    ap.add_argument(
        "--from-json",
        metavar="STUDY_JSON",
        help="no computing: re-render results.md (and with --model-card the card) "
        "from a study.json this command wrote",
    )
    args = ap.parse_args(argv)
    if args.from_json:
        return rerender(Path(args.from_json), Path(args.out), args)
    if not 0 < args.held_out < args.public:
        ap.error("--held-out must be in 1 .. --public - 1")
    torch.manual_seed(0)
    t_start = time.perf_counter()
    spec = get_spec("fashion-mnist")
    names = spec.class_names
    train, _ = load_dataset("fashion-mnist")
    # The run's public split (10,000, the default public-split-size), then a
    # stratified subset of it: the same images the server holds in a run.
    public = carve_public_split(train.labels.numpy(), 10_000)
    labels_pub = train.labels[public].numpy()
    take = public[carve_public_split(labels_pub, args.public)]
    images, labels = train.images[take], train.labels[take]
    held = np.zeros(len(take), dtype=bool)
    held[carve_public_split(labels.numpy(), args.held_out, seed=1)] = True
    held_t = torch.from_numpy(held)

    model = GuidanceModel.from_pretrained(resolve_guidance_model(args.model))
    ex = FeatureExtractor(model, FeatureRecipe(), names)
    neutral, classes = ex.neutral_id, list(range(len(names)))
    feats: dict[Any, Any] = {}
    for t in TIMESTEPS:
        t0 = time.perf_counter()
        prompts = [neutral, *classes] if t == 150 else [neutral]
        feats[t] = unet_passes(ex, images, t, prompts)
        print(f"U-Net features at t={t}: {len(prompts)} prompt(s), "
              f"{time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip
    t0 = time.perf_counter()
    errors = [unet_passes(ex, images, t, classes)["err"] for t in ERROR_TIMESTEPS]
    feats["errors"] = torch.stack(errors, 1)  # (N, T, C)
    zero_shot = float(
        (feats["errors"].mean(1).argmin(1) == labels).float()[held_t].mean()
    )
    print(f"denoising errors at {len(ERROR_TIMESTEPS)} timesteps: "
          f"{time.perf_counter() - t0:.0f} s; zero-shot on held-out {zero_shot:.3f}",
          flush=True)  # fmt: skip

    y_fit, y_held = labels[~held_t], labels[held_t]
    rows = []
    pixels = images.flatten(1).float() / 255
    cands = [("raw pixels", "baseline", pixels)] + list(recipes(feats))
    for name, group, x in cands:
        projections = (
            ("none", "pca", "whitened", "lda")
            if group in ("today", "baseline")
            else ("pca",)
        )
        for how in projections:
            if how == "pca" and x.shape[1] <= 128:
                how = "none"  # nothing to reduce
            a, b = project(x[~held_t], x[held_t], y_fit, how)
            row = {"recipe": name, "group": group, "projection": how,
                   **score(a, b, y_fit, y_held, names)}  # fmt: skip
            rows.append(row)
            print(
                f"  {name:48s} {how:9s} probe {row['probe']:.3f} | nearest "
                f"{row['nearest-anchor']:.3f} | anchors cos {row['anchor-cos-mean']:.2f}"
                f" (max {row['anchor-cos-max']:.2f} {row['closest-pair']})",
                flush=True,
            )
    rows = list({(r["recipe"], r["projection"]): r for r in rows}.values())
    result = {
        "protocol": {
            "public-images": args.public, "held-out": args.held_out,
            "fit": args.public - args.held_out, "model": args.model,
            "timesteps": TIMESTEPS, "error-timesteps": ERROR_TIMESTEPS,
            "zero-shot-held-out": zero_shot,
        },
        "rows": rows,
        "command": command(args),
        "seconds": time.perf_counter() - t_start,
        "machine": hardware(),
    }  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "study.json", result)
    atomic_write_text(out / "results.md", markdown(result))
    if args.model_card:
        print(f"model card: {record_in_model_card(result, args.model)}")
    print((out / "results.md").read_text())
    return 0


def markdown(result: dict[str, Any]) -> str:
    p = result["protocol"]
    lines = [
        "# Feature study: which diffusion features carry the classes?",
        "",
        f"Model `{p['model']}`; {p['fit']} public images fit, {p['held-out']} held "
        f"out (stratified, from the server's public split; never the test set). "
        f"Zero-shot by lowest denoising error on the held-out images: "
        f"{p['zero-shot-held-out']:.3f}. {result['seconds'] / 60:.1f} min on "
        f"{result['machine'].split(';')[0]}.",
        "",
        f"Command: `{result['command']}`",
        "",
        *feature_study_table(result),
    ]
    return "\n".join(lines) + "\n"


def record_in_model_card(result: dict[str, Any], model: str) -> Path:
    """Write the study into the model's folder and re-render its model card."""
    model_dir = Path(resolve_guidance_model(model))
    if not (model_dir / "training_log.json").is_file():
        raise SystemExit(
            f"--model-card: {model_dir} has no training_log.json, so no card is "
            "rendered from it (only models trained by diffusion_service.pretrain, "
            "such as 'embedded', have one)"
        )
    atomic_write_json(model_dir / FEATURE_STUDY, result)
    return write_model_card(model_dir)


if __name__ == "__main__":
    sys.exit(main())
