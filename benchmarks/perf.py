"""The results report's performance figures, each measured side by side in one run.

1. guided feature extraction with the profile's own guidance model and recipe:
   batched into a fresh store vs one image per call vs the bare VAE + U-Net
   passes (``benchmarks.diffusion_extraction.measure``);
2. a simulated FedAvg round vs the same SGD steps in plain PyTorch, with the
   peak memory of the ServerApp and of one ClientApp process
   (``benchmarks.overhead.measure_overhead``).

The round time of every method over FedAvg's comes from the matrix cells
themselves (``benchmarks.report.cost_table``).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from benchmarks.profiles import Profile
from deploy.local_sim import resolve_config

APP_DIR = Path(__file__).resolve().parents[1]


def extraction(profile: Profile, config: dict[str, Any]) -> dict[str, Any]:
    """Batched vs naive vs bare extraction rates (images/s) with the run's recipe."""
    import torch

    from benchmarks.diffusion_extraction import measure
    from common.datasets import get_spec, load_dataset
    from common.federation import make_model
    from diffusion_service import GuidanceModel
    from diffusion_service.embedded_model import resolve_guidance_model
    from server_app.guidance import make_recipe

    plan = profile.perf
    cfg = resolve_config(APP_DIR, {**config, "method": "feddifrc"})
    spec = get_spec(cfg.data.dataset)
    model = GuidanceModel.from_pretrained(
        resolve_guidance_model(cfg.guidance.model), device=cfg.runtime.device
    )
    recipe = make_recipe(cfg, make_model(cfg, spec).embedding_dim)
    # Fit the projection on the measured images (it is fitted once per store in
    # a run and not part of the timings).
    recipe = type(recipe).from_dict(
        {**recipe.to_dict(), "fit_size": plan.extraction_samples}
    )
    train, _ = load_dataset(cfg.data.dataset, cfg.data.data_root)
    n = plan.extraction_samples
    args = SimpleNamespace(repeats=plan.repeats, naive_samples=plan.naive_samples)
    with tempfile.TemporaryDirectory() as tmp:
        best = measure(
            model, recipe, list(spec.class_names), train.images[:n], train.labels[:n],
            Path(tmp), args,
        )  # fmt: skip
    return {
        "samples": n,
        "naive-samples": plan.naive_samples,
        "repeats": plan.repeats,
        "micro-batch": recipe.micro_batch,
        "up-blocks": list(recipe.up_blocks),
        "dim": recipe.dim,
        "device": cfg.runtime.device,
        "torch-threads": torch.get_num_threads(),
        "batched-img-s": n / best["batched"],
        "naive-img-s": plan.naive_samples / best["naive"],
        "bare-img-s": n / best["bare"],
        "fit-s": best["fit"],
    }


def overhead(profile: Profile, config: dict[str, Any], out: Path) -> dict | None:
    """Flower round vs plain PyTorch, and peak memory, on the profile's data/model."""
    from benchmarks.overhead import measure_overhead

    plan = profile.perf
    keep = ("dataset", "data-root", "model-width", "device", "augment")
    base = {k: v for k, v in config.items() if k in keep}
    return measure_overhead(
        plan.overhead_rounds, plan.overhead_clients, plan.overhead_samples, out,
        base=base,
    )  # fmt: skip


def measure_all(profile: Profile, config: dict[str, Any], out: Path) -> dict[str, Any]:
    """Both measurements; a failed one is recorded as its error, not hidden."""
    figures: dict[str, Any] = {}
    for name, call in (
        ("extraction", lambda: extraction(profile, config)),
        ("overhead", lambda: overhead(profile, config, out)),
    ):
        t0 = time.perf_counter()
        print(f"performance: {name} ...", flush=True)
        try:
            figures[name] = call() or {"error": "the simulation failed (log above)"}
        except Exception as exc:  # noqa: BLE001 - reported in the results
            figures[name] = {"error": f"{type(exc).__name__}: {exc}"}
        figures[name]["wall-s"] = time.perf_counter() - t0
    return figures


def render(figures: dict[str, Any]) -> list[str]:
    """Markdown paragraphs of the figures (errors included as such)."""
    out = []
    e = figures.get("extraction", {})
    if "error" in e:
        out.append(f"Guided extraction: not measured ({e['error']}).")
    elif e:
        out.append(
            "Guided feature extraction, this profile's guidance model and recipe "
            f"(up blocks {e['up-blocks']}, d = {e['dim']}, micro-batch "
            f"{e['micro-batch']}, {e['device']}, {e['torch-threads']} torch "
            f"thread(s), best of {e['repeats']}):\n\n"
            "| extraction | images/s |\n|---|---|\n"
            f"| batched, into a fresh store ({e['samples']} images) | "
            f"{e['batched-img-s']:.0f} |\n"
            f"| naive, one image per call ({e['naive-samples']} images) | "
            f"{e['naive-img-s']:.0f} |\n"
            f"| bare VAE + U-Net passes, same batches | {e['bare-img-s']:.0f} |\n"
            f"\nBatched / naive = **{e['batched-img-s'] / e['naive-img-s']:.2f}x**; "
            f"batched time / bare time = {e['bare-img-s'] / e['batched-img-s']:.2f}x. "
            f"Projection fit (once per store, not timed above): {e['fit-s']:.1f} s."
        )
    o = figures.get("overhead", {})
    if "error" in o:
        out.append(f"Flower overhead: not measured ({o['error']}).")
    elif o:
        out.append(
            f"A simulated FedAvg round vs the same steps in plain PyTorch "
            f"({o['clients']} clients x {o['samples']} samples, IID, "
            f"{o['steps-per-round']} SGD steps per round, median of rounds "
            f"2..{o['rounds']}; both sides 2 processes x 1 torch thread):\n\n"
            "| measure | value |\n|---|---|\n"
            f"| Flower round, training phase | {o['flower-train-s']:.1f} s |\n"
            f"| plain PyTorch, same steps + averaging | {o['plain-s']:.1f} s |\n"
            f"| **Flower / plain PyTorch** | **{o['flower-train-s'] / o['plain-s']:.2f}x** |\n"
            f"| central evaluation | {o['eval-s']:.1f} s |\n"
            f"| peak RSS, ServerApp process | {o['server-peak-mb']:.0f} MB |\n"
            f"| peak RSS, one ClientApp process (Ray actor) | {o['client-peak-mb']:.0f} MB |\n"
            "\nPeak RSS is the kernel's high-water mark (`VmHWM`) of the processes "
            "this run started (`benchmarks/memory.py`); the cost table above gives "
            "it per method from the matrix cells."
        )
    return out
