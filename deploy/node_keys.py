"""Make SuperNode authentication key pairs (ECDSA P-384, OpenSSH format).

Flower's node authentication (``flower-superlink --enable-supernode-auth``)
identifies a SuperNode by its public key: the key is registered with
``flwr supernode register <pub> <connection>`` and the node proves it holds
the private key (``flower-supernode --auth-supernode-private-key``). Flower
reads both files with ``cryptography``'s OpenSSH loaders, so that is the
format written here (as Flower's supernode-authentication example does).

Usage (``deploy/make_certs.sh -N`` calls this)::

    python deploy/node_keys.py OUT_DIR COUNT [--start I] [--force]

writes ``OUT_DIR/supernode_credentials_<i>`` (mode 600) and ``.pub`` (644)
for i = I .. I+COUNT-1 (default I = 0, so key i can go to partition i).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

PREFIX = "supernode_credentials_"


def key_paths(out_dir: Path, index: int) -> tuple[Path, Path]:
    """Private and public key file of node ``index``."""
    private = out_dir / f"{PREFIX}{index}"
    return private, private.with_name(private.name + ".pub")


def write_key_pair(private_path: Path, public_path: Path) -> None:
    """One fresh P-384 key pair; the private file is created 600, never wider."""
    key = ec.generate_private_key(ec.SECP384R1())
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public_ssh = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    # Open with 0o600 from the start: a chmod after writing leaves a window
    # in which another user could read the key.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    os.chmod(private_path, 0o600)  # O_CREAT keeps an existing file's mode
    public_path.write_bytes(public_ssh + b"\n")
    os.chmod(public_path, 0o644)


def make_keys(out_dir: Path, count: int, start: int = 0, force: bool = False) -> list:
    """Write ``count`` key pairs into ``out_dir``; return the private key paths."""
    if count < 1 or start < 0:
        raise ValueError(f"need COUNT >= 1 and --start >= 0, got {count}, {start}")
    pairs = [key_paths(out_dir, i) for i in range(start, start + count)]
    if not force:
        existing = [str(p) for pair in pairs for p in pair if p.exists()]
        if existing:
            raise FileExistsError(
                f"{existing[0]} exists (pass --force / -f to overwrite)"
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    for private, public in pairs:
        write_key_pair(private, public)
    return [private for private, _ in pairs]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python deploy/node_keys.py",
        description="Make SuperNode auth key pairs (ECDSA P-384, OpenSSH format).",
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("count", type=int, help="number of key pairs")
    parser.add_argument("--start", type=int, default=0, help="first index (0)")
    parser.add_argument("--force", action="store_true", help="overwrite")
    args = parser.parse_args(argv)
    try:
        written = make_keys(args.out_dir, args.count, args.start, args.force)
    except (ValueError, FileExistsError, OSError) as exc:
        print(f"node_keys.py: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} SuperNode key pair(s): {written[0]} ... (+ .pub)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
