"""The feature study's headline rows side by side, across models or checkpoints.

Scores a pretraining part-way (``python -m diffusion_service.pretrain ...
--stop-after N``, ``--export-checkpoint DIR``, ``python -m
benchmarks.feature_study --model DIR --out D``, ``--resume``), then::

    python -m benchmarks.feature_study_compare D1/study.json D2/study.json \\
        --labels "U-Net 1000" "U-Net 2000" [--out table.md]

One row per study: the zero-shot accuracy by lowest denoising error (what the
guided defaults' teacher is), and probe / nearest-anchor accuracy of today's
recipe under each projection and of raw pixels, all on held-out public images.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from common.io import atomic_write_text

TODAY = "today: t=150, blocks 1-3, mean, neutral"
COLUMNS = (
    (TODAY, "none"),
    (TODAY, "pca"),
    (TODAY, "whitened"),
    (TODAY, "lda"),
    ("raw pixels", "none"),
    ("raw pixels", "whitened"),
)


def load_study(path: Path) -> dict[str, Any]:
    """A study.json written by ``benchmarks.feature_study``; a clear error otherwise."""
    try:
        study = json.loads(Path(path).read_text())
        rows = {(r["recipe"], r["projection"]): r for r in study["rows"]}
        zero_shot = float(study["protocol"]["zero-shot-held-out"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"{path}: not a feature study ({exc!r})") from None
    return {"rows": rows, "zero-shot": zero_shot, "machine": study.get("machine", "")}


def table(studies: list[dict[str, Any]], labels: list[str]) -> str:
    """Markdown: one row per study, accuracies as probe / nearest anchor."""
    head = ["model", "zero-shot"] + [
        f"{'today' if r == TODAY else r} {p}" for r, p in COLUMNS
    ]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + " --- |" * len(head),
    ]
    for label, s in zip(labels, studies, strict=True):
        cells = [label, f"{s['zero-shot']:.3f}"]
        for key in COLUMNS:
            r = s["rows"].get(key)
            cells.append(
                "-" if r is None else f"{r['probe']:.3f} / {r['nearest-anchor']:.3f}"
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.feature_study_compare",
        description=__doc__.split("\n")[0],
    )
    ap.add_argument("studies", nargs="+", type=Path, help="study.json files")
    ap.add_argument("--labels", nargs="+", help="one per study (default: folder)")
    ap.add_argument("--out", type=Path, help="also write the table here")
    args = ap.parse_args(argv)
    labels = args.labels or [p.resolve().parent.name for p in args.studies]
    if len(labels) != len(args.studies):
        ap.error(f"{len(args.studies)} studies but {len(labels)} labels")
    md = table([load_study(p) for p in args.studies], labels)
    if args.out:
        atomic_write_text(args.out, md)
    print(md, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
