"""The evaluation protocol, coded once (README "Evaluation protocol").

The server calls :func:`evaluate` on the global model after every aggregation,
on the full central test set: top-1 accuracy, mean cross-entropy and per-class
accuracy. Runs report the final-round accuracy and, labelled as such, the
best-round accuracy (the papers report best-round).
"""

from __future__ import annotations

import copy
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
    per_class_correct: tuple[int, ...] = ()
    per_class_total: tuple[int, ...] = ()


def recalibrated_copy(
    model: nn.Module,
    images: Tensor,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """A copy of ``model`` whose BatchNorm statistics are recomputed on ``images``.

    Training uses each batch's own statistics; the running statistics only
    matter when a model is scored. FedAvg averages them across clients, and
    under label skew that average describes no client's features (the
    pooled variance also lacks the spread between the clients' means), so
    the global weights get scored with the wrong normalisation. Recomputing
    them on unlabelled images (torch's ``update_bn``, as SWA does after
    averaging weights; Izmailov et al., UAI 2018) scores the weights the
    federation produced. No labels are used, and the weights are untouched.
    """
    scored = copy.deepcopy(model).to(device)
    batches = [
        images[start : start + batch_size].to(device)
        for start in range(0, len(images), batch_size)
    ]
    torch.optim.swa_utils.update_bn(batches, scored)
    return scored.eval()


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
        per_class_correct=tuple(correct.tolist()),
        per_class_total=tuple(total.tolist()),
    )


@torch.no_grad()
def embed(
    model: nn.Module,
    images: Tensor,
    batch_size: int = 1000,
    device: str | torch.device = "cpu",
) -> Tensor:
    """The model's embeddings ``z`` (N, d) of (normalised) images, on the CPU."""
    model.eval().to(device)
    parts = [
        model(images[s : s + batch_size].to(device)).embedding.float().cpu()
        for s in range(0, len(images), batch_size)
    ]
    return torch.cat(parts)


def linear_probe(
    model: nn.Module,
    fit_images: Tensor,
    fit_labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    num_classes: int,
    batch_size: int = 1000,
    device: str | torch.device = "cpu",
    *,
    max_iter: int = 200,
    l2: float = 1e-4,
) -> EvalResult:
    """Linear-probe score of a frozen encoder (self-supervised FedDifRC).

    The protocol of self-supervised representation learning: freeze the
    encoder, fit a multinomial logistic regression on its standardised
    embeddings of a labelled set (here the server-held public split, never
    the test set), and report its accuracy, loss and per-class accuracy on the
    central test set. Full-batch L-BFGS from a zero init: deterministic.
    """
    z_fit = embed(model, fit_images, batch_size, device).double()
    z_test = embed(model, test_images, batch_size, device).double()
    mean, std = z_fit.mean(0), z_fit.std(0).clamp_min(1e-6)
    z_fit, z_test = (z_fit - mean) / std, (z_test - mean) / std
    weight = torch.zeros(z_fit.shape[1], num_classes, dtype=torch.float64)
    bias = torch.zeros(num_classes, dtype=torch.float64)
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    opt = torch.optim.LBFGS(
        [weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe"
    )
    y_fit = fit_labels.long()

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z_fit @ weight + bias, y_fit)
        loss = loss + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        logits = z_test @ weight + bias
        y = test_labels.long()
        hit = logits.argmax(1) == y
        total = torch.bincount(y, minlength=num_classes)
        correct = torch.bincount(y[hit], minlength=num_classes)
        return EvalResult(
            accuracy=float(hit.double().mean()),
            loss=float(F.cross_entropy(logits, y)),
            per_class_accuracy=(correct.double() / total.clamp(min=1)).tolist(),
            num_examples=len(y),
        )
