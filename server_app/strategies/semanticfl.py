"""SemanticFL: FedAvg on the server, class anchors broadcast with the weights."""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from common import keys
from common.config import SemanticFLConfig
from server_app.strategies.anchor_frame import AnchorFrame
from server_app.strategies.update_guard import UpdateGuard
from server_app.teacher import teacher_config


class SemanticFL(AnchorFrame, UpdateGuard, FedAvg):
    """SemanticFL (Liu et al., ICME 2026, https://arxiv.org/abs/2603.19337).

    The server computes the class anchors once with the diffusion model (text
    anchors ``T`` and visual anchors ``V``, both (C, d); ``server_app/guidance``)
    and attaches them to every train Message as an extra ArrayRecord
    (``guidance``). The client adds ``kd-weight * KL(softmax(V_y/T) ||
    softmax(z/T))`` and ``con-weight * InfoNCE(z, T_y vs T_k)``; each key is
    injected only when its weight is above 0. Replies carry weights only, so
    aggregation is FedAvg's unchanged.

    Parameters
    ----------
    anchors : dict
        ``{"text": (C, d), "visual": (C, d)}`` float32 arrays.
    kd_weight, kd_temperature : float
        Distillation weight (1.0, secondary source) and temperature T (ours).
    kd_form : str
        ``coordinates`` (our earlier reading: a softmax over the feature
        coordinates) or ``classes`` (a KL between class distributions, ours;
        ``common.losses.class_distillation``).
    con_weight, con_tau : float
        Image-text contrastive weight (0.01) and temperature (0.05), unverified.
    teacher : dict, optional
        With ``kd_form = "posterior"``: ``{"store": path, "tau": float}``, the
        feature store holding every client sample's zero-shot denoising
        errors and the posterior's fitted temperature
        (``server_app.teacher.prepare_teacher``); both go in the train config.
        Its control, ``{"smoothing": e}``: each sample's label smoothed to
        ``1 - e`` (``kd-teacher = "smoothed-labels"``).
    frame : ndarray, optional
        The anchor classifier's (C, C) class vectors (``anchor-classifier``,
        ours; :class:`~server_app.strategies.anchor_frame.AnchorFrame`).
    **kwargs
        Flower ``FedAvg`` arguments.
    """

    def __init__(
        self,
        *,
        anchors: dict[str, np.ndarray],
        kd_weight: float = 1.0,
        kd_temperature: float = 0.1,
        kd_form: str = "coordinates",
        con_weight: float = 0.01,
        con_tau: float = 0.05,
        teacher: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (kd_form == "posterior" and kd_weight > 0) != (teacher is not None):
            raise ValueError(
                "kd_form 'posterior' needs the zero-shot teacher and no other "
                f"form takes one (kd_form {kd_form!r}, teacher {teacher!r})"
            )
        self.teacher = teacher
        text, visual = (
            np.asarray(anchors[k], dtype=np.float32) for k in ("text", "visual")
        )
        if text.ndim != 2 or text.shape != visual.shape:
            raise ValueError(
                f"anchors must both be (C, d); got text {text.shape}, visual {visual.shape}"
            )
        self.guidance = ArrayRecord(
            {
                keys.TEXT_ANCHORS: Array(np.ascontiguousarray(text)),
                keys.VISUAL_ANCHORS: Array(np.ascontiguousarray(visual)),
            }
        )
        self.kd_weight, self.kd_temperature = kd_weight, kd_temperature
        self.kd_form = kd_form
        self.con_weight, self.con_tau = con_weight, con_tau

    @classmethod
    def from_config(cls, section: SemanticFLConfig, **kwargs: Any) -> SemanticFL:
        """Build from the SemanticFL section; ``anchors`` come from the guidance prep."""
        return cls(
            kd_weight=section.kd_weight,
            kd_temperature=section.kd_temperature,
            kd_form=section.kd_form,
            con_weight=section.con_weight,
            con_tau=section.con_tau,
            **kwargs,
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Inject the enabled terms, sample as FedAvg, attach the anchors."""
        if self.kd_weight > 0:
            config[keys.KD_WEIGHT] = self.kd_weight
            config[keys.KD_TEMPERATURE] = self.kd_temperature
            config[keys.KD_FORM] = self.kd_form
            if self.teacher is not None:
                config.update(teacher_config(self.teacher))
        if self.con_weight > 0:
            config[keys.CON_WEIGHT] = self.con_weight
            config[keys.CON_TAU] = self.con_tau
        messages = list(super().configure_train(server_round, arrays, config, grid))
        for message in messages:  # server -> client extras are allowed
            message.content[keys.GUIDANCE] = self.guidance
        return messages

    def summary(self) -> None:
        """Log SemanticFL's settings, then FedAvg's."""
        shape = self.guidance[keys.TEXT_ANCHORS].shape
        log(
            INFO,
            "\t├──> SemanticFL: kd %s (T %s, over %s), con %s (tau %s), anchors %s%s",
            self.kd_weight,
            self.kd_temperature,
            self.kd_form,
            self.con_weight,
            self.con_tau,
            shape,
            ", anchor classifier" if self.frame is not None else "",
        )
        super().summary()
