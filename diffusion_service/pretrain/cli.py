"""Command line of the pretraining (module docstring of :mod:`.`)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch

from .config import PretrainConfig

log = logging.getLogger("diffusion_service.pretrain")


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def _parser() -> argparse.ArgumentParser:
    d = PretrainConfig()
    ap = argparse.ArgumentParser(
        prog="python -m diffusion_service.pretrain",
        description="Pretrain the embedded guidance model.",
    )
    ap.add_argument("--out", type=Path, required=True, help="output model folder")
    ap.add_argument("--steps-vae", type=int, default=d.steps_vae)
    ap.add_argument("--steps-unet", type=int, default=d.steps_unet)
    ap.add_argument("--batch-size", type=int, default=d.batch_size, help="U-Net stage")
    ap.add_argument("--vae-batch-size", type=int, default=d.vae_batch_size)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--dataset", default=d.dataset)
    ap.add_argument("--public-split-size", type=int, default=d.public_split_size)
    ap.add_argument(
        "--limit", type=int, default=0, help="first N public images (tests)"
    )
    ap.add_argument("--vae-channels", type=_ints, default=d.vae_channels)
    ap.add_argument("--unet-channels", type=_ints, default=d.unet_channels)
    ap.add_argument("--norm-groups", type=int, default=d.norm_groups)
    ap.add_argument("--head-dim", type=int, default=d.head_dim)
    ap.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    ap.add_argument(
        "--resume", action="store_true", help="continue from out/checkpoint.pt"
    )
    ap.add_argument(
        "--stop-after",
        type=int,
        default=None,
        help="stop after N steps of both stages (checkpointed)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (0 = torch's default; use 1 on a busy machine)",
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument(
        "--no-evidence",
        action="store_true",
        help="skip samples.png / zero-shot evidence after training",
    )
    ap.add_argument("--evidence-test-size", type=int, default=500)
    ap.add_argument(
        "--evidence-only",
        action="store_true",
        help="only (re)compute samples.png, evidence.json and the card of --out",
    )
    ap.add_argument(
        "--export-checkpoint",
        type=Path,
        metavar="DIR",
        help="only write the model held by --out/checkpoint.pt (a stopped run, "
        "U-Net stage) into DIR, to score it part-way; then --resume as usual",
    )
    ap.add_argument(
        "--card-only",
        action="store_true",
        help="only (re)render MODEL_CARD.md of an existing --out",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (2 = interrupted, resumable)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local
    if args.export_checkpoint:  # no training: the load check below is moot
        from .export import export_checkpoint
        from .train import CHECKPOINT

        try:
            info = export_checkpoint(args.out / CHECKPOINT, args.export_checkpoint)
        except (FileNotFoundError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        log.info(
            "wrote %s: U-Net step %d of %d",
            args.export_checkpoint,
            info["unet_step"],
            info["steps_unet"],
        )
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if torch.get_num_threads() > 1 and load > 1.0:
        # Measured here: with the cores already busy, 2 torch threads ran a U-Net
        # step about 12x slower than 1 thread (OpenMP threads wait on each other).
        log.warning(
            "load average %.1f: the CPU is busy; %d torch threads may run many times "
            "slower than --threads 1 (watch img/s in the progress bar)",
            load,
            torch.get_num_threads(),
        )
    from .card import write_model_card
    from .train import Interrupted, pretrain

    if args.card_only:
        log.info("wrote %s", write_model_card(args.out))
        return 0
    if args.evidence_only:
        _evidence(args, args.dataset, args.seed)
        log.info("wrote %s", write_model_card(args.out))
        return 0
    cfg = PretrainConfig(
        dataset=args.dataset,
        public_split_size=args.public_split_size,
        limit=args.limit,
        vae_channels=args.vae_channels,
        unet_channels=args.unet_channels,
        norm_groups=args.norm_groups,
        head_dim=args.head_dim,
        steps_vae=args.steps_vae,
        steps_unet=args.steps_unet,
        vae_batch_size=args.vae_batch_size,
        batch_size=args.batch_size,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
    )
    t0 = time.perf_counter()
    try:
        result = pretrain(
            cfg,
            args.out,
            resume=args.resume,
            stop_after=args.stop_after,
            device=args.device,
            progress=not args.no_progress,
        )
    except Interrupted as exc:
        log.warning("%s", exc)
        return 2
    except (FileExistsError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    stages = result["stages"]
    log.info(
        "trained in %.1f min; final losses: vae %s, unet %s",
        result["total_wall_seconds"] / 60,
        json.dumps(stages["vae"]["final"]),
        json.dumps(stages["unet"]["final"]),
    )
    if not args.no_evidence:
        _evidence(args, cfg.dataset, cfg.seed)
    log.info(
        "wrote %s; command wall time %.1f min",
        write_model_card(args.out),
        (time.perf_counter() - t0) / 60,
    )
    return 0


def _evidence(args: argparse.Namespace, dataset: str, seed: int) -> None:
    from .evidence import run_evidence

    ev = run_evidence(
        args.out,
        dataset=dataset,
        test_size=args.evidence_test_size,
        seed=seed,
        device=args.device,
    )
    zs = ev["zero_shot"]
    log.info(
        "zero-shot accuracy %.3f on %d test images (chance %.3f); wrote samples.png",
        zs["accuracy"],
        zs["num_images"],
        zs["chance"],
    )
