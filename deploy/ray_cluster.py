"""A local Ray head for trying (and testing) a simulation on an existing cluster.

``ray stop`` ends every Ray process on the machine, whoever started it, so
this starts the head with its own temporary folder and ends exactly the
processes that name that folder, by PID. Its own folder also keeps the
cluster private: a plain ``ray.init()`` elsewhere on the machine finds a
``ray start`` cluster through the default folder's ``ray_current_cluster``
file, and this one writes none there.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from deploy.local_sim import descendants, free_port


def _pids_naming(text: str) -> list[int]:
    """PIDs of the processes whose command line contains ``text``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().replace(b"\0", b" ").decode(
                errors="replace"
            ):
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return [pid for pid in found if pid != os.getpid()]


def running(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, exited but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class RayHead:
    """``ray start --head`` on a free port, ended by PID with :meth:`stop`."""

    num_cpus: int = 2
    port: int = field(default_factory=free_port)
    temp_dir: Path = field(
        default_factory=lambda: Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    )  # short: Ray's socket paths must stay under 108 bytes

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> RayHead:
        ray = str(Path(sys.executable).parent / "ray")
        out = subprocess.run(
            [ray, "start", "--head", f"--port={self.port}",
             f"--num-cpus={self.num_cpus}", "--num-gpus=0",
             "--node-ip-address=127.0.0.1", "--include-dashboard=false",
             "--disable-usage-stats", f"--temp-dir={self.temp_dir}"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if out.returncode != 0:
            self.stop()
            raise RuntimeError(
                f"ray start failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}"
            )
        return self

    def processes(self) -> list[int]:
        """This head's processes: those naming its temporary folder and their
        descendants (workers retitle themselves ``ray::...``)."""
        named = _pids_naming(str(self.temp_dir))
        return sorted({*named, *(d for pid in named for d in descendants(pid))})

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, a grace period, then SIGKILL, for this head's processes only.

        The set is kept from the first look on: once the raylet is gone its
        children are re-parented and would no longer be found as descendants.
        """
        pids: set[int] = set()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids |= set(self.processes())
            for pid in filter(running, pids):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace
            while any(map(running, pids)) and time.monotonic() < deadline:
                time.sleep(0.2)

    def __enter__(self) -> RayHead:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
