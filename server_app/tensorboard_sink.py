"""Optional TensorBoard event files, one step per round (``tensorboard = true``).

Every number of a round's metrics line becomes a scalar: the central test
accuracy and loss, per-class accuracy, every aggregated train metric (the
guided terms included), validation scores, the server's work and the round
time. Needs the ``tensorboard`` package (``pip install 'semanticfl[tensorboard]'``);
asking for the sink without it fails before round 1 with that command.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common import keys

INSTALL_HINT = (
    "pip install 'tensorboard>=2.15' (or the project's extra: .[tensorboard])"
)


def scalars(
    row: dict[str, Any], class_names: list[str] | None = None
) -> Iterator[tuple[str, float]]:
    """(tag, value) of every number in a metrics row, grouped by section."""
    for key, value in row.items():
        if key == "round":
            continue
        if key == "per-class-accuracy":
            for i, acc in enumerate(value):
                name = class_names[i] if class_names else str(i)
                yield f"per-class-accuracy/{name}", float(acc)
        elif isinstance(value, dict):
            for sub, v in value.items():
                if isinstance(v, int | float) and not isinstance(v, bool):
                    yield f"{key}/{sub}", float(v)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            group = (
                "test" if key in (keys.CENTRAL_ACCURACY, keys.CENTRAL_LOSS) else "time"
            )
            yield f"{group}/{key}", float(value)


class TensorBoardSink:
    """A ``SummaryWriter`` in ``log_dir``; ``first_step`` > 0 when resuming.

    On resume, events an interrupted run logged at or after ``first_step``
    are purged (TensorBoard's ``purge_step``), so no round appears twice.
    """

    def __init__(
        self, log_dir: Path, first_step: int = 0, class_names: list[str] | None = None
    ) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise RuntimeError(
                f"tensorboard = true needs the tensorboard package: {INSTALL_HINT}"
            ) from None
        self.log_dir = Path(log_dir)
        self.class_names = class_names
        self.writer = SummaryWriter(
            str(self.log_dir), purge_step=first_step if first_step > 0 else None
        )

    def write(self, row: dict[str, Any]) -> None:
        step = int(row["round"])
        for tag, value in scalars(row, self.class_names):
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
