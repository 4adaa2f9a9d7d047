"""FedDDPM vs FedDDPM+ vs plain FedAvg of the diffusion model, and the
classifier adaptation next to FedAvg (issue 7), on one split with one seed.

    python -m benchmarks.fedddpm                       # the issue's protocol
    python -m benchmarks.fedddpm --rounds 3 --methods fedddpm-avg fedddpm
    python -m benchmarks.fedddpm --set aux-steps=40    # any run-config override

Every cell is one real ``deploy.local_sim`` run with the same base config
(pyproject defaults: the cpu profile of docs/fedddpm.md). A cell whose
``summary.json`` exists is read back, not rerun. Prints and writes
``<out>/results.md`` and ``results.json``.
"""

from __future__ import annotations

import io
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.machine import hardware
from benchmarks.matrix import (
    APP_DIR,
    SCENARIOS,
    base_config,
    fmt_time,
    matrix_parser,
    set_overrides,
)
from common.methods import methods_where
from deploy.local_sim import run_simulation

DIFFUSION_METHODS = methods_where(model="diffusion-unet")
DEFAULT_METHODS = [
    "fedddpm-avg",
    "fedddpm",
    "fedddpm+",
    "fedavg",
    "fedavg-adapt",
    "fedavg-adapt+",
]


def _rows(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def cell_result(method: str, run_dir: Path) -> dict[str, Any]:
    """The numbers of one finished cell."""
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [r for r in _rows(run_dir) if r["round"] >= 1]
    server = [r.get("server", {}) for r in rows]

    def mean(key: str) -> float:
        return statistics.fmean(s.get(key, 0.0) for s in server) if server else 0.0

    out = {
        "method": method,
        "rounds": len(rows),
        "fired": sum(bool(s.get("corrected")) for s in server),
        "fired-rounds": [
            r["round"] for r in rows if r.get("server", {}).get("corrected")
        ],
        "aggregate-s": mean("aggregate-seconds"),
        "trigger-s": mean("trigger-seconds"),
        "correction-s": mean("correction-seconds"),
        "round-s": statistics.median(r["round-seconds"] for r in rows),
        "wall-s": summary["wall-seconds"],
    }
    if method in DIFFUSION_METHODS:
        out.update(
            loss=summary["final-heldout-denoising-loss"],
            fd=summary["final-frechet-distance"],
            sample_acc=summary["final-sample-accuracy"],
            measure_s=summary["mean-measure-seconds-per-round"],
            pre_fl_s=summary["pre-fl-seconds"],
            best_fd=min(r["frechet-distance"] for r in rows),
            best_sample_acc=max(r["sample-accuracy"] for r in rows),
        )
        record = json.loads((run_dir / "fedddpm.json").read_text())
        out["measures"] = record["measures"]
    else:
        out.update(
            final_acc=summary["final-round-accuracy"],
            best_acc=summary["best-round-accuracy"],
            last3_acc=statistics.fmean(r["central-accuracy"] for r in rows[-3:]),
        )
    return out


def report(results: list[dict[str, Any]], header: str) -> str:
    """The Markdown tables."""
    out = io.StringIO()
    out.write(header + "\n")
    gen = [r for r in results if r["method"] in DIFFUSION_METHODS]
    if gen:
        out.write(
            "\n### Federated diffusion model (final round)\n\n"
            "| method | held-out denoising loss | Frechet distance (best round) | "
            "sample accuracy % (best round) | corrections fired | server compute "
            "s/round: aggregate + trigger + correction | measures s/round | "
            "pre-FL upload+aux s | median round s | wall |\n"
            "|---|---|---|---|---|---|---|---|---|---|\n"
        )
        for r in gen:
            compute = r["aggregate-s"] + r["trigger-s"] + r["correction-s"]
            out.write(
                f"| {r['method']} | {r['loss']:.4f} | {r['fd']:.4f} ({r['best_fd']:.4f})"
                f" | {100 * r['sample_acc']:.1f} ({100 * r['best_sample_acc']:.1f}) | "
                f"{r['fired']}/{r['rounds']} {r['fired-rounds']} | {compute:.2f} = "
                f"{r['aggregate-s']:.2f} + {r['trigger-s']:.2f} + "
                f"{r['correction-s']:.2f} | {r['measure_s']:.1f} | "
                f"{r['pre_fl_s']:.0f} | {r['round-s']:.1f} | {fmt_time(r['wall-s'])} |\n"
            )
        m = gen[0]["measures"]
        out.write(
            f"\nMeasures: {m['heldout-set']}; Frechet distance in the "
            f"{m['feature-space']} ({m['classifier']['model']}, trained on the "
            f"{m['classifier']['trained-on']}, test accuracy "
            f"{100 * m['classifier']['test-accuracy']:.1f}% on the reference set), "
            f"{m['samples']} samples vs {m['real-reference']}. At this N, "
            f"{m['samples']} real test images score {m['fd-real-at-n']:.4f} and "
            f"their VAE reconstructions {m['fd-vae-reconstruction-at-n']:.4f} "
            "(floors).\n"
        )
    cls = [r for r in results if r["method"] not in DIFFUSION_METHODS]
    if cls:
        ref = next((r for r in cls if r["method"] == "fedavg"), None)
        out.write(
            "\n### Classification with server-side classifier adaptation (ours)\n\n"
            "| method | final acc % | best acc % | mean last 3 % | final - FedAvg "
            "(pts) | adaptations fired | server compute s/round: aggregate + "
            "trigger + adaptation | median round s |\n"
            "|---|---|---|---|---|---|---|---|\n"
        )
        for r in cls:
            gain = f"{100 * (r['final_acc'] - ref['final_acc']):+.2f}" if ref else "-"
            compute = r["aggregate-s"] + r["trigger-s"] + r["correction-s"]
            out.write(
                f"| {r['method']} | {100 * r['final_acc']:.2f} | "
                f"{100 * r['best_acc']:.2f} | {100 * r['last3_acc']:.2f} | {gain} | "
                f"{r['fired']}/{r['rounds']} {r['fired-rounds']} | {compute:.2f} = "
                f"{r['aggregate-s']:.2f} + {r['trigger-s']:.2f} + "
                f"{r['correction-s']:.2f} | {r['round-s']:.1f} |\n"
            )
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = matrix_parser(
        "python -m benchmarks.fedddpm",
        __doc__,
        methods=DEFAULT_METHODS,
        scenarios=["dir0.1"],
        out="fedddpm",
    )
    parser.set_defaults(rounds=10)
    args = parser.parse_args(argv)
    extra = set_overrides(args)
    runs = args.out / "runs"
    t0 = time.perf_counter()
    results = []
    for scenario in args.scenarios:
        for seed in args.seeds:
            for method in args.methods:
                name = f"{method}-{scenario}-seed{seed}-r{args.rounds}"
                run_dir = runs / name
                if run_dir.exists() and not (run_dir / "summary.json").exists():
                    # An interrupted cell: keep it aside, rerun from scratch.
                    run_dir.rename(
                        run_dir.with_name(f"{name}.stale-{int(time.time())}")
                    )
                if not (run_dir / "summary.json").exists():
                    print(f"== {name}", flush=True)
                    result = run_simulation(
                        APP_DIR,
                        {
                            **base_config(args),
                            **SCENARIOS[scenario],
                            **extra,
                            "method": method,
                            "seed": seed,
                            "num-server-rounds": args.rounds,
                            "output-dir": str(runs),
                            "run-name": name,
                        },
                        stream=False,
                    )
                    print(
                        f"   {result.status} in {fmt_time(result.seconds)}", flush=True
                    )
                    if not result.ok:
                        print(result.output[-4000:], file=sys.stderr)
                        return 1
                results.append(cell_result(method, run_dir))
    header = (
        f"Fashion-MNIST, {args.clients} clients, {', '.join(args.scenarios)}, seeds "
        f"{args.seeds}, {args.rounds} rounds, all clients every round, cap "
        f"{args.max_samples_per_client or 'none'} samples/client; public split "
        f"{extra.get('public-split-size', 10000)} (server-held). Diffusion: pyproject defaults (docs/fedddpm.md)"
        + (f"; overrides: {' '.join(args.set)}" if args.set else "")
        + f". Times are wall seconds. Machine: {hardware()}."
    )
    text = report(results, header)
    text += (
        f"\nBenchmark wall time (cells run now): {fmt_time(time.perf_counter() - t0)}\n"
    )
    print("\n" + text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(text)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
