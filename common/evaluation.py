"""The evaluation protocol, coded once (README "Evaluation protocol").

The server calls :func:`evaluate` on the global model after every aggregation,
on the full central test set: top-1 accuracy, mean cross-entropy and per-class
accuracy. Runs report the final-round accuracy and, labelled as such, the
best-round accuracy (the papers report best-round).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class EvalResult:
    accuracy: float
    loss: float
    per_class_accuracy: list[float]
    num_examples: int


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    num_classes: int,
    batch_size: int = 1000,
    device: str | torch.device = "cpu",
) -> EvalResult:
    """Accuracy, loss and per-class accuracy of ``model`` on (normalised) images."""
    model.eval().to(device)
    correct = torch.zeros(num_classes, dtype=torch.long)
    total = torch.zeros(num_classes, dtype=torch.long)
    loss_sum = 0.0
    for start in range(0, len(labels), batch_size):
        x = images[start : start + batch_size].to(device)
        y = labels[start : start + batch_size].to(device)
        logits = model(x).logits
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        hit = (logits.argmax(1) == y).cpu()
        y = y.cpu()
        total += torch.bincount(y, minlength=num_classes)
        correct += torch.bincount(y[hit], minlength=num_classes)
    n = int(total.sum())
    if n == 0:
        raise ValueError("evaluate() got an empty test set")
    per_class = (correct.float() / total.clamp(min=1).float()).tolist()
    return EvalResult(
        accuracy=float(correct.sum()) / n,
        loss=loss_sum / n,
        per_class_accuracy=per_class,
        num_examples=n,
    )
