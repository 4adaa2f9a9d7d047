"""Where ``"embedded"`` (the shipped guidance model) is found on disk.

One mechanism for every caller (the ServerApp's run config, the standalone
service's ``--model``): ``flwr run`` imports the app from its FAB install
folder, and a FAB carries no weight files, so the package folder, the source
checkout of an editable install and ``./diffusion_service/embedded`` are
searched in turn.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

PRETRAIN_COMMAND = (
    "python -m diffusion_service.pretrain --out diffusion_service/embedded"
)


class GuidanceModelMissingError(FileNotFoundError):
    """``guidance-model = "embedded"`` but its weights are not trained yet."""


def _has_weights(folder: Path) -> bool:
    """Configs *and* weight files of the VAE and U-Net.

    A FAB install copies the JSON configs but no weights, so a config alone
    does not mean the model is there.
    """
    patterns = ("*.safetensors", "*.bin")
    return all(
        (folder / part / "config.json").is_file()
        and any(next((folder / part).glob(p), None) for p in patterns)
        for part in ("vae", "unet")
    )


def _editable_source() -> Path | None:
    """The source checkout of an editable ``pip install -e .`` (None otherwise).

    ``flwr run`` imports the app from its FAB install folder, and a FAB carries
    no weight files; the checkout is where the pretraining command wrote them.
    """
    try:
        text = metadata.distribution("semanticfl").read_text("direct_url.json")
        url = json.loads(text or "{}").get("url", "")
    except (metadata.PackageNotFoundError, json.JSONDecodeError):
        return None
    return Path(url.removeprefix("file://")) if url.startswith("file://") else None


def embedded_candidates() -> list[Path]:
    """Folders searched, in order, for the embedded model's weights."""
    found = [Path(__file__).resolve().parent / "embedded"]
    src = _editable_source()
    if src is not None:
        found.append(src / "diffusion_service" / "embedded")
    found.append(Path.cwd() / "diffusion_service" / "embedded")
    return list(dict.fromkeys(found))


def resolve_guidance_model(name: str) -> str:
    """``"embedded"`` -> the folder holding its weights; anything else unchanged."""
    if name != "embedded":
        return name
    candidates = embedded_candidates()
    for folder in candidates:
        if _has_weights(folder):
            return str(folder)
    raise GuidanceModelMissingError(
        "guidance-model = 'embedded' but the embedded guidance model has no weights "
        f"yet (looked in: {', '.join(map(str, candidates))}). Train it once from "
        f"the repository root with `{PRETRAIN_COMMAND}`, or set guidance-model to "
        "a diffusers-layout folder or a Stable Diffusion hub id."
    )
