"""The method registry: what each ``method`` of the run config is, in one place.

A method is one :class:`Method` entry here plus one strategy file in
``server_app/strategies/``. Everything that depends on the method (config
validation, the model both apps build, what the ServerApp prepares before
round 1, which config section the strategy reads, the launcher's and the
benchmarks' checks) asks this registry instead of comparing names.

The strategy is named by import path (``"module:Class"``) so that ``common``
imports nothing above it; ``server_app.strategies.strategy_class`` loads it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Literal

ModelKind = Literal["classifier", "diffusion-unet"]
"""What the federation trains: the client classifier (ResNet-10 /
MobileNetV2), or the latent diffusion U-Net (FedDDPM, docs/fedddpm.md)."""

Preparation = Literal[
    "nothing", "class-anchors", "instance-features", "generated-set", "public-split"
]
"""What the ServerApp computes once before round 1:

- ``nothing``: the weights are all there is;
- ``class-anchors``: text and visual class anchors from the guidance model,
  broadcast in every train message (SemanticFL);
- ``instance-features``: guidance features of every client sample, in the
  feature store or from the latent-upload query round (FedDifRC);
- ``generated-set``: labelled images the server generates (or samples from
  uploaded models) for its own correction step (fedavg-adapt, FedDDPM);
- ``public-split``: the server's labelled public split as it is, for a
  server-side step that uses no generator (fedavg-public, the control of
  fedavg-adapt).
"""

Classifier = Literal["linear", "etf"]
"""What the client model ends in: its own linear classifier, or FedETF's
projector onto a fixed simplex ETF (``common.models.ETFClassifier``)."""

Section = Literal["baselines", "feddifrc", "semanticfl", "fedddpm"]
"""The :class:`~common.config.RunConfig` section a strategy is built from."""

STRATEGIES_PACKAGE = "server_app.strategies"


@dataclass(frozen=True)
class Method:
    """One federated method: its name and what it needs.

    Attributes
    ----------
    name : str
        The run config's ``method`` value.
    strategy : str
        ``"module:Class"`` of its Flower strategy (a ``server_app.strategies``
        module), loaded by ``server_app.strategies.strategy_class``.
    model : ModelKind
        What the federation trains.
    prepares : Preparation
        What the server computes before round 1.
    section : Section or None
        The config section its strategy's ``from_config`` receives (None: the
        strategy has no settings of its own).
    summary : str
        One line for listings and errors.
    classifier : Classifier
        What the client classifier is (``linear`` unless the method fixes it).
    """

    name: str
    strategy: str
    model: ModelKind
    prepares: Preparation
    section: Section | None
    summary: str
    classifier: Classifier = "linear"

    @property
    def guided(self) -> bool:
        """Whether the client trains with diffusion guidance terms.

        Guided methods need the server-held public split (projection and
        anchors are fitted on it) and may put a projector head on the model.
        """
        return self.prepares in ("class-anchors", "instance-features")


def _entry(
    name: str,
    strategy: str,
    summary: str,
    *,
    model: ModelKind = "classifier",
    prepares: Preparation = "nothing",
    section: Section | None = None,
    classifier: Classifier = "linear",
) -> Method:
    return Method(
        name,
        f"{STRATEGIES_PACKAGE}.{strategy}",
        model,
        prepares,
        section,
        summary,
        classifier,
    )


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        _entry("fedavg", "fedavg:FedAvg", "FedAvg: cross-entropy, weighted mean"),
        _entry(
            "fedprox",
            "fedprox:FedProx",
            "FedProx: a proximal term to the global weights",
            section="baselines",
        ),
        _entry(
            "moon",
            "moon:Moon",
            "MOON: model-contrastive term against the previous local model",
            section="baselines",
        ),
        _entry(
            "fedavgm",
            "fedavgm:FedAvgM",
            "FedAvgM: FedAvg with server momentum (Flower's strategy)",
            section="baselines",
        ),
        _entry(
            "fedadam",
            "fedadam:FedAdam",
            "FedAdam: Adam on the server over FedAvg's update (Flower's strategy)",
            section="baselines",
        ),
        _entry(
            "fedetf",
            "fedetf:FedETF",
            "FedETF: fixed simplex-ETF classifier, balanced CE (the anchors' control)",
            section="baselines",
            classifier="etf",
        ),
        _entry(
            "feddifrc",
            "feddifrc:FedDifRC",
            "FedDifRC: text-driven contrastive + noise-driven consistency terms",
            prepares="instance-features",
            section="feddifrc",
        ),
        _entry(
            "semanticfl",
            "semanticfl:SemanticFL",
            "SemanticFL: distillation to visual anchors + image-text contrastive",
            prepares="class-anchors",
            section="semanticfl",
        ),
        _entry(
            "fedavg-adapt",
            "fedavg_adapt:FedAvgAdapt",
            "FedAvg + server fine-tune on generated images, every round (ours)",
            prepares="generated-set",
            section="fedddpm",
        ),
        _entry(
            "fedavg-adapt+",
            "fedavg_adapt:FedAvgAdaptPlus",
            "fedavg-adapt only when learning slows (ours)",
            prepares="generated-set",
            section="fedddpm",
        ),
        _entry(
            "fedavg-public",
            "fedavg_public:FedAvgPublic",
            "control: FedAvg + server fine-tune on its labelled public split (ours)",
            prepares="public-split",
            section="fedddpm",
        ),
        _entry(
            "fedddpm-avg",
            "fedddpm:FedDDPMAvg",
            "FedAvg of a latent diffusion U-Net, no correction (baseline)",
            model="diffusion-unet",
            section="fedddpm",
        ),
        _entry(
            "fedddpm",
            "fedddpm:FedDDPM",
            "FedDDPM: U-Net FedAvg + server fine-tune on an auxiliary set",
            model="diffusion-unet",
            prepares="generated-set",
            section="fedddpm",
        ),
        _entry(
            "fedddpm+",
            "fedddpm:FedDDPMPlus",
            "FedDDPM+: the fine-tune only when learning slows",
            model="diffusion-unet",
            prepares="generated-set",
            section="fedddpm",
        ),
    )
}


class UnknownMethodError(ValueError):
    """A ``method`` that is not in the registry."""


def get_method(name: str) -> Method:
    """The registry entry of a method, with an error naming the valid ones."""
    if name not in METHODS:
        close = difflib.get_close_matches(name, METHODS, n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise UnknownMethodError(
            f"unknown method {name!r}{hint}; valid: {', '.join(sorted(METHODS))}"
        )
    return METHODS[name]


def methods_where(**attributes: object) -> tuple[str, ...]:
    """Names of the methods whose attributes (or properties) all match.

    ``methods_where(model="diffusion-unet")``, ``methods_where(guided=True)``.
    """
    return tuple(
        name
        for name, method in METHODS.items()
        if all(getattr(method, k) == v for k, v in attributes.items())
    )
