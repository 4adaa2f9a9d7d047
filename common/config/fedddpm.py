"""FedDDPM / FedDDPM+ and the classifier adaptation (fedavg-adapt).

The FedDDPM paper's values are not public: these are cpu-profile defaults of
ours (docs/fedddpm.md), not the paper's.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.config.fields import ConfigError, check, check_all


def parse_channels(text: str) -> tuple[int, ...]:
    """``"16,32,32,32"`` -> (16, 32, 32, 32): 2 to 5 multiples of 8."""
    parts = [p.strip() for p in str(text).split(",")]
    if any(not p.isdigit() for p in parts):
        raise ValueError("comma-separated positive ints")
    channels = tuple(int(p) for p in parts)
    if not 2 <= len(channels) <= 5:
        raise ValueError(f"{len(channels)} blocks")
    if any(c < 8 or c % 8 for c in channels):
        raise ValueError("each a multiple of 8 (GroupNorm uses 8 groups)")
    return channels


@dataclass(frozen=True)
class FedDDPMConfig:
    """Federated diffusion training, the server's correction, its trigger."""

    ddpm_unet_channels: str = "16,32,32,32"  # ours: smaller than the embedded one
    ddpm_pretrain_steps: int = 100  # phase (a): local steps before the upload
    ddpm_local_steps: int = 20  # client AdamW steps per round
    ddpm_batch_size: int = 32
    ddpm_lr: float = 1e-3
    ddpm_prompt_dropout: float = 0.1  # empty prompts, for classifier-free guidance
    aux_size: int = 1000  # auxiliary set sampled (FedDDPM) or generated (adapt)
    aux_steps: int = 20  # server fine-tune steps of the U-Net per correction
    aux_lr: float = 5e-4
    adapt_steps: int = 20  # fedavg-adapt(+): classifier fine-tune steps (ours)
    adapt_lr: float = 0.01
    trigger_window: int = 2  # FedDDPM+ slow-learning check: window w (ours)
    trigger_eps: float = 0.02  # fires when the relative loss drop over w < eps
    sample_steps: int = 10  # DDIM steps of every sampling
    sample_guidance_scale: float = 2.0
    measure_samples: int = 200  # generated images per round for FD and accuracy
    heldout_size: int = 500  # test images (denoising loss), public ones (trigger)

    @property
    def channels(self) -> tuple[int, ...]:
        """``ddpm-unet-channels`` parsed, e.g. (16, 32, 32, 32)."""
        return parse_channels(self.ddpm_unet_channels)

    def validate(self) -> None:
        try:
            parse_channels(self.ddpm_unet_channels)
        except ValueError as exc:
            raise ConfigError(
                f"run-config 'ddpm-unet-channels' = {self.ddpm_unet_channels!r} is "
                f"invalid; expected 2 to 5 comma-separated multiples of 8 like "
                f"'16,32,32,32' ({exc})"
            ) from None
        check_all(
            self,
            ("ddpm-local-steps", "ddpm-batch-size", "sample-steps"),
            lambda v: v >= 1,
            "an int >= 1",
        )
        check_all(
            self,
            ("ddpm-pretrain-steps", "aux-steps", "adapt-steps"),
            lambda v: v >= 0,
            "an int >= 0",
        )
        check_all(
            self, ("ddpm-lr", "aux-lr", "adapt-lr"), lambda v: v > 0, "a float > 0"
        )
        check(
            0 <= self.ddpm_prompt_dropout < 1,
            "ddpm-prompt-dropout",
            self.ddpm_prompt_dropout,
            "a float in [0, 1) (share of empty prompts, for classifier-free guidance)",
        )
        check(
            self.sample_guidance_scale >= 1,
            "sample-guidance-scale",
            self.sample_guidance_scale,
            "a float >= 1 (1 = no classifier-free guidance)",
        )
        check(
            self.trigger_window >= 1,
            "trigger-window",
            self.trigger_window,
            "an int >= 1 (rounds over which the relative loss drop is measured)",
        )
        check(
            0 <= self.trigger_eps < 1,
            "trigger-eps",
            self.trigger_eps,
            "a float in [0, 1) (relative loss drop below which learning is slow)",
        )

    def validate_for(
        self, method: str, dataset: str, num_classes: int, public_size: int
    ) -> None:
        """The checks that apply only when the run's method reads this section."""
        check_all(
            self,
            ("measure-samples", "heldout-size"),
            lambda v: v >= 1,
            f"an int >= 1 for method '{method}'",
        )
        check(
            self.aux_size >= num_classes,
            "aux-size",
            self.aux_size,
            f"an int >= {num_classes} (the classes of {dataset})",
        )
        if public_size < self.heldout_size:
            raise ConfigError(
                f"method '{method}' needs the server-held public split for its "
                f"slow-learning check and its frozen VAE: set public-split-size >= "
                f"heldout-size={self.heldout_size} (got {public_size})"
            )
