"""Checks of a run's paths, before any Flower process starts.

The run config's own checks (``common.config``) look at values; these look
at the machine: the dataset's files under ``data-root``, the
``guidance-model`` folder and its diffusers layout, and whether
``output-dir`` and ``feature-store`` can be written. The launcher runs them
before it starts a SuperLink, and the ServerApp again before round 1 (for
``flwr run`` without the launcher), so a wrong path fails in a second with a
message naming the key, not as a traceback from inside the simulation.
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

import torch

from common.config import ConfigError, RunConfig
from common.datasets import DatasetNotFoundError
from common.federation import data_split
from diffusion_service.embedded_model import (
    GuidanceModelMissingError,
    resolve_guidance_model,
)
from diffusion_service.model import ModelLayoutError, check_model_folder
from server_app.guidance import store_root
from server_app.resume import resume_point
from server_app.tensorboard_sink import INSTALL_HINT


class PreflightError(ConfigError):
    """A path of the run config that does not work on this machine."""


def uses_guidance_model(cfg: RunConfig) -> bool:
    """Whether this process loads ``guidance-model`` (not a remote service's)."""
    method = cfg.method_info
    if method.guided:
        return not cfg.guidance.service  # a service runs its own model
    return method.prepares == "generated-set" or method.model == "diffusion-unet"


def preflight(cfg: RunConfig) -> None:
    """Raise :class:`PreflightError` naming the first key whose path fails."""
    try:
        data_split(cfg)  # loads the dataset's files, as every side will
    except DatasetNotFoundError as exc:
        raise PreflightError(
            f"run-config 'data-root' = {cfg.data.data_root!r}: {exc}"
        ) from None
    if uses_guidance_model(cfg):
        check_guidance_model(cfg.guidance.model)
    device = cfg.runtime.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PreflightError(
            f"run-config 'device' = {device!r} but torch sees no CUDA device on this "
            f"machine (torch {torch.__version__}, CUDA build: {torch.version.cuda}); "
            "run on a GPU machine or set device = 'cpu'"
        )
    writable("output-dir", Path(cfg.runtime.output_dir))
    if cfg.method_info.guided:
        writable("feature-store", store_root(cfg))
    if cfg.runtime.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise PreflightError(
            f"run-config 'tensorboard' = true needs the tensorboard package: {INSTALL_HINT}"
        )
    resume_point(cfg)  # a resumed run: same config, a usable checkpoint


def check_guidance_model(name: str) -> None:
    """``guidance-model`` resolves to a diffusers-layout folder (or a hub id)."""
    try:
        folder = resolve_guidance_model(name)
    except GuidanceModelMissingError as exc:
        raise PreflightError(str(exc)) from None
    path = Path(folder).expanduser()
    looks_like_path = path.exists() or folder.startswith((".", "/", "~"))
    if not looks_like_path:
        return  # a hub id: loaded (or refused) by diffusers, with the network
    if not path.exists():
        raise PreflightError(
            f"run-config 'guidance-model' = {name!r}: {path} does not exist. Give "
            "'embedded', a diffusers-layout folder (vae/, unet/, scheduler/, "
            "text_encoder/, tokenizer/) or a hub id"
        )
    try:
        check_model_folder(path)
    except ModelLayoutError as exc:
        raise PreflightError(f"run-config 'guidance-model' = {name!r}: {exc}") from None


def writable(key: str, folder: Path) -> None:
    """Create ``folder`` if needed and check a file can be written in it."""
    folder = folder.expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".preflight-"):
            pass
    except OSError as exc:
        raise PreflightError(
            f"run-config '{key}' = '{folder}' cannot be written: {exc.strerror or exc}"
            f" ({type(exc).__name__}); choose a folder you can write to"
        ) from None
