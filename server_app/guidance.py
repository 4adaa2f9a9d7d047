"""Server-side guidance for the guided methods, prepared once before round 1.

The diffusion service does the work (it knows nothing of Flower); this module
only decides what to compute from the run config:

- **SemanticFL**: text anchors ``T`` (C, d) and visual anchors ``V`` (C, d),
  the class means of the public split's features under the true-class prompt.
  They ride in every train Message (a few KB); clients send back only weights.
- **FedDifRC**: instance features of every client sample, written once into the
  feature store (in simulation the server holds the training set); each client
  then reads only its own samples (``client_app/guidance.py``). In deployment
  (``feddifrc-features = "latent-upload"``) a query round collects the VAE
  latents of the nodes that opted in instead, and each node's features ride
  in its train Messages (``server_app/latent_query.py``).
- **fedavg-adapt / fedavg-adapt+** (ours): images generated once and a real
  validation slice for the server-side classifier adaptation
  (``server_app/adaptation.py``); ``fedavg-public`` and a guided method with
  ``server-finetune = "public"``: the labelled public split itself.

The projection to d (the client model's embedding width) is fitted on the
public split for both methods, so it never depends on a client's data.

The model runs in this process, or, when ``guidance-service`` is set, on the
standalone guidance service (``diffusion_service.remote``): the same store
driver then runs on a remote extractor, and a service on the same kind of
compute gives the in-process bits (the store key holds its model fingerprint,
device and dtype). Only the ServerApp talks to the service; clients never do.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from logging import INFO
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from flwr.app import ArrayRecord
from flwr.common import log
from flwr.serverapp import Grid

from common.anchors import align_rows, anchor_frame
from common.config import RunConfig
from common.datasets import get_spec, load_dataset
from common.federation import make_model
from common.partition import DataSplit
from diffusion_service.embedded_model import (  # noqa: F401 (re-exported)
    PRETRAIN_COMMAND,
    GuidanceModelMissingError,
    embedded_candidates,
    resolve_guidance_model,
)
from server_app.adaptation import prepare_adaptation, prepare_public_split
from server_app.strategies.fedavg_adapt import finetune_settings
from server_app.teacher import prepare_teacher

if TYPE_CHECKING:
    from diffusion_service import Extractor, FeatureRecipe, Session

# Self-supervised FedDifRC's prompts (docs/methods.md, FedDifRC),
# filled into the prompt template: "a photo of a similar object" is the TDCL
# positive, "a photo of a visual object" the NDCR target.
SS_POSITIVE = "similar object"
SS_NDCR = "visual object"
# Deadline of each call to the guidance service: one Features call of a few
# hundred samples under every class prompt can take minutes on a CPU host.
SERVICE_CALL_TIMEOUT = 900.0


def store_root(cfg: RunConfig) -> Path:
    """Root of the feature stores: ``feature-store`` or ``<output-dir>/feature-store``.

    Absolute, because the ClientApps read it from another working directory.
    """
    root = cfg.guidance.feature_store or str(
        Path(cfg.runtime.output_dir) / "feature-store"
    )
    return Path(root).expanduser().resolve()


def make_recipe(
    cfg: RunConfig, dim: int, num_negatives: int | None = None
) -> FeatureRecipe:
    """The feature recipe of a run (timestep, layers, template, d)."""
    from diffusion_service import FeatureRecipe

    return FeatureRecipe(
        timestep=cfg.guidance.timestep,
        up_blocks=cfg.guidance.up_blocks,
        prompt_template=cfg.guidance.prompt_template,
        projection=cfg.guidance.projection,
        dim=dim,
        num_negatives=num_negatives,
    )


@contextmanager
def guidance_extractor(
    cfg: RunConfig, recipe: FeatureRecipe, class_names: list[str]
) -> Iterator[Extractor]:
    """The run's feature extractor: the service's if configured, else in-process.

    With ``guidance-service`` set, the service must pass a health check first
    (a wrong address, CA or token fails here, naming the address); the
    connection is closed on exit. ``guidance-model`` and ``device`` then do
    not apply: the service runs its own model, whose fingerprint keys the store.
    """
    from diffusion_service import FeatureExtractor, GuidanceModel

    if not cfg.guidance.service:
        model = GuidanceModel.from_pretrained(
            resolve_guidance_model(cfg.guidance.model), device=cfg.runtime.device
        )
        yield FeatureExtractor(model, recipe, class_names)
        return
    from diffusion_service.remote import RemoteFeatureExtractor, connect

    with connect(
        cfg.guidance.service,
        root_ca=cfg.guidance.service_ca or None,
        token_file=cfg.guidance.service_token_file,
        insecure=cfg.guidance.service_insecure,
        timeout=SERVICE_CALL_TIMEOUT,
    ) as service:
        extractor = RemoteFeatureExtractor(service, recipe, class_names)
        log(
            INFO,
            "Guidance service %s: model %s on %s",
            cfg.guidance.service,
            extractor.model.fingerprint[:12],
            extractor.model.device,
        )
        yield extractor


@contextmanager
def guidance_session(
    cfg: RunConfig,
    split: DataSplit,
    *,
    num_negatives: int | None,
    self_supervised: bool,
) -> Iterator[Session]:
    """A store session over the run's training set (open while in the block).

    The projection is fitted on the public split (``fit_indices``). In
    self-supervised mode the prompt set is [positive, NDCR, class names...]
    for every sample and no label is used.
    """
    import torch

    from diffusion_service import open_extractor_session

    spec = get_spec(cfg.data.dataset)
    names = list(spec.class_names)
    if self_supervised:
        # No labels: every sample gets the same prompt set, [positive, NDCR,
        # every class name], and the projection is fitted under the positive.
        names = [SS_POSITIVE, SS_NDCR, *names]
    recipe = make_recipe(cfg, make_model(cfg, spec).embedding_dim, num_negatives)
    with guidance_extractor(cfg, recipe, names) as extractor:
        train, _ = load_dataset(cfg.data.dataset, cfg.data.data_root)
        labels = torch.zeros_like(train.labels) if self_supervised else train.labels
        yield open_extractor_session(
            extractor,
            dataset=f"{cfg.data.dataset}-train" + ("-ss" if self_supervised else ""),
            images=train.images,
            labels=labels,
            root=store_root(cfg),
            fit_indices=split.public,
        )


def prepare_semanticfl(
    cfg: RunConfig, split: DataSplit
) -> tuple[dict[str, np.ndarray], dict, dict[str, Any] | None]:
    """Text and visual class anchors (C, d) from the public split, float32.

    Also returns a record (samples used, the model's fingerprint) and, with
    ``kd-form = "posterior"``, the zero-shot teacher (``server_app.teacher``).
    """
    from diffusion_service import build_anchors

    teacher = None
    with guidance_session(
        cfg, split, num_negatives=None, self_supervised=False
    ) as session:
        anchors = build_anchors(session, split.public, progress=False)
        fingerprint = session.extractor.model.fingerprint
        info: dict[str, Any] = {"anchors-from": int(len(split.public))}
        if cfg.zero_shot_teacher:
            teacher, teacher_info = prepare_teacher(
                session, split, cfg.guidance.kd_teacher
            )
            info["teacher"] = teacher_info
    text, visual = anchors["text"].float(), anchors["visual"].float()
    if cfg.semanticfl.text_anchor_map == "aligned":
        text = align_rows(text, visual)
    arrays = {"text": text.numpy(), "visual": visual.numpy()}
    info["text-anchor-map"] = cfg.semanticfl.text_anchor_map
    return arrays, {**info, "model": fingerprint}, teacher


def classifier_anchors(cfg: RunConfig, split: DataSplit) -> dict[str, np.ndarray]:
    """FedDifRC's anchor classifier: SemanticFL's anchors, from the same store.

    The text and visual class anchors of the public split under FedDifRC's
    feature recipe (``anchor-classifier``; ``common/anchors.py``), float32.
    """
    from diffusion_service import build_anchors

    with guidance_session(
        cfg, split, num_negatives=None, self_supervised=False
    ) as session:
        anchors = build_anchors(session, split.public, progress=False)
    return {k: anchors[k].float().numpy() for k in ("text", "visual")}


def feddifrc_kinds(cfg: RunConfig) -> tuple[str, ...]:
    """Feature kinds FedDifRC's enabled terms need.

    With TDCL on, one pass per class prompt (``cond``) also yields NDCR's
    target: ``f_noise`` is the same image, noise and timestep under the
    true-class prompt, i.e. the ``cond`` row of the true class (bitwise, since
    every U-Net call has the same shape), so it is not computed twice.
    """
    if cfg.feddifrc.self_supervised or cfg.feddifrc.tdcl_weight > 0:
        return ("cond",)
    return ("noise",) if cfg.feddifrc.ndcr_weight > 0 else ()


def prepare_feddifrc(
    cfg: RunConfig, split: DataSplit
) -> tuple[str, dict, dict[str, Any] | None]:
    """Extract every client sample's features into the store; return its path.

    Also returns a record and, with ``zero-shot-weight > 0``, the zero-shot
    teacher (``server_app.teacher``), whose errors go in the same store.
    """
    from diffusion_service import extract

    kinds = feddifrc_kinds(cfg)
    if not kinds and not cfg.zero_shot_teacher:
        return "", {}, None
    num_negatives = (
        None
        if cfg.feddifrc.self_supervised or cfg.feddifrc.tdcl_negatives == 0
        else cfg.feddifrc.tdcl_negatives
    )
    indices = np.unique(np.concatenate(split.clients))
    with guidance_session(
        cfg,
        split,
        num_negatives=num_negatives,
        self_supervised=cfg.feddifrc.self_supervised,
    ) as session:
        stats = extract(session, kinds=kinds, indices=indices, progress=False)
        fingerprint = session.extractor.model.fingerprint
        teacher = None
        if cfg.zero_shot_teacher:
            teacher, teacher_info = prepare_teacher(
                session, split, cfg.guidance.kd_teacher
            )
    computed = {k: v["computed"] for k, v in stats.items()}
    info = {"samples": int(len(indices)), "computed": computed, "model": fingerprint}
    derived = {k: v["derived"] for k, v in stats.items() if v["derived"]}
    if derived:  # a whitened store filled from its PCA twin (diffusion_service.derive)
        info["derived"] = derived
    if teacher is not None:
        info["teacher"] = teacher_info
    return str(session.store.path), info, teacher


def prepare_feddifrc_latents(
    cfg: RunConfig, split: DataSplit, grid: Grid
) -> tuple[dict[int, ArrayRecord], dict]:
    """The latent-upload query round, then each sharing node's features.

    The projection is fitted on the public split, as on the store path; the
    nodes' features are computed from their latents and kept in memory for
    the strategy (``server_app/latent_query.py``).
    """
    from diffusion_service import ensure_projection
    from server_app.latent_query import node_feature_record, query_latents

    kinds = feddifrc_kinds(cfg)
    if not kinds:
        return {}, {}
    num_negatives = (
        None
        if cfg.feddifrc.self_supervised or cfg.feddifrc.tdcl_negatives == 0
        else cfg.feddifrc.tdcl_negatives
    )
    with guidance_session(
        cfg,
        split,
        num_negatives=num_negatives,
        self_supervised=cfg.feddifrc.self_supervised,
    ) as session:
        extractor = session.extractor
        projection = ensure_projection(session, progress=False)
        uploads, record = query_latents(
            grid,
            resolution=extractor.resolution,
            micro_batch=extractor.recipe.micro_batch,
            latent_shape=tuple(extractor.model.latent_shape(extractor.resolution)),
            # Supervised prompt sets start from the true class; self-supervised
            # ones use no label, so none is asked for.
            needs_labels=not cfg.feddifrc.self_supervised,
            vae=extractor.model.vae_fingerprint,
            min_nodes=cfg.federation.min_available_clients,
            timeout=SERVICE_CALL_TIMEOUT,
        )
        features = {}
        for node, upload in uploads.items():
            t0 = time.perf_counter()
            features[node] = node_feature_record(
                extractor, projection, kinds[0], upload
            )
            log(
                INFO,
                "Features of node %s: %d samples in %.1f s",
                node,
                len(upload.ids),
                time.perf_counter() - t0,
            )
        fingerprint = extractor.model.fingerprint
    return features, {"latent-upload": record, "model": fingerprint}


def guidance_kwargs(
    cfg: RunConfig, split: DataSplit, grid: Grid | None = None
) -> tuple[dict[str, Any], dict]:
    """Strategy constructor arguments of a method, and a record of the work.

    What is prepared is the method's registry entry's ``prepares``
    (``common.methods``); ``({}, {})`` when it is ``nothing``. The record
    (where the model ran, its fingerprint, seconds, store, samples computed)
    goes to the run folder's ``guidance.json``. ``grid`` is needed for
    FedDifRC's latent-upload query round.
    """
    prepares = cfg.method_info.prepares
    if prepares == "nothing":
        return {}, {}
    if prepares == "generated-set":  # images generated in process
        kwargs, info = prepare_adaptation(cfg, split)
        return kwargs, {
            "method": cfg.method,
            "guidance-model": cfg.guidance.model,
            **info,
        }
    if prepares == "public-split":  # the labelled images themselves
        kwargs, info = prepare_public_split(cfg, split)
        return kwargs, {"method": cfg.method, **info}
    if prepares not in ("class-anchors", "instance-features"):
        raise NotImplementedError(f"no preparation for {prepares!r} ({cfg.method})")
    t0 = time.perf_counter()
    where = cfg.guidance.where
    log(INFO, "Preparing %s guidance (%s) ...", cfg.method, where)
    anchors = None
    if prepares == "class-anchors":
        anchors, info, teacher = prepare_semanticfl(cfg, split)
        kwargs: dict[str, Any] = {"anchors": anchors, "teacher": teacher}
    elif cfg.feddifrc.features == "latent-upload":
        if grid is None:
            raise ValueError("the latent-upload query round needs the Grid")
        features, info = prepare_feddifrc_latents(cfg, split, grid)
        kwargs = {"node_features": features}
    else:
        path, info, teacher = prepare_feddifrc(cfg, split)
        kwargs = {"store_path": path, "teacher": teacher}
        info = {**info, "store": path}
    if cfg.classifier == "anchors":  # computed here once, sent to every client
        anchors = anchors or classifier_anchors(cfg, split)
        g = cfg.guidance
        kwargs["frame"] = anchor_frame(
            torch.from_numpy(anchors["text"]),
            torch.from_numpy(anchors["visual"]),
            g.anchor_classifier,
            g.anchor_etf_mix,
        ).numpy()
        info = {
            **info,
            "anchor-classifier": g.anchor_classifier,
            "anchor-etf-mix": g.anchor_etf_mix,
        }
    if cfg.server_finetune == "public":  # fedavg-public's data and step
        public, public_info = prepare_public_split(cfg, split)
        if "frame" in kwargs:  # the server's work copy ends in the same frame
            public["model"].classifier.set_frame(torch.from_numpy(kwargs["frame"]))
        kwargs.update(public, **finetune_settings(cfg.fedddpm))
        public_info.pop("seconds")  # counted in this preparation's own
        info = {**info, "server-finetune": cfg.server_finetune, **public_info}
    seconds = time.perf_counter() - t0
    log(INFO, "Guidance ready in %.1f s: %s", seconds, info)
    # With a service, guidance-model does not apply; "model" (the fingerprint)
    # says which model ran either way.
    chosen = {"guidance-model": cfg.guidance.model} if where == "in-process" else {}
    return kwargs, {
        "method": cfg.method,
        "guidance-service": where,
        **chosen,
        "seconds": seconds,
        **info,
    }
