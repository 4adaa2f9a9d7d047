"""FedDifRC: FedAvg on the server, diffusion-feature terms on the client."""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from common import keys
from common.config import FedDifRCConfig
from server_app.strategies.anchor_frame import AnchorFrame
from server_app.strategies.update_guard import UpdateGuard
from server_app.teacher import teacher_config


class FedDifRC(AnchorFrame, UpdateGuard, FedAvg):
    """FedDifRC (Wang et al., ICCV 2025, https://arxiv.org/abs/2507.06482).

    Aggregation is FedAvg's (the paper's base). The strategy injects the client
    terms into each train config: TDCL (``tdcl-weight``, ``tdcl-tau``) and NDCR
    (``ndcr-weight``, ``ndcr-mode``, ``ndcr-tau``), each only when its weight is
    above 0 (a weight of 0 is the ablation without that term), plus where the
    clients find their diffusion features: the path of the feature store the
    server fills once before round 1 (simulation), or, after the latent-upload
    query round (deployment), each node's own features, attached to its train
    Messages until the node reports that it holds them.

    Parameters
    ----------
    store_path : str
        Absolute path of the instance-feature store ("" when no term is on).
    node_features : dict of int to ArrayRecord, optional
        Latent upload: each sharing node's features (``server_app/latent_query.py``).
    tdcl_weight, tdcl_tau : float
        TDCL weight (paper: 1) and temperature (released code: 0.04).
    ndcr_weight : float
        NDCR weight (paper: 1).
    ndcr_mode : str
        ``cosine`` or ``kl`` (``common.losses.ndcr``).
    ndcr_tau : float
        NDCR temperature (kl mode).
    self_supervised : bool
        No labels on the clients: generic-prompt positive, class-name negatives.
    tdcl_negatives : int
        Self-supervised: negatives used per batch (0 = all stored).
    zero_shot_weight : float
        Ours: weight of SemanticFL's zero-shot distillation (``kd-form =
        "posterior"``) added to FedDifRC's terms; 0 is the paper's form.
    teacher : dict, optional
        The prepared teacher when ``zero_shot_weight > 0``
        (``server_app.teacher.prepare_teacher``).
    frame : ndarray, optional
        The anchor classifier's (C, C) class vectors (``anchor-classifier``,
        ours; :class:`~server_app.strategies.anchor_frame.AnchorFrame`).
    **kwargs
        Flower ``FedAvg`` arguments.
    """

    def __init__(
        self,
        *,
        store_path: str = "",
        node_features: dict[int, ArrayRecord] | None = None,
        tdcl_weight: float = 1.0,
        tdcl_tau: float = 0.04,
        ndcr_weight: float = 1.0,
        ndcr_mode: str = "cosine",
        ndcr_tau: float = 0.1,
        self_supervised: bool = False,
        tdcl_negatives: int = 0,
        zero_shot_weight: float = 0.0,
        teacher: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (zero_shot_weight > 0) != (teacher is not None):
            raise ValueError(
                "zero_shot_weight > 0 needs the zero-shot teacher and a weight of "
                f"0 takes none (zero_shot_weight {zero_shot_weight}, teacher {teacher!r})"
            )
        self.zero_shot_weight, self.teacher = zero_shot_weight, teacher
        if (tdcl_weight > 0 or ndcr_weight > 0) and not (
            store_path or node_features is not None
        ):
            raise ValueError(
                "FedDifRC with TDCL or NDCR on needs a feature store path or the "
                "nodes' features from the latent-upload query round"
            )
        self.store_path = store_path
        self.node_features = node_features
        self.delivered: set[int] = set()  # nodes that reported holding theirs
        self.tdcl_weight, self.tdcl_tau = tdcl_weight, tdcl_tau
        self.ndcr_weight, self.ndcr_mode, self.ndcr_tau = (
            ndcr_weight,
            ndcr_mode,
            ndcr_tau,
        )
        self.self_supervised = self_supervised
        self.tdcl_negatives = tdcl_negatives

    @classmethod
    def from_config(cls, section: FedDifRCConfig, **kwargs: Any) -> FedDifRC:
        """Build from the FedDifRC section; ``store_path`` comes from the guidance prep."""
        return cls(
            tdcl_weight=section.tdcl_weight,
            tdcl_tau=section.tdcl_tau,
            ndcr_weight=section.ndcr_weight,
            ndcr_mode=section.ndcr_mode,
            ndcr_tau=section.ndcr_tau,
            self_supervised=section.self_supervised,
            tdcl_negatives=section.tdcl_negatives,
            zero_shot_weight=section.teacher_weight,
            **kwargs,
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Inject the enabled terms and the store path, then sample as FedAvg."""
        if self.tdcl_weight > 0:
            config[keys.TDCL_WEIGHT] = self.tdcl_weight
            config[keys.TDCL_TAU] = self.tdcl_tau
            config[keys.TDCL_NEGATIVES] = self.tdcl_negatives
        if self.ndcr_weight > 0:
            config[keys.NDCR_WEIGHT] = self.ndcr_weight
            config[keys.NDCR_MODE] = self.ndcr_mode
            config[keys.NDCR_TAU] = self.ndcr_tau
        if self.store_path:
            config[keys.FEATURE_STORE] = self.store_path
        if self.teacher is not None:  # the client term is SemanticFL's posterior form
            config[keys.KD_WEIGHT] = self.zero_shot_weight
            config[keys.KD_TEMPERATURE] = 1.0  # unused by the posterior form
            config[keys.KD_FORM] = "posterior"
            config.update(teacher_config(self.teacher))
        if self.node_features is not None:
            config[keys.FEATURE_SOURCE] = "latent-upload"
        if self.self_supervised:
            config[keys.SELF_SUPERVISED] = True
        messages = super().configure_train(server_round, arrays, config, grid)
        if self.node_features is None:
            return messages
        return [self._with_features(m) for m in messages]

    def _with_features(self, message: Message) -> Message:
        """The Message, plus the node's features if it does not hold them yet.

        Messages of a round share one RecordDict, so a node's copy is a new one.
        """
        node = message.metadata.dst_node_id
        if node not in self.node_features or node in self.delivered:
            return message
        content = RecordDict(dict(message.content.items()))
        content[keys.INSTANCE_FEATURES] = self.node_features[node]
        return Message(
            content=content,
            message_type=message.metadata.message_type,
            dst_node_id=node,
        )

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        """Note which nodes hold their features (a restarted node gets them again)."""
        replies = list(replies)
        for reply in replies:
            if self.node_features is None or reply.has_error():
                continue
            metrics = reply.content.metric_records.get(keys.METRICS) or {}
            node = reply.metadata.src_node_id
            if metrics.get(keys.INSTANCE_GUIDED) == 1 and node in self.node_features:
                self.delivered.add(node)
            else:
                self.delivered.discard(node)
        return super().aggregate_train(server_round, replies)

    def summary(self) -> None:
        """Log FedDifRC's settings, then FedAvg's."""
        log(
            INFO,
            "\t├──> FedDifRC: tdcl %s (tau %s), ndcr %s (%s, tau %s), "
            "self-supervised %s, zero-shot teacher %s, store %s%s",
            self.tdcl_weight,
            self.tdcl_tau,
            self.ndcr_weight,
            self.ndcr_mode,
            self.ndcr_tau,
            self.self_supervised,
            self.zero_shot_weight,
            self.store_path
            or (
                f"latent upload ({len(self.node_features)} nodes)"
                if self.node_features is not None
                else "-"
            ),
            ", anchor classifier" if self.frame is not None else "",
        )
        super().summary()
