"""Load benchmark of the standalone guidance service (diffusion_service.remote).

A real server process (``python -m diffusion_service.remote serve``) with the
shipped embedded model, TLS (certificates from deploy/make_certs.sh) and a
bearer token, on loopback. ``--callers`` threads share one
:class:`RemoteGuidance` channel (as a ServerApp would) and each sends
``--requests`` Features requests of 1 to 4 real Fashion-MNIST test images
(noise prompt, the cpu profile's d = 128, default micro-batch 32), one at a
time. The same seeded request list runs twice, each against a fresh server:

1. **batched**: micro-batching on (``--max-batch``, default 64 samples);
2. **unbatched**: ``--max-batch 1`` (every request is its own model call).

Reported per run: throughput (requests/s, images/s), p50/p99 latency, the
server's peak RSS (``VmHWM`` of /proc/<pid>/status, model load included),
failed valid requests (must be 0), the mean micro-batch the server achieved
(from its Info counters), and whether the server exited 0 on SIGTERM. The two
runs' features are compared bit for bit (merging must not change them).

    python -m benchmarks.service_load [--callers 8] [--requests 200]

Writes ``benchmarks/results/service_load/results.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common.datasets import DATASETS, load_dataset  # noqa: E402
from diffusion_service import FeatureRecipe  # noqa: E402
from diffusion_service.remote import GuidanceServiceError, RemoteGuidance  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "service_load"
MAKE_CERTS = REPO / "deploy" / "make_certs.sh"
DATASET = "fashion-mnist"
RECIPE = FeatureRecipe(dim=128)  # cpu profile: width-16 ResNet-10, 128-d embedding


@dataclass
class Request:
    """One planned Features request."""

    indices: np.ndarray


@dataclass
class RunResult:
    """Measurements of one run against one server."""

    name: str
    max_batch: int
    seconds: float = 0.0
    requests: int = 0
    images: int = 0
    failed: int = 0
    first_error: str = ""
    latencies_ms: list[float] = field(default_factory=list)
    peak_rss_mb: float = 0.0
    end_rss_mb: float = 0.0
    mean_batch_samples: float = 0.0
    mean_batch_requests: float = 0.0
    batches: int = 0
    exit_code: int | None = None
    features: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)

    def pct(self, q: float) -> float:
        """Latency percentile in ms."""
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else 0.0


def plan(callers: int, requests: int, lo: int, hi: int, n: int, seed: int):
    """Per caller, the seeded list of requests (random test-set indices)."""
    rng = np.random.default_rng(seed)
    return [
        [
            Request(rng.choice(n, size=int(rng.integers(lo, hi + 1)), replace=False))
            for _ in range(requests)
        ]
        for _ in range(callers)
    ]


def proc_status_mb(pid: int, key: str) -> float:
    """A memory field of /proc/<pid>/status (e.g. VmHWM) in MiB."""
    text = Path(f"/proc/{pid}/status").read_text()
    m = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
    return int(m.group(1)) / 1024 if m else float("nan")


def start_server(
    certs: Path, max_batch: int, args
) -> tuple[subprocess.Popen, int, list]:
    """Start the service as a subprocess on a free port; returns (proc, port, log)."""
    cmd = [
        sys.executable, "-m", "diffusion_service.remote", "serve",
        "--model", "embedded", "--address", "127.0.0.1:0",
        "--certfile", str(certs / "server.pem"), "--keyfile", str(certs / "server.key"),
        "--token-file", str(certs / "token"), "--max-batch", str(max_batch),
        "--max-queue", "256", "--threads", "32",
        "--max-wait-ms", str(args.max_wait_ms),
        "--torch-threads", str(args.torch_threads),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.torch_threads)}
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True, bufsize=1
    )
    log: list[str] = []
    for line in proc.stderr:
        log.append(line)
        if m := re.search(r"guidance service on 127\.0\.0\.1:(\d+)", line):
            threading.Thread(
                target=lambda: log.extend(proc.stderr), daemon=True
            ).start()
            return proc, int(m.group(1)), log
    proc.wait()
    raise RuntimeError("server did not start:\n" + "".join(log))


def run_once(name: str, max_batch: int, requests, data, certs: Path, args) -> RunResult:
    """One server, warm-up, then every caller's requests; measured."""
    images, labels = data
    names = DATASETS[DATASET].class_names
    res = RunResult(name, max_batch)
    proc, port, log = start_server(certs, max_batch, args)
    lock = threading.Lock()
    try:
        client = RemoteGuidance(
            f"localhost:{port}", root_ca=certs / "ca.crt",
            token_file=certs / "token", timeout=300,
        )  # fmt: skip
        with client:
            assert client.health() == "SERVING"

            def send(req: Request):
                idx = torch.as_tensor(req.indices)
                return client.features(
                    images[idx], idx, recipe=RECIPE, class_names=names,
                    kind="noise", labels=labels[idx],
                )  # fmt: skip

            for caller in requests:  # warm-up: extractor cache, kernels
                send(caller[0])
            before = client.info()["stats"]

            def caller_loop(c: int) -> None:
                for r, req in enumerate(requests[c]):
                    t0 = time.perf_counter()
                    try:
                        out = send(req)
                    except GuidanceServiceError as exc:
                        with lock:
                            res.failed += 1
                            res.first_error = res.first_error or str(exc)
                        continue
                    dt = (time.perf_counter() - t0) * 1000.0
                    with lock:
                        res.latencies_ms.append(dt)
                        res.requests += 1
                        res.images += len(req.indices)
                        res.features[(c, r)] = out.features

            threads = [
                threading.Thread(target=caller_loop, args=(c,))
                for c in range(len(requests))
            ]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            res.seconds = time.perf_counter() - t0
            after = client.info()["stats"]
        res.batches = after["batches"] - before["batches"]
        b = max(res.batches, 1)
        res.mean_batch_samples = (after["samples"] - before["samples"]) / b
        res.mean_batch_requests = (after["requests"] - before["requests"]) / b
        res.peak_rss_mb = proc_status_mb(proc.pid, "VmHWM")
        res.end_rss_mb = proc_status_mb(proc.pid, "VmRSS")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            res.exit_code = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            res.exit_code = None
    return res


def table(runs: list[RunResult]) -> list[str]:
    """Markdown rows, one per run."""
    rows = [
        "| run | max batch | requests | images | wall s | req/s | img/s | p50 ms | "
        "p99 ms | mean batch (samples / requests) | merged batches | failed | "
        "server peak RSS MiB | exit code |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in runs:
        rows.append(
            f"| {r.name} | {r.max_batch} | {r.requests} | {r.images} | "
            f"{r.seconds:.1f} | {r.requests / r.seconds:.1f} | "
            f"{r.images / r.seconds:.1f} | {r.pct(50):.0f} | {r.pct(99):.0f} | "
            f"{r.mean_batch_samples:.1f} / {r.mean_batch_requests:.2f} | {r.batches} | "
            f"{r.failed} | {r.peak_rss_mb:.0f} | {r.exit_code} |"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run both modes, print and write the results."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--callers", type=int, default=8, help="concurrent callers")
    ap.add_argument("--requests", type=int, default=200, help="requests per caller")
    ap.add_argument("--min-images", type=int, default=1)
    ap.add_argument("--max-images", type=int, default=4)
    ap.add_argument("--max-batch", type=int, default=64, help="batched run's max batch")
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument(
        "--torch-threads", type=int, default=1, help="server's torch threads"
    )
    ap.add_argument(
        "--unbatched-requests",
        type=int,
        default=None,
        help="requests per caller of the max-batch-1 run (default: --requests)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    if not 1 <= args.min_images <= args.max_images:
        ap.error("need 1 <= --min-images <= --max-images")
    _, test = load_dataset(DATASET, "")
    data = (test.images, test.labels)
    reqs = plan(
        args.callers, args.requests, args.min_images, args.max_images,
        len(test.images), args.seed,
    )  # fmt: skip
    n_unb = args.unbatched_requests or args.requests
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        certs = Path(tmp) / "certs"
        subprocess.run(["bash", str(MAKE_CERTS), str(certs)], check=True)
        runs = [
            run_once("batched", args.max_batch, reqs, data, certs, args),
            run_once("unbatched", 1, [r[:n_unb] for r in reqs], data, certs, args),
        ]
    load_after = os.getloadavg()
    batched, unbatched = runs
    common = set(batched.features) & set(unbatched.features)
    identical = all(
        torch.equal(batched.features[k], unbatched.features[k]) for k in common
    )
    speedup = (batched.requests / batched.seconds) / (
        unbatched.requests / unbatched.seconds
    )
    lines = [
        "# Guidance service under load (diffusion_service.remote)",
        "",
        f"Command: `python -m benchmarks.service_load {' '.join(argv or sys.argv[1:])}`"
        f" (run under `nice -n 19`).",
        "",
        f"Setup: {args.callers} concurrent callers sharing one TLS channel, "
        f"{args.requests} requests each in the batched run and {n_unb} in the "
        f"unbatched run, each request {args.min_images}-{args.max_images} random "
        f"Fashion-MNIST test images (noise prompt), recipe {RECIPE.to_dict()}; "
        "server: the shipped embedded model on CPU, TLS + bearer token, "
        f"--max-wait-ms {args.max_wait_ms}, --torch-threads {args.torch_threads}, "
        "one fresh server process per run.",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} "
        f"cores, torch {torch.__version__}. **Another long benchmark was sharing "
        f"the CPU**: load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after. Absolute figures are therefore pessimistic "
        "and noisy; the two runs were measured back to back under the same load.",
        "",
        *table(runs),
        "",
        f"- Micro-batching on vs off (max batch {args.max_batch} vs 1): "
        f"**{speedup:.2f}x** the requests/s; p50 latency "
        f"{batched.pct(50):.0f} ms vs {unbatched.pct(50):.0f} ms.",
        f"- Failed valid requests: {batched.failed} batched, {unbatched.failed} "
        f"unbatched{' (' + batched.first_error + unbatched.first_error + ')' if batched.failed + unbatched.failed else ''}.",
        f"- Features of the {len(common)} requests both runs served are "
        f"{'bit-identical' if identical else 'NOT identical'} between the runs "
        "(merging requests does not change a sample's features).",
        "- Peak RSS is the server's VmHWM over its lifetime (model load included).",
        "- Each model call is padded to the recipe's micro-batch (32 rows), so a "
        "request of 1-4 images costs a full call when it runs alone; merging "
        "fills those rows with other callers' images.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(text)
    ok = batched.failed == unbatched.failed == 0 and identical
    ok = ok and batched.exit_code == unbatched.exit_code == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
