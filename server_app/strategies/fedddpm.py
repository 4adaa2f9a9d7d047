"""FedDDPM, FedDDPM+ and their baseline: FedAvg of a latent diffusion U-Net.

Implementation based on https://arxiv.org/abs/2503.06426 (Peng et al. 2025),
as far as its abstract goes (docs/methods.md, FedDDPM). The pre-FL upload and
the auxiliary set are built by ``server_app/fedddpm.py`` before ``start``;
these classes do a round: FedAvg, then (maybe) a server fine-tune of the
aggregated U-Net on the auxiliary set.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from logging import INFO
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from flwr.common import log
from flwr.serverapp import Grid
from torch import Tensor

from common import keys, seeding
from common.config import FedDDPMConfig
from diffusion_service.federated.ldm import (
    FrozenParts,
    build_federated_unet,
    train_unet,
)
from diffusion_service.federated.measures import DenoisingProbe
from server_app.strategies.correcting import CorrectingFedAvg


class FedDDPM(CorrectingFedAvg):
    """FedDDPM: FedAvg, then fine-tune the global U-Net on the auxiliary set.

    Every round (this class), never (:class:`FedDDPMAvg`) or when the
    slow-learning trigger fires (:class:`FedDDPMPlus`). Injects ``ddpm-phase``
    = "round", ``ddpm-steps``, ``ddpm-lr``, ``ddpm-batch-size`` and
    ``ddpm-prompt-dropout`` into the train config and attaches the prompt
    states (``text-states``). Each round's server work goes to ``round_log``
    (aggregate / trigger / correction seconds, whether it corrected).

    Parameters
    ----------
    parts : FrozenParts
        Frozen VAE, scheduler and prompt states.
    channels : tuple of int
        The U-Net's ``ddpm-unet-channels``.
    aux : (Tensor, Tensor) or None
        Auxiliary latents and labels (None for the FedAvg baseline).
    trigger_probe : DenoisingProbe or None
        Server-held latents for FedDDPM+'s loss (None otherwise).
    local : dict
        The diffusion-training settings sent to clients each round.
    aux_steps, aux_lr, batch_size, prompt_dropout, seed :
        The server fine-tune (AdamW, fresh per correction).
    **kwargs
        :class:`CorrectingFedAvg` (trigger) and Flower ``FedAvg`` arguments.
    """

    def __init__(
        self,
        *,
        parts: FrozenParts,
        channels: tuple[int, ...],
        aux: tuple[Tensor, Tensor] | None,
        trigger_probe: DenoisingProbe | None,
        local: dict[str, Any],
        aux_steps: int,
        aux_lr: float,
        batch_size: int,
        prompt_dropout: float,
        seed: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if self.correction != "never" and aux is None:
            raise ValueError(f"{type(self).__name__} needs the auxiliary set")
        if self.correction == "trigger" and trigger_probe is None:
            raise ValueError("FedDDPM+ needs a trigger probe (server-held latents)")
        self.parts, self.aux, self.trigger_probe = parts, aux, trigger_probe
        self.local = dict(local)
        self.aux_steps, self.aux_lr = aux_steps, aux_lr
        self.batch_size, self.prompt_dropout, self.seed = (
            batch_size,
            prompt_dropout,
            seed,
        )
        self.unet = build_federated_unet(channels, seed)  # server-side work copy
        self.text_record = ArrayRecord(
            {keys.TEXT_STATES: Array(parts.text.numpy().copy())}
        )

    @classmethod
    def from_config(cls, section: FedDDPMConfig, **kwargs: Any) -> FedDDPM:
        """Build from the FedDDPM section; ``parts``, ``aux``, ``trigger_probe``
        and ``seed`` come from ``server_app/fedddpm.py``."""
        return cls(
            channels=section.channels,
            local={
                keys.DDPM_PHASE: "round",
                keys.DDPM_STEPS: section.ddpm_local_steps,
                keys.DDPM_LR: section.ddpm_lr,
                keys.DDPM_BATCH_SIZE: section.ddpm_batch_size,
                keys.DDPM_PROMPT_DROPOUT: section.ddpm_prompt_dropout,
            },
            aux_steps=section.aux_steps,
            aux_lr=section.aux_lr,
            batch_size=section.ddpm_batch_size,
            prompt_dropout=section.ddpm_prompt_dropout,
            trigger_window=section.trigger_window,
            trigger_eps=section.trigger_eps,
            **kwargs,
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Inject the diffusion-training settings, sample as FedAvg, attach text."""
        config.update(self.local)
        messages = list(super().configure_train(server_round, arrays, config, grid))
        for message in messages:  # server -> client extras are allowed
            message.content[keys.TEXT_STATES] = self.text_record
        return messages

    def load_aggregate(self, arrays: ArrayRecord) -> None:
        """The aggregate into the server's work U-Net."""
        self.unet.load_state_dict(arrays.to_torch_state_dict())

    def aggregate_loss(self) -> float:
        """Denoising loss on the server-held probe latents (FedDDPM+'s trigger)."""
        assert self.trigger_probe is not None
        return self.trigger_probe.loss(self.unet, self.parts.scheduler, self.parts.text)

    def correct(
        self,
        server_round: int,
        arrays: ArrayRecord,
        loss: float | None,
        info: dict[str, Any],
    ) -> ArrayRecord:
        """Fine-tune the aggregated U-Net on the auxiliary set."""
        assert self.aux is not None
        t0 = time.perf_counter()
        result = train_unet(
            self.unet,
            self.parts,
            *self.aux,
            steps=self.aux_steps,
            lr=self.aux_lr,
            batch_size=self.batch_size,
            prompt_dropout=self.prompt_dropout,
            seed=seeding.mix_seed(self.seed, server_round, seeding.FEDDDPM_CORRECTION),
        )
        info["correction-loss"] = result["loss"]
        info["correction-seconds"] = time.perf_counter() - t0
        return ArrayRecord({k: v.detach() for k, v in self.unet.state_dict().items()})

    def summary(self) -> None:
        """Log the correction settings, then FedAvg's."""
        n_aux = 0 if self.aux is None else len(self.aux[0])
        log(
            INFO,
            "\t├──> %s: correction %s (aux %d, %d steps, lr %s; trigger w=%d eps=%s)",
            type(self).__name__,
            self.correction,
            n_aux,
            self.aux_steps,
            self.aux_lr,
            self.schedule.window,
            self.schedule.eps,
        )
        super().summary()


class FedDDPMPlus(FedDDPM):
    """FedDDPM+: the correction only when slow learning is detected.

    The detection rule is OUR design (the paper's is not available):
    ``trigger.slow_learning`` on the aggregate's denoising loss over a fixed,
    seeded slice of the server's public split.
    """

    correction = "trigger"


class FedDDPMAvg(FedDDPM):
    """The baseline: plain FedAvg of the diffusion U-Net, no upload, no correction."""

    correction = "never"
