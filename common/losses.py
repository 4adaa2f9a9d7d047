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
