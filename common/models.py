"""Client models: ResNet-10 and MobileNetV2, each returning (embedding, logits).

Both models expose the same interface so every loss term (CE, FedProx, MOON and
the diffusion-guided terms) works with either: ``model(x)`` returns a
:class:`ModelOutput` with the penultimate embedding ``z`` (``embedding_dim``
wide) and the classifier ``logits``.

Width: ResNet-10 at ``width=64`` is the papers' model (stages 64-128-256-512,
512-d embedding, FedDifRC's ``ResNet10``: BasicBlock [1, 1, 1, 1], 3x3 stem, no
max-pool). The cpu profile uses ``width=16`` (128-d embedding), about 9x faster
on 2 CPU cores (docs/profiles.md). MobileNetV2 follows the same rule: its
embedding is ``8 * width`` (512 at width 64) through a linear projection of
torchvision's 1280-d (scaled) feature, with ``width_mult = width / 64``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ModelOutput(NamedTuple):
    """What every client model returns."""

    embedding: Tensor  # (B, embedding_dim), not normalised
    logits: Tensor  # (B, num_classes)


GROUP_NORM_GROUPS = 2
"""Groups of the ``group`` normalisation: two, as Reddi et al. (ICLR 2021,
"Adaptive Federated Optimization", Sec. 5) put in place of every BatchNorm."""

NORMS: dict[str, Callable[[int], nn.Module]] = {
    "batch": nn.BatchNorm2d,
    "group": lambda c: nn.GroupNorm(GROUP_NORM_GROUPS, c),
}
"""ResNet-10's normalisation layers (run-config key ``model-norm``).

``batch`` is the papers' ResNet-10. Under label skew its running statistics
are each client's own class mix, and their average is not the statistics of
any data: the global model is scored with mismatched normalisation (measured
on the extreme split: recomputing them on the clients' pooled images lifts
FedAvg's last-6 mean by 3.6 and 11.4 points on two seeds and halves the gap
between them). ``group`` (Hsieh et al., ICML 2020; Reddi et al., ICLR 2021)
normalises each image by itself, so there is nothing to average."""


class BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016), two 3x3 convs and a shortcut."""

    def __init__(
        self, in_planes: int, planes: int, stride: int, norm: str = "batch"
    ) -> None:
        super().__init__()
        make_norm = NORMS[norm]
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = make_norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = make_norm(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                make_norm(planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet10(nn.Module):
    """ResNet-10: a 3x3 stem and four stages of one basic block each.

    The CIFAR-style stem (3x3, stride 1, no max-pool) keeps small 28-32 px
    images at full resolution in the first stage, as the papers' code does.
    """

    def __init__(
        self, in_channels: int, num_classes: int, width: int = 64, norm: str = "batch"
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; valid: {', '.join(NORMS)}")
        widths = [width, 2 * width, 4 * width, 8 * width]
        self.embedding_dim = widths[-1]
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = NORMS[norm](width)
        stages, in_planes = [], width
        for planes, stride in zip(widths, [1, 2, 2, 2], strict=True):
            stages.append(BasicBlock(in_planes, planes, stride, norm))
            in_planes = planes
        self.stages = nn.Sequential(*stages)
        self.classifier = nn.Linear(self.embedding_dim, num_classes)

    def forward(self, x: Tensor) -> ModelOutput:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.stages(out)
        z = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        return ModelOutput(z, self.classifier(z))


class MobileNetV2(nn.Module):
    """torchvision's MobileNetV2 trunk with an embedding projection and a classifier.

    For inputs smaller than 64 px the stem stride is set to 1 (the usual CIFAR
    adaptation): with the ImageNet stride of 32 overall, a 28 px image would be
    1x1 after the third stage and the model would learn little.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        width: int = 64,
        image_size: int = 32,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        # Imported here: torchvision costs seconds to import and ResNet-10 runs
        # never need it.
        from torchvision.models import mobilenet_v2

        trunk = mobilenet_v2(
            weights=None, width_mult=width / 64, norm_layer=NORMS[norm]
        )
        stem = trunk.features[0][0]
        stride = 1 if image_size < 64 else 2
        trunk.features[0][0] = nn.Conv2d(
            in_channels, stem.out_channels, 3, stride, 1, bias=False
        )
        self.features = trunk.features
        self.embedding_dim = 8 * width
        self.project = nn.Linear(trunk.last_channel, self.embedding_dim)
        self.classifier = nn.Linear(self.embedding_dim, num_classes)

    def forward(self, x: Tensor) -> ModelOutput:
        out = self.features(x)
        pooled = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        z = F.relu(self.project(pooled))
        return ModelOutput(z, self.classifier(z))


# name -> factory(d) of the learnable projector that the guided loss terms see
# (ours, not in either paper). The client's z is a post-ReLU average, so it is
# non-negative, while the PCA-projected diffusion features are signed: a cosine
# between them cannot approach 1. A projector lets z keep its shape for the
# classifier and still align with the guidance. It is part of the model, so
# it is aggregated like every other weight; "none" aligns z itself (the papers').
GUIDANCE_HEADS: dict[str, Callable[[int], nn.Module] | None] = {
    "none": None,
    "linear": lambda d: nn.Linear(d, d),
    "mlp": lambda d: nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d)),
}


def attach_guidance_head(model: nn.Module, kind: str) -> nn.Module:
    """Add ``model.guidance_head`` (see :data:`GUIDANCE_HEADS`); returns ``model``."""
    if kind not in GUIDANCE_HEADS:
        raise ValueError(
            f"unknown guidance head {kind!r}; valid: {', '.join(GUIDANCE_HEADS)}"
        )
    factory = GUIDANCE_HEADS[kind]
    if factory is not None:
        model.guidance_head = factory(model.embedding_dim)
    return model


def simplex_etf(num_classes: int, dim: int, generator: torch.Generator) -> Tensor:
    """A random simplex equiangular tight frame: ``dim x num_classes``, unit columns.

    ``M = sqrt(C / (C - 1)) P (I - 11^T / C)`` with ``P`` a random ``dim x C``
    matrix of orthonormal columns (FedETF, Li et al., ICCV 2023, Eq. 1): every
    pair of class vectors has cosine ``-1 / (C - 1)``, the most separated C
    unit vectors can be.
    """
    if dim < num_classes:
        raise ValueError(f"an ETF of {num_classes} classes needs dim >= {num_classes}")
    gauss = torch.randn(dim, num_classes, generator=generator, dtype=torch.float64)
    p, _ = torch.linalg.qr(gauss)  # orthonormal columns
    c = num_classes
    centre = torch.eye(c, dtype=torch.float64) - torch.full(
        (c, c), 1.0 / c, dtype=torch.float64
    )
    return (math.sqrt(c / (c - 1)) * p @ centre).float()


class FixedFrameClassifier(nn.Module):
    """A learnable projector onto a fixed frame of unit class vectors.

    ``logits = scale * normalise(W z + b) . M`` (FedETF's form, Li et al.,
    ICCV 2023, https://arxiv.org/abs/2303.10058, as their code does it): the
    projector ``W`` maps the embedding to ``C`` dimensions, ``M`` (C x C) holds
    one unit class vector per column, and ``scale`` is a learnable
    temperature starting at 1. ``M`` is a non-persistent buffer: never sent
    with the weights, never aggregated, never trained. It is given at
    construction or later with :meth:`set_frame` (the anchor classifier's
    frame arrives with the server's guidance).
    """

    def __init__(
        self, embedding_dim: int, num_classes: int, frame: Tensor | None = None
    ) -> None:
        super().__init__()
        self.project = nn.Linear(embedding_dim, num_classes)
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.register_buffer(
            "frame", torch.zeros(num_classes, num_classes), persistent=False
        )
        self.frame_set = False
        if frame is not None:
            self.set_frame(frame.T)

    def set_frame(self, class_vectors: Tensor) -> None:
        """Fix the frame: ``class_vectors`` (C, C), one class per row."""
        if class_vectors.shape != self.frame.shape:
            raise ValueError(
                f"a frame of {tuple(self.frame.shape)} class vectors is needed, got "
                f"{tuple(class_vectors.shape)}"
            )
        self.frame.copy_(F.normalize(class_vectors.to(self.frame), dim=1).T)
        self.frame_set = True

    def forward(self, z: Tensor) -> Tensor:
        if not self.frame_set:
            raise RuntimeError(
                "the fixed classifier's frame was never set (the anchor classifier "
                "gets it with the server's guidance)"
            )
        return self.scale * F.normalize(self.project(z), dim=1) @ self.frame


class ETFClassifier(FixedFrameClassifier):
    """FedETF's classifier: the frame is a simplex ETF built from ``seed``,
    identical on every client and the server."""

    def __init__(self, embedding_dim: int, num_classes: int, seed: int) -> None:
        frame = simplex_etf(
            num_classes, num_classes, torch.Generator().manual_seed(seed)
        )
        super().__init__(embedding_dim, num_classes, frame)


# name -> the classifier a method's model ends in ("linear": the model's own;
# "anchors": a fixed frame from the class anchors, set from the guidance).
CLASSIFIERS = ("linear", "etf", "anchors")


def attach_etf_classifier(model: nn.Module, num_classes: int, seed: int) -> nn.Module:
    """Replace ``model.classifier`` by an :class:`ETFClassifier`; returns ``model``."""
    model.classifier = ETFClassifier(model.embedding_dim, num_classes, seed)
    return model


def attach_anchor_classifier(model: nn.Module, num_classes: int) -> nn.Module:
    """Replace ``model.classifier`` by a :class:`FixedFrameClassifier` whose
    frame (``common.anchors.anchor_frame``) is set before use; returns ``model``."""
    model.classifier = FixedFrameClassifier(model.embedding_dim, num_classes)
    return model


ModelFactory = Callable[[int, int, int, int, str], nn.Module]

# name -> factory(in_channels, num_classes, width, image_size, norm)
MODELS: dict[str, ModelFactory] = {
    "resnet10": lambda c, n, w, s, norm: ResNet10(c, n, width=w, norm=norm),
    "mobilenetv2": lambda c, n, w, s, norm: MobileNetV2(
        c, n, width=w, image_size=s, norm=norm
    ),
}


def build_model(
    name: str,
    in_channels: int,
    num_classes: int,
    width: int,
    image_size: int,
    norm: str = "batch",
) -> nn.Module:
    """Build a client model by registry name (see :data:`MODELS`, :data:`NORMS`)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(sorted(MODELS))}")
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; valid: {', '.join(NORMS)}")
    return MODELS[name](in_channels, num_classes, width, image_size, norm)
