"""A real TLS + node-auth deployment across network namespaces ("hosts").

What it does, in order (every step is what a person would run on real
machines, through the same scripts in ``deploy/``):

1. ``make_certs.sh``: CA, server certificate for the server host's address,
   token, and N + 1 SuperNode key pairs (the last one is never registered);
2. namespaces (``deploy/netns.py``): a server host and one host per SuperNode
   plus one for the unregistered node, on a bridge;
3. server host: ``start_superlink.sh`` (TLS, ``--enable-supernode-auth``),
   with ``--isolation process`` (default) a ``flower-superexec`` for the
   ServerApps as compose's ``superexec-serverapp``, a private ``flwr``
   connection, ``register_nodes.sh`` for N keys, and, with
   ``--guidance-service``, the diffusion service (TLS + token);
4. the unregistered SuperNode must be refused (exit code 305);
5. each client host: ``start_supernode.sh`` with its partition (and its
   own ``flower-superexec`` for the ClientApps, as compose's
   ``superexec-clientapp-<i>``);
6. ``flwr run <app> <connection> --stream``; with ``--kill-node`` one
   SuperNode is killed (SIGKILL, its whole process tree) right after the
   server sent it round ``--kill-round``'s (default 1) training message. Flower marks it
   offline when its heartbeats stop (about a minute: 30 s interval, patience
   2), the pending message gets an error reply, and the round goes on with
   the others (``min-available-clients`` = N - 1);
7. the run's *status* from ``flwr ls`` (``flwr run`` exits 0 on failures);
8. every process ended by PID, every namespace deleted, whatever happened.

Usage: ``sudo python -m deploy.multihost [--nodes 3] [--kill-node 1] ...``
(``--help``). Exit code 0 only when the run completed and every check held.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from flwr.common.config import parse_config_args

from deploy.local_sim import COMPLETED
from deploy.multihost_run import MultihostResult, run_multihost
from deploy.netns import unavailable_reason

__all__ = ["MultihostResult", "run_multihost", "main", "NODES", "SMALL_RUN"]

NODES = 3  # SuperNodes; deploy/compose/compose.yml has the same (a test checks)

# Small enough for 2 CPU cores; every key is a normal run-config key.
SMALL_RUN: dict[str, Any] = {
    "method": "fedavg",
    "num-server-rounds": 2,
    "local-epochs": 1,
    "max-samples-per-client": 200,
    "public-split-size": 0,
    "dirichlet-beta": 1.0,
}


def checks(
    result: MultihostResult, kill_node: int | None, kill_server_after: int | None = None
) -> list[str]:
    """What went wrong, as sentences; empty when everything held."""
    bad = []
    if kill_server_after is not None and result.server_killed_after is None:
        bad.append(f"the ServerApp was not killed after round {kill_server_after}")
    if result.status != COMPLETED:
        bad.append(f"run status is {result.status!r}, not {COMPLETED!r}")
    if result.rogue_rc is not None and not result.rogue_refused:
        bad.append("the unregistered SuperNode was not refused with exit code 305")
    if kill_node is not None and result.killed_at is None:
        bad.append("the SuperNode to kill was never killed")
    if result.stragglers:
        bad.append(f"processes left in the namespaces: {result.stragglers}")
    return bad


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m deploy.multihost",
        description="Deploy the app across network namespaces with TLS and node "
        "auth, run it, and check it completed (needs root).",
    )
    ap.add_argument("--app", default=".", help="app folder (holds pyproject.toml)")
    ap.add_argument("--nodes", type=int, default=NODES, help="SuperNodes (default 3)")
    ap.add_argument(
        "--kill-node",
        type=int,
        default=1,
        help="partition whose SuperNode is killed mid-run (-1: none; default 1)",
    )
    ap.add_argument("--kill-round", type=int, default=1, help="round to kill in")
    ap.add_argument(
        "--kill-server-after",
        type=int,
        default=None,
        metavar="K",
        help="SIGKILL the ServerApp once round K's checkpoint is written, then "
        "resume the run with the SuperNodes still connected",
    )
    ap.add_argument(
        "--no-rogue", action="store_true", help="skip the unregistered-node check"
    )
    ap.add_argument(
        "--guidance-service",
        action="store_true",
        help="also run the diffusion service on the server host; the run uses it "
        "(method semanticfl unless --run-config says otherwise)",
    )
    ap.add_argument(
        "--run-config",
        "-c",
        action="append",
        default=None,
        help="overrides of the small default run, as for flwr run",
    )
    ap.add_argument(
        "--isolation",
        choices=["process", "subprocess"],
        default="process",
        help="process (default): a separate flower-superexec per host runs the "
        "apps, as in compose; subprocess: the SuperLink/SuperNode start it",
    )
    ap.add_argument("--work-dir", default=None, help="keep files here (default tmp)")
    ap.add_argument("--quiet", action="store_true", help="do not stream the run")
    args = ap.parse_args(argv)
    reason = unavailable_reason()
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    kill = None if args.kill_node < 0 else args.kill_node
    base = {**SMALL_RUN, "method": "semanticfl"} if args.guidance_service else SMALL_RUN
    overrides = {**base, **parse_config_args(args.run_config)}
    # SIGTERM (kill PID) must run the cleanup in run_multihost's finally too.
    signal.signal(signal.SIGTERM, _interrupt)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="sfl-multihost-"))
    try:
        result = run_multihost(
            Path(args.app),
            overrides,
            work,
            nodes=args.nodes,
            kill_node=kill,
            kill_round=args.kill_round,
            rogue=not args.no_rogue,
            guidance_service=args.guidance_service,
            isolation=args.isolation,
            kill_server_after=args.kill_server_after,
            stream=not args.quiet,
        )
    except (ValueError, FileNotFoundError, RuntimeError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result.summary(), indent=2))
    bad = checks(result, kill, args.kill_server_after)
    for line in bad:
        print(f"FAILED: {line}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
