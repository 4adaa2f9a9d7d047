"""Add (or replace) a SuperLink connection in a Flower configuration file.

The ``flwr`` CLI reads its connections from ``$FLWR_HOME/config.toml``
(default ``~/.flwr/config.toml``)::

    [superlink.NAME]
    address = "HOST:PORT"
    root-certificates = "/abs/path/ca.crt"

Flower 1.41 has no command that writes such an entry, so this does, keeping
everything else in the file as it was. Usage::

    python deploy/flwr_connection.py CONFIG_TOML NAME ADDRESS CA_CERT [--default]
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path


def connection_block(name: str, address: str, ca: Path) -> str:
    """The TOML text of one TLS connection."""
    for label, value in (("address", address), ("CA path", str(ca))):
        if '"' in value or "\\" in value or "\n" in value:
            raise ValueError(f"{label} may not contain quotes, backslashes or newlines")
    return f'[superlink.{name}]\naddress = "{address}"\nroot-certificates = "{ca}"\n'


def add_connection(
    config: Path, name: str, address: str, ca: Path, default: bool = False
) -> None:
    """Write ``[superlink.NAME]`` into ``config`` (created if missing)."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ValueError(f"connection name must be a plain name, got {name!r}")
    if not re.fullmatch(r"[^\s:]+:\d{1,5}|\[[^\]]+\]:\d{1,5}", address):
        raise ValueError(f"address must be HOST:PORT, got {address!r}")
    ca = ca.expanduser().resolve()
    if not ca.is_file():
        raise FileNotFoundError(f"CA certificate {ca} does not exist")
    text = config.read_text() if config.exists() else ""
    tomllib.loads(text)  # refuse to edit a file Flower could not read either
    # Drop an earlier entry of that name: from its header to the next header.
    header = re.compile(rf"^\[superlink\.{re.escape(name)}\]\s*$", re.M)
    match = header.search(text)
    if match:
        nxt = re.compile(r"^\[", re.M).search(text, match.end())
        text = text[: match.start()] + (text[nxt.start() :] if nxt else "")
    if not re.search(r"^\[superlink\]\s*$", text, re.M):
        text = f'[superlink]\ndefault = "{name}"\n\n' + text
    elif default:
        text = re.sub(
            r"^default\s*=.*$", f'default = "{name}"', text, count=1, flags=re.M
        )
    text = text.rstrip("\n") + "\n\n" + connection_block(name, address, ca)
    tomllib.loads(text)
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python deploy/flwr_connection.py",
        description="Add a TLS SuperLink connection to a Flower config.toml.",
    )
    parser.add_argument("config", type=Path, help="e.g. $FLWR_HOME/config.toml")
    parser.add_argument("name")
    parser.add_argument("address", help="HOST:PORT of the SuperLink")
    parser.add_argument("ca", type=Path, help="CA certificate (ca.crt)")
    parser.add_argument("--default", action="store_true", help="make it the default")
    args = parser.parse_args(argv)
    try:
        add_connection(args.config, args.name, args.address, args.ca, args.default)
    except (ValueError, OSError, tomllib.TOMLDecodeError) as exc:
        print(f"flwr_connection.py: error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.config}: [superlink.{args.name}] address = {args.address}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
