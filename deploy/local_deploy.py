"""Run the app on Flower's deployment engine on one machine, with no Ray.

A SuperLink and N SuperNodes as plain processes on loopback (``--insecure``:
nothing leaves the machine), each SuperNode starting its ClientApps as its own
subprocesses, then ``flwr run <app> local-deploy --stream`` and the run's
*status*. The same apps and messages as on separate machines
(``deploy.multihost`` adds TLS, node authentication and one network namespace
per host); what it leaves out is Ray, which the simulation engine needs and a
bare GPU machine may not have (``scripts/gpu_check.sh`` uses this).

Every process is ended by PID afterwards, whatever happened.

Usage::

    python -m deploy.local_deploy [--nodes 3] [--run-config "k=v ..."]

Exit code 0 only when the run finished with status ``finished:completed``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from flwr.common.config import parse_config_args

from deploy.local_sim import (
    COMPLETED,
    SimulationResult,
    add_app_arguments,
    flwr_env,
    flwr_run,
    free_port,
    resolve_config,
    stop_tree,
    wait_healthy,
)
from server_app.preflight import preflight
from server_app.reporting import default_run_name

CONNECTION = "local-deploy"


def supernode_command(
    superlink_port: int, node: int, nodes: int, port: int
) -> list[str]:
    """The ``flower-supernode`` command of partition ``node`` of ``nodes``."""
    return [
        str(Path(sys.executable).parent / "flower-supernode"),
        "--insecure",
        "--superlink",
        f"127.0.0.1:{superlink_port}",
        "--node-config",
        f"partition-id={node} num-partitions={nodes}",
        "--isolation",
        "subprocess",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),  # each SuperNode's own ClientAppIo port
    ]


def run_deployment(
    app_dir: Path | str = ".",
    overrides: dict[str, Any] | None = None,
    *,
    nodes: int | None = None,
    stream: bool = True,
    timeout: float = 3600,
) -> SimulationResult:
    """Start a SuperLink and ``nodes`` SuperNodes, run the app, end them all.

    ``nodes`` defaults to the run config's ``num-clients`` and must equal it
    (partition ``i`` of ``num-clients`` is SuperNode ``i``'s data).
    """
    app_dir = Path(app_dir).resolve()
    overrides = dict(overrides or {})
    cfg = resolve_config(app_dir, overrides)
    nodes = cfg.federation.num_clients if nodes is None else nodes
    if nodes != cfg.federation.num_clients:
        raise ValueError(
            f"{nodes} SuperNodes but num-clients={cfg.federation.num_clients}: "
            "each SuperNode holds one partition, so the two must be equal"
        )
    overrides["output-dir"] = str(Path(cfg.runtime.output_dir).expanduser().resolve())
    overrides["run-name"] = cfg.runtime.run_name or default_run_name(cfg)
    cfg = resolve_config(app_dir, overrides)
    preflight(cfg)
    run_dir = Path(cfg.runtime.output_dir) / cfg.runtime.run_name

    home = Path(tempfile.mkdtemp(prefix="flwr-deploy-"))
    env = flwr_env(home)
    port = free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    bin_dir = Path(sys.executable).parent
    t0 = time.perf_counter()
    procs: list[subprocess.Popen] = []

    def start(cmd: list[str], log: str) -> subprocess.Popen:
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=home,
            stdout=open(home / log, "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append(proc)
        return proc

    output: list[str] = []
    run_id, status = None, "not started"
    try:
        link = start(
            [
                str(bin_dir / "flower-superlink"),
                "--insecure",
                "--disable-runtime-dependency-installation",
                "--database",
                str(home / "state.db"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            "superlink.out",
        )
        wait_healthy(port, link)
        for i in range(nodes):
            start(supernode_command(port, i, nodes, free_port()), f"supernode-{i}.out")
        run_id, status = flwr_run(
            app_dir, CONNECTION, overrides, env, output, stream=stream, timeout=timeout
        )
    finally:
        for proc in reversed(procs):
            stop_tree(proc)
    if status == COMPLETED:
        shutil.rmtree(home, ignore_errors=True)
    else:
        output.append(f"(SuperLink and SuperNode logs kept in {home})\n")
    return SimulationResult(
        run_id, status, run_dir, "".join(output), time.perf_counter() - t0, procs[0].pid
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.local_deploy",
        description="Run the app on Flower's deployment engine with local "
        "SuperNodes (no Ray) and check it completed.",
    )
    add_app_arguments(parser)
    parser.add_argument(
        "--nodes", type=int, default=None, help="SuperNodes (default: num-clients)"
    )
    parser.add_argument("--quiet", action="store_true", help="do not stream the run")
    args = parser.parse_args(argv)
    try:
        result = run_deployment(
            args.app,
            parse_config_args(args.run_config),
            nodes=args.nodes,
            stream=not args.quiet,
        )
    except (ValueError, FileNotFoundError, TimeoutError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"\nrun {result.run_id}: {result.status} in {result.seconds:.0f} s; "
        f"outputs in {result.run_dir}"
    )
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
