"""Run the app in Flower's simulation engine on a private, short-lived SuperLink.

``flwr run .`` on its own starts a *detached* SuperLink that outlives the run
and installs the app's dependencies with ``uv`` on every run (pulling a CUDA
torch that ignores our pins; ``docs/architecture.md``, "Three ways to run"). This
launcher does what a user wants instead:

1. validates the run config (pyproject defaults + overrides) before anything
   starts, so a typo fails in a second, not after Ray boots;
2. starts ``flower-superlink --simulation`` on a free port with runtime
   dependency installation off, in its own process group, under a private
   ``FLWR_HOME``;
3. runs ``flwr run <app> <connection> --stream`` (the real Flower CLI), so the
   console shows the server's per-round lines;
4. checks the run's *status* (``flwr ls --format json``; ``flwr run`` exits 0
   even when the run fails) and ends the SuperLink and every process it
   started (SuperExec, the simulation, Ray) by PID, whatever happened.

Usage::

    python -m deploy.local_sim [--run-config "k=v ..."] [--num-supernodes N]
    python -m deploy.local_sim --resume outputs/<run>   # continue a crashed run
    python -m deploy.local_sim --ray-address HEAD:6379  # on a running Ray cluster

Exit code 0 only when the run finished with status ``finished:completed``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.common.config import parse_config_args

from common.config import RunConfig
from server_app.preflight import preflight
from server_app.reporting import default_run_name

COMPLETED = "finished:completed"


@dataclass(frozen=True)
class SimulationResult:
    """What a finished simulation left behind."""

    run_id: int | None
    status: str
    run_dir: Path
    output: str
    seconds: float
    superlink_pid: int

    @property
    def ok(self) -> bool:
        return self.status == COMPLETED


def app_defaults(app_dir: Path) -> dict[str, Any]:
    """``[tool.flwr.app.config]`` of the app's pyproject.toml."""
    with open(app_dir / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["flwr"]["app"]["config"]


def to_toml_overrides(values: dict[str, Any]) -> str:
    """A ``--run-config`` string (TOML values) for a dict of overrides."""
    parts = []
    for key, value in values.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str):
            if '"' in value:
                raise ValueError(f"run-config value for {key} may not contain '\"'")
            text = f'"{value}"'
        else:
            text = repr(value)
        parts.append(f"{key}={text}")
    return " ".join(parts)


DEFAULT_GPU_SHARE = 0.25
"""GPUs Ray reserves per ClientApp when ``device`` is CUDA: four share one."""


def federation_config(
    cfg: RunConfig,
    nodes: int,
    cpus_per_client: int,
    gpus_per_client: float | None,
    *,
    cluster: bool = False,
) -> str:
    """Flower's ``--federation-config`` for a simulation of ``cfg``.

    Ray hides every GPU from an actor that reserved none (it sets
    ``CUDA_VISIBLE_DEVICES`` to nothing), so a CUDA run must give each
    ClientApp a GPU share; ``None`` takes :data:`DEFAULT_GPU_SHARE` for CUDA
    and 0 for CPU. On a Ray ``cluster`` the GPUs may be on other machines, so
    this machine's CUDA is not checked.
    """
    cuda = cfg.runtime.device.startswith("cuda")
    gpus = (
        (DEFAULT_GPU_SHARE if cuda else 0.0)
        if gpus_per_client is None
        else gpus_per_client
    )
    if cpus_per_client < 1:
        raise ValueError(f"cpus per client must be >= 1, got {cpus_per_client}")
    if gpus < 0:
        raise ValueError(f"GPUs per client must be >= 0, got {gpus}")
    if cuda and gpus == 0:
        raise ValueError(
            f"device={cfg.runtime.device!r} but each ClientApp reserves 0 GPUs: Ray "
            "would hide the GPU from every client. Give a share, e.g. "
            f"--gpus-per-client {DEFAULT_GPU_SHARE} (four ClientApps per GPU)"
        )
    if gpus > 0 and not cluster:
        import torch

        if not torch.cuda.is_available():
            raise ValueError(
                f"each ClientApp would reserve {gpus:g} GPUs but this machine has no "
                "CUDA device: Ray would wait for one forever; use --gpus-per-client 0"
            )
    parts = [f"num-supernodes={nodes}", f"client-resources-num-cpus={cpus_per_client}"]
    if gpus > 0:
        parts.append(f"client-resources-num-gpus={gpus:g}")
    return " ".join(parts)


def resolve_config(app_dir: Path, overrides: dict[str, Any]) -> RunConfig:
    """Validate defaults + overrides exactly as the apps will (fails fast)."""
    return RunConfig.from_run_config({**app_defaults(app_dir), **overrides})


def resume_overrides(run_dir: Path | str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The run config that continues ``run_dir``: its own config, ``resume`` set,
    then ``overrides`` (only ``num-server-rounds`` may differ; the ServerApp
    refuses anything else, naming the keys)."""
    run_dir = Path(run_dir).expanduser().resolve()
    path = run_dir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"--resume {run_dir}: no config.json there; not a run folder"
        )
    config = json.loads(path.read_text())
    return {
        **config,
        **overrides,
        "resume": str(run_dir),
        "output-dir": str(run_dir.parent),
        "run-name": run_dir.name,
    }


def flwr_env(flwr_home: Path) -> dict[str, str]:
    """This process's environment for Flower's CLI and servers under ``flwr_home``:
    no runtime dependency installation (it would replace our pinned torch), no
    update check, no telemetry. This interpreter's bin folder comes first on
    PATH: the SuperLink starts ``flower-superexec`` by name, which an
    unactivated virtual environment (``.venv/bin/python -m ...``) would not
    find."""
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
        "FLWR_HOME": str(flwr_home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "RAY_DEDUP_LOGS": "0",
    }


def check_ray_address(address: str) -> None:
    """Refuse anything but ``HOST:PORT`` (a Ray head's GCS address)."""
    if not re.fullmatch(r"[A-Za-z0-9.-]+:\d{1,5}", address):
        raise ValueError(
            f"--ray-address must be HOST:PORT of a running Ray head (what `ray start "
            f"--head --port PORT` prints, e.g. 10.0.0.5:6379), got {address!r}"
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"flower-superlink exited early with code {proc.returncode}"
            )
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(
        f"flower-superlink did not answer on port {port} within {timeout} s"
    )


def descendants(pid: int) -> list[int]:
    """All live descendant PIDs of ``pid`` (Linux /proc; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        # The command name may hold spaces; the fields after the last ')' do not.
        ppid = int(text.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def processes_with_env(name: str, value: str) -> list[int]:
    """Live PIDs (not this one) whose environment holds ``name=value`` (Linux /proc).

    A process that left its parent's tree (a daemon that double-forked, or one
    whose parent died first) is still marked by the environment it inherited:
    every process of one launch carries that launch's private ``FLWR_HOME``.
    """
    marker = f"{name}={value}".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        pid = int(environ.parent.name)
        if pid == os.getpid():
            continue
        try:
            if marker in environ.read_bytes().split(b"\0"):
                found.append(pid)
        except OSError:  # gone, or another user's
            continue
    return found


def _kill(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def stop_tree(proc: subprocess.Popen) -> None:
    """End a process and every descendant: SIGTERM, a grace period, then SIGKILL.

    The SuperLink's SuperExec starts its own session (and Ray's daemons with
    it), so a process-group kill alone would leave them; we snapshot the whole
    tree first and end each PID.
    """
    tree = descendants(proc.pid)
    _kill([proc.pid, *tree], signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(
        Path(f"/proc/{p}").exists() for p in tree
    ):
        time.sleep(0.2)
    _kill([proc.pid, *tree, *descendants(proc.pid)], signal.SIGKILL)
    proc.wait()


def _run_status(
    flwr: str, env: dict[str, str], run_id: int | None, connection: str = "local-sim"
) -> tuple[int | None, str]:
    out = subprocess.run(
        [flwr, "ls", connection, "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout
    try:
        runs = json.loads(out)["runs"]
    except (json.JSONDecodeError, KeyError):
        return run_id, f"unknown (flwr ls said: {out.strip()[:200]})"
    for run in runs:
        if run_id is None or int(run["run-id"]) == run_id:
            return int(run["run-id"]), str(run["status"])
    return run_id, "unknown (run not listed)"


def flwr_run(
    app_dir: Path,
    connection: str,
    overrides: dict[str, Any],
    env: dict[str, str],
    output_lines: list[str],
    *,
    extra: tuple[str, ...] = (),
    stream: bool = True,
    timeout: float = 6 * 3600,
    on_line: Callable[[str], None] | None = None,
) -> tuple[int | None, str]:
    """``flwr run <app> <connection> --stream``, then the run's id and *status*.

    Every output line is appended to ``output_lines`` (and echoed when
    ``stream``) and passed to ``on_line``; the status comes from ``flwr ls``,
    since ``flwr run`` exits 0 when a run fails.
    """
    flwr = str(Path(sys.executable).parent / "flwr")
    cmd = [
        flwr,
        "run",
        str(app_dir),
        connection,
        "--stream",
        "--run-config",
        to_toml_overrides(overrides),
        *extra,
    ]
    run_id = None
    timed_out = threading.Event()
    with subprocess.Popen(
        cmd,
        env=env,
        cwd=app_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    ) as run:
        # A watchdog, not a check per line: a run that stops printing must
        # still end at the deadline.
        def expire() -> None:
            timed_out.set()
            run.kill()

        watchdog = threading.Timer(timeout, expire)
        watchdog.daemon = True
        watchdog.start()
        assert run.stdout is not None
        try:
            for line in run.stdout:
                output_lines.append(line)
                if stream:
                    sys.stdout.write(line)
                    sys.stdout.flush()
                match = re.search(r"started run (\d+)", line)
                if match and run_id is None:
                    run_id = int(match.group(1))
                if on_line is not None:
                    on_line(line)
        finally:
            watchdog.cancel()
    if timed_out.is_set():
        raise TimeoutError(f"run did not finish within {timeout} s")
    return _run_status(flwr, env, run_id, connection)


class Terminated(Exception):
    """SIGTERM reached the launcher (``kill <pid>``): cleanup runs first."""


@contextmanager
def terminate_raises() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` while the block runs.

    Python's default SIGTERM ends the process at once, skipping ``finally``:
    a launcher stopped by ``kill <pid>`` would leave its SuperLink, SuperExec
    and Ray daemons running. Only the main thread can set a handler; elsewhere
    the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one waits for cleanup
        raise Terminated(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_simulation(
    app_dir: Path | str = ".",
    overrides: dict[str, Any] | None = None,
    *,
    num_supernodes: int | None = None,
    cpus_per_client: int = 1,
    gpus_per_client: float | None = None,
    ray_address: str | None = None,
    stream: bool = True,
    timeout: float = 6 * 3600,
) -> SimulationResult:
    """Run one simulation of the app and return its status and run folder.

    ``ray_address`` (``HOST:PORT`` of a running cluster's head, as ``ray start
    --head`` prints it): the simulation's ClientApps run on that cluster
    instead of a Ray instance started for this run (see ``docs/deploy.md``).
    """
    app_dir = Path(app_dir).resolve()
    if ray_address is not None:
        check_ray_address(ray_address)
    overrides = dict(overrides or {})
    cfg = resolve_config(app_dir, overrides)
    # Pin the run folder so we can report it: absolute output dir, explicit name.
    overrides["output-dir"] = str(Path(cfg.runtime.output_dir).expanduser().resolve())
    overrides["run-name"] = cfg.runtime.run_name or default_run_name(cfg)
    cfg = resolve_config(app_dir, overrides)
    preflight(cfg)
    run_dir = Path(cfg.runtime.output_dir) / cfg.runtime.run_name
    nodes = num_supernodes or cfg.federation.num_clients
    federation = federation_config(
        cfg, nodes, cpus_per_client, gpus_per_client, cluster=ray_address is not None
    )
    if cfg.runtime.tensorboard:
        print(
            f"follow the run: tensorboard --logdir {run_dir / 'tensorboard'}",
            flush=True,
        )

    superlink = str(Path(sys.executable).parent / "flower-superlink")
    flwr_home = Path(tempfile.mkdtemp(prefix="flwr-home-"))
    port = free_port()
    env = flwr_env(flwr_home)
    if ray_address is not None:
        # Flower's Ray backend calls ray.init() with no address; Ray then
        # joins the cluster RAY_ADDRESS names, which the SuperLink's
        # simulation process inherits.
        env["RAY_ADDRESS"] = ray_address
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "local-sim"\n\n[superlink.local-sim]\n'
        f'address = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    with terminate_raises():
        t0 = time.perf_counter()
        link = subprocess.Popen(
            [
                superlink,
                "--insecure",
                "--simulation",
                "--disable-runtime-dependency-installation",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=env,
            stdout=open(flwr_home / "superlink.out", "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # keep Ctrl-C of this launcher from racing our cleanup
        )
        output_lines: list[str] = []
        run_id, status = None, "not started"
        try:
            wait_healthy(port, link)
            run_id, status = flwr_run(
                app_dir,
                "local-sim",
                overrides,
                env,
                output_lines,
                extra=("--federation-config", federation),
                stream=stream,
                timeout=timeout,
            )
        finally:
            stop_tree(link)
            # What left the SuperLink's tree (SuperExec starts its own session;
            # Ray's daemons double-fork) still carries this launch's FLWR_HOME.
            stray = processes_with_env("FLWR_HOME", str(flwr_home))
            _kill(stray, signal.SIGTERM)
            time.sleep(1.0 if stray else 0.0)
            _kill(processes_with_env("FLWR_HOME", str(flwr_home)), signal.SIGKILL)
    if status == COMPLETED:
        shutil.rmtree(flwr_home, ignore_errors=True)
    else:
        output_lines.append(f"(SuperLink log kept in {flwr_home}/superlink.out)\n")
    return SimulationResult(
        run_id,
        status,
        run_dir,
        "".join(output_lines),
        time.perf_counter() - t0,
        link.pid,
    )


def add_app_arguments(parser: argparse.ArgumentParser) -> None:
    """``--app`` and ``--run-config``/``-c``, as every launcher here takes them."""
    parser.add_argument("--app", default=".", help="app folder (holds pyproject.toml)")
    parser.add_argument(
        "--run-config",
        "-c",
        action="append",
        default=None,
        help="overrides, as for flwr run: \"k=v k2='s'\" or a .toml file",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.local_sim",
        description="Run the SemanticFL app in Flower's simulation engine and check it "
        "completed (defaults: pyproject.toml [tool.flwr.app.config]).",
    )
    add_app_arguments(parser)
    parser.add_argument(
        "--num-supernodes",
        type=int,
        default=None,
        help="simulated SuperNodes (default: num-clients)",
    )
    parser.add_argument(
        "--cpus-per-client",
        type=int,
        default=1,
        help="CPUs Ray reserves per ClientApp (default 1)",
    )
    parser.add_argument(
        "--gpus-per-client",
        type=float,
        default=None,
        help=f"GPU share Ray reserves per ClientApp (default {DEFAULT_GPU_SHARE} when "
        "device is CUDA, else 0; fractional: 0.25 = four ClientApps per GPU)",
    )
    parser.add_argument(
        "--ray-address",
        default=None,
        metavar="HOST:PORT",
        help="run the ClientApps on this running Ray cluster (its head's address) "
        "instead of a Ray instance started for this run",
    )
    parser.add_argument(
        "--quiet", action="store_true", help="do not stream the run's log"
    )
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        default=None,
        help="continue an interrupted run from its last checkpoint (same config; "
        "-c num-server-rounds=N may extend it)",
    )
    args = parser.parse_args(argv)
    try:
        overrides = parse_config_args(args.run_config)
        if args.resume:
            overrides = resume_overrides(args.resume, overrides)
        result = run_simulation(
            args.app,
            overrides,
            num_supernodes=args.num_supernodes,
            cpus_per_client=args.cpus_per_client,
            gpus_per_client=args.gpus_per_client,
            ray_address=args.ray_address,
            stream=not args.quiet,
        )
    except (
        ValueError,
        FileNotFoundError,
        FileExistsError,
        TimeoutError,
        RuntimeError,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"\nrun {result.run_id}: {result.status} in {result.seconds:.0f} s; "
        f"outputs in {result.run_dir}"
    )
    if not result.ok and (result.run_dir / "checkpoints").is_dir():
        print(
            f"continue it from its last checkpoint: python -m deploy.local_sim "
            f"--resume {result.run_dir}",
            file=sys.stderr,
        )
    if not result.ok:
        print("the run did not complete; its log is above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
