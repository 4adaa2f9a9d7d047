"""Local training: one plain loop for every method.

Which loss terms run is decided by the train config the strategy sent: a
``proximal-mu`` key switches on FedProx's term, ``moon-mu``/``moon-tau`` MOON's,
``tdcl-weight``/``ndcr-weight`` FedDifRC's and ``kd-weight``/``con-weight``
SemanticFL's. Terms compose, so "FedProx + MOON" needs no new code. The
diffusion-side tensors (:class:`Guidance`) are constants: every loss detaches
them, and gradients reach only the client model.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common import keys
from common.config import BaselineConfig, FedDifRCConfig, SemanticFLConfig
from common.federation import scheduled_lr
from common.losses import (
    anchor_distillation,
    balanced_softmax_ce,
    class_distillation,
    image_text_infonce,
    moon_contrastive,
    ndcr,
    posterior_distillation,
    proximal_term,
    tdcl,
)


def _opt(config: Mapping[str, Any], key: str, cast=float):
    return cast(config[key]) if key in config else None


def _term(
    config: Mapping[str, Any], switch: str, companions: Mapping[str, type] = {}
) -> dict[str, Any]:
    """One loss term's settings from the train config: its weight key switches
    it on, and the strategy always sends its companion keys with it.

    Returns ``{field: value}`` for the switch and its companions (a key's
    field is its name in snake case), or ``{}`` when the term is off.
    """
    if switch not in config:
        return {}
    missing = [k for k in companions if k not in config]
    if missing:
        raise KeyError(
            f"train config switches on '{switch}' but lacks {missing}; "
            f"got keys {sorted(config)}"
        )
    values = {switch: float(config[switch])}
    values.update({k: cast(config[k]) for k, cast in companions.items()})
    return {k.replace("-", "_"): v for k, v in values.items()}


@dataclass(frozen=True)
class LocalSettings:
    """Local-training settings of one round, as sent in the train config.

    A term's weight is None when it is off. Its companions' defaults are the
    run config's (one source), for code that builds settings directly.
    """

    lr: float
    momentum: float
    weight_decay: float
    epochs: int
    batch_size: int
    proximal_mu: float | None = None
    balanced_ce: bool = False  # FedETF: CE with the client's log class prior
    moon_mu: float | None = None
    moon_tau: float = BaselineConfig.moon_tau
    # FedDifRC
    tdcl_weight: float | None = None
    tdcl_tau: float = FedDifRCConfig.tdcl_tau
    tdcl_negatives: int = FedDifRCConfig.tdcl_negatives
    ndcr_weight: float | None = None
    ndcr_mode: str = FedDifRCConfig.ndcr_mode
    ndcr_tau: float = FedDifRCConfig.ndcr_tau
    self_supervised: bool = False
    feature_store: str | None = None
    feature_source: str | None = None  # "latent-upload": features come in Messages
    # SemanticFL
    kd_weight: float | None = None
    kd_temperature: float = SemanticFLConfig.kd_temperature
    # What a train config that names no form means (the strategies always
    # name it): the form that needs nothing beyond the anchors.
    kd_form: str = "coordinates"
    kd_teacher_tau: float | None = None  # kd-form "posterior": the fitted temperature
    kd_teacher_smoothing: float | None = None  # its control: smoothed labels
    con_weight: float | None = None
    con_tau: float = SemanticFLConfig.con_tau

    @property
    def needs_instance_features(self) -> bool:
        """Whether a FedDifRC term is on (it reads the feature store)."""
        return self.tdcl_weight is not None or self.ndcr_weight is not None

    @property
    def needs_teacher(self) -> bool:
        """Whether the distillation reads the zero-shot posterior (the store)."""
        return self.kd_weight is not None and self.kd_form == "posterior"

    @property
    def needs_anchors(self) -> bool:
        """Whether a SemanticFL anchor term is on (it needs the anchors record).

        The posterior form distils the zero-shot teacher, not the anchors.
        """
        anchor_kd = self.kd_weight is not None and self.kd_form != "posterior"
        return anchor_kd or self.con_weight is not None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LocalSettings:
        """Read the train ConfigRecord; method keys are optional."""
        missing = [
            k
            for k in (
                keys.LR,
                keys.MOMENTUM,
                keys.WEIGHT_DECAY,
                keys.LOCAL_EPOCHS,
                keys.BATCH_SIZE,
            )
            if k not in config
        ]
        if missing:
            raise KeyError(f"train config lacks {missing}; got keys {sorted(config)}")
        lr = float(config[keys.LR])
        if keys.LR_SCHEDULE in config:  # this round's rate (sent only when scheduled)
            lr = scheduled_lr(
                lr,
                str(config[keys.LR_SCHEDULE]),
                int(config[keys.SERVER_ROUND]),
                int(config[keys.NUM_ROUNDS]),
            )
        return cls(
            lr=lr,
            momentum=float(config[keys.MOMENTUM]),
            weight_decay=float(config[keys.WEIGHT_DECAY]),
            epochs=int(config[keys.LOCAL_EPOCHS]),
            batch_size=int(config[keys.BATCH_SIZE]),
            proximal_mu=_opt(config, keys.PROXIMAL_MU),
            # Sent only when on.
            balanced_ce=keys.BALANCED_CE in config and bool(config[keys.BALANCED_CE]),
            **_term(config, keys.MOON_MU, {keys.MOON_TAU: float}),
            **_term(
                config,
                keys.TDCL_WEIGHT,
                {keys.TDCL_TAU: float, keys.TDCL_NEGATIVES: int},
            ),
            **_term(
                config, keys.NDCR_WEIGHT, {keys.NDCR_MODE: str, keys.NDCR_TAU: float}
            ),
            # Sent only when true.
            self_supervised=keys.SELF_SUPERVISED in config
            and bool(config[keys.SELF_SUPERVISED]),
            feature_store=_opt(config, keys.FEATURE_STORE, str),
            feature_source=_opt(config, keys.FEATURE_SOURCE, str),
            **_term(
                config, keys.KD_WEIGHT, {keys.KD_TEMPERATURE: float, keys.KD_FORM: str}
            ),
            kd_teacher_tau=_opt(config, keys.KD_TEACHER_TAU),
            kd_teacher_smoothing=_opt(config, keys.KD_TEACHER_SMOOTHING),
            **_term(config, keys.CON_WEIGHT, {keys.CON_TAU: float}),
        )


@dataclass(frozen=True)
class Guidance:
    """Diffusion-side targets of one client, all constants (never trained).

    Per-sample rows are aligned with the client's ``images``/``labels``.
    """

    f_pos: Tensor | None = None  # (N, d) TDCL positive
    f_neg: Tensor | None = None  # (N, K, d) TDCL negatives of the same sample
    f_noise: Tensor | None = None  # (N, d) NDCR target
    text_anchors: Tensor | None = None  # (C, d) SemanticFL T
    visual_anchors: Tensor | None = None  # (C, d) SemanticFL V
    teacher: Tensor | None = None  # (N, C) zero-shot posterior (kd-form "posterior")

    def check(self, settings: LocalSettings, num_samples: int) -> None:
        """Fail clearly when a switched-on term lacks its tensors."""
        need = []
        if settings.tdcl_weight is not None:
            need += ["f_pos", "f_neg"]
        if settings.ndcr_weight is not None:
            need += ["f_noise"]
        if settings.needs_teacher:
            need += ["teacher"]
        elif settings.kd_weight is not None:
            need += ["visual_anchors"]
        if settings.con_weight is not None:
            need += ["text_anchors"]
        missing = [n for n in need if getattr(self, n) is None]
        if missing:
            raise ValueError(f"guidance lacks {missing} for the terms switched on")
        for name in ("f_pos", "f_neg", "f_noise", "teacher"):
            t = getattr(self, name)
            if t is not None and len(t) != num_samples:
                raise ValueError(
                    f"guidance {name} has {len(t)} rows, not {num_samples}"
                )


def augment_batch(x: Tensor, generator: torch.Generator) -> Tensor:
    """Random crop (pad 4) and horizontal flip, per sample, on a tensor batch."""
    n, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
    dy = torch.randint(0, 9, (n,), generator=generator)
    dx = torch.randint(0, 9, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :]
    batch = torch.arange(n)[:, None, None, None]
    chan = torch.arange(x.shape[1])[None, :, None, None]
    out = padded[batch, chan, rows, cols]
    flip = torch.rand(n, generator=generator) < 0.5
    out[flip] = out[flip].flip(3)
    return out


def _frozen_copy(model: nn.Module) -> nn.Module:
    teacher = copy.deepcopy(model).eval()
    teacher.requires_grad_(False)
    return teacher


def train(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    settings: LocalSettings,
    *,
    prev_model: nn.Module | None = None,
    guidance: Guidance | None = None,
    augment: bool = False,
    device: torch.device | str = "cpu",
    seed: int = 0,
    bf16: bool = False,
) -> dict[str, float]:
    """Train ``model`` in place for ``settings.epochs`` epochs; return mean metrics.

    ``model`` arrives holding the global weights of this round. For MOON,
    ``prev_model`` is this client's model from its previous round (the global
    model on a client's first round, which makes the term a constant log 2).
    ``bf16``: the forward pass and losses under bfloat16 autocast (mixed
    precision; weights, gradients and the optimiser stay float32).
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    model.to(device).train()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
    )

    # Teachers are snapshots of the weights as received, before any step.
    global_params = None
    if settings.proximal_mu is not None:
        global_params = [p.detach().clone() for p in model.parameters()]
    global_model = None
    if settings.moon_mu is not None:
        global_model = _frozen_copy(model)
        prev_model = _frozen_copy(prev_model if prev_model is not None else model).to(
            device
        )

    guidance = guidance or Guidance()
    guidance.check(settings, len(images))
    labelled = not settings.self_supervised
    head = getattr(model, "guidance_head", None)
    counts = None  # FedETF: this client's class counts (set at the first batch)

    sums = dict.fromkeys(
        ("loss", "ce", "prox", "moon", "tdcl", "ndcr", "kd", "con", "correct"), 0.0
    )
    seen, steps, t0 = 0, 0, time.perf_counter()
    for _ in range(settings.epochs):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(order), settings.batch_size):
            idx = order[start : start + settings.batch_size]
            if len(idx) < 2:  # BatchNorm cannot train on a single sample
                continue
            x = images[idx]
            if augment:
                x = augment_batch(x, generator)
            x = x.to(device)
            y = labels[idx].to(device) if labelled else None

            # forward: cross-entropy plus whichever method terms are on
            with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                out = model(x)
                if not labelled:
                    ce = out.logits.new_zeros(())
                elif settings.balanced_ce:
                    if counts is None:  # the prior its balanced CE removes
                        counts = torch.bincount(labels, minlength=out.logits.shape[1])
                    ce = balanced_softmax_ce(out.logits, y, counts)
                else:
                    ce = F.cross_entropy(out.logits, y)
                loss = ce
                if global_params is not None:
                    prox = proximal_term(
                        model.parameters(), global_params, settings.proximal_mu
                    )
                    loss = loss + prox
                    sums["prox"] += prox.item() * len(idx)
                if global_model is not None:
                    with torch.no_grad():
                        z_global = global_model(x).embedding
                        z_prev = prev_model(x).embedding
                    con = moon_contrastive(
                        out.embedding, z_global, z_prev, settings.moon_tau
                    )
                    loss = loss + settings.moon_mu * con
                    sums["moon"] += con.item() * len(idx)
                # The guided terms see z through the model's projector, if it has one.
                z_guided = head(out.embedding) if head is not None else out.embedding
                terms = _guided_terms(
                    z_guided, out.logits, idx, y, settings, guidance, generator
                )
                for name, (weight, value) in terms.items():
                    loss = loss + weight * value
                    sums[name] += value.item() * len(idx)

            # backward and step
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

            sums["loss"] += loss.item() * len(idx)
            sums["ce"] += ce.item() * len(idx)
            if labelled:
                sums["correct"] += (out.logits.argmax(1) == y).sum().item()
            seen += len(idx)
            steps += 1

    seen = max(seen, 1)
    return {
        keys.TRAIN_LOSS: sums["loss"] / seen,
        keys.TRAIN_CE: sums["ce"] / seen,
        keys.TRAIN_PROX: sums["prox"] / seen,
        keys.TRAIN_MOON: sums["moon"] / seen,
        keys.TRAIN_TDCL: sums["tdcl"] / seen,
        keys.TRAIN_NDCR: sums["ndcr"] / seen,
        keys.TRAIN_KD: sums["kd"] / seen,
        keys.TRAIN_CON: sums["con"] / seen,
        keys.TRAIN_ACCURACY: sums["correct"] / seen,
        keys.TRAIN_SECONDS: time.perf_counter() - t0,
        keys.TRAIN_STEPS: float(steps),
        # The share of clients that trained on a GPU, once aggregated: a
        # CUDA run checks it is 1 (server_app.reporting).
        keys.TRAIN_CUDA: float(cuda),
        # This process's peak GPU memory while training (0 on CPU); the
        # aggregate is the clients' weighted mean.
        keys.TRAIN_GPU_PEAK_MB: torch.cuda.max_memory_allocated(device) / 2**20
        if cuda
        else 0.0,
    }


def _guided_terms(
    z: Tensor,
    logits: Tensor,
    idx: Tensor,
    y: Tensor | None,
    settings: LocalSettings,
    g: Guidance,
    generator: torch.Generator,
) -> dict[str, tuple[float, Tensor]]:
    """The FedDifRC / SemanticFL terms that are on: name -> (weight, value).

    Losses and their equations: ``common.losses``. The targets are indexed by
    the batch's sample positions, so each embedding meets its own sample's
    features (TDCL per sample, not the released code's pooled, misaligned form).
    """
    dev = z.device
    terms: dict[str, tuple[float, Tensor]] = {}
    if settings.tdcl_weight is not None:
        f_neg = g.f_neg[idx]
        k = settings.tdcl_negatives
        if settings.self_supervised and 0 < k < f_neg.shape[1]:
            # Labels unknown: K of the stored class-name negatives per batch.
            pick = torch.randperm(f_neg.shape[1], generator=generator)[:k]
            f_neg = f_neg[:, pick]
        value = tdcl(z, g.f_pos[idx].to(dev), f_neg.to(dev), settings.tdcl_tau)
        terms["tdcl"] = (settings.tdcl_weight, value)
    if settings.ndcr_weight is not None:
        value = ndcr(z, g.f_noise[idx].to(dev), settings.ndcr_mode, settings.ndcr_tau)
        terms["ndcr"] = (settings.ndcr_weight, value)
    if settings.needs_teacher:  # the image's own zero-shot posterior
        value = posterior_distillation(logits, g.teacher[idx].to(dev))
        terms["kd"] = (settings.kd_weight, value)
    elif settings.kd_weight is not None:
        visual = g.visual_anchors.to(dev)
        if settings.kd_form == "classes":
            value = class_distillation(z, visual, y, settings.kd_temperature)
        else:  # "coordinates": the earlier reading
            value = anchor_distillation(z, visual[y], settings.kd_temperature)
        terms["kd"] = (settings.kd_weight, value)
    if settings.con_weight is not None:
        value = image_text_infonce(z, g.text_anchors.to(dev), y, settings.con_tau)
        terms["con"] = (settings.con_weight, value)
    return terms
