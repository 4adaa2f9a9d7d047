"""Network namespaces as stand-in hosts: one server, N clients, one switch.

Each host is a Linux network namespace with its own loopback and one
address on a private subnet. The "switch" is a bridge inside the server's
namespace, and every client namespace hangs off it by a veth pair that is
created directly inside the namespaces, so nothing (no interface, no route)
is added to the machine's own network and nothing in the namespaces can
reach beyond them. Needs root and iproute2 (``ip netns``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

NETNS_DIR = Path("/run/netns")


def unavailable_reason() -> str | None:
    """Why namespaces cannot be used here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if shutil.which("ip") is None:
        return "iproute2's 'ip' is not installed (apt-get install iproute2)"
    # Everything create() needs, in a throw-away namespace: some sandboxes
    # allow namespaces but not bridges or veth pairs.
    probe = f"sfl{os.getpid()}-probe"
    steps = [
        ["netns", "add", probe],
        ["-n", probe, "link", "add", "br0", "type", "bridge"],
        ["-n", probe, "link", "add", "v0", "type", "veth", "peer", "name", "v1"],
    ]
    try:
        for step in steps:
            done = subprocess.run(["ip", *step], capture_output=True, text=True)
            if done.returncode != 0:
                return f"'ip {' '.join(step)}' failed: {done.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def pids_in(ns: str) -> list[int]:
    """PIDs of the processes whose network namespace is ``ns``."""
    try:
        inode = (NETNS_DIR / ns).stat().st_ino
    except FileNotFoundError:
        return []
    found = []
    for link in Path("/proc").glob("[0-9]*/ns/net"):
        try:
            if os.readlink(link) == f"net:[{inode}]":
                found.append(int(link.parent.parent.name))
        except OSError:
            continue
    return found


@dataclass
class Network:
    """A server host and ``clients`` client hosts on ``subnet``.0/24.

    The server is ``subnet``.1; client i is ``subnet``.(10 + i). Names carry
    this process's PID so runs by several users cannot collide.
    """

    clients: int
    subnet: str = "10.250.0"
    tag: str = field(default_factory=lambda: f"sfl{os.getpid()}")
    created: list[str] = field(default_factory=list)

    @property
    def server(self) -> str:
        return f"{self.tag}-srv"

    @property
    def server_ip(self) -> str:
        return f"{self.subnet}.1"

    def client(self, i: int) -> str:
        return f"{self.tag}-c{i}"

    def client_ip(self, i: int) -> str:
        return f"{self.subnet}.{10 + i}"

    def exec_prefix(self, ns: str) -> list[str]:
        """Command prefix that runs a program inside ``ns`` (same PID: ip execs)."""
        return ["ip", "netns", "exec", ns]

    def create(self) -> None:
        """Make the namespaces, the bridge and the links; all or nothing."""
        try:
            self._add(self.server)
            _ip("-n", self.server, "link", "set", "lo", "up")
            _ip("-n", self.server, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.server, "addr", "add", f"{self.server_ip}/24", "dev", "br0")
            _ip("-n", self.server, "link", "set", "br0", "up")
            for i in range(self.clients):
                ns = self.client(i)
                self._add(ns)
                _ip("-n", ns, "link", "set", "lo", "up")
                # Both ends are born inside the namespaces: eth0 in the client,
                # vc<i> in the server, where it joins the bridge.
                _ip("-n", self.server, "link", "add", f"vc{i}", "type", "veth",
                    "peer", "name", "eth0", "netns", ns)  # fmt: skip
                _ip("-n", self.server, "link", "set", f"vc{i}", "master", "br0", "up")
                _ip("-n", ns, "addr", "add", f"{self.client_ip(i)}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
        except Exception:
            self.delete()
            raise

    def _add(self, ns: str) -> None:
        _ip("netns", "add", ns)
        self.created.append(ns)

    def delete(self) -> list[int]:
        """End every process left in our namespaces (by PID), then delete them.

        Returns the PIDs that had to be ended here: a clean run leaves none.
        """
        stragglers = [pid for ns in self.created for pid in pids_in(ns)]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in stragglers:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and any(
                Path(f"/proc/{p}").exists() for p in stragglers
            ):
                time.sleep(0.1)
        for ns in reversed(self.created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.created.clear()
        return stragglers
