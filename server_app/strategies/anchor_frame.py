"""The anchor classifier's frame, sent with every train and evaluate Message.

With ``anchor-classifier`` on (ours; ``common/anchors.py``), a guided
method's clients end in a fixed classifier whose (C, C) frame the server
computed once from the class anchors. :class:`AnchorFrame` sits in front of
the strategy's own ``configure_train`` / ``configure_evaluate`` and attaches
the frame as its own ArrayRecord, so every client holds the same bits; the
replies carry weights only, and the frame is never aggregated.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from common import keys


class AnchorFrame:
    """Mixin: ``frame`` (C, C) or None, attached to train and evaluate Messages."""

    def __init__(self, *, frame: np.ndarray | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.frame = None
        if frame is not None:
            self.frame = ArrayRecord(
                {keys.CLASSIFIER_FRAME: Array(np.ascontiguousarray(frame, np.float32))}
            )

    def _with_frame(self, messages: Iterable[Message]) -> list[Message]:
        messages = list(messages)
        if self.frame is not None:
            for message in messages:  # server -> client extras are allowed
                message.content[keys.CLASSIFIER] = self.frame
        return messages

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The strategy's train Messages, each with the frame."""
        return self._with_frame(
            super().configure_train(server_round, arrays, config, grid)  # type: ignore[misc]
        )

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The strategy's evaluate Messages, each with the frame."""
        return self._with_frame(
            super().configure_evaluate(server_round, arrays, config, grid)  # type: ignore[misc]
        )
