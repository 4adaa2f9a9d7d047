"""What a GPU machine does with SemanticFL: one short check, a JSON and a Markdown report.

Run through ``scripts/gpu_check.sh`` (which installs the offline bundle first);
on a machine without CUDA it prints one line and exits 0. Three parts:

1. **devices**: the GPU torch sees here (name, memory, capability, driver);
2. **guidance features**: :class:`~diffusion_service.FeatureExtractor` images/s
   on the CPU (fp32) and on the GPU (fp32, fp16, bf16) for a tiny random model
   of Stable Diffusion 2's structure and for the embedded model, and how far
   each reduced precision's features are from fp32 on the GPU (cosine);
3. **federation**: 2 rounds of FedAvg at the papers' width (ResNet-10, width
   64), 10 clients sharing the one GPU, through Flower's deployment engine with
   10 local SuperNodes (no Ray): the run's status, the device the ServerApp
   evaluated on, the share of clients that trained on CUDA (``train-cuda``),
   their peak GPU memory while training, round times, and the GPU's peak memory
   in use (all processes, sampled by ``nvidia-smi`` every 0.2 s).

Usage::

    python -m benchmarks.gpu_check [--out outputs/gpu-check] [--data-root DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

from common.datasets import get_spec, load_dataset
from common.io import atomic_write_json, atomic_write_text, read_jsonl

ROOT = Path(__file__).resolve().parent.parent
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# The federation: the papers' model width on 10 clients; everything else small
# so the check ends in minutes. The extreme split is the project's own code
# (no flwr-datasets, whose pyarrow does not fit in the bundle).
FEDERATION: dict[str, Any] = {
    "method": "fedavg",
    "dataset": "fashion-mnist",
    "num-clients": 10,
    "num-server-rounds": 2,
    "model-width": 64,
    "partitioner": "extreme",
    "max-samples-per-client": 500,
    "public-split-size": 0,
    "local-epochs": 1,
    "device": "cuda",
}


def no_cuda_reason() -> str | None:
    """Why this machine cannot run the check, or None when it can."""
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} sees no CUDA device"
    return None


def _nvidia_smi(*query: str) -> list[str]:
    if shutil.which("nvidia-smi") is None:
        return []
    out = subprocess.run(
        ["nvidia-smi", f"--query-gpu={','.join(query)}", "--format=csv,noheader,nounits"],
        capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip
    return [line.strip() for line in out.splitlines() if line.strip()]


def devices() -> dict[str, Any]:
    """The GPU as torch and the driver see it."""
    props = torch.cuda.get_device_properties(0)
    driver = _nvidia_smi("driver_version")
    return {
        "gpu": props.name,
        "gpu-memory-mib": props.total_memory // 2**20,
        "capability": f"{props.major}.{props.minor}",
        "gpus": torch.cuda.device_count(),
        "driver": driver[0] if driver else "unknown (no nvidia-smi)",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }


# ------------------------------------------------------------ guidance features
def _throughput(model_dir: Path, images, device: str, dtype: str, reps: int):
    """(images/s, features) of neutral-prompt raw features, after a warm-up."""
    from diffusion_service import FeatureExtractor, FeatureRecipe, GuidanceModel

    model = GuidanceModel.from_pretrained(model_dir, device=device, dtype=DTYPES[dtype])
    recipe = FeatureRecipe(
        up_blocks=tuple(range(1, model.num_up_blocks)), micro_batch=32
    )
    ex = FeatureExtractor(model, recipe, get_spec("fashion-mnist").class_names)
    idx = list(range(len(images)))
    prompts = torch.full((len(images), 1), ex.neutral_id)
    ex.raw(images[:32], idx[:32], prompts[:32])  # warm-up: kernels, allocator
    best, feats = float("inf"), None
    for _ in range(reps):
        t0 = time.perf_counter()
        feats = ex.raw(images, idx, prompts)  # ends on the CPU: synchronised
        best = min(best, time.perf_counter() - t0)
    return len(images) / best, feats


def guidance_throughput(images, cpu_images: int) -> list[dict[str, Any]]:
    """Images/s per model, device and dtype, and each dtype's cosine to GPU fp32."""
    from benchmarks.random_components import save_embedded, save_sd2_shaped

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sd2 = save_sd2_shaped(Path(tmp) / "sd2")
        embedded, text = save_embedded(Path(tmp) / "embedded")
        models = (
            ("tiny SD2-shaped (random)", sd2, "random 64-d BERT"),
            ("embedded", embedded, text),
        )
        for name, folder, text_encoder in models:
            cpu_rate, _ = _throughput(folder, images[:cpu_images], "cpu", "fp32", 1)
            ref = None
            for dtype in DTYPES:
                rate, feats = _throughput(folder, images, "cuda", dtype, 3)
                ref = feats if dtype == "fp32" else ref
                cos = torch.nn.functional.cosine_similarity(feats, ref, dim=-1)
                rows.append(
                    {
                        "model": name,
                        "text-encoder": text_encoder,
                        "dtype": dtype,
                        "gpu-images-per-s": rate,
                        "cpu-fp32-images-per-s": cpu_rate,
                        "speed-up-over-cpu": rate / cpu_rate,
                        "min-cosine-to-gpu-fp32": float(cos.min()),
                    }
                )
                print(
                    f"  {name:26s} {dtype}: {rate:9.1f} img/s on GPU, "
                    f"{rate / cpu_rate:6.1f}x CPU fp32 ({cpu_rate:.1f} img/s); "
                    f"min cosine to fp32 {float(cos.min()):.4f}",
                    flush=True,
                )
    return rows


# ------------------------------------------------------------------ federation
class GpuMemorySampler:
    """Peak GPU memory in use on device 0, all processes, from ``nvidia-smi``."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval, self.peak_mib = interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            used = _nvidia_smi("memory.used")
            if used:
                self.peak_mib = max(self.peak_mib, float(used[0]))
            self._stop.wait(self.interval)

    def __enter__(self) -> GpuMemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def federation(
    out: Path, data_root: str, changes: dict[str, Any] | None = None
) -> dict[str, Any]:
    """:data:`FEDERATION` (with ``changes``) on the deployment engine, one local
    SuperNode per client."""
    from deploy.local_deploy import run_deployment

    overrides = {
        **FEDERATION,
        **(changes or {}),
        "output-dir": str(out / "runs"),
        "run-name": "fedavg-w64",
    }
    if data_root:
        overrides["data-root"] = data_root
    with GpuMemorySampler() as sampler:
        result = run_deployment(ROOT, overrides, stream=False, timeout=600)
    report: dict[str, Any] = {
        "config": overrides,
        "engine": f"deployment (flower-superlink + {overrides['num-clients']} "
        "flower-supernode, no Ray)",
        "status": result.status,
        "seconds": result.seconds,
        "gpu-peak-mib-all-processes": sampler.peak_mib or None,
    }
    metrics = result.run_dir / "metrics.jsonl"
    if not result.ok or not metrics.is_file():
        report["log-tail"] = result.output[-3000:]
        return report
    rows = [r for r in read_jsonl(metrics) if r["round"] > 0]
    summary = json.loads((result.run_dir / "summary.json").read_text())
    report.update(
        {
            "server-device": summary.get("server-device"),
            "round-seconds": [r["round-seconds"] for r in rows],
            "train-cuda": [r["train"].get("train-cuda") for r in rows],
            "client-gpu-peak-mib": [r["train"].get("train-gpu-peak-mb") for r in rows],
            "final-accuracy": summary["final-round-accuracy"],
        }
    )
    return report


# --------------------------------------------------------------------- reports
def checks(report: dict[str, Any]) -> list[str]:
    """What did not hold, as sentences."""
    bad = []
    fed = report.get("federation", {})
    if fed.get("status") != "finished:completed":
        bad.append(f"federation status {fed.get('status')!r}, not finished:completed")
    elif not str(fed.get("server-device", "")).startswith("cuda"):
        bad.append(f"the ServerApp evaluated on {fed.get('server-device')!r}")
    elif any(share != 1.0 for share in fed.get("train-cuda", [])):
        bad.append(f"not every ClientApp trained on CUDA: {fed.get('train-cuda')}")
    return bad


def markdown(report: dict[str, Any]) -> str:
    """The report as a page."""
    d, fed = report["devices"], report.get("federation", {})
    lines = [
        "# GPU check",
        "",
        f"{d['gpu']} ({d['gpu-memory-mib']:,} MiB, capability {d['capability']}), "
        f"driver {d['driver']}, torch {d['torch']} (CUDA {d['cuda']}), Python "
        f"{d['python']}, {d['cpus']} CPUs. Total {report['seconds']:.0f} s.",
        "",
        "## Guidance-feature extraction (neutral prompt, raw features)",
        "",
        "| model | text encoder | dtype | GPU img/s | CPU fp32 img/s | speed-up "
        "| min cosine to GPU fp32 |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in report.get("guidance", []):
        lines.append(
            f"| {r['model']} | {r['text-encoder']} | {r['dtype']} | "
            f"{r['gpu-images-per-s']:,.1f} | {r['cpu-fp32-images-per-s']:,.1f} | "
            f"{r['speed-up-over-cpu']:.1f}x | {r['min-cosine-to-gpu-fp32']:.4f} |"
        )
    lines += ["", "## Federation", "", f"{fed.get('engine', '')}; status "
              f"**{fed.get('status')}** in {fed.get('seconds', 0):.0f} s.", ""]  # fmt: skip
    if "round-seconds" in fed:
        peak = fed["gpu-peak-mib-all-processes"]
        peak_text = f"{peak:.0f} MiB" if peak else "not sampled (no nvidia-smi)"
        lines += [
            f"- ServerApp device: {fed['server-device']}",
            f"- share of clients that trained on CUDA, per round: {fed['train-cuda']}",
            "- round seconds: " + ", ".join(f"{s:.1f}" for s in fed["round-seconds"]),
            "- a client's peak GPU memory while training (MiB, mean over "
            "clients): " + ", ".join(f"{m:.0f}" for m in fed["client-gpu-peak-mib"]),
            f"- GPU memory in use at peak, all processes: {peak_text}",
            f"- final accuracy (2 rounds, 500 images a client): "
            f"{fed['final-accuracy']:.4f}",
        ]
    bad = report.get("failed", [])
    lines += [
        "",
        "## Result",
        "",
        "FAILED: " + "; ".join(bad) if bad else "all checks held",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_check", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--out", default=str(ROOT / "outputs" / "gpu-check"))
    ap.add_argument("--data-root", default="", help="Fashion-MNIST IDX folder")
    ap.add_argument("--images", type=int, default=512, help="images per GPU timing")
    ap.add_argument("--cpu-images", type=int, default=64, help="images per CPU timing")
    ap.add_argument("--skip-federation", action="store_true")
    args = ap.parse_args(argv)
    reason = no_cuda_reason()
    if reason:
        print(f"gpu_check: no GPU here ({reason}); nothing to check.")
        return 0
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    report: dict[str, Any] = {"devices": devices()}
    print(f"gpu_check: {report['devices']['gpu']}", flush=True)
    train, _ = load_dataset("fashion-mnist", args.data_root)
    print("guidance-feature extraction:", flush=True)
    report["guidance"] = guidance_throughput(
        train.images[: args.images], args.cpu_images
    )
    if not args.skip_federation:
        print("federation: 10 SuperNodes, 2 rounds, ResNet-10 width 64 ...", flush=True)
        report["federation"] = federation(out, args.data_root)
        print(f"  status {report['federation']['status']}", flush=True)
    report["seconds"] = time.perf_counter() - t0
    report["failed"] = checks(report) if not args.skip_federation else []
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", markdown(report))
    print(markdown(report))
    print(f"reports: {out / 'report.json'}, {out / 'report.md'}")
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
