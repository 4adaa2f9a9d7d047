"""Paired gains, their interval and the detectable effect, against hand values."""

import math

import pytest

from benchmarks.stats import (
    minimum_detectable_effect,
    paired_gain,
    seeds_for_mde,
    t_cdf,
    t_quantile,
)


@pytest.mark.parametrize(
    ("p", "df", "table"),
    [
        (0.975, 1, 12.7062),
        (0.975, 4, 2.7764),
        (0.975, 9, 2.2622),
        (0.975, 30, 2.0423),
        (0.95, 9, 1.8331),
        (0.80, 4, 0.9410),
        (0.80, 9, 0.8834),
    ],
)
def test_t_quantiles_match_the_tables(p, df, table):
    assert t_quantile(p, df) == pytest.approx(table, abs=1e-4)
    assert t_cdf(t_quantile(p, df), df) == pytest.approx(p, abs=1e-9)
    assert t_quantile(1 - p, df) == pytest.approx(-table, abs=1e-4)


def test_paired_gain_of_a_known_table():
    # Seeds 0..4: the method's accuracy and the reference's; differences
    # 2, 4, 3, 5, 1 (mean 3, sample std sqrt(2.5)).
    method = {0: 72.0, 1: 74.0, 2: 73.0, 3: 75.0, 4: 71.0}
    fedavg = {0: 70.0, 1: 70.0, 2: 70.0, 3: 70.0, 4: 70.0}
    gain = paired_gain(method, fedavg)
    s = math.sqrt(2.5)
    half = 2.7764451 * s / math.sqrt(5)
    assert gain.n == 5 and gain.mean == pytest.approx(3.0)
    assert gain.std == pytest.approx(s)
    assert (gain.low, gain.high) == pytest.approx((3 - half, 3 + half))
    assert gain.mde == pytest.approx((2.7764451 + 0.9409646) * s / math.sqrt(5))
    assert gain.resolved and gain.verdict == "better"


def test_an_interval_that_holds_zero_is_not_resolved():
    gain = paired_gain({0: 1.0, 1: -1.0, 2: 0.5}, {0: 0.0, 1: 0.0, 2: 0.0})
    assert gain.low < 0 < gain.high
    assert not gain.resolved and gain.verdict == "not resolved"
    worse = paired_gain({0: -3.0, 1: -2.0, 2: -2.5}, {0: 0.0, 1: 0.0, 2: 0.0})
    assert worse.verdict == "worse"


def test_one_seed_has_no_interval_and_unpaired_seeds_are_refused():
    single = paired_gain({0: 2.0}, {0: 1.0})
    assert single.mean == 1.0 and single.low is None and not single.resolved
    with pytest.raises(ValueError, match=r"seeds \[3\] have no reference"):
        paired_gain({0: 1.0, 3: 1.0}, {0: 0.0})


def test_mde_shrinks_with_seeds_and_the_seed_count_for_a_target():
    # MDE = (t(.975, n-1) + t(.80, n-1)) s / sqrt(n): s = 2, n = 5 -> 3.7174 * 2 / sqrt 5
    assert minimum_detectable_effect(2.0, 5) == pytest.approx(3.3250, abs=1e-3)
    assert minimum_detectable_effect(2.0, 10) < minimum_detectable_effect(2.0, 5)
    n = seeds_for_mde(2.0, 3.0)
    assert (
        minimum_detectable_effect(2.0, n) <= 3.0 < minimum_detectable_effect(2.0, n - 1)
    )
    with pytest.raises(ValueError, match="at least 2 seeds"):
        minimum_detectable_effect(1.0, 1)
