"""The shared training loop of both stages and its helpers.

:func:`run_stage` runs steps ``start..total-1`` of a stage: learning-rate
schedule, gradient clipping, loss curve, periodic atomic checkpoints, a tqdm bar
(stage, step, loss, samples/s, ETA), and a clean checkpoint on Ctrl-C.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from common.io import atomic_write

from .config import PretrainConfig
from .data import epoch_order

LOG_EVERY = 50  # steps per point of the saved loss curve


class Interrupted(Exception):
    """The run stopped early (``stop_after`` or Ctrl-C) after a checkpoint."""


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warmup, then cosine decay from ``base`` to ``base / 10``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def batch_indices(n: int, batch: int, seed: int, stage: int, step: int, cache: dict):
    """Indices of batch ``step``: epochs of shuffled, full batches (last drops)."""
    batch = min(batch, n)
    per_epoch = n // batch
    epoch, i = divmod(step, per_epoch)
    if cache.get("epoch") != epoch:
        cache.update(epoch=epoch, order=epoch_order(n, seed, stage, epoch))
    return cache["order"][i * batch : (i + 1) * batch]


def save_component(module, folder: Path) -> None:
    """``save_pretrained`` into a temp folder, then swap it in."""
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    module.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def checkpoint(
    path: Path, cfg: PretrainConfig, log: dict, stage: str, step: int, **tensors
) -> None:
    state = {
        "config": cfg.to_dict(),
        "log": json.loads(json.dumps(log)),
        "stage": stage,
        "step": step,
        **tensors,
    }
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def run_stage(
    name: str,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    step_fn: Callable[[int], dict],
    save_fn: Callable[[int, float, bool], None],
    total: int,
    start: int,
    base_lr: float,
    cfg: PretrainConfig,
    log: dict,
    stop_after: int | None,
    progress: bool,
    after_step: Callable[[int], None] | None = None,
) -> None:
    """Steps ``start..total-1`` of one stage, with progress, curve and checkpoints."""
    from tqdm.auto import tqdm

    rec = log["stages"].setdefault(
        name,
        {
            "steps": total,
            "wall_seconds": 0.0,
            "loss_curve": [],
            "recent": [],
            "window": [],
        },
    )
    batch = cfg.vae_batch_size if name == "vae" else cfg.batch_size
    rec["batch_size"] = batch
    model.train()
    bar = tqdm(
        total=total,
        initial=start,
        desc=f"stage {name}",
        unit="step",
        disable=not progress,
        dynamic_ncols=True,
    )
    t_last = time.perf_counter()
    step = start

    def flush(done: bool) -> None:
        nonlocal t_last
        now = time.perf_counter()
        rec["wall_seconds"] += now - t_last
        t_last = now
        recent = rec.pop("recent", None) if done else None
        if done:
            rec.pop("window", None)
        if recent:  # None when a resumed run finds the stage already complete
            rec["final"] = {
                k: sum(r[k] for r in recent) / len(recent) for k in recent[0]
            }
            rec["final_window"] = len(recent)
            rec["samples_per_second"] = total * batch / max(rec["wall_seconds"], 1e-9)
        save_fn(step, rec["wall_seconds"], done)

    # Ctrl-C only raises a flag: the step in flight finishes, so the checkpoint
    # never holds a half-applied optimiser update.
    stop_flag: list[int] = []
    old_handler = None
    if threading.current_thread() is threading.main_thread():
        old_handler = signal.signal(signal.SIGINT, lambda *_: stop_flag.append(1))
    try:
        while step < total:
            if stop_flag:
                flush(False)
                raise Interrupted(
                    f"interrupted at step {step} of stage {name}; checkpoint saved, "
                    "rerun the same command with --resume"
                )
            if stop_after is not None and step >= stop_after:
                flush(False)
                raise Interrupted(f"stopped after step {step} of stage {name}")
            for group in opt.param_groups:
                # A short run (tests, smoke) still reaches its full rate.
                group["lr"] = lr_at(
                    step, total, base_lr, min(cfg.warmup, total // 10 + 1)
                )
            losses = step_fn(step)
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            if after_step is not None:
                after_step(step)
            values = {k: float(v.detach()) for k, v in losses.items()}
            rec["window"].append(values["loss"])
            rec["recent"] = (rec["recent"] + [values])[-100:]
            step += 1
            if step % LOG_EVERY == 0 or step == total:
                window = rec.pop("window")
                rec["loss_curve"].append([step, sum(window) / len(window)])
                rec["window"] = []
            if step % cfg.checkpoint_every == 0 and step < total:
                flush(False)
            if progress:
                elapsed = rec["wall_seconds"] + time.perf_counter() - t_last
                bar.set_postfix(
                    loss=f"{values['loss']:.4f}",
                    img_s=f"{batch * step / max(elapsed, 1e-9):.0f}",
                    refresh=False,
                )
                bar.update(1)
    finally:
        bar.close()
        if old_handler is not None:
            signal.signal(signal.SIGINT, old_handler)
    flush(True)
