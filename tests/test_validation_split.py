"""The per-client validation split carved for tuning (never the test set)."""

import numpy as np
import pytest

from common.config import RunConfig
from common.federation import client_indices, client_tensors, data_split

SMALL = {"num-clients": 20, "partitioner": "iid", "max-samples-per-client": 200}


def test_zero_fraction_trains_and_validates_on_the_whole_partition(defaults):
    cfg = RunConfig.from_run_config({**defaults, **SMALL})
    full = data_split(cfg).clients[3]
    np.testing.assert_array_equal(client_indices(cfg, 3, "train"), full)
    np.testing.assert_array_equal(client_indices(cfg, 3, "validation"), full)


def test_validation_part_is_held_out_of_training(defaults):
    cfg = RunConfig.from_run_config({**defaults, **SMALL, "validation-fraction": 0.25})
    full = data_split(cfg).clients[3]
    train = client_indices(cfg, 3, "train")
    val = client_indices(cfg, 3, "validation")
    assert len(val) == 50 and len(train) == 150
    assert not np.intersect1d(train, val).size
    np.testing.assert_array_equal(np.union1d(train, val), np.sort(full))
    # seeded: the same config gives the same split
    np.testing.assert_array_equal(client_indices(cfg, 3, "validation"), val)
    images, labels = client_tensors(cfg, 3, "validation")
    assert len(images) == len(labels) == 50


def test_bad_part_name_fails(defaults):
    cfg = RunConfig.from_run_config({**defaults, **SMALL})
    with pytest.raises(ValueError, match="'train' or 'validation'"):
        client_indices(cfg, 0, "test")
