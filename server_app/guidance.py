"""Server-side guidance for the guided methods, prepared once before round 1.

The diffusion service does the work (it knows nothing of Flower); this module
only decides what to compute from the run config:

- **SemanticFL**: text anchors ``T`` (C, d) and visual anchors ``V`` (C, d),
  the class means of the public split's features under the true-class prompt.
  They ride in every train Message (a few KB); clients send back only weights.
- **FedDifRC**: instance features of every client sample, written once into the
  feature store (in simulation the server holds the training set); each client
  then reads only its own samples (``client_app/guidance.py``). The deployment
  path (client-side extraction, or opt-in latent upload) is designed in
  ``docs/guided-methods.md``.

The projection to d (the client model's embedding width) is fitted on the
public split for both methods, so it never depends on a client's data.
"""

from __future__ import annotations

import json
import time
from importlib import metadata
from logging import INFO
from pathlib import Path
from typing import Any

import numpy as np
from flwr.common import log

from common.config import RunConfig
from common.datasets import get_spec, load_dataset
from common.federation import make_model
from common.partition import DataSplit

PRETRAIN_COMMAND = (
    "python -m diffusion_service.pretrain --out diffusion_service/embedded"
)
# Self-supervised FedDifRC's prompts (FedDifRC paper notes, papers.md 2.2),
# filled into the prompt template: "a photo of a similar object" is the TDCL
# positive, "a photo of a visual object" the NDCR target.
SS_POSITIVE = "similar object"
SS_NDCR = "visual object"


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
    import diffusion_service

    found = [Path(diffusion_service.__file__).resolve().parent / "embedded"]
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


def store_root(cfg: RunConfig) -> Path:
    """Root of the feature stores: ``feature-store`` or ``<output-dir>/feature-store``.

    Absolute, because the ClientApps read it from another working directory.
    """
    root = cfg.feature_store or str(Path(cfg.output_dir) / "feature-store")
    return Path(root).expanduser().resolve()


def make_recipe(cfg: RunConfig, dim: int, num_negatives: int | None = None):
    """The feature recipe of a run (timestep, layers, template, d)."""
    from diffusion_service import FeatureRecipe

    return FeatureRecipe(
        timestep=cfg.guidance_timestep,
        up_blocks=cfg.guidance_up_blocks,
        prompt_template=cfg.prompt_template,
        dim=dim,
        num_negatives=num_negatives,
    )


def open_guidance_session(
    cfg: RunConfig,
    split: DataSplit,
    *,
    num_negatives: int | None,
    self_supervised: bool,
):
    """Load the guidance model and open the store of the run's training set.

    The projection is fitted on the public split (``fit_indices``). In
    self-supervised mode the prompt set is [positive, NDCR, class names...]
    for every sample and no label is used.
    """
    import torch

    from diffusion_service import GuidanceModel, open_session

    spec = get_spec(cfg.dataset)
    train, _ = load_dataset(cfg.dataset, cfg.data_root)
    dim = make_model(cfg, spec).embedding_dim
    model = GuidanceModel.from_pretrained(
        resolve_guidance_model(cfg.guidance_model), device=cfg.device
    )
    names, labels = list(spec.class_names), train.labels
    if self_supervised:
        # No labels: every sample gets the same prompt set, [positive, NDCR,
        # every class name], and the projection is fitted under the positive.
        names = [SS_POSITIVE, SS_NDCR, *names]
        labels = torch.zeros_like(train.labels)
    return open_session(
        model,
        make_recipe(cfg, dim, num_negatives),
        dataset=f"{cfg.dataset}-train" + ("-ss" if self_supervised else ""),
        images=train.images,
        labels=labels,
        class_names=names,
        root=store_root(cfg),
        fit_indices=split.public,
    )


def prepare_semanticfl(cfg: RunConfig, split: DataSplit) -> dict[str, np.ndarray]:
    """Text and visual class anchors (C, d) from the public split, float32."""
    from diffusion_service import build_anchors

    session = open_guidance_session(
        cfg, split, num_negatives=None, self_supervised=False
    )
    anchors = build_anchors(session, split.public, progress=False)
    return {
        "text": anchors["text"].float().numpy(),
        "visual": anchors["visual"].float().numpy(),
    }


def feddifrc_kinds(cfg: RunConfig) -> tuple[str, ...]:
    """Feature kinds FedDifRC's enabled terms need.

    With TDCL on, one pass per class prompt (``cond``) also yields NDCR's
    target: ``f_noise`` is the same image, noise and timestep under the
    true-class prompt, i.e. the ``cond`` row of the true class (bitwise, since
    every U-Net call has the same shape), so it is not computed twice.
    """
    if cfg.self_supervised or cfg.tdcl_weight > 0:
        return ("cond",)
    return ("noise",) if cfg.ndcr_weight > 0 else ()


def prepare_feddifrc(cfg: RunConfig, split: DataSplit) -> tuple[str, dict]:
    """Extract every client sample's features into the store; return its path."""
    from diffusion_service import extract

    kinds = feddifrc_kinds(cfg)
    if not kinds:
        return "", {}
    num_negatives = (
        None if cfg.self_supervised or cfg.tdcl_negatives == 0 else cfg.tdcl_negatives
    )
    session = open_guidance_session(
        cfg, split, num_negatives=num_negatives, self_supervised=cfg.self_supervised
    )
    indices = np.unique(np.concatenate(split.clients))
    stats = extract(session, kinds=kinds, indices=indices, progress=False)
    computed = {k: v["computed"] for k, v in stats.items()}
    return str(session.store.path), {"samples": int(len(indices)), "computed": computed}


def guidance_kwargs(cfg: RunConfig, split: DataSplit) -> tuple[dict[str, Any], dict]:
    """Strategy constructor arguments of a guided method, and a record of the work.

    Returns ``({}, {})`` for the other methods. The record (seconds, store,
    samples computed) goes to the run folder's ``guidance.json``.
    """
    if cfg.method not in ("feddifrc", "semanticfl"):
        return {}, {}
    t0 = time.perf_counter()
    log(INFO, "Preparing %s guidance with %s ...", cfg.method, cfg.guidance_model)
    if cfg.method == "semanticfl":
        kwargs: dict[str, Any] = {"anchors": prepare_semanticfl(cfg, split)}
        info: dict[str, Any] = {"anchors-from": int(len(split.public))}
    else:
        path, info = prepare_feddifrc(cfg, split)
        kwargs = {"store_path": path}
        info = {**info, "store": path}
    seconds = time.perf_counter() - t0
    log(INFO, "Guidance ready in %.1f s: %s", seconds, info)
    return kwargs, {
        "method": cfg.method,
        "guidance-model": cfg.guidance_model,
        "seconds": seconds,
        **info,
    }
