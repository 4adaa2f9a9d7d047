"""Check Flower command lines against the installed Flower's own parsers.

Old tutorials and Flower's own 1.30-era compose files use flags that 1.35+
rejects (``--clientappio-api-address``, ports 9091-9093, ``--plugin-type``);
a compose file only fails on them once a container starts. This parses a
command line with the same argparse parser the program uses, offline.

The parser functions are private to Flower (checked against 1.41); if a
later Flower moves them, ``parser_for`` says so instead of passing silently.
"""

from __future__ import annotations

import argparse
import contextlib
import io
from collections.abc import Callable
from importlib import import_module

PARSERS: dict[str, tuple[str, str]] = {
    "flower-superlink": (
        "flwr.superlink.cli.flower_superlink",
        "_parse_args_run_superlink",
    ),
    "flower-supernode": (
        "flwr.supernode.cli.flower_supernode",
        "_parse_args_run_supernode",
    ),
    "flower-superexec": ("flwr.supercore.cli.flower_superexec", "_parse_args"),
}
# Flags of older Flower releases that 1.41 rejects or ignores.
STALE = (
    "--clientappio-api-address",
    "--serverappio-api-address",
    "--appio-api-address",
    "--fleet-api-address",
    "--exec-api-address",
    "--control-api-address",
    "--plugin-type",
)
STALE_PORTS = ("9091", "9092", "9093")


def parser_for(program: str) -> argparse.ArgumentParser:
    """The installed Flower's argparse parser of ``program``."""
    module, name = PARSERS[program]
    try:
        factory: Callable[[], argparse.ArgumentParser] = getattr(
            import_module(module), name
        )
    except (ImportError, AttributeError) as exc:
        raise RuntimeError(
            f"this Flower has no {module}.{name} ({exc}); update deploy/flags.py"
        ) from None
    return factory()


def parse(program: str, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv`` as ``program`` would; ValueError with its message if not."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parser_for(program).parse_args(argv)
    except SystemExit:
        raise ValueError(
            f"{program} {' '.join(argv)}: {err.getvalue().strip()}"
        ) from None


def stale_flags(argv: list[str]) -> list[str]:
    """Flags or ports of older Flower releases found in ``argv``."""
    found = [a for a in argv if a.split("=")[0] in STALE]
    found += [a for a in argv for p in STALE_PORTS if a.endswith(f":{p}")]
    return found
