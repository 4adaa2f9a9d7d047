"""Cost of a simulation with 10, 100 and 1,000 virtual clients, 10 sampled a round.

Every run trains the same work a round: 10 clients, each capped at the same
small number of samples (an IID split, so every partition has them), the same
central evaluation; only the total number of clients differs. So whatever grows
from the 10-client run to the 1,000-client run grows with the clients that
exist, not with the work done, and is a cost to fix.

Per method and client count, measured in one invocation, one run after the
other (nothing else should run on the machine meanwhile):

- **round time**: the mean ``round-seconds`` of rounds 2..R (round 1 also
  starts the Ray actors and their first data loads);
- **set-up**: the launch to the end of round 0 (SuperLink, Ray, the ServerApp's
  partitioning, guidance preparation and learning the nodes' partitions, the
  initial evaluation), from the run's own clock plus the launcher's;
- **ServerApp / client peak memory**: ``VmHWM`` of the ServerApp process and of
  the largest ClientApp actor (:class:`benchmarks.memory.TreeMemory`);

each also as a ratio to the same method's 10-client run. Results:
``benchmarks/results/scale/`` (``scale.json``, ``results.md``, ``scale.png``);
a run already measured with the same settings is reused (``--fresh`` redoes).

    python -m benchmarks.scale [--clients 10,100,1000] [--methods fedavg,semanticfl]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.machine import hardware
from benchmarks.matrix import APP_DIR, fmt_time
from benchmarks.memory import TreeMemory
from common.io import atomic_write_json, atomic_write_text, read_jsonl
from deploy.local_sim import run_simulation

OUT = Path(__file__).resolve().parent / "results" / "scale"
SAMPLED = 10  # clients trained a round, whatever the total

# The same work a round at every scale; only num-clients and the fraction vary.
BASE: dict[str, Any] = {
    "dataset": "fashion-mnist",
    "model-width": 16,
    "partitioner": "iid",
    "max-samples-per-client": 40,  # 1,000 IID clients of 59,000 images hold 59
    "public-split-size": 1000,
    "local-epochs": 1,
    "fraction-evaluate": 0.0,
    "seed": 0,
}
GOALS = {"round": 1.2, "server-mb": 1.2}  # the issue's: at 1,000 clients


def run_config(method: str, clients: int, rounds: int) -> dict[str, Any]:
    """The run config of one measurement."""
    if clients < SAMPLED:
        raise ValueError(f"--clients must each be >= {SAMPLED}, got {clients}")
    return {
        **BASE,
        "method": method,
        "num-clients": clients,
        "num-server-rounds": rounds,
        "fraction-train": SAMPLED / clients,
        "min-available-clients": clients,
    }


def measure(method: str, clients: int, rounds: int, out: Path) -> dict[str, Any]:
    """One run: its times and peak memory."""
    config = run_config(method, clients, rounds)
    name = f"{method}-n{clients}-r{rounds}"
    overrides = {**config, "output-dir": str(out / "runs"), "run-name": name}
    shutil.rmtree(out / "runs" / name, ignore_errors=True)  # measured again
    t0 = time.perf_counter()
    with TreeMemory() as mem:
        result = run_simulation(APP_DIR, overrides, stream=False, timeout=3 * 3600)
    if not result.ok:
        tail = result.output[-3000:]
        raise RuntimeError(f"{name}: {result.status}\n{tail}")
    rows = read_jsonl(result.run_dir / "metrics.jsonl")
    sampled = {r["train"].get("clients") for r in rows if r["round"] >= 1}
    if sampled != {SAMPLED}:
        raise RuntimeError(f"{name}: {sampled} clients trained a round, not {SAMPLED}")
    rounds_s = [r["round-seconds"] for r in rows if r["round"] >= 2]
    trained = sum(r["round-seconds"] for r in rows if r["round"] >= 1)
    return {
        "run-dir": str(result.run_dir),
        **overhead(rows),
        "method": method,
        "clients": clients,
        "config": config,
        "round-seconds": sum(rounds_s) / len(rounds_s),
        "rounds-measured": len(rounds_s),
        "setup-seconds": result.seconds - trained,
        "serverapp-setup-seconds": rows[0]["elapsed-seconds"],
        "server-mb": mem.peak_mb["server"],
        "client-mb": mem.peak_mb["client"],
        "wall-seconds": time.perf_counter() - t0,
    }


def overhead(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Mean round time without the central evaluation (rounds 2..R).

    The evaluation of the 10,000 test images is the same work at every scale
    but its time varies by a second between runs on a shared 2-core machine;
    what is left is what can grow with the number of clients (sampling,
    messaging, the engine, aggregation, records).
    """
    timed = [r for r in rows if r["round"] >= 2]
    return {
        "overhead-seconds": sum(r["round-seconds"] - r["eval-seconds"] for r in timed)
        / len(timed)
    }


def with_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row with its ratios to the same method's smallest run."""
    out = []
    for row in rows:
        base = min(
            (r for r in rows if r["method"] == row["method"]),
            key=lambda r: r["clients"],
        )
        ratios = {
            f"{k}-ratio": row[k] / base[k] if base[k] else float("nan")
            for k in (
                "round-seconds",
                "overhead-seconds",
                "setup-seconds",
                "server-mb",
                "client-mb",
            )
        }
        out.append({**row, **ratios, "baseline-clients": base["clients"]})
    return out


def markdown(rows: list[dict[str, Any]], machine: str, command: str) -> str:
    lines = [
        "# Scale: 10, 100 and 1,000 virtual clients, 10 sampled a round",
        "",
        f"Machine: {machine}",
        "",
        f"Command: `{command}`. Same work every round ({SAMPLED} clients x "
        f"{BASE['max-samples-per-client']} samples, IID, width "
        f"{BASE['model-width']}, central evaluation on the 10,000 test images); "
        "ratios to the method's run with the fewest clients. Goals at 1,000 "
        "clients: round time and ServerApp memory at most 1.2x.",
        "",
        "| method | clients | round s | x | round minus evaluation s | x | set-up s "
        "| x | ServerApp MB | x | client MB | x |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['clients']:,} | {r['round-seconds']:.2f} | "
            f"{r['round-seconds-ratio']:.2f} | {r['overhead-seconds']:.2f} | "
            f"{r['overhead-seconds-ratio']:.2f} | {r['setup-seconds']:.1f} | "
            f"{r['setup-seconds-ratio']:.2f} | {r['server-mb']:.0f} | "
            f"{r['server-mb-ratio']:.2f} | {r['client-mb']:.0f} | "
            f"{r['client-mb-ratio']:.2f} |"
        )
    lines += ["", "Goals:"]
    for r in rows:
        if r["clients"] == max(
            x["clients"] for x in rows if x["method"] == r["method"]
        ):
            for key, goal in GOALS.items():
                col = "round-seconds" if key == "round" else key
                ratio = r[f"{col}-ratio"]
                verdict = "met" if ratio <= goal else "NOT met"
                lines.append(
                    f"- {r['method']}, {r['clients']:,} clients, {col}: "
                    f"{ratio:.2f}x (goal {goal}x): {verdict}"
                )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = sorted(
            (r for r in rows if r["method"] == method), key=lambda r: r["clients"]
        )
        n = [r["clients"] for r in mine]
        for ax, key, label in zip(
            axes,
            ("round-seconds-ratio", "setup-seconds-ratio", "server-mb-ratio"),
            ("round time", "set-up time", "ServerApp peak memory"),
            strict=True,
        ):
            ax.plot(n, [r[key] for r in mine], marker="o", label=method)
            ax.set_xscale("log")
            ax.set_title(f"{label} (x the fewest clients)")
            ax.set_xlabel("virtual clients (10 sampled a round)")
    for ax in (axes[0], axes[2]):
        ax.axhline(GOALS["round"], color="grey", ls="--", lw=1)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.scale",
                                 description=__doc__.split("\n")[0])  # fmt: skip
    ap.add_argument("--clients", default="10,100,1000")
    ap.add_argument("--methods", default="fedavg,semanticfl")
    ap.add_argument("--rounds", type=int, default=4, help="rounds 2..R are timed")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--fresh", action="store_true", help="measure every run again")
    args = ap.parse_args(argv)
    if args.rounds < 2:
        ap.error("--rounds must be >= 2 (round 1 is not timed)")
    try:
        clients = sorted({int(c) for c in args.clients.split(",")})
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        for m in methods:
            for n in clients:
                run_config(m, n, args.rounds)  # validates before anything runs
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "scale.json"
    measured = {
        (r["method"], r["clients"]): r
        for r in (json.loads(cache.read_text())["runs"] if cache.is_file() else [])
    }
    rows, t0 = [], time.perf_counter()
    todo = [(m, n) for m in methods for n in clients]
    for i, (method, n) in enumerate(todo, 1):
        before = measured.get((method, n))
        if (
            before
            and before["config"] == run_config(method, n, args.rounds)
            and not args.fresh
        ):
            rows.append(before)
            print(f"[{i}/{len(todo)}] {method} n={n}: measured before, reused")
            continue
        print(f"[{i}/{len(todo)}] {method} n={n}: running ...", flush=True)
        try:
            row = measure(method, n, args.rounds, out)
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        rows.append(row)
        measured[(method, n)] = row
        atomic_write_json(cache, {"runs": list(measured.values())})  # resumable
        print(
            f"  round {row['round-seconds']:.2f} s | set-up {row['setup-seconds']:.1f} s"
            f" | ServerApp {row['server-mb']:.0f} MB | client {row['client-mb']:.0f} MB"
            f" | {fmt_time(row['wall-seconds'])} (total {fmt_time(time.perf_counter() - t0)})",
            flush=True,
        )
    rows = with_ratios(rows)
    command = "python -m benchmarks.scale " + " ".join(argv or sys.argv[1:])
    atomic_write_json(cache, {"runs": rows, "machine": hardware()})
    atomic_write_text(out / "results.md", markdown(rows, hardware(), command.strip()))
    plot(rows, out / "scale.png")
    print((out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
