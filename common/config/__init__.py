"""Typed, validated run configuration, read once at the edge.

Every tunable of a run is a kebab-case key of ``[tool.flwr.app.config]`` in
``pyproject.toml`` and reaches the apps as ``context.run_config``. The apps
turn it into a :class:`RunConfig` once, with :meth:`RunConfig.from_run_config`,
and pass the typed object on; nothing else reads ``run_config`` directly.

The keys stay flat (Flower's interface); the typed object groups them into
one section per family, each in its own module with its fields, defaults and
checks: :mod:`~common.config.run` (federation, SGD, data, model, runtime),
:mod:`~common.config.baselines`, :mod:`~common.config.guided`,
:mod:`~common.config.guidance`, :mod:`~common.config.fedddpm`. A strategy
receives the section its registry entry names (``common.methods``).

Validation happens here, before any data is loaded or any training starts,
and every error says which key was wrong, what it was, and what is valid.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from common.config.baselines import BaselineConfig
from common.config.fedddpm import FedDDPMConfig, parse_channels
from common.config.fields import (
    ConfigError,
    build_section,
    cast,
    check,
    section_keys,
    section_values,
    unknown_key_error,
)
from common.config.guidance import GuidanceConfig, parse_layers
from common.config.guided import (
    FEDDIFRC_FEATURES,
    NDCR_MODES,
    PAPER_FORMS,
    FedDifRCConfig,
    SemanticFLConfig,
)
from common.config.run import (
    DataConfig,
    FederationConfig,
    ModelConfig,
    RuntimeConfig,
    SGDConfig,
)
from common.datasets import get_spec
from common.methods import Method, UnknownMethodError, get_method

__all__ = [
    "FEDDIFRC_FEATURES",
    "NDCR_MODES",
    "PAPER_FORMS",
    "BaselineConfig",
    "ConfigError",
    "DataConfig",
    "FedDDPMConfig",
    "FedDifRCConfig",
    "FederationConfig",
    "GuidanceConfig",
    "ModelConfig",
    "RunConfig",
    "RuntimeConfig",
    "SGDConfig",
    "SemanticFLConfig",
    "parse_channels",
    "parse_layers",
]

SECTIONS: dict[str, type] = {
    "federation": FederationConfig,
    "sgd": SGDConfig,
    "data": DataConfig,
    "model": ModelConfig,
    "runtime": RuntimeConfig,
    "baselines": BaselineConfig,
    "guidance": GuidanceConfig,
    "feddifrc": FedDifRCConfig,
    "semanticfl": SemanticFLConfig,
    "fedddpm": FedDDPMConfig,
}
"""RunConfig attribute -> section class, in the order they are validated."""

TOP_LEVEL = {"method": "str", "seed": "int"}
"""The two keys that are the run itself rather than one family's setting."""


@dataclass(frozen=True)
class RunConfig:
    """All settings of one federated run (``pyproject.toml`` has the defaults)."""

    method: str = "semanticfl"
    seed: int = 42  # seeds the split, model init and every draw (common.seeding)
    federation: FederationConfig = field(default_factory=FederationConfig)
    sgd: SGDConfig = field(default_factory=SGDConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    baselines: BaselineConfig = field(default_factory=BaselineConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    feddifrc: FedDifRCConfig = field(default_factory=FedDifRCConfig)
    semanticfl: SemanticFLConfig = field(default_factory=SemanticFLConfig)
    fedddpm: FedDDPMConfig = field(default_factory=FedDDPMConfig)

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> RunConfig:
        """Build from Flower's ``context.run_config`` (kebab-case keys).

        Unknown keys are an error naming the closest valid ones (a typo would
        otherwise silently run the default); missing keys take the default.
        """
        known = set(TOP_LEVEL).union(*(section_keys(s) for s in SECTIONS.values()))
        unknown = set(run_config) - known
        if unknown:
            raise unknown_key_error(unknown, known)
        top = {
            k: cast(k, run_config[k], t)
            for k, t in TOP_LEVEL.items()
            if k in run_config
        }
        sections = {
            name: build_section(section, run_config)
            for name, section in SECTIONS.items()
        }
        config = cls(**top, **sections)
        config.validate()
        return config

    def to_run_config(self) -> dict[str, Any]:
        """The flat kebab-case mapping, as Flower's run config holds it."""
        values: dict[str, Any] = {"method": self.method, "seed": self.seed}
        for name in SECTIONS:
            values.update(section_values(getattr(self, name)))
        return values

    def with_overrides(self, overrides: Mapping[str, Any]) -> RunConfig:
        """A validated copy with some keys changed (kebab-case, as in the run config)."""
        return RunConfig.from_run_config({**self.to_run_config(), **overrides})

    @property
    def classifier(self) -> str:
        """What the client model ends in: ``linear``, ``etf`` or ``anchors``."""
        if self.method_info.classifier == "etf":
            return "etf"
        if self.method_info.guided and self.guidance.anchor_classifier != "none":
            return "anchors"
        return "linear"

    @property
    def zero_shot_teacher(self) -> bool:
        """Whether the guided method distils the zero-shot teacher (ours).

        SemanticFL with ``kd-form = "posterior"``; FedDifRC with labels and
        ``zero-shot-weight > 0`` (the self-supervised variant has no
        classifier to distil into). Both are the defaults; other methods
        ignore these keys, as they ignore every guided key.
        """
        if self.method == "semanticfl":
            return (
                self.semanticfl.kd_weight > 0 and self.semanticfl.kd_form == "posterior"
            )
        return self.method == "feddifrc" and self.feddifrc.teacher_weight > 0

    @property
    def balanced_ce(self) -> bool:
        """Whether the clients train with the balanced softmax (``ce-loss``).

        ``auto`` turns it on exactly where the zero-shot teacher is on: the
        teacher gives a client that holds one class a target over every
        class, where the balanced loss alone gives it nothing to learn.
        """
        if self.sgd.ce_loss == "auto":
            return self.zero_shot_teacher
        return self.sgd.ce_loss == "balanced"

    @property
    def guidance_head(self) -> str:
        """The projector the guided terms see (``guidance-head``; ours).

        ``auto``: ``mlp`` for FedDifRC, whose TDCL and NDCR are cosine terms
        that the non-negative embedding cannot satisfy against signed
        targets (NDCR's 1 - cos stalls at 0.8 on it, 0.44 through the
        projector); ``none`` for SemanticFL, whose default distillation acts
        on the class logits. Each was the better on the clients' validation
        split (docs/guided-methods.md, "The defaults").
        """
        if self.guidance.head == "auto":
            return "mlp" if self.method == "feddifrc" else "none"
        return self.guidance.head

    @property
    def server_finetune(self) -> str:
        """Whether the server fine-tunes a guided method's aggregate (ours).

        ``auto``: ``public`` for a guided method with labels (SemanticFL,
        FedDifRC but its self-supervised variant), ``none`` for every other
        method. With the zero-shot teacher on the clients, the fine-tune on
        the labelled public split was ahead on the clients' validation
        split on both skewed splits (docs/guided-methods.md, "Against the
        labelled data behind the teacher").
        """
        if self.guidance.server_finetune == "auto":
            return "public" if self._labelled_guided else "none"
        return self.guidance.server_finetune

    @property
    def _labelled_guided(self) -> bool:
        """A guided method that trains a classifier on labels."""
        return self.method_info.guided and not self.feddifrc.self_supervised

    @property
    def method_info(self) -> Method:
        """The registry entry of ``method`` (``common.methods``)."""
        return get_method(self.method)

    def section(self, name: str | None) -> Any:
        """The section a registry entry names (None when it names none)."""
        return None if name is None else getattr(self, name)

    def validate(self) -> None:
        """Raise :class:`ConfigError` on the first invalid value."""
        try:
            method = get_method(self.method)
        except UnknownMethodError as exc:
            raise ConfigError(str(exc)) from None
        for name in SECTIONS:
            getattr(self, name).validate()
        self._validate_across_sections(method)

    def _validate_across_sections(self, method: Method) -> None:
        """Checks that need more than one section (or the method)."""
        spec = get_spec(self.data.dataset)
        others = spec.num_classes - 1
        check(
            0 <= self.feddifrc.tdcl_negatives <= others,
            "tdcl-negatives",
            self.feddifrc.tdcl_negatives,
            f"an int in [0, {others}] (0 = every other class of {self.data.dataset})",
        )
        if method.guided and self.data.public_split_size <= 0:
            raise ConfigError(
                f"method '{self.method}' needs the server-held public split: set "
                "public-split-size > 0 (e.g. 1000). The server fits the feature "
                "projection on it and builds the visual class anchors from it; no "
                "client ever gets those samples."
            )
        if self.guidance.anchor_classifier != "none" and not (
            method.guided and not self.feddifrc.self_supervised
        ):
            raise ConfigError(
                f"anchor-classifier = '{self.guidance.anchor_classifier}' makes the "
                "class anchors the classifier of a guided method (feddifrc or "
                f"semanticfl, with labels); method '{self.method}'"
                + (" is self-supervised" if self.feddifrc.self_supervised else "")
                + ": set anchor-classifier = 'none'"
            )
        if self.guidance.server_finetune == "public" and not self._labelled_guided:
            raise ConfigError(
                "server-finetune = 'public' adds a "
                "cross-entropy fine-tune on the server to a guided method "
                "(feddifrc or semanticfl, with labels); method "
                f"'{self.method}'"
                + (" is self-supervised" if self.feddifrc.self_supervised else "")
                + ": set server-finetune = 'none' (for FedAvg with the same "
                "step, use method 'fedavg-public')"
            )
        if self.feddifrc.self_supervised and self.method != "feddifrc":
            raise ConfigError(
                f"run-config 'self-supervised' = true needs method 'feddifrc' (got "
                f"'{self.method}'): only FedDifRC has a self-supervised variant"
            )
        if self.feddifrc.features == "latent-upload" and self.method != "feddifrc":
            raise ConfigError(
                "run-config 'feddifrc-features' = 'latent-upload' needs method "
                f"'feddifrc' (got '{self.method}'): only FedDifRC uses instance features"
            )
        if self.guidance.kd_teacher != "zero-shot" and not self.zero_shot_teacher:
            raise ConfigError(
                f"kd-teacher = '{self.guidance.kd_teacher}' chooses the zero-shot "
                "teacher, which is off: it needs semanticfl with kd-form "
                "'posterior' or feddifrc with zero-shot-weight > 0"
            )
        if self.zero_shot_teacher and self.guidance.service:
            raise ConfigError(
                "the zero-shot teacher (the default: kd-form = 'posterior' for "
                "semanticfl, zero-shot-weight > 0 for feddifrc) needs the guidance "
                "model in the ServerApp: the guidance service computes features, "
                "not the zero-shot denoising errors. Unset guidance-service, or "
                "run the paper's form: "
                + (
                    "kd-form = 'coordinates'"
                    if self.method == "semanticfl"
                    else "zero-shot-weight = 0"
                )
            )
        if self.zero_shot_teacher and self.feddifrc.features == "latent-upload":
            raise ConfigError(
                "zero-shot-weight > 0 reads every client sample's denoising errors "
                "from the server's store (the default, zero-shot-weight = 3); "
                "with feddifrc-features = 'latent-upload' the server never holds "
                "the images: use 'server-store', or set zero-shot-weight = 0 "
                "(the paper's form)"
            )
        if self.sgd.ce_loss == "balanced":
            if method.model != "classifier":
                raise ConfigError(
                    f"ce-loss = 'balanced' is a classifier loss; method "
                    f"'{self.method}' trains a diffusion model: use ce-loss = 'ce'"
                )
            if self.feddifrc.self_supervised:
                raise ConfigError(
                    "ce-loss = 'balanced' with self-supervised = true: a "
                    "self-supervised run has no cross-entropy to balance"
                )
            if self.method == "fedetf" and self.baselines.etf_loss == "ce":
                raise ConfigError(
                    "ce-loss = 'balanced' contradicts etf-loss = 'ce' for "
                    "fedetf: FedETF's loss is set by etf-loss alone"
                )
        bn_images = self.runtime.eval_bn_images
        if bn_images > self.data.public_split_size:
            raise ConfigError(
                f"eval-bn-images={bn_images} asks for more public images than "
                f"public-split-size={self.data.public_split_size}: use at most "
                "that many, or 0 to score BatchNorm statistics as aggregated"
            )
        if bn_images > 0 and self.model.norm != "batch":
            raise ConfigError(
                f"eval-bn-images={bn_images} recomputes BatchNorm statistics, but "
                f"model-norm='{self.model.norm}' has none: set eval-bn-images = 0"
            )
        if self.runtime.eval_aggregated_too and bn_images == 0:
            raise ConfigError(
                "eval-aggregated-too = true compares against eval-bn-images > 0; "
                "with eval-bn-images = 0 the central score is already as aggregated"
            )
        if method.section == "fedddpm":
            self.fedddpm.validate_for(
                self.method,
                self.data.dataset,
                spec.num_classes,
                self.data.public_split_size,
            )


def default_run_config() -> dict[str, Any]:
    """Every key with its dataclass default (what pyproject.toml must agree with)."""
    return RunConfig().to_run_config()
