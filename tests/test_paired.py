"""Paired-seed statistics (conprediff.evaluation.paired) against scipy and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from conprediff.evaluation import PairedResult, finite_summary, paired_difference, t_interval

values = st.lists(
    st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False), min_size=2, max_size=12
).filter(lambda v: np.std(v) > 1e-6)


@settings(max_examples=60, deadline=None)
@given(values, st.sampled_from([0.5, 0.9, 0.95, 0.99]))
def test_t_interval_matches_scipy(x, confidence):
    mean, low, high = t_interval(x, confidence)
    ref_low, ref_high = stats.t.interval(
        confidence, len(x) - 1, loc=np.mean(x), scale=stats.sem(x)
    )
    assert mean == pytest.approx(np.mean(x), rel=1e-12, abs=1e-12)
    assert low == pytest.approx(ref_low, rel=1e-9, abs=1e-9)
    assert high == pytest.approx(ref_high, rel=1e-9, abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 10), st.integers(0, 2**32 - 1), st.sampled_from([0.8, 0.95]))
def test_paired_interval_is_the_paired_t_tests(n, seed, confidence):
    rng = np.random.default_rng(seed)
    b = rng.normal(50.0, 10.0, n)
    a = b + rng.normal(-1.0, 2.0, n)
    r = paired_difference(a, b, confidence=confidence)
    ci = stats.ttest_rel(a, b).confidence_interval(confidence)
    assert (r.low, r.high) == (pytest.approx(ci.low, rel=1e-9), pytest.approx(ci.high, rel=1e-9))
    assert r.mean == pytest.approx(np.mean(a - b), rel=1e-12)
    assert r.sd == pytest.approx(np.std(a - b, ddof=1), rel=1e-12)


def test_hand_computed_case():
    # FID per seed of a and b: differences -1, -0.5, -1
    r = paired_difference([10.0, 12.0, 9.0], [11.0, 12.5, 10.0])
    assert isinstance(r, PairedResult)
    np.testing.assert_array_equal(r.differences, [-1.0, -0.5, -1.0])
    assert r.mean == pytest.approx(-5 / 6)
    # deviations -1/6, +1/3, -1/6: s^2 = (2 / 36 + 1 / 9) / 2 = 1 / 12
    assert r.sd == pytest.approx(math.sqrt(1 / 12))
    half = 4.302652729911275 * math.sqrt(1 / 12) / math.sqrt(3)  # t(0.975, 2) s / sqrt(n)
    assert (r.low, r.high) == (pytest.approx(-5 / 6 - half), pytest.approx(-5 / 6 + half))
    assert r.n == 3 and r.n_favour == 3
    assert r.ratio_of_means == pytest.approx(31 / 33.5)
    assert r.mean_ratio == pytest.approx((10 / 11 + 12 / 12.5 + 9 / 10) / 3)
    assert r.confidence == 0.95 and r.better == "lower"
    assert "3 of 3 pairs" in str(r)


def test_missing_values_leave_their_pair_out():
    a = [1.0, None, 3.0, math.nan, 5.0, 7.0]
    b = [2.0, 1.0, None, 4.0, 4.0, math.inf]
    r = paired_difference(a, b)
    np.testing.assert_array_equal(r.used, [True, False, False, False, True, False])
    np.testing.assert_array_equal(r.differences, [-1.0, 1.0])
    assert r.n == 2 and r.n_favour == 1 and r.mean == 0.0
    # one pair: a mean, no interval; none: nothing
    one = paired_difference([1.0, None], [3.0, 1.0])
    assert one.mean == -2.0 and math.isnan(one.low) and math.isnan(one.high) and one.n == 1
    none = paired_difference([None], [1.0])
    assert none.n == 0 and none.n_favour == 0 and none.differences.shape == (0,)
    assert all(math.isnan(v) for v in (none.mean, none.low, none.sd, none.ratio_of_means,
                                        none.mean_ratio))


def test_favour_direction_ties_and_ratios():
    a, b = [0.5, 0.7, 0.6, 0.2], [0.4, 0.7, 0.5, 0.3]
    assert paired_difference(a, b).n_favour == 1  # lower is better: only 0.2 < 0.3
    assert paired_difference(a, b, better="higher").n_favour == 2  # the tie counts for neither
    zero = paired_difference([1.0, 2.0], [0.0, 2.0])
    assert math.isnan(zero.mean_ratio) and zero.ratio_of_means == pytest.approx(1.5)
    assert math.isnan(paired_difference([1.0, 2.0], [-1.0, 1.0]).ratio_of_means)


def test_inputs_of_other_kinds():
    a, b = np.array([3.0, 4.0, 8.0]), torch.tensor([1.0, 2.0, 3.0])
    r = paired_difference(a, b)
    np.testing.assert_array_equal(r.differences, [2.0, 2.0, 5.0])
    assert paired_difference(tuple(a), b.numpy()).mean == r.mean
    assert t_interval(np.array([1.0, 2.0, 3.0, math.nan]))[0] == 2.0


def test_validation():
    with pytest.raises(ValueError, match="pair up"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="one-dimensional"):
        paired_difference([[1.0]], [[1.0]])
    with pytest.raises(TypeError, match="a must be a sequence of numbers"):
        paired_difference(["x"], [1.0])
    with pytest.raises(ValueError, match="confidence"):
        paired_difference([1.0], [1.0], confidence=1.0)
    with pytest.raises(TypeError, match="confidence"):
        t_interval([1.0, 2.0], confidence="0.9")
    with pytest.raises(ValueError, match="better"):
        paired_difference([1.0], [1.0], better="smaller")


def test_finite_summary_ignores_missing_values():
    assert finite_summary([1.0, math.nan, 3.0]) == (2.0, pytest.approx(math.sqrt(2)), 2)
    mean, sd, n = finite_summary([math.nan, None])
    assert math.isnan(mean) and math.isnan(sd) and n == 0
    mean, sd, n = finite_summary([4.0, math.inf])
    assert mean == 4.0 and math.isnan(sd) and n == 1
    mean, low, high = t_interval([])
    assert math.isnan(mean) and math.isnan(low) and math.isnan(high)
