"""Build the offline bundle ``scripts/gpu_check.sh`` installs on a bare GPU machine.

The GPU machine has Python 3.12 with torch, torchvision, transformers,
safetensors, numpy, grpcio and protobuf, and no network. Everything else the
check needs travels with the repository in one ignored folder (default
``gpu-bundle/``), and the repository plus the bundle must fit in 64 MiB:

- ``wheels/``: Python 3.12 manylinux x86-64 wheels of flwr and diffusers (the
  versions installed here) and what they need, minus what the machine's own
  packages already bring (:data:`PREINSTALLED`) and minus what the check never
  runs (:data:`NOT_NEEDED`);
- ``fashion-mnist/``: the first ``--train`` training and ``--test`` test images
  of Fashion-MNIST as the original IDX .gz files (``data-root`` reads them);
- ``MANIFEST.json``: every file with its size and SHA-256, what was left out
  and why, and the bytes that travel (tracked + untracked-not-ignored files of
  the checkout, plus the bundle).

Needs PyPI (pip download). Usage::

    python -m benchmarks.gpu_bundle [--dest gpu-bundle] [--train 6000] [--test 2000]

Exit code 1 when the checkout plus the bundle exceed ``--limit-mib``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.metadata
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np

from common.datasets import load_dataset
from common.io import atomic_write_json

ROOT = Path(__file__).resolve().parent.parent

# Every Python 3.12 x86-64 tag pip must try: pip matches manylinux_2_N exactly.
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
    "manylinux_2_5_x86_64",
)

# On the GPU machine already, with what they pull in themselves.
PREINSTALLED: dict[str, str] = {
    **dict.fromkeys(
        (
            "torch",
            "torchvision",
            "transformers",
            "safetensors",
            "numpy",
            "grpcio",
            "protobuf",
        ),
        "preinstalled on the GPU machine",
    ),  # fmt: skip
    **dict.fromkeys(
        ("huggingface-hub", "hf-xet", "tokenizers", "regex"),
        "a dependency of the preinstalled transformers",
    ),
    "pillow": "a dependency of the preinstalled torchvision",
}

# Pulled in by flwr but never run by the check.
NOT_NEEDED: dict[str, str] = {
    "uv": "flwr installs app dependencies with it; the check disables that "
    "(--disable-runtime-dependency-installation)",
    **dict.fromkeys(
        ("uvloop", "httptools", "watchfiles", "websockets", "python-dotenv"),
        "uvicorn[standard]'s optional speed-ups; plain uvicorn serves the "
        "SuperLink's HTTP API",
    ),
}

LIMIT_MIB = 64  # what travels to the device machine with the repository


def canonical(name: str) -> str:
    """PEP 503 project name: lower case, runs of -_. as one dash."""
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_project(path: Path) -> str:
    """The canonical project name of a wheel file."""
    return canonical(path.name.split("-", 1)[0])


def requirements() -> list[str]:
    """flwr and diffusers at the versions this checkout runs with."""
    return [
        f"{name}=={importlib.metadata.version(name)}" for name in ("flwr", "diffusers")
    ]


def download(dest: Path) -> list[Path]:
    """pip download the requirements' wheels for CPython 3.12 x86-64 into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
        "--python-version", "3.12", "--implementation", "cp",
        *[arg for p in PLATFORMS for arg in ("--platform", p)],
        "--dest", str(dest), *requirements(),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        raise RuntimeError(f"pip download failed (needs PyPI):\n{tail}")
    return sorted(dest.glob("*.whl"))


def prune(wheels: list[Path]) -> dict[str, str]:
    """Delete the wheels the GPU machine does not need; return {file: reason}."""
    dropped = {}
    for wheel in wheels:
        reason = PREINSTALLED.get(wheel_project(wheel)) or NOT_NEEDED.get(
            wheel_project(wheel)
        )
        if reason:
            dropped[wheel.name] = reason
            wheel.unlink()
    return dropped


def _write_idx(path: Path, array: np.ndarray) -> None:
    """One IDX file (unsigned bytes), gzipped, as the original datasets ship."""
    magic = 0x0800 | array.ndim
    header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_data_subset(
    dest: Path, n_train: int, n_test: int, data_root: str = ""
) -> None:
    """The first ``n_train`` / ``n_test`` Fashion-MNIST images as IDX .gz files."""
    train, test = load_dataset("fashion-mnist", data_root)
    for name, split, n in (("train", train, n_train), ("t10k", test, n_test)):
        if not 0 < n <= len(split.labels):
            raise ValueError(f"--{name} must be in 1..{len(split.labels)}, got {n}")
        dest.mkdir(parents=True, exist_ok=True)
        _write_idx(dest / f"{name}-images-idx3-ubyte.gz", split.images[:n, 0].numpy())
        _write_idx(dest / f"{name}-labels-idx1-ubyte.gz", split.labels[:n].numpy())


def travelling_bytes(repo: Path) -> int:
    """Bytes of the checkout that travel: tracked and untracked-not-ignored files."""
    out = subprocess.run(
        ["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others",
         "--exclude-standard"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    files = (repo / p for p in out.decode().split("\0") if p)
    return sum(f.stat().st_size for f in files if f.is_file())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(dest: Path, n_train: int, n_test: int, data_root: str = "") -> dict:
    """Build the bundle in ``dest`` (replacing it) and return its manifest."""
    if dest.exists():
        shutil.rmtree(dest)
    dropped = prune(download(dest / "wheels"))
    write_data_subset(dest / "fashion-mnist", n_train, n_test, data_root)
    files = sorted(p for p in dest.rglob("*") if p.is_file())
    entries = [
        {
            "path": str(p.relative_to(dest)),
            "bytes": p.stat().st_size,
            "sha256": _sha256(p),
        }
        for p in files
    ]
    bundle = sum(e["bytes"] for e in entries)
    tree = travelling_bytes(ROOT)
    manifest = {
        "requirements": requirements(),
        "python": "cp312 manylinux x86-64",
        "files": entries,
        "left-out": dropped,
        "bundle-bytes": bundle,
        "checkout-bytes": tree,
        "total-bytes": bundle + tree,
        "limit-bytes": LIMIT_MIB * 2**20,
        "data": {"dataset": "fashion-mnist", "train": n_train, "test": n_test},
    }
    atomic_write_json(dest / "MANIFEST.json", manifest)
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_bundle", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--dest", default=str(ROOT / "gpu-bundle"), help="bundle folder")
    ap.add_argument("--train", type=int, default=6000, help="training images")
    ap.add_argument("--test", type=int, default=2000, help="test images")
    ap.add_argument("--data-root", default="", help="Fashion-MNIST folder here")
    ap.add_argument("--limit-mib", type=float, default=LIMIT_MIB)
    args = ap.parse_args(argv)
    try:
        m = build(Path(args.dest), args.train, args.test, args.data_root)
    except (RuntimeError, ValueError, OSError) as exc:
        print(f"gpu_bundle: error: {exc}", file=sys.stderr)
        return 2
    mib = 2**20
    for entry in m["files"]:
        print(f"{entry['bytes'] / mib:8.2f} MiB  {entry['path']}")
    print(f"left out: {', '.join(sorted(m['left-out']))}")
    print(
        f"bundle {m['bundle-bytes'] / mib:.1f} MiB + checkout "
        f"{m['checkout-bytes'] / mib:.1f} MiB = {m['total-bytes'] / mib:.1f} MiB "
        f"(limit {args.limit_mib:g} MiB); manifest: {Path(args.dest) / 'MANIFEST.json'}"
    )
    if m["total-bytes"] > args.limit_mib * mib:
        print("gpu_bundle: error: over the limit; it would not travel", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
