"""The Flower App Bundle (FAB) that ``flwr run .`` builds and uploads.

Built with Flower's own builder (``flwr.cli.build.build_fab_from_disk``, what
``flwr run`` calls), so the ``[tool.flwr.app]`` ``fab-include`` /
``fab-exclude`` rules of pyproject.toml, .gitignore and Flower's built-in
filters all apply. Offline, no SuperLink, well under a second.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from flwr.cli.build import build_fab_from_disk

ROOT = Path(__file__).resolve().parents[1]

# Flower 1.42 builds its specs with pathspec's deprecated "gitwildmatch" name.
pytestmark = pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning")

# The packages the ServerApp and ClientApp import (nothing else travels).
APP_PACKAGES = ("common", "client_app", "server_app", "diffusion_service")

# Measured when the rules were added: 97 entries (with .info/CONTENT and the
# rewritten pyproject.toml), a 536,626-byte FAB (Flower stores members
# uncompressed). Before them: 515 entries, 2,138,285 bytes, 376 of the entries
# under benchmarks/results/. The bounds leave ~30% for growth.
MAX_ENTRIES = 125
MAX_FAB_BYTES = 700_000

# What embedded_model.py / model.py check or load from a model folder; the
# weights themselves never travel (Flower bundles no *.safetensors).
EMBEDDED_FILES = (
    "diffusion_service/embedded/model_index.json",
    "diffusion_service/embedded/text_encoder.json",
    "diffusion_service/embedded/scheduler/scheduler_config.json",
    "diffusion_service/embedded/unet/config.json",
    "diffusion_service/embedded/vae/config.json",
)


@pytest.fixture(scope="module")
def fab(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    path = tmp_path_factory.mktemp("fab") / "semanticfl.fab"
    path.write_bytes(build_fab_from_disk(ROOT))
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None
        return path, z.namelist()


def test_no_results_tests_or_docs(fab):
    _, names = fab
    for prefix in ("benchmarks/", "tests/", "docs/", "deploy/", "scripts/", "conf/"):
        assert not [n for n in names if n.startswith(prefix)], prefix


def test_only_the_app_packages_travel(fab):
    _, names = fab
    allowed = {*APP_PACKAGES, "pyproject.toml", "LICENSE", ".info"}
    assert {n.split("/", 1)[0] for n in names} <= allowed


def test_entry_modules_and_embedded_configs_are_in(fab):
    _, names = fab
    for name in (
        "pyproject.toml",
        "LICENSE",
        "server_app/app.py",
        "client_app/app.py",
        "diffusion_service/embedded_model.py",
        *EMBEDDED_FILES,
    ):
        assert name in names, name
    assert not [n for n in names if n.endswith((".safetensors", ".bin", ".pt"))]


def test_every_app_module_is_in(fab):
    """A module left out would only fail at import time inside a run."""
    _, names = fab
    missing = [
        p.relative_to(ROOT).as_posix()
        for pkg in APP_PACKAGES
        for p in (ROOT / pkg).rglob("*.py")
        if "__pycache__" not in p.parts and p.relative_to(ROOT).as_posix() not in names
    ]
    assert not missing


def test_size_bounds(fab):
    path, names = fab
    assert len(names) <= MAX_ENTRIES, len(names)
    assert path.stat().st_size <= MAX_FAB_BYTES, path.stat().st_size
