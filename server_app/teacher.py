"""SemanticFL's zero-shot teacher (``kd-form = "posterior"``, ours), prepared once.

The guidance model's own class evidence for every client sample: its
denoising error under each class prompt (``diffusion_service.zero_shot``),
stored centred in the feature store (kind ``errors``), and the posterior's
temperature fitted on labelled public images. Clients read their own rows
(``client_app.guidance.zero_shot_teacher``).
"""

from __future__ import annotations

from logging import INFO
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from flwr.common import log

from common import keys, seeding
from common.partition import DataSplit

if TYPE_CHECKING:
    from diffusion_service import Session

# Public images whose zero-shot errors fit the teacher's temperature: a
# 1-parameter fit, 1000 is plenty.
TEACHER_CALIBRATION = 1000


def prepare_teacher(
    session: Session, split: DataSplit, kind: str = "zero-shot"
) -> tuple[dict[str, Any], dict]:
    """The zero-shot teacher: every client sample's denoising errors, stored.

    Errors of ``TEACHER_CALIBRATION`` public images fit the posterior's
    temperature (``diffusion_service.zero_shot.fit_temperature``); the
    teacher's accuracy is recorded on them and, since the server holds the
    training set in simulation, on the clients' own samples (never used).
    Returns ``{"store": path, "tau": tau}`` for the strategy and a record.
    ``kind = "smoothed-labels"`` (the control) returns ``{"smoothing": e}``
    instead: the calibrated teacher's mean off-label mass on the public
    images, and computes no client sample's errors.
    """
    from diffusion_service import extract
    from diffusion_service.zero_shot import ERROR_TIMESTEPS, fit_temperature, posterior

    clients = np.unique(np.concatenate(split.clients))
    calib = split.public_slice(TEACHER_CALIBRATION, 0, seeding.TEACHER_CALIBRATION)
    if kind == "smoothed-labels":
        clients = clients[:0]
    todo = len(session.store.missing("errors", np.union1d(clients, calib)))
    if todo:
        log(
            INFO,
            "Zero-shot teacher: denoising errors of %d samples (%d U-Net passes "
            "each), once; later runs read them from %s",
            todo,
            len(ERROR_TIMESTEPS) * len(session.extractor.class_names),
            session.store.path,
        )
    stats = extract(
        session, kinds=("errors",), indices=np.union1d(clients, calib), progress=False
    )
    parts = {"public": calib, "clients": clients} if len(clients) else {"public": calib}
    errors = {k: session.store.read("errors", ix)[0].float() for k, ix in parts.items()}
    labels = {k: session.labels[ix] for k, ix in parts.items()}
    tau = fit_temperature(errors["public"], labels["public"])
    accuracy = {
        k: float((errors[k].argmin(1) == labels[k]).float().mean()) for k in errors
    }
    q = posterior(errors["public"], tau)
    off_label = float(1 - q[torch.arange(len(calib)), labels["public"]].mean())
    info = {
        "teacher": kind,
        "tau": tau,
        "calibration-images": int(len(calib)),
        "off-label-mass-public": off_label,
        "computed": stats["errors"]["computed"],
        "derived": stats["errors"]["derived"],
        **{f"zero-shot-accuracy-{k}": v for k, v in accuracy.items()},
    }
    log(INFO, "Zero-shot teacher: %s", info)
    if kind == "smoothed-labels":
        return {"smoothing": off_label}, info
    return {"store": str(session.store.path), "tau": tau}, info


def teacher_config(teacher: dict[str, Any]) -> dict[str, Any]:
    """The train-config keys that carry a prepared teacher to the clients.

    The store and the fitted temperature for the zero-shot teacher, or the
    smoothing of its control; the distillation's own weight and form are the
    strategy's.
    """
    if "smoothing" in teacher:
        return {keys.KD_TEACHER_SMOOTHING: float(teacher["smoothing"])}
    return {
        keys.FEATURE_STORE: str(teacher["store"]),
        keys.KD_TEACHER_TAU: float(teacher["tau"]),
    }
