"""Loss terms as pure functions, each citing its paper and equation.

The teacher side of every feature loss (global model, previous model, later the
diffusion features) is detached inside the function, so a caller cannot leak
gradients into it by mistake.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor


def proximal_term(
    params: Iterable[Tensor], global_params: Iterable[Tensor], mu: float
) -> Tensor:
    """FedProx proximal term ``mu / 2 * ||w - w_global||^2``.

    Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020,
    https://arxiv.org/abs/1812.06127, Eq. (2). ``global_params`` are the weights
    received this round (treated as constants).
    """
    sq = [
        (w - g.detach()).pow(2).sum()
        for w, g in zip(params, global_params, strict=True)
    ]
    return 0.5 * mu * torch.stack(sq).sum()


def moon_contrastive(z: Tensor, z_global: Tensor, z_prev: Tensor, tau: float) -> Tensor:
    """MOON model-contrastive loss.

    Li, He, Song, "Model-Contrastive Federated Learning", CVPR 2021,
    https://arxiv.org/abs/2103.16257, Eq. (3): for each sample,
    ``-log( e^{sim(z, z_glob)/tau} / (e^{sim(z, z_glob)/tau} + e^{sim(z, z_prev)/tau}) )``
    with cosine similarity, averaged over the batch. Written as cross-entropy
    over the two logits with the positive at index 0.
    """
    z = F.normalize(z, dim=1)
    pos = (z * F.normalize(z_global.detach(), dim=1)).sum(1)
    neg = (z * F.normalize(z_prev.detach(), dim=1)).sum(1)
    logits = torch.stack([pos, neg], dim=1) / tau
    target = torch.zeros(len(z), dtype=torch.long, device=z.device)
    return F.cross_entropy(logits, target)


def _cos(z: Tensor, f: Tensor) -> Tensor:
    """Cosine similarity along the last dim, broadcasting ``z`` (B, d) over ``f``."""
    z = F.normalize(z, dim=-1)
    f = F.normalize(f.detach(), dim=-1)
    if f.dim() == 3:  # (B, K, d): one row of K features per sample
        return torch.einsum("bd,bkd->bk", z, f)
    return (z * f).sum(-1)


def tdcl(z: Tensor, f_pos: Tensor, f_neg: Tensor, tau: float) -> Tensor:
    """FedDifRC's text-driven diffusion contrastive loss, per sample.

    Wang et al., "FedDifRC", ICCV 2025, https://arxiv.org/abs/2507.06482, the TDCL
    term: ``log(1 + sum_j e^{s(z_i, F_j)/tau} / e^{s(z_i, F_i)/tau})``, which is
    InfoNCE with the sample's own positive (its diffusion features under its true
    class prompt) against its own negatives (the same image under other class
    prompts). Each sample's negatives are aligned with that sample; the released
    code pools one ratio over the whole batch and misaligns them
    (docs/methods.md, FedDifRC), which we do not copy.

    Shapes: ``z`` (B, d), ``f_pos`` (B, d), ``f_neg`` (B, K, d).
    """
    logits = torch.cat([_cos(z, f_pos)[:, None], _cos(z, f_neg)], dim=1) / tau
    target = torch.zeros(len(z), dtype=torch.long, device=z.device)
    return F.cross_entropy(logits, target)


def ndcr(z: Tensor, f_noise: Tensor, mode: str = "cosine", tau: float = 0.1) -> Tensor:
    """FedDifRC's noise-driven diffusion consistency regularisation.

    Aligns each embedding with its sample's denoising features (paper: an L2
    term, ``sum_q (z_iq - H_iq)^2`` on normalised features). ``cosine`` gives
    ``mean(1 - cos(z, f))`` (equal to half the squared L2 distance of the
    normalised vectors, so the paper's form up to a factor). ``kl`` gives
    ``KL(softmax(f/tau) || softmax(z/tau))`` on normalised vectors; the released
    code uses tau = 1, where both softmaxes are near-uniform and the loss is
    ~1e-3 (a no-op), so tau here must be well below 1 to make the term count.
    """
    if mode == "cosine":
        return (1 - _cos(z, f_noise)).mean()
    if mode == "kl":
        log_p_client = F.log_softmax(F.normalize(z, dim=-1) / tau, dim=-1)
        p_teacher = F.softmax(F.normalize(f_noise.detach(), dim=-1) / tau, dim=-1)
        return F.kl_div(log_p_client, p_teacher, reduction="batchmean")
    raise ValueError(f"unknown NDCR mode {mode!r}; valid: cosine, kl")


def anchor_distillation(z: Tensor, visual_anchor: Tensor, temperature: float) -> Tensor:
    """SemanticFL's distillation from visual class anchors.

    Liu et al., "Diffusion-Guided Semantic Consistency for Multimodal
    Heterogeneity" (SemanticFL), ICME 2026, https://arxiv.org/abs/2603.19337:
    ``KL(softmax(V_y / T) || softmax(z / T))``, with ``V_y`` the class anchor of
    each sample's label, shape (B, d). The paper's exact form could not be read
    (docs/methods.md, SemanticFL); both vectors are L2-normalised here, and ``T``
    must be well below 1 for the same reason as in :func:`ndcr`.
    """
    log_p_client = F.log_softmax(F.normalize(z, dim=-1) / temperature, dim=-1)
    p_anchor = F.softmax(
        F.normalize(visual_anchor.detach(), dim=-1) / temperature, dim=-1
    )
    return F.kl_div(log_p_client, p_anchor, reduction="batchmean")


def class_distillation(
    h: Tensor, anchors: Tensor, labels: Tensor, temperature: float
) -> Tensor:
    """SemanticFL's distillation read over classes (``kd-form = "classes"``, ours).

    ``KL(q_y || p(h))`` between two distributions over the C classes: the
    student's ``p(h) = softmax_c(cos(h, A_c) / T)`` (its similarities to every
    class anchor) and the teacher's ``q_y = softmax_c(cos(A_y, A_c) / T)``
    (its label's anchor against every anchor: a soft label that keeps the
    diffusion model's class similarities). ``anchors`` (C, d) are constants
    (detached); ``h`` (B, d) lives in the anchors' space. The loss is 0
    exactly when ``h`` points along ``A_y``. The earlier reading,
    :func:`anchor_distillation`, is a softmax over the d feature coordinates,
    whose minimisers for different classes are barely apart.
    """
    unit = F.normalize(anchors.detach(), dim=-1)
    log_p = F.log_softmax(F.normalize(h, dim=-1) @ unit.T / temperature, dim=-1)
    q = F.softmax((unit @ unit.T)[labels] / temperature, dim=-1)
    return F.kl_div(log_p, q, reduction="batchmean")


def posterior_distillation(logits: Tensor, teacher: Tensor) -> Tensor:
    """Distillation of the diffusion model's zero-shot posterior (``kd-form =
    "posterior"``, ours).

    ``KL(q(x) || softmax(logits))``: Hinton et al.'s knowledge distillation
    (arXiv 1503.02531) at temperature 1, with ``q(x)`` (B, C) the frozen
    diffusion model's posterior over classes for the image itself, from
    which class prompt denoises it best (Li et al., ICCV 2023,
    https://arxiv.org/abs/2303.16203; ``diffusion_service.zero_shot``; its
    temperature is fitted on the server's labelled public split, so ``q`` is
    calibrated and no second temperature is applied). It acts on the
    classifier's logits: a client that holds one class still gets a target
    over every class, which does not follow its own label skew.
    """
    return F.kl_div(
        F.log_softmax(logits, dim=-1), teacher.detach(), reduction="batchmean"
    )


def image_text_infonce(
    z: Tensor, text_anchors: Tensor, labels: Tensor, tau: float
) -> Tensor:
    """SemanticFL's cross-modal contrastive term: image embedding vs class texts.

    InfoNCE of each embedding against all C text anchors (C, d), the anchor of
    its own class the positive and the others the negatives:
    ``-log e^{cos(z, T_y)/tau} / sum_k e^{cos(z, T_k)/tau}`` (SemanticFL; tau
    0.05 reported, unverified).
    """
    logits = _cos(z, text_anchors.expand(len(z), -1, -1)) / tau
    return F.cross_entropy(logits, labels)


def balanced_softmax_ce(logits: Tensor, labels: Tensor, class_counts: Tensor) -> Tensor:
    """Balanced softmax cross-entropy (Ren et al., NeurIPS 2020), FedETF's local loss.

    ``CE(logits + log n_c, y)`` with ``n_c`` the client's own count of class
    c (Li et al., ICCV 2023, https://arxiv.org/abs/2303.10058, Sec. 4.2): the
    prior of the skewed local labels is added to the logits in training, so
    the model itself learns the balanced posterior. A class the client never
    sees gets log 0 = -inf: it cannot be predicted locally and takes no
    gradient, which is the point. At evaluation the logits are used as they are.
    """
    log_prior = torch.log(class_counts.to(logits.dtype)).to(logits.device)
    return F.cross_entropy(logits + log_prior, labels)
