"""Flower's cost: a simulated FedAvg round vs the same SGD steps in plain PyTorch.

Measured side by side in one run, on the same data, model and steps:

1. a real Flower simulation (``deploy.local_sim``) of FedAvg, ``--rounds`` rounds
   of ``--clients`` clients; per round, the training phase is the round's wall
   time minus the server's central evaluation (both from ``metrics.jsonl``);
2. the same rounds in one plain PyTorch process: for every client, copy the
   global model and call the very same ``client_app.training.train`` on the same
   partition, then average the weights. No Flower, no Ray, no messages.

The ratio (1) / (2) is Flower's overhead. While (1) runs, a sampler reads the
peak resident memory (``VmHWM``) of every ClientApp actor and of the ServerApp
process from ``/proc`` (only processes this benchmark started:
``benchmarks.memory``).

    python -m benchmarks.overhead [--rounds 3] [--clients 10] [--samples 2000]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from benchmarks.memory import TreeMemory
from client_app.training import LocalSettings, train
from common.config import RunConfig
from common.federation import client_tensors, local_training_config, make_model
from common.io import read_jsonl
from deploy.local_sim import app_defaults, run_simulation

APP_DIR = Path(__file__).resolve().parents[1]


def _worker_init() -> None:
    torch.set_num_threads(1)  # as a Ray actor with 1 CPU


def _train_client(cfg: RunConfig, pid: int, state: dict, seed: int) -> tuple[dict, int]:
    """One client's local training, in a worker process (no Flower involved)."""
    x, y = client_tensors(cfg, pid)  # cached per worker process, as in an actor
    model = make_model(cfg)
    model.load_state_dict(state)
    # exactly the settings the server sends its clients
    settings = LocalSettings.from_config(local_training_config(cfg))
    train(model, x, y, settings, seed=seed, device=cfg.runtime.device, augment=cfg.data.augment)
    return {k: v.cpu() for k, v in model.state_dict().items()}, len(y)


def plain_pytorch_rounds(cfg: RunConfig, rounds: int, workers: int = 2) -> list[float]:
    """Seconds per round of the same local training without Flower.

    Same parallelism as the simulation: ``workers`` processes with one torch
    thread each (Flower runs one ClientApp per CPU), clients handed out in turn,
    then the weighted average in the parent.
    """
    torch.manual_seed(cfg.seed)
    global_model = make_model(cfg)
    times = []
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init) as pool:
        # Warm the workers (imports, dataset load) outside the timed rounds,
        # as Flower's actors are warm after round 1.
        list(pool.map(_worker_init_data, [cfg] * workers))
        for rnd in range(1, rounds + 1):
            t0 = time.perf_counter()
            state = global_model.state_dict()
            futures = [
                pool.submit(_train_client, cfg, pid, state, rnd * 1000 + pid)
                for pid in range(cfg.federation.num_clients)
            ]
            results = [f.result() for f in futures]
            total = sum(n for _, n in results)
            avg = {
                k: sum(s[k].double() * n for s, n in results) / total
                for k in results[0][0]
            }
            global_model.load_state_dict(
                {k: v.to(results[0][0][k].dtype) for k, v in avg.items()}
            )
            times.append(time.perf_counter() - t0)
            print(f"  plain PyTorch round {rnd}: {times[-1]:.1f} s", flush=True)
    return times


def _worker_init_data(cfg: RunConfig) -> None:
    client_tensors(cfg, 0)


def measure_overhead(
    rounds: int,
    clients: int,
    samples: int,
    out: Path,
    method: str = "fedavg",
    base: dict | None = None,
) -> dict | None:
    """Both sides, one after the other; medians, peak memory and raw rounds.

    ``base``: run-config keys of the data and model (e.g. a results profile's
    dataset and width). None if the simulation failed (its log is printed).
    """
    overrides = {
        **(base or {}),
        "method": method,
        "num-clients": clients,
        "partitioner": "iid",
        "num-server-rounds": rounds,
        "max-samples-per-client": samples,
        "output-dir": str(out / "runs"),
        "run-name": f"{method}-overhead-{time.strftime('%Y%m%d-%H%M%S')}",
    }
    cfg = RunConfig.from_run_config({**app_defaults(APP_DIR), **overrides})
    print(
        f"[1/2] Flower simulation: {rounds} rounds x {clients} clients x "
        f"{samples} samples",
        flush=True,
    )
    with TreeMemory() as sampler:
        result = run_simulation(APP_DIR, overrides, stream=False)
    if not result.ok:
        print(result.output[-3000:], file=sys.stderr)
        return None
    rows = [r for r in read_jsonl(result.run_dir / "metrics.jsonl") if r["round"] > 0]
    flower_train = [r["round-seconds"] - r["eval-seconds"] for r in rows]
    print(
        "[2/2] plain PyTorch, same steps, 2 worker processes x 1 torch thread",
        flush=True,
    )
    plain = plain_pytorch_rounds(cfg, rounds)
    # Round 1 pays one-off costs (actor start, data load); report the rest.
    steady = slice(1, None) if rounds > 1 else slice(None)
    steps = sum(
        -(-len(client_tensors(cfg, pid)[1]) // cfg.sgd.batch_size) for pid in range(clients)
    )
    return {
        "method": method,
        "rounds": rounds,
        "clients": clients,
        "samples": samples,
        "model-width": cfg.model.width,
        "batch-size": cfg.sgd.batch_size,
        "steps-per-round": steps,
        "flower-round-s": statistics.median([r["round-seconds"] for r in rows][steady]),
        "flower-train-s": statistics.median(flower_train[steady]),
        "eval-s": statistics.median([r["eval-seconds"] for r in rows][steady]),
        "plain-s": statistics.median(plain[steady]),
        "client-peak-mb": sampler.peak_mb["client"],
        "server-peak-mb": sampler.peak_mb["server"],
        "simulation-wall-s": result.seconds,
        "flower-train-rounds": flower_train,
        "plain-rounds": plain,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.overhead",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--samples", type=int, default=2000, help="samples per client")
    parser.add_argument(
        "--out", type=Path, default=APP_DIR / "benchmarks" / "results" / "overhead"
    )
    args = parser.parse_args(argv)
    m = measure_overhead(args.rounds, args.clients, args.samples, args.out)
    if m is None:
        return 1
    report = (
        f"FedAvg, {args.clients} clients x {args.samples} samples, ResNet-10 width "
        f"{m['model-width']}, batch {m['batch-size']}, {m['steps-per-round']} SGD steps "
        f"per round, {args.rounds} rounds (median of rounds 2..{args.rounds})\n\n"
        "| measure | value |\n|---|---|\n"
        f"| Flower round, whole (train + central eval) | {m['flower-round-s']:.1f} s |\n"
        f"| Flower round, training phase | {m['flower-train-s']:.1f} s |\n"
        f"| central evaluation (10k test images) | {m['eval-s']:.1f} s |\n"
        f"| plain PyTorch, same steps + averaging | {m['plain-s']:.1f} s |\n"
        f"| **ratio Flower training phase / plain PyTorch** | **{m['flower-train-s'] / m['plain-s']:.2f}x** (target <= 1.3x) |\n"
        f"| peak RSS of one ClientApp process (Ray actor) | {m['client-peak-mb']:.0f} MB |\n"
        f"| peak RSS of the ServerApp process | {m['server-peak-mb']:.0f} MB |\n"
        f"| whole simulation wall time (incl. SuperLink + Ray start) | {m['simulation-wall-s']:.0f} s |\n"
        "\nBoth sides use the same parallelism: Flower runs 2 ClientApp actors at a "
        "time (1 CPU each); the plain loop runs 2 worker processes with 1 torch "
        "thread each. Round 1 is left out of the medians (actor and worker start).\n"
        f"\nFlower per-round training phase: {[round(t, 1) for t in m['flower-train-rounds']]} s; "
        f"plain: {[round(t, 1) for t in m['plain-rounds']]} s\n"
    )
    print("\n" + report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
