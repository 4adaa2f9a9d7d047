"""The machine a benchmark ran on, and how busy it was, in one line."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from common.federation import cpu_model


def hardware() -> str:
    """CPU model, cores, memory, torch, GPU and the load while the report ran."""
    import torch

    cpu = cpu_model()
    try:
        mem = next(
            int(ln.split()[1]) / 1024**2
            for ln in Path("/proc/meminfo").read_text().splitlines()
            if ln.startswith("MemTotal")
        )
        mem_text = f", {mem:.0f} GB RAM"
    except (OSError, StopIteration):
        mem_text = ""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} cores{mem_text}, {gpu}; {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, torch "
        f"{torch.__version__}. Load average (1, 5, 15 min) at the end, the run's "
        f"own work included: {', '.join(f'{x:.1f}' for x in os.getloadavg())} (a "
        "training run keeps about 2 busy; well above that, other jobs shared the "
        "machine and the times are upper bounds)"
    )
