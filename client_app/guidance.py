"""The client's diffusion-side targets: its own rows of the store, or the anchors.

FedDifRC: the server filled the feature store once before round 1; a client
reads only the shards holding its own sample indices (``FeatureStore.read``).
With latent upload (deployment), the node's own rows arrive in a train
Message instead (``client_app/latents.py``); both give the same layout.
SemanticFL: the class anchors arrive in the train Message (``guidance`` record);
with ``kd-form = "posterior"`` the client also reads its rows of the zero-shot
denoising errors from the store.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, Message
from torch import Tensor

from client_app.training import Guidance, LocalSettings
from common import keys

_CACHE: OrderedDict[tuple, Guidance] = OrderedDict()
_CACHE_SIZE = 4  # a Ray actor serves several clients; keep their reads in memory


def instance_features(
    store_path: str | Path,
    indices: np.ndarray,
    labels: Tensor,
    *,
    tdcl: bool,
    ndcr: bool,
    self_supervised: bool = False,
) -> Guidance:
    """FedDifRC targets of samples ``indices`` (train-set positions), float32.

    Store layouts (``server_app/guidance.py``):

    - supervised, TDCL on: ``cond`` rows, one per class prompt, with their
      class ids; the positive is the row of the sample's label, the negatives
      the others, and ``f_noise`` is the positive (same image, noise and prompt);
    - supervised, NDCR only: the ``noise`` kind (true-class prompt);
    - self-supervised: ``cond`` rows [positive prompt, NDCR prompt, class names...]
      computed without labels; ``labels`` are not read.
    """
    from diffusion_service import FeatureStore

    idx = np.asarray(indices, dtype=np.int64)
    store = FeatureStore(Path(store_path))
    kind = "cond" if (self_supervised or tdcl) else "noise"
    feats, classes = store.read(kind, idx)
    return guidance_from_rows(
        feats,
        classes,
        labels,
        tdcl=tdcl,
        ndcr=ndcr,
        self_supervised=self_supervised,
        origin=f"the feature store {store_path}",
    )


def guidance_from_rows(
    feats: Tensor,
    classes: Tensor | None,
    labels: Tensor,
    *,
    tdcl: bool,
    ndcr: bool,
    self_supervised: bool,
    origin: str,
) -> Guidance:
    """FedDifRC targets from a node's feature rows (store layout, see above).

    ``feats`` is (N, S, d) ``cond`` rows with ``classes`` (N, S), or (N, d)
    ``noise`` rows with ``classes`` None; ``origin`` names where they came
    from in errors.
    """
    feats = torch.as_tensor(feats).float()
    if self_supervised:
        return Guidance(
            f_pos=feats[:, 0] if tdcl else None,
            f_neg=feats[:, 2:] if tdcl else None,
            f_noise=feats[:, 1] if ndcr else None,
        )
    if not tdcl:
        return Guidance(f_noise=feats if ndcr else None)
    classes = torch.as_tensor(classes)
    y = torch.as_tensor(labels, dtype=torch.long).view(-1, 1)
    is_pos = classes == y
    if not bool((is_pos.sum(1) == 1).all()):
        raise ValueError(
            f"{origin} does not hold exactly one true-class row per sample: it was "
            "made for other labels or another dataset"
        )
    n, s, d = feats.shape
    f_pos = feats[is_pos]
    return Guidance(
        f_pos=f_pos,
        f_neg=feats[~is_pos].view(n, s - 1, d),
        f_noise=f_pos if ndcr else None,
    )


def cached_instance_features(
    store_path: str, indices: np.ndarray, labels: Tensor, settings: LocalSettings
) -> Guidance:
    """:func:`instance_features`, remembered across rounds in this process."""
    digest = hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest()
    key = (
        store_path,
        digest,
        settings.tdcl_weight is not None,
        settings.ndcr_weight is not None,
        settings.self_supervised,
    )
    if key not in _CACHE:
        _CACHE[key] = instance_features(
            store_path,
            indices,
            labels,
            tdcl=key[2],
            ndcr=key[3],
            self_supervised=key[4],
        )
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return _CACHE[key]


def zero_shot_teacher(store_path: str, indices: np.ndarray, tau: float) -> Tensor:
    """(N, C) the diffusion model's zero-shot posterior of samples ``indices``.

    From the centred denoising errors the server stored for every client
    sample (``server_app.teacher.prepare_teacher``) and the temperature it
    fitted on its public split; remembered across rounds in this process.
    """
    from diffusion_service import FeatureStore
    from diffusion_service.zero_shot import posterior

    idx = np.asarray(indices, dtype=np.int64)
    key = (store_path, hashlib.sha256(idx.tobytes()).hexdigest(), "errors", tau)
    if key not in _CACHE:
        errors, _ = FeatureStore(Path(store_path)).read("errors", idx)
        _CACHE[key] = Guidance(teacher=posterior(errors, tau))
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return _CACHE[key].teacher


def smoothed_labels(labels: Tensor, num_classes: int, smoothing: float) -> Tensor:
    """(N, C) the zero-shot teacher's control: ``1 - smoothing`` on the label,
    the rest spread evenly over the other classes."""
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"label smoothing must lie in [0, 1), got {smoothing}")
    y = torch.as_tensor(labels, dtype=torch.long)
    out = torch.full((len(y), num_classes), smoothing / (num_classes - 1))
    out[torch.arange(len(y)), y] = 1.0 - smoothing
    return out


def anchors_from_message(msg: Message) -> tuple[Tensor, Tensor]:
    """SemanticFL's (text, visual) anchors, each (C, d), from the train Message."""
    if keys.GUIDANCE not in msg.content.array_records:
        raise KeyError(
            f"the train config switches on a SemanticFL term but the Message has "
            f"no '{keys.GUIDANCE}' ArrayRecord with the class anchors"
        )
    record = msg.content[keys.GUIDANCE]
    return tuple(  # type: ignore[return-value]
        torch.from_numpy(record[k].numpy().astype(np.float32))
        for k in (keys.TEXT_ANCHORS, keys.VISUAL_ANCHORS)
    )


def classifier_frame(msg: Message) -> Tensor:
    """The anchor classifier's (C, C) frame from a train or evaluate Message."""
    record = msg.content.array_records.get(keys.CLASSIFIER)
    if record is None or keys.CLASSIFIER_FRAME not in record:
        raise KeyError(
            "anchor-classifier is on but the Message carries no "
            f"'{keys.CLASSIFIER_FRAME}' in a '{keys.CLASSIFIER}' record"
        )
    return torch.from_numpy(record[keys.CLASSIFIER_FRAME].numpy().astype(np.float32))


def uploaded_features(
    record: ArrayRecord, indices: np.ndarray, labels: Tensor, settings: LocalSettings
) -> Guidance:
    """FedDifRC targets from the features the server computed from this node's
    latents (``server_app/latent_query.py``), in the order of ``indices``."""
    ids = record[keys.SAMPLE_IDS].numpy().astype(np.int64)
    where = {int(i): row for row, i in enumerate(ids)}
    missing = [int(i) for i in indices if int(i) not in where]
    if missing:
        raise ValueError(
            f"the server's features lack {len(missing)} of this node's samples "
            f"(e.g. {missing[:3]}): its data changed since the latent-upload query"
        )
    rows = torch.as_tensor([where[int(i)] for i in indices], dtype=torch.long)
    if keys.COND in record:
        feats = torch.from_numpy(record[keys.COND].numpy())[rows]
        classes = torch.from_numpy(record[keys.COND_CLASSES].numpy())[rows]
    else:
        feats, classes = torch.from_numpy(record[keys.NOISE].numpy())[rows], None
    return guidance_from_rows(
        feats,
        classes,
        labels,
        tdcl=settings.tdcl_weight is not None,
        ndcr=settings.ndcr_weight is not None,
        self_supervised=settings.self_supervised,
        origin="the uploaded-latent features",
    )


def guidance_for(
    msg: Message,
    settings: LocalSettings,
    indices: np.ndarray,
    labels: Tensor,
    uploaded: ArrayRecord | None = None,
    num_classes: int | None = None,
) -> Guidance | None:
    """Everything the switched-on guided terms need (None for other methods).

    ``uploaded``: this node's features from the latent-upload query round
    (``client_app.latents.held_features``), when the run uses it.
    ``num_classes``: the classes of the smoothed-label teacher.
    """
    if not (
        settings.needs_instance_features
        or settings.needs_anchors
        or settings.needs_teacher
    ):
        return None
    if (
        settings.needs_teacher
        and settings.kd_teacher_smoothing is None
        and not (settings.feature_store and settings.kd_teacher_tau)
    ):
        raise KeyError(
            "kd-form 'posterior' is on but the train config lacks the store and "
            "the teacher's temperature, or the smoothing of its control"
        )
    parts: dict[str, Tensor | None] = {}
    if settings.needs_instance_features:
        if uploaded is not None:
            inst = uploaded_features(uploaded, indices, labels, settings)
        elif not settings.feature_store:
            raise KeyError("a FedDifRC term is on but the train config has no store")
        else:
            inst = cached_instance_features(
                settings.feature_store, indices, labels, settings
            )
        parts.update(f_pos=inst.f_pos, f_neg=inst.f_neg, f_noise=inst.f_noise)
    if settings.needs_anchors:
        text, visual = anchors_from_message(msg)
        parts.update(text_anchors=text, visual_anchors=visual)
    if settings.needs_teacher and settings.kd_teacher_smoothing is not None:
        if num_classes is None:
            raise ValueError("the smoothed-label teacher needs num_classes")
        parts["teacher"] = smoothed_labels(
            labels, num_classes, settings.kd_teacher_smoothing
        )
    elif settings.needs_teacher:
        parts["teacher"] = zero_shot_teacher(
            settings.feature_store, indices, settings.kd_teacher_tau
        )
    return Guidance(**parts)
