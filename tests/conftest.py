"""Shared fixtures: Flower task identity, small real data, config helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deploy.local_sim import app_defaults

APP_DIR = Path(__file__).resolve().parents[1]


@pytest.fixture
def task_identity():
    """flwr 1.41 needs a task identity to build a Message outside a running app.

    The module is internal, so it is touched in this one place only.
    """
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    yield TaskIdentity
    TaskIdentity.run_id = TaskIdentity.task_id = TaskIdentity.node_id = None


@pytest.fixture
def train_reply(task_identity):
    """A function: a client's train reply carrying ``state`` and its sample count."""
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

    from common import keys

    def reply(state: dict, num_examples: int) -> Message:
        query = Message(content=RecordDict(), message_type="train", dst_node_id=1)
        return Message(
            content=RecordDict(
                {
                    keys.ARRAYS: ArrayRecord(state),
                    keys.METRICS: MetricRecord({keys.NUM_EXAMPLES: num_examples}),
                }
            ),
            reply_to=query,
        )

    return reply


@pytest.fixture(scope="session")
def defaults() -> dict:
    """``[tool.flwr.app.config]`` of pyproject.toml (what a run starts from)."""
    return app_defaults(APP_DIR)


@pytest.fixture(scope="session")
def paper_defaults(defaults) -> dict:
    """The defaults with both guided methods in their papers' forms (no
    zero-shot teacher), for tests of those forms' own plumbing."""
    from common.config import PAPER_FORMS

    return {**defaults, **PAPER_FORMS}


@pytest.fixture(scope="session")
def fmnist_labels() -> np.ndarray:
    """The real Fashion-MNIST training labels (60,000)."""
    from common.datasets import load_dataset

    train, _ = load_dataset("fashion-mnist")
    return train.labels.numpy()
