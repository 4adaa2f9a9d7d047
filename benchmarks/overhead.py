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
process from ``/proc``.

    python -m benchmarks.overhead [--rounds 3] [--clients 10] [--samples 2000]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from client_app.training import LocalSettings, train
from common.config import RunConfig
from common.federation import client_tensors, local_training_config, make_model
from common.io import read_jsonl
from deploy.local_sim import app_defaults, run_simulation

APP_DIR = Path(__file__).resolve().parents[1]


class PeakMemory(threading.Thread):
    """Polls /proc for the peak RSS of processes whose command line matches."""

    def __init__(self, patterns: dict[str, str], interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.patterns, self.interval = patterns, interval
        self.peak_mb: dict[str, float] = {k: 0.0 for k in patterns}
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            for proc in Path("/proc").glob("[0-9]*"):
                try:
                    cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                    if not cmd:
                        continue
                    for name, pattern in self.patterns.items():
                        if pattern in cmd:
                            for line in (proc / "status").read_text().splitlines():
                                if line.startswith("VmHWM:"):
                                    mb = int(line.split()[1]) / 1024
                                    self.peak_mb[name] = max(self.peak_mb[name], mb)
                except OSError:
                    continue
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def _worker_init() -> None:
    torch.set_num_threads(1)  # as a Ray actor with 1 CPU


def _train_client(cfg: RunConfig, pid: int, state: dict, seed: int) -> tuple[dict, int]:
    """One client's local training, in a worker process (no Flower involved)."""
    x, y = client_tensors(cfg, pid)  # cached per worker process, as in an actor
    model = make_model(cfg)
    model.load_state_dict(state)
    # exactly the settings the server sends its clients
    settings = LocalSettings.from_config(local_training_config(cfg))
    train(model, x, y, settings, seed=seed)
    return model.state_dict(), len(y)


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
                for pid in range(cfg.num_clients)
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

    overrides = {
        "method": "fedavg",
        "num-clients": args.clients,
        "partitioner": "iid",
        "num-server-rounds": args.rounds,
        "max-samples-per-client": args.samples,
        "output-dir": str(args.out / "runs"),
        "run-name": f"fedavg-overhead-{time.strftime('%Y%m%d-%H%M%S')}",
    }
    cfg = RunConfig.from_run_config({**app_defaults(APP_DIR), **overrides})

    print(
        f"[1/2] Flower simulation: {args.rounds} rounds x {args.clients} clients x "
        f"{args.samples} samples",
        flush=True,
    )
    sampler = PeakMemory({"client": "ClientAppActor", "server": "flwr-simulation"})
    sampler.start()
    result = run_simulation(APP_DIR, overrides, stream=False)
    sampler.stop()
    if not result.ok:
        print(result.output[-3000:], file=sys.stderr)
        return 1
    rows = [r for r in read_jsonl(result.run_dir / "metrics.jsonl") if r["round"] > 0]
    flower_train = [r["round-seconds"] - r["eval-seconds"] for r in rows]
    flower_round = [r["round-seconds"] for r in rows]
    eval_s = [r["eval-seconds"] for r in rows]

    print(
        "[2/2] plain PyTorch, same steps, 2 worker processes x 1 torch thread",
        flush=True,
    )
    plain = plain_pytorch_rounds(cfg, args.rounds)

    # Round 1 pays one-off costs (actor start, data load); report the rest.
    steady = slice(1, None) if args.rounds > 1 else slice(None)
    f_med = statistics.median(flower_train[steady])
    p_med = statistics.median(plain[steady])
    steps = sum(
        -(-len(client_tensors(cfg, pid)[1]) // cfg.batch_size)
        for pid in range(args.clients)
    )
    report = (
        f"FedAvg, {args.clients} clients x {args.samples} samples, ResNet-10 width "
        f"{cfg.model_width}, batch {cfg.batch_size}, {steps} SGD steps per round, "
        f"{args.rounds} rounds (median of rounds 2..{args.rounds})\n\n"
        "| measure | value |\n|---|---|\n"
        f"| Flower round, whole (train + central eval) | {statistics.median(flower_round[steady]):.1f} s |\n"
        f"| Flower round, training phase | {f_med:.1f} s |\n"
        f"| central evaluation (10k test images) | {statistics.median(eval_s[steady]):.1f} s |\n"
        f"| plain PyTorch, same steps + averaging | {p_med:.1f} s |\n"
        f"| **ratio Flower training phase / plain PyTorch** | **{f_med / p_med:.2f}x** (target <= 1.3x) |\n"
        f"| peak RSS of one ClientApp process (Ray actor) | {sampler.peak_mb['client']:.0f} MB |\n"
        f"| peak RSS of the ServerApp process | {sampler.peak_mb['server']:.0f} MB |\n"
        f"| whole simulation wall time (incl. SuperLink + Ray start) | {result.seconds:.0f} s |\n"
        "\nBoth sides use the same parallelism: Flower runs 2 ClientApp actors at a "
        "time (1 CPU each); the plain loop runs 2 worker processes with 1 torch "
        "thread each. Round 1 is left out of the medians (actor and worker start).\n"
        f"\nFlower per-round training phase: {[round(t, 1) for t in flower_train]} s; "
        f"plain: {[round(t, 1) for t in plain]} s\n"
    )
    print("\n" + report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
