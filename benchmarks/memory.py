"""Peak resident memory of the processes a benchmark started (Linux /proc).

A simulation's server and clients are descendants of the benchmark process
(SuperLink -> SuperExec -> ServerApp simulation -> Ray workers), so sampling
only that tree keeps other users' Flower jobs on a shared machine out of the
figures. ``VmHWM`` is the kernel's own high-water mark of a process's RSS: a
peak between two samples is still caught, as long as the process is alive at
one sample.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from deploy.local_sim import descendants

# Process roles, by a piece of their command line (flwr 1.41 simulation).
SIMULATION_ROLES = {"client": "ClientAppActor", "server": "flwr-simulation"}


def peak_rss_mb(pid: int) -> float:
    """``VmHWM`` of one process in MB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class TreeMemory(threading.Thread):
    """Polls the peak RSS of ``root``'s descendants whose command line matches.

    ``peak_mb[role]`` is the largest single process of that role (one
    ClientApp actor, the ServerApp); ``0`` means none was seen.
    """

    def __init__(
        self,
        roles: dict[str, str] | None = None,
        root: int | None = None,
        interval: float = 1.0,
    ) -> None:
        super().__init__(daemon=True)
        self.roles = dict(roles or SIMULATION_ROLES)
        self.root = os.getpid() if root is None else root
        self.interval = interval
        self.peak_mb: dict[str, float] = dict.fromkeys(self.roles, 0.0)
        self._halt = threading.Event()

    def sample(self) -> None:
        """One pass over the tree."""
        for pid in descendants(self.root):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            text = cmd.decode(errors="replace")
            for role, pattern in self.roles.items():
                if pattern in text:
                    self.peak_mb[role] = max(self.peak_mb[role], peak_rss_mb(pid))

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def __enter__(self) -> TreeMemory:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self._halt.set()
        self.join()
