"""A Docker engine for the compose demo: the one already running, or a private one.

A private engine has its own data root (images built there are the cache for
the next run), exec root, socket and pid file, so it never touches a system
engine, and it is ended by its PID (never ``pkill dockerd``). Starting one
needs root and Debian's ``docker.io`` package (``dockerd``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


class DockerUnavailableError(RuntimeError):
    """No engine answers and none can be started here."""


# Debian's packages for a private engine (dockerd, containerd, runc) and the
# offline base image (debootstrap).
PACKAGES = {"dockerd": "docker.io", "debootstrap": "debootstrap"}


def install_missing(progress=print) -> list[str]:
    """apt-get install what PACKAGES names and this machine lacks (root only).

    A policy-rc.d that answers 101 keeps the packages' install scripts from
    starting a system dockerd: the demo starts its own and ends it.
    """
    missing = [pkg for binary, pkg in PACKAGES.items() if shutil.which(binary) is None]
    if not missing:
        return []
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise DockerUnavailableError(
            f"missing {', '.join(missing)} and cannot install them here (needs root "
            f"and apt-get): apt-get install {' '.join(missing)}"
        )
    progress(f"apt-get install {' '.join(missing)} ...")
    policy = Path("/usr/sbin/policy-rc.d")
    had_policy = policy.exists()
    if not had_policy:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]):  # fmt: skip
            done = subprocess.run(
                cmd, env=env, capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                raise DockerUnavailableError(
                    f"{' '.join(cmd)} failed (exit {done.returncode}):\n"
                    + (done.stdout + done.stderr)[-2000:]
                )
    finally:
        if not had_policy:
            policy.unlink(missing_ok=True)
    return missing


def engine_answers(env: dict[str, str]) -> bool:
    """``docker version`` reaches a server with this environment's DOCKER_HOST."""
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        out = subprocess.run(
            [docker, "version", "--format", "{{.Server.Version}}"],
            env=env, capture_output=True, text=True, timeout=20, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return False
    return out.returncode == 0 and bool(out.stdout.strip())


def exec_root(data_root: Path) -> Path:
    # containerd's shim sockets live under the exec root and a unix socket path
    # is limited to 108 bytes, so it gets a short path of its own.
    tag = hashlib.sha1(str(data_root).encode()).hexdigest()[:10]
    return Path("/tmp") / f"sfl-dx-{tag}"


@dataclass
class PrivateEngine:
    """``dockerd`` under ``root`` (data/, docker.sock, docker.pid, dockerd.log)."""

    root: Path
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def socket(self) -> Path:
        return self.root / "docker.sock"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": f"unix://{self.socket}"}

    @property
    def log(self) -> Path:
        return self.root / "dockerd.log"

    def start(self, timeout: float = 60.0) -> PrivateEngine:
        dockerd = shutil.which("dockerd")
        if shutil.which("docker") is None or dockerd is None:
            raise DockerUnavailableError(
                "no Docker engine answers and none can be started: `docker` and "
                "`dockerd` are needed (Debian/Ubuntu: apt-get install docker.io), "
                "or point DOCKER_HOST at a running engine"
            )
        if os.geteuid() != 0:
            raise DockerUnavailableError(
                "no Docker engine answers, and starting a private one needs root: "
                "run as root, or start Docker (systemctl start docker) and add "
                "yourself to the docker group, or set DOCKER_HOST"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        pidfile = self.root / "docker.pid"
        if pidfile.exists() and engine_answers(self.env):
            return self  # left running by an earlier, interrupted demo: reuse it
        self.socket.unlink(missing_ok=True)
        pidfile.unlink(missing_ok=True)
        cmd = [
            dockerd,
            "--data-root", str(self.root / "data"),
            "--exec-root", str(exec_root(self.root)),
            "--host", f"unix://{self.socket}",
            "--pidfile", str(pidfile),
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DockerUnavailableError(
                    f"dockerd exited at once with code {self.proc.returncode}; "
                    f"the end of {self.log}:\n{tail(self.log)}"
                )
            if engine_answers(self.env):
                return self
            time.sleep(0.5)
        self.stop()
        raise DockerUnavailableError(
            f"dockerd did not answer within {timeout:.0f} s; the end of "
            f"{self.log}:\n{tail(self.log)}"
        )

    def pid(self) -> int | None:
        if self.proc is not None:
            return self.proc.pid
        try:
            return int((self.root / "docker.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM (dockerd then stops its containers and its containerd), then
        SIGKILL after ``grace`` seconds."""
        pid = self.pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _alive(pid, self.proc):
            time.sleep(0.3)
        if _alive(pid, self.proc):
            os.kill(pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()


def _alive(pid: int, proc: subprocess.Popen | None) -> bool:
    if proc is not None:
        return proc.poll() is None
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} unreadable)"


def engine(private_root: Path) -> tuple[dict[str, str], PrivateEngine | None]:
    """The environment for ``docker`` and the private engine to end later (None
    when one was already running: DOCKER_HOST or the default socket)."""
    if engine_answers(dict(os.environ)):
        return dict(os.environ), None
    private = PrivateEngine(private_root).start()
    return private.env, private
