"""Partitioner properties on the real Fashion-MNIST labels and synthetic ones."""

import numpy as np
import pytest

from common.partition import (
    PARTITIONERS,
    DataSplit,
    Partitioning,
    carve_public_split,
    longtail_subsample,
    split_dataset,
)


def label_entropy(labels: np.ndarray, idx: np.ndarray, num_classes: int) -> float:
    """Shannon entropy (nats) of the label distribution of one partition."""
    p = np.bincount(labels[idx], minlength=num_classes) / len(idx)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def _all_indices(split):
    return np.concatenate([split.public, *split.clients])


@pytest.mark.parametrize("name", sorted(PARTITIONERS))
def test_no_sample_in_two_clients_or_public(name, fmnist_labels):
    split = split_dataset(
        fmnist_labels, Partitioning(name, 10, beta=0.3, public_size=5000)
    )
    idx = _all_indices(split)
    assert len(np.unique(idx)) == len(idx)
    assert len(split.public) == 5000
    assert not np.intersect1d(split.public, np.concatenate(split.clients)).size


@pytest.mark.parametrize("name", sorted(PARTITIONERS))
def test_same_seed_same_split_other_seed_other_split(name, fmnist_labels):
    p = Partitioning(name, 8, beta=0.3, seed=7)
    a, b = split_dataset(fmnist_labels, p), split_dataset(fmnist_labels, p)
    assert all(np.array_equal(x, y) for x, y in zip(a.clients, b.clients, strict=True))
    c = split_dataset(fmnist_labels, Partitioning(name, 8, beta=0.3, seed=8))
    assert not all(
        np.array_equal(x, y) for x, y in zip(a.clients, c.clients, strict=True)
    )


def test_lower_beta_gives_lower_label_entropy(fmnist_labels):
    def mean_entropy(beta):
        split = split_dataset(fmnist_labels, Partitioning("dirichlet", 10, beta=beta))
        return np.mean([label_entropy(fmnist_labels, c, 10) for c in split.clients])

    e = [mean_entropy(b) for b in (0.05, 0.1, 0.5, 5.0)]
    assert e[0] < e[1] < e[2] < e[3]
    iid = split_dataset(fmnist_labels, Partitioning("iid", 10))
    assert min(
        label_entropy(fmnist_labels, c, 10) for c in iid.clients
    ) > 0.99 * np.log(10)


def test_dirichlet_and_iid_use_every_pool_sample(fmnist_labels):
    for name in ("iid", "dirichlet"):
        split = split_dataset(
            fmnist_labels, Partitioning(name, 10, beta=0.5, public_size=1000)
        )
        assert len(_all_indices(split)) == len(fmnist_labels)


def test_extreme_split_has_promised_class_sets(fmnist_labels):
    split = split_dataset(fmnist_labels, Partitioning("extreme", 6))
    classes = [set(np.unique(fmnist_labels[c]).tolist()) for c in split.clients]
    for i in range(5):
        assert classes[i] == {i}, f"client {i} should hold only class {i}"
    assert classes[5] == set(range(10))
    # classes with no single-class client (5..9) live wholly on the last client
    last = np.bincount(fmnist_labels[split.clients[5]], minlength=10)
    assert last[9] == 6000 and last[0] == 6000 // 6


def test_extreme_split_with_more_clients_than_classes():
    labels = np.repeat(np.arange(3), 100)
    split = split_dataset(labels, Partitioning("extreme", 7))
    for i in range(6):
        assert set(labels[split.clients[i]]) == {i % 3}
    assert set(labels[split.clients[6]]) == {0, 1, 2}
    assert len(_all_indices(split)) == 300


def test_longtail_then_dirichlet(fmnist_labels):
    kept = longtail_subsample(fmnist_labels, rho=10.0, seed=0)
    counts = np.bincount(fmnist_labels[kept], minlength=10)
    assert counts[0] == 6000 and counts[9] == 600
    assert all(counts[i] >= counts[i + 1] for i in range(9))
    split = split_dataset(
        fmnist_labels, Partitioning("longtail-dirichlet", 10, beta=0.5, rho=10.0)
    )
    assert len(_all_indices(split)) == counts.sum()


def test_public_split_is_stratified(fmnist_labels):
    public = carve_public_split(fmnist_labels, 10_000)
    counts = np.bincount(fmnist_labels[public], minlength=10)
    assert counts.sum() == 10_000 and counts.min() == counts.max() == 1000


def test_per_client_cap(fmnist_labels):
    split = split_dataset(fmnist_labels, Partitioning("iid", 4, max_per_client=500))
    assert [len(c) for c in split.clients] == [500] * 4


def test_more_clients_than_samples_is_a_clear_error():
    with pytest.raises(ValueError, match="more than the 20 training samples"):
        split_dataset(np.repeat(np.arange(2), 10), Partitioning("iid", 21))


def test_impossible_dirichlet_is_a_clear_error():
    labels = np.repeat(np.arange(10), 10)
    with pytest.raises(ValueError, match="Raise dirichlet-beta"):
        split_dataset(labels, Partitioning("dirichlet", 10, beta=0.01, min_size=10))


def test_unknown_partitioner_lists_valid_ones():
    with pytest.raises(ValueError, match="dirichlet, extreme, iid, longtail-dirichlet"):
        split_dataset(np.arange(10) % 2, Partitioning("shards", 2))


def test_public_split_does_not_depend_on_the_run_seed(fmnist_labels):
    a = split_dataset(fmnist_labels, Partitioning("dirichlet", 5, public_size=2000, seed=1))
    b = split_dataset(fmnist_labels, Partitioning("dirichlet", 5, public_size=2000, seed=2))
    assert np.array_equal(a.public, b.public)
    assert np.array_equal(a.public, carve_public_split(fmnist_labels, 2000))


def test_a_public_slice_is_seeded_sorted_and_only_public():
    split = DataSplit(public=np.arange(100, 200), clients=[np.arange(100)])

    got = split.public_slice(30, seed=3, salt=11)

    assert len(got) == 30 and len(set(got.tolist())) == 30
    assert np.all(np.diff(got) > 0) and np.isin(got, split.public).all()
    assert np.array_equal(got, split.public_slice(30, seed=3, salt=11))
    assert not np.array_equal(got, split.public_slice(30, seed=3, salt=12))
    assert len(split.public_slice(500, seed=3, salt=11)) == 100  # capped
