"""Processes on the namespace "hosts" of deploy.netns, started and ended by PID."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from deploy.local_sim import descendants, stop_tree
from deploy.netns import Network


class Hosts:
    """Processes started in the namespaces; all ended by PID in ``close``."""

    def __init__(self, net: Network, work: Path, env: dict[str, str]) -> None:
        self.net, self.work, self.env = net, work, env
        self.procs: list[subprocess.Popen] = []
        self.logs: list = []  # open console files, closed with the processes

    def spawn(self, ns: str, cmd: list[str], log: str, **env: str) -> subprocess.Popen:
        """Start ``cmd`` in ``ns``; output to ``work/log``."""
        out = open(self.work / log, "w")  # closed in close()
        self.logs.append(out)
        proc = subprocess.Popen(
            [*self.net.exec_prefix(ns), *cmd],
            env={**self.env, **env},
            cwd=self.work,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C must not race our cleanup
        )
        self.procs.append(proc)
        return proc

    def run(self, ns: str, cmd: list[str], timeout: float = 120, **env: str):
        """Run ``cmd`` in ``ns`` to completion; the CompletedProcess."""
        return subprocess.run(
            [*self.net.exec_prefix(ns), *cmd],
            env={**self.env, **env},
            cwd=self.work,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def close(self) -> None:
        """End every process started here and its descendants, by PID."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                stop_tree(proc)
            else:
                proc.wait()
        for out in self.logs:
            out.close()


def wait_until(pred, timeout: float, what: str, poll: float = 1.0) -> None:
    """Poll ``pred`` until it is true; TimeoutError("<what> within N s") if never."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(poll)
    raise TimeoutError(f"{what} within {timeout:.0f} s")


def alive(proc: subprocess.Popen, name: str, log: Path) -> bool:
    """True while ``proc`` runs; once it exited, RuntimeError with its log's tail."""
    if proc.poll() is not None:
        tail = log.read_text()[-2000:] if log.exists() else ""
        raise RuntimeError(f"{name} exited with code {proc.returncode}:\n{tail}")
    return True


def kill_host(procs: list[subprocess.Popen]) -> None:
    """SIGKILL a client host's processes and their children: a crashed host."""
    pids = [q for p in procs for q in (p.pid, *descendants(p.pid))]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for proc in procs:
        proc.wait()
