"""FedDDPM+'s slow-learning trigger: OUR design, not the paper's.

The paper (arXiv 2503.06426) says FedDDPM+ "detects instances of slow model
learning" and then corrects once with the auxiliary set; the criterion itself
is not in any source we could read (``docs/methods.md``, FedDDPM; our trigger:
``docs/fedddpm.md``). Ours: the relative drop of a server-held loss over the
last ``window`` rounds,

    (L[r - w] - L[r]) / |L[r - w]| < eps,

with a cool-down of ``window`` rounds after each firing so that a correction
has time to show before the next one (a "one-shot" correction, not a
per-round one). The loss is measured on the aggregated model before any
correction, so the series tracks federated progress, not the fine-tune.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def relative_drop(losses: Sequence[float], window: int) -> float | None:
    """``(L[-1-w] - L[-1]) / |L[-1-w]|``, or None with fewer than w + 1 values."""
    if len(losses) <= window:
        return None
    before, now = float(losses[-1 - window]), float(losses[-1])
    if not (math.isfinite(before) and math.isfinite(now)) or before == 0:
        return None
    return (before - now) / abs(before)


def slow_learning(
    losses: Sequence[float],
    window: int,
    eps: float,
    rounds_since_fired: int | None = None,
) -> bool:
    """Whether the trigger fires after the last value of ``losses``.

    Parameters
    ----------
    losses : sequence of float
        The server's held-out loss, one value per round so far (oldest first).
    window : int
        w >= 1: rounds over which the drop is measured.
    eps : float
        Fires when the relative drop is below this (a rise counts as no drop).
    rounds_since_fired : int or None
        Rounds since the last firing (None = never fired); fires again only
        after ``window`` rounds.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if rounds_since_fired is not None and rounds_since_fired < window:
        return False
    drop = relative_drop(losses, window)
    return drop is not None and drop < eps


class CorrectionSchedule:
    """When the server corrects: ``every`` round, ``never``, or on the ``trigger``.

    Holds the loss history and the cool-down of :func:`slow_learning`; the
    strategies (FedDDPM, FedDDPM+, classifier adaptation) share it.
    """

    MODES = ("never", "every", "trigger")

    def __init__(self, mode: str, window: int, eps: float) -> None:
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        self.mode, self.window, self.eps = mode, window, eps
        self.losses: list[float] = []
        self.since: int | None = None
        self.fired_rounds: list[int] = []

    def state_dict(self) -> dict:
        """What a checkpoint keeps: the loss history, cool-down, fired rounds."""
        return {"losses": self.losses, "since": self.since, "fired": self.fired_rounds}

    def load_state_dict(self, state: dict) -> None:
        self.losses = [float(x) for x in state["losses"]]
        self.since = state["since"]
        self.fired_rounds = [int(r) for r in state["fired"]]

    @property
    def needs_loss(self) -> bool:
        """Whether :meth:`decide` needs this round's loss."""
        return self.mode == "trigger"

    def decide(self, server_round: int, loss: float | None = None) -> bool:
        """Record this round's loss (trigger mode) and say whether to correct."""
        if self.mode != "trigger":
            fire = self.mode == "every"
        else:
            if loss is None:
                raise ValueError("trigger mode needs the round's loss")
            self.losses.append(float(loss))
            if self.since is not None:
                self.since += 1
            fire = slow_learning(self.losses, self.window, self.eps, self.since)
            if fire:
                self.since = 0
        if fire:
            self.fired_rounds.append(server_round)
        return fire
