"""The steps of ``deploy.multihost`` (see its docstring for the story)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common.config import PAPER_FORMS
from common.io import read_jsonl
from deploy.flwr_connection import add_connection
from deploy.hosts import Hosts, alive, kill_host, wait_until
from deploy.local_sim import (
    descendants,
    resolve_config,
    resume_overrides,
    to_toml_overrides,
)
from deploy.netns import Network
from server_app.checkpoint import checkpoint_path

DEPLOY = Path(__file__).resolve().parent
PORT = 8000  # the SuperLink's single HTTPS port, as in the docs and compose
SERVICE_PORT = 50051  # the diffusion service's, as in its CLI
CONNECTION = "multihost"
REFUSED = "Exit Code: 305"


@dataclass
class MultihostResult:
    """What one multi-host run did and saw."""

    run_id: int | None = None
    status: str = "not started"
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)
    rogue_rc: int | None = None
    rogue_refused: bool = False
    rogue_message: str = ""
    killed_node: int | None = None
    killed_at: float | None = None  # seconds since the start
    server_killed_after: int | None = None  # round whose checkpoint was there
    interrupted_status: str = ""  # the killed run's status
    interrupted_run_id: int | None = None
    resumed_run_id: int | None = None
    train_clients: dict[int, int] = field(default_factory=dict)  # round -> replies
    failures_logged: int = 0  # "... failures" lines of the strategy
    stragglers: list[int] = field(default_factory=list)
    run_dir: str = ""
    work_dir: str = ""
    output: str = ""

    def summary(self) -> dict[str, Any]:
        """Everything but the long output."""
        return {k: v for k, v in asdict(self).items() if k != "output"}


def _online(hosts: Hosts, ns: str, home: str) -> int:
    done = hosts.run(ns, ["flwr", "supernode", "list", CONNECTION, "--format", "json"],
                     FLWR_HOME=home)  # fmt: skip
    try:
        nodes = json.loads(done.stdout)["nodes"]
    except (json.JSONDecodeError, KeyError):
        return -1
    return sum(1 for n in nodes if n["status"] == "online")


def _run_status(hosts: Hosts, ns: str, home: str, run_id: int | None) -> str:
    done = hosts.run(ns, ["flwr", "ls", CONNECTION, "--format", "json"], FLWR_HOME=home)
    try:
        runs = json.loads(done.stdout)["runs"]
    except (json.JSONDecodeError, KeyError):
        return f"unknown (flwr ls said: {done.stdout.strip()[:300]})"
    for run in runs:
        if run_id is None or int(run["run-id"]) == run_id:
            return str(run["status"])
    return "unknown (run not listed)"


def run_multihost(
    app_dir: Path,
    overrides: dict[str, Any],
    work: Path,
    *,
    nodes: int = 3,
    kill_node: int | None = 1,
    kill_round: int = 1,
    rogue: bool = True,
    guidance_service: bool = False,
    isolation: str = "process",
    kill_server_after: int | None = None,
    stream: bool = True,
    timeout: float = 900,
) -> MultihostResult:
    """Deploy, run and tear down; see the module docstring of deploy.multihost.

    ``kill_server_after`` = k: once round k's checkpoint is written, SIGKILL
    the server host's ServerApp, then resume the run (``resume``) with the
    SuperNodes still connected.
    """
    app_dir, work = app_dir.resolve(), work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if kill_node is not None and not 0 <= kill_node < nodes:
        raise ValueError(f"--kill-node must be 0 .. {nodes - 1}, got {kill_node}")
    net = Network(clients=nodes + (1 if rogue else 0))
    certs = work / "certs"
    overrides = {
        **overrides,
        "num-clients": nodes,
        "output-dir": str(work / "outputs"),
        "run-name": "multihost",
    }
    if kill_node is not None:
        overrides.setdefault("min-available-clients", nodes - 1)
    if guidance_service:
        overrides.setdefault("method", "semanticfl")
        # The service computes features, not the zero-shot teacher's errors:
        # the guided methods run their papers' forms against it.
        for key, value in PAPER_FORMS.items():
            overrides.setdefault(key, value)
        overrides.update({
            "guidance-service": f"{net.server_ip}:{SERVICE_PORT}",
            "guidance-service-ca": str(certs / "ca.crt"),
            "guidance-service-token-file": str(certs / "token"),
        })  # fmt: skip
    resolve_config(app_dir, overrides)  # a bad key fails before anything starts

    res = MultihostResult(work_dir=str(work), run_dir=str(work / "outputs/multihost"))
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(app_dir),
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "PYTHON": sys.executable,
    }
    cli_home = str(work / "cli-home")
    t0 = time.perf_counter()

    def mark(phase: str) -> None:
        res.phases[phase] = round(time.perf_counter() - t0, 1)

    subprocess.run(
        ["bash", str(DEPLOY / "make_certs.sh"), "-N", str(nodes + 1), "-s",
         f"localhost,127.0.0.1,{net.server_ip}", str(certs)],
        env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    hosts = Hosts(net, work, env)
    try:
        net.create()
        mark("namespaces-up")
        srv = net.server
        link = hosts.spawn(
            srv,
            ["bash", str(DEPLOY / "start_superlink.sh"), "--certs", str(certs),
             "--host", "0.0.0.0", "--port", str(PORT), "--isolation", isolation,
             "--database",
             str(work / "superlink.db"), "--log-file", str(work / "superlink.log"),
             "--foreground"],
            "superlink.out", FLWR_HOME=str(work / "superlink-home"),
        )  # fmt: skip
        addr = f"{net.server_ip}:{PORT}"
        reg = [str(certs / f"supernode_credentials_{i}.pub") for i in range(nodes)]

        add_connection(
            Path(cli_home) / "config.toml", CONNECTION, addr, certs / "ca.crt"
        )

        def answers() -> bool:  # the SuperLink is up and speaks TLS to our CA
            alive(link, "flower-superlink", work / "superlink.out")
            return _online(hosts, srv, cli_home) >= 0

        wait_until(answers, 60, "the SuperLink did not answer over TLS", 2)
        # Once, so a failure is the script's own error, not a retry artefact.
        done = hosts.run(
            srv,
            ["bash", str(DEPLOY / "register_nodes.sh"), "--add-connection",
             addr, "--ca", str(certs / "ca.crt"), CONNECTION, *reg],
            FLWR_HOME=cli_home,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"register_nodes.sh failed:\n{done.stdout}{done.stderr}")
        if isolation == "process":  # compose's superexec-serverapp
            hosts.spawn(
                srv,
                ["flower-superexec", "--root-certificates", str(certs / "ca.crt"),
                 "--runtime-api-address", f"127.0.0.1:{PORT}"],
                "superexec-serverapp.out", FLWR_HOME=str(work / "superlink-home"),
            )  # fmt: skip
        mark("superlink-up-and-keys-registered")

        if guidance_service:
            svc = hosts.spawn(
                srv,
                [sys.executable, "-m", "diffusion_service.remote", "serve",
                 "--model", "embedded", "--address", f"{net.server_ip}:{SERVICE_PORT}",
                 "--certfile", str(certs / "server.pem"),
                 "--keyfile", str(certs / "server.key"),
                 "--token-file", str(certs / "token")],
                "diffusion.out",
            )  # fmt: skip
            wait_until(
                lambda: alive(svc, "diffusion service", work / "diffusion.out")
                and hosts.run(srv, [sys.executable, "-m", "diffusion_service.remote",
                                    "health", "--address",
                                    f"{net.server_ip}:{SERVICE_PORT}",
                                    "--ca", str(certs / "ca.crt"),
                                    "--token-file", str(certs / "token")]
                              ).returncode == 0,
                120, "the diffusion service did not answer SERVING", 2,
            )  # fmt: skip
            mark("diffusion-service-up")

        def supernode(i: int, ns: str, key: int, log: str, mode: str) -> list:
            home = str(work / f"node-{key}-home")
            procs = [hosts.spawn(
                ns,
                ["bash", str(DEPLOY / "start_supernode.sh"), "--superlink", addr,
                 "--ca", str(certs / "ca.crt"),
                 "--key", str(certs / f"supernode_credentials_{key}"),
                 "--partition-id", str(i), "--num-partitions", str(nodes),
                 "--isolation", mode, "--flwr-home", home, "--foreground"],
                log,
            )]  # fmt: skip
            if mode == "process":  # compose's superexec-clientapp-<i>
                procs.append(hosts.spawn(
                    ns,
                    ["flower-superexec", "--insecure", "--runtime-api-address",
                     "127.0.0.1:9094"],
                    log.replace("supernode", "superexec-clientapp"), FLWR_HOME=home,
                ))  # fmt: skip
            return procs

        if rogue:
            [bad] = supernode(0, net.client(nodes), nodes, "rogue.out", "subprocess")
            try:
                res.rogue_rc = bad.wait(timeout=90)
            except subprocess.TimeoutExpired:
                res.rogue_rc = None
            text = (work / "rogue.out").read_text()
            res.rogue_refused = res.rogue_rc not in (None, 0) and REFUSED in text
            found = re.search(r"Exit Code: \d+(\n[^\n]+){0,3}", text)
            res.rogue_message = found.group(0) if found else text[-300:]
            mark("unregistered-node-checked")

        clients = [
            supernode(i, net.client(i), i, f"supernode-{i}.out", isolation)
            for i in range(nodes)
        ]
        wait_until(lambda: all(alive(c[0], f"supernode {i}", work / f"supernode-{i}.out")
                          for i, c in enumerate(clients))
              and _online(hosts, srv, cli_home) == nodes,
              90, f"not all {nodes} SuperNodes came online", 2)  # fmt: skip
        mark("supernodes-online")

        crash = None
        if kill_server_after is not None:
            crash = _ServerCrash(
                Path(res.run_dir), kill_server_after, [link, *hosts.procs]
            )
        _flwr_run(hosts, app_dir, overrides, res, clients, kill_node, kill_round,
                  stream, timeout, cli_home, t0, crash)  # fmt: skip
        mark("run-ended")
        if crash is not None and crash.done:
            res.server_killed_after = kill_server_after
            res.interrupted_status = _run_status(hosts, srv, cli_home, res.run_id)
            mark("serverapp-killed")
            res.interrupted_run_id, res.run_id = res.run_id, None
            resumed = resume_overrides(res.run_dir, {})
            _flwr_run(hosts, app_dir, resumed, res, clients, None, kill_round,
                      stream, timeout, cli_home, t0, None)  # fmt: skip
            res.resumed_run_id = res.run_id
            mark("resumed-run-ended")
        res.status = _run_status(hosts, srv, cli_home, res.run_id)
        metrics = Path(res.run_dir) / "metrics.jsonl"
        if metrics.exists():
            res.train_clients = {
                int(r["round"]): int(r["train"]["clients"])
                for r in read_jsonl(metrics)
                if r.get("train")
            }
    finally:
        hosts.close()
        res.stragglers = net.delete()
        res.seconds = round(time.perf_counter() - t0, 1)
    return res


class _ServerCrash:
    """Watches for round k's checkpoint, then SIGKILLs the ServerApp processes
    (``flwr-serverapp`` under the server host's processes) and, after a grace
    period, the ``flwr run`` that may keep streaming a run whose server is gone."""

    def __init__(self, run_dir: Path, after: int, server_procs: list) -> None:
        self.path = checkpoint_path(run_dir, after)
        self.server_procs = server_procs
        self.done = False

    def watch(self, run: subprocess.Popen) -> threading.Thread:
        def loop() -> None:
            while run.poll() is None and not self.path.exists():
                time.sleep(0.05)
            if run.poll() is not None:
                return
            killed = 0
            for proc in self.server_procs:
                for pid in descendants(proc.pid):
                    if _is_serverapp(pid):
                        os.kill(pid, signal.SIGKILL)
                        killed += 1
            self.done = killed > 0
            try:
                run.wait(timeout=30)
            except subprocess.TimeoutExpired:
                run.kill()

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        return thread


def _is_serverapp(pid: int) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"flwr-serverapp" in cmd


def _flwr_run(hosts, app_dir, overrides, res, clients, kill_node, kill_round,
              stream, timeout, cli_home, t0, crash) -> None:  # fmt: skip
    """``flwr run --stream``; kill a SuperNode once round ``kill_round`` sent work,
    and the ServerApp once ``crash`` sees its checkpoint."""
    cmd = [*hosts.net.exec_prefix(hosts.net.server), "flwr", "run", str(app_dir),
           CONNECTION, "--stream", "--run-config", to_toml_overrides(overrides)]  # fmt: skip
    lines: list[str] = []
    in_kill_round = False
    with subprocess.Popen(
        cmd,
        env={**hosts.env, "FLWR_HOME": cli_home},
        cwd=app_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,
    ) as run:
        watchdog = threading.Timer(timeout, run.kill)
        watchdog.start()
        watcher = crash.watch(run) if crash is not None else None
        try:
            assert run.stdout is not None
            for line in run.stdout:
                lines.append(line)
                if stream:
                    sys.stdout.write(line)
                    sys.stdout.flush()
                if res.run_id is None and (m := re.search(r"started run (\d+)", line)):
                    res.run_id = int(m.group(1))
                if f"[ROUND {kill_round}/" in line:
                    in_kill_round = True
                if "failures" in line and re.search(r"\b[1-9]\d* failures", line):
                    res.failures_logged += 1
                if (
                    kill_node is not None
                    and in_kill_round
                    and res.killed_at is None
                    and "configure_train: Sampled" in line
                ):
                    kill_host(clients[kill_node])
                    res.killed_node = kill_node
                    res.killed_at = round(time.perf_counter() - t0, 1)
                    lines.append(f"### multihost: killed SuperNode {kill_node}\n")
        finally:
            watchdog.cancel()
            if watcher is not None:
                watcher.join(timeout=60)
    res.output += "".join(lines)
