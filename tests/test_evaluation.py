"""Tests for conprediff.evaluation: FID, precision/recall, KID and the feature networks."""

from __future__ import annotations

import json
import time
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from sklearn.exceptions import NotFittedError
from torch import nn

from conprediff.data import load_digits_images
from conprediff.evaluation import (
    FeatureExtractor,
    LeNetClassifier,
    class_balance_weights,
    class_balanced_frechet_distance,
    class_total_variation,
    default_digits_extractor,
    evaluate_samples,
    feature_statistics,
    frechet_distance,
    frechet_distance_from_features,
    kernel_inception_distance,
    knn_radii,
    manifold_coverage,
    polynomial_mmd2,
    precision_recall,
    train_classifier,
)


def _random_psd(rng: np.random.Generator, dim: int, rank: int | None = None) -> np.ndarray:
    a = rng.standard_normal((dim, rank or dim))
    return a @ a.T / dim


def _reference_frechet(mu1, sigma1, mu2, sigma2) -> float:
    """The usual pytorch-fid formula with scipy.linalg.sqrtm of the non-symmetric product."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


# --------------------------------------------------------------------------------------------
# Fréchet distance
# --------------------------------------------------------------------------------------------


def test_frechet_of_a_set_with_itself_is_zero():
    f = np.random.default_rng(0).standard_normal((500, 16))
    assert frechet_distance_from_features(f, f) == pytest.approx(0.0, abs=1e-9)
    mu, sigma = feature_statistics(f)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)


def test_frechet_diagonal_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    s1, s2 = rng.uniform(0.1, 3.0, 6), rng.uniform(0.1, 3.0, 6)  # standard deviations
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((s1 - s2) ** 2)
    got = frechet_distance(mu1, np.diag(s1**2), mu2, np.diag(s2**2))
    assert got == pytest.approx(expected, rel=1e-12)


def test_frechet_docstring_example():
    assert frechet_distance(np.zeros(2), np.eye(2), np.ones(2), 4 * np.eye(2)) == pytest.approx(4.0)


def test_frechet_full_covariance_matches_sqrtm():
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.standard_normal(5), rng.standard_normal(5)
    sigma1, sigma2 = _random_psd(rng, 5) + 0.1 * np.eye(5), _random_psd(rng, 5) + 0.1 * np.eye(5)
    # Closed form with symmetric square roots computed by scipy.linalg.sqrtm.
    r1 = np.real(scipy.linalg.sqrtm(sigma1))
    cross = np.real(scipy.linalg.sqrtm(r1 @ sigma2 @ r1))
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1 + sigma2 - 2 * cross)
    got = frechet_distance(mu1, sigma1, mu2, sigma2)
    assert got == pytest.approx(expected, rel=1e-9)
    assert got == pytest.approx(_reference_frechet(mu1, sigma1, mu2, sigma2), rel=1e-8)
    # A distance: symmetric in its two arguments.
    assert frechet_distance(mu2, sigma2, mu1, sigma1) == pytest.approx(got, rel=1e-9)


@settings(max_examples=25, deadline=None)
@given(
    dim=st.integers(1, 12),
    seed=st.integers(0, 2**32 - 1),
    shift=st.floats(0.0, 5.0),
)
def test_frechet_agrees_with_scipy_reference_on_random_psd(dim, seed, shift):
    rng = np.random.default_rng(seed)
    mu1 = rng.standard_normal(dim)
    mu2 = mu1 + shift * rng.standard_normal(dim)
    sigma1 = _random_psd(rng, dim) + 1e-3 * np.eye(dim)
    sigma2 = _random_psd(rng, dim) + 1e-3 * np.eye(dim)
    got = frechet_distance(mu1, sigma1, mu2, sigma2)
    expected = _reference_frechet(mu1, sigma1, mu2, sigma2)
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-8)


def test_frechet_stable_for_singular_covariances():
    # Features confined to a 3-dim subspace of R^40, fewer samples than dimensions: both
    # covariances are singular. An isometric embedding must not change the distance.
    rng = np.random.default_rng(3)
    low1 = rng.standard_normal((30, 3))
    low2 = rng.standard_normal((25, 3)) * [1.0, 2.0, 0.5] + 0.3
    basis, _ = np.linalg.qr(rng.standard_normal((40, 3)))  # orthonormal columns
    high1, high2 = low1 @ basis.T, low2 @ basis.T
    expected = frechet_distance_from_features(low1, low2)
    got = frechet_distance_from_features(high1, high2)
    assert np.isfinite(got)
    assert got == pytest.approx(expected, rel=1e-7)
    assert frechet_distance_from_features(high1, high1) == pytest.approx(0.0, abs=1e-9)
    # Dead (always-zero) feature columns, as after a ReLU.
    dead = np.zeros((30, 5))
    assert frechet_distance_from_features(
        np.hstack([low1, dead]), np.hstack([low1, dead])
    ) == pytest.approx(0.0, abs=1e-9)


def test_feature_statistics_matches_numpy():
    f = np.random.default_rng(4).standard_normal((50, 4))
    mu, sigma = feature_statistics(torch.from_numpy(f))
    np.testing.assert_allclose(mu, f.mean(0))
    np.testing.assert_allclose(sigma, np.cov(f, rowvar=False))


def test_weighted_feature_statistics_equal_repeating_samples():
    # Integer weights are repetitions: the weighted mean is the mean of the repeated set, and the
    # reliability-weighted covariance is that set's covariance rescaled from 1/(N-1) to the
    # weights' normalisation 1/(1 - sum w^2).
    rng = np.random.default_rng(5)
    f = rng.standard_normal((7, 3))
    counts = np.array([1, 3, 2, 1, 4, 1, 2])
    rep = np.repeat(f, counts, axis=0)
    mu, sigma = feature_statistics(f, weights=counts)
    np.testing.assert_allclose(mu, rep.mean(0), rtol=1e-12)
    w = counts / counts.sum()
    scatter = (rep - rep.mean(0)).T @ (rep - rep.mean(0)) / len(rep)
    np.testing.assert_allclose(sigma, scatter / (1 - w @ w), rtol=1e-12)
    # uniform weights give the unweighted (1/(N-1)) estimate exactly
    mu1, sigma1 = feature_statistics(f, weights=np.full(7, 0.3))
    np.testing.assert_allclose(sigma1, np.cov(f, rowvar=False), rtol=1e-12)
    np.testing.assert_allclose(mu1, f.mean(0), rtol=1e-12)


def test_class_balance_weights_give_the_target_proportions():
    labels = np.array([0, 0, 0, 1, 2, 2])
    target = np.array([0, 1, 1, 2, 3, 3, 3])  # class 3 absent from labels: dropped
    w = class_balance_weights(labels, target)
    assert w.sum() == pytest.approx(1.0)
    per_class = np.bincount(labels, weights=w, minlength=4)
    np.testing.assert_allclose(per_class, [0.25, 0.5, 0.25, 0.0])
    assert np.allclose(w[:3], w[0])  # equal within a class
    np.testing.assert_allclose(class_balance_weights([0, 1, 2], [0, 1]), [0.5, 0.5, 0.0])
    with pytest.raises(ValueError, match="nothing to balance"):
        class_balance_weights([0, 0], [1, 1])
    with pytest.raises(ValueError, match="integer class"):
        class_balance_weights([0.5, 1.0], [0, 1])


def test_class_total_variation():
    assert class_total_variation([0, 1, 2, 3], [3, 2, 1, 0]) == 0.0
    assert class_total_variation([0, 0], [1, 1]) == 1.0
    # 10 % of the mass moved from class 0 to class 1
    assert class_total_variation([0] * 5 + [1] * 5, [0] * 4 + [1] * 6) == pytest.approx(0.1)


def test_class_balanced_fid_removes_class_proportions_only():
    # Two classes far apart: a set with the real proportions and the same set with one class
    # duplicated have very different FIDs but the same class-balanced FID.
    rng = np.random.default_rng(6)
    real = np.vstack([rng.normal(0, 1, (400, 3)), rng.normal(8, 1, (400, 3))])
    real_y = np.repeat([0, 1], 400)
    fake = np.vstack([rng.normal(0, 1, (300, 3)), rng.normal(8, 1, (300, 3))])
    fake_y = np.repeat([0, 1], 300)
    skewed = np.vstack([fake, fake[:300], fake[:300]])  # class 0 three times over: 75 %
    skewed_y = np.concatenate([fake_y, fake_y[:300], fake_y[:300]])
    balanced = class_balanced_frechet_distance(real, real_y, fake, fake_y)
    # already balanced: identical to the plain FID
    assert balanced == pytest.approx(frechet_distance_from_features(real, fake), rel=1e-9)
    assert frechet_distance_from_features(real, skewed) > 20 * frechet_distance_from_features(
        real, fake
    )
    # repetitions change only the covariance normalisation (N - 1 against 1 - sum w^2)
    assert class_balanced_frechet_distance(real, real_y, skewed, skewed_y) == pytest.approx(
        balanced, rel=0.05, abs=0.01
    )
    # but a real difference within a class still counts
    shifted = fake + np.where(fake_y[:, None] == 1, 1.0, 0.0)
    assert class_balanced_frechet_distance(real, real_y, shifted, fake_y) > balanced + 1.0
    with pytest.raises(ValueError, match="fake_labels"):
        class_balanced_frechet_distance(real, real_y, fake, fake_y[:10])


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (np.ones(4), "shape"),
        (np.array([1.0, -1.0, 1.0, 1.0, 1.0]), "non-negative"),
        (np.array([1.0, np.nan, 1.0, 1.0, 1.0]), "finite"),
        (np.array([0.0, 0.0, 0.0, 0.0, 2.0]), "two positive"),
    ],
)
def test_feature_statistics_rejects_bad_weights(weights, message):
    with pytest.raises(ValueError, match=message):
        feature_statistics(np.random.default_rng(0).standard_normal((5, 2)), weights=weights)


def test_feature_statistics_weights_are_scale_free_and_accept_tensors():
    f = np.random.default_rng(1).standard_normal((6, 2))
    w = np.array([1.0, 2.0, 3.0, 1.0, 1.0, 2.0])
    mu, sigma = feature_statistics(f, weights=w)
    for scaled in (w * 1e-300, w * 5e307, torch.tensor(w, requires_grad=True)):
        mu2, sigma2 = feature_statistics(f, weights=scaled)
        np.testing.assert_allclose(mu2, mu, rtol=1e-12)
        np.testing.assert_allclose(sigma2, sigma, rtol=1e-12)


def test_class_labels_validation():
    # float labels holding integers are accepted; anything else is not
    np.testing.assert_allclose(
        class_balance_weights(np.array([0.0, 1.0]), [0, 1]), class_balance_weights([0, 1], [0, 1])
    )
    for bad, message in (
        (np.array([True, False]), "dtype"),
        (np.array(["0", "1"]), "dtype"),
        (np.array([0.0, np.inf]), "integer class"),
        (np.array([-1, 0]), "non-negative"),
        (np.array([0.0, 1e300]), "too large"),
    ):
        with pytest.raises(ValueError, match=message):
            class_total_variation(bad, [0, 1])
    # huge class indices are counted without a table of max + 1 entries (no MemoryError)
    big = [0, 10**15, 10**15]
    assert class_total_variation(big, [10**15, 0, 0]) == pytest.approx(1 / 3)
    np.testing.assert_allclose(class_balance_weights(big, [0, 10**15]), [0.5, 0.25, 0.25])
    # the largest int64 index is accepted, past it (uint64) is refused rather than wrapped
    assert class_total_variation(np.array([0, 2**63 - 1]), [0, 2**63 - 1]) == 0.0
    with pytest.raises(ValueError, match="too large"):
        class_total_variation(np.array([0, 2**63], np.uint64), [0, 1])
    # n_classes bounds the indices (classes occurring in neither set change nothing)
    assert class_total_variation([0, 1], [0, 1], n_classes=5) == 0.0
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        class_total_variation([0, 2], [0, 1], n_classes=2)
    with pytest.raises(ValueError, match="n_classes"):
        class_total_variation([0, 1], [0, 1], n_classes=0)
    for bad_n in (True, 2.0):
        with pytest.raises(TypeError, match="n_classes"):
            class_total_variation([0, 1], [0, 1], n_classes=bad_n)


def test_class_present_on_one_side_only():
    # a class missing from the generated set: the TV counts at least its share; the balanced
    # FID weights the remaining classes to their real proportions among themselves
    assert class_total_variation([0, 0, 1, 1], [0, 1, 2, 2]) == pytest.approx(0.5)
    rng = np.random.default_rng(7)
    real = rng.standard_normal((90, 2)) + np.repeat([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]], 30, 0)
    real_y = np.repeat([0, 1, 2], 30)
    # class 2 never generated, classes 0 and 1 generated 5:2 (the real set has them 1:1)
    fake = np.vstack([real[:30], real[10:30], real[30:50]])
    fake_y = np.concatenate([np.zeros(50, int), np.ones(20, int)])
    # by hand: each class gets half the weight (their real proportions among themselves),
    # shared equally by its samples; the missing class stays missing
    w = np.where(fake_y == 0, 0.5 / 50, 0.5 / 20)
    expected = frechet_distance(
        *feature_statistics(real), *feature_statistics(fake, weights=w)
    )
    assert expected > 5.0
    assert class_balanced_frechet_distance(real, real_y, fake, fake_y) == pytest.approx(
        expected, rel=1e-9
    )
    assert class_balanced_frechet_distance(real, real_y, fake, fake_y) != pytest.approx(
        frechet_distance_from_features(real, fake), rel=1e-3
    )
    # a generated class unknown to the real set gets weight 0
    extra = np.vstack([fake, rng.standard_normal((5, 2)) + 50.0])
    extra_y = np.concatenate([fake_y, np.full(5, 3)])
    assert class_balanced_frechet_distance(real, real_y, extra, extra_y) == pytest.approx(
        class_balanced_frechet_distance(real, real_y, fake, fake_y), rel=1e-9
    )
    with pytest.raises(ValueError, match="fewer than two generated samples"):
        class_balanced_frechet_distance(real, real_y, extra[-6:], extra_y[-6:])


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4)), "mu1 and mu2"),
        (lambda: frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3)), "sigma1"),
        (lambda: frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), -np.eye(2)), "sigma2"),
        (
            lambda: frechet_distance(np.zeros(2), [[1.0, 0.5], [0.0, 1.0]], np.zeros(2), np.eye(2)),
            "sigma1",
        ),
        (lambda: frechet_distance(np.zeros((2, 1)), np.eye(2), np.zeros(2), np.eye(2)), "mu1"),
        (lambda: frechet_distance_from_features(np.ones((5, 3)), np.ones((5, 4))), "features1"),
        (lambda: frechet_distance_from_features(np.ones((1, 3)), np.ones((5, 3))), "features1"),
        (lambda: frechet_distance_from_features(np.ones((5, 3)), np.ones(5)), "features2"),
        (lambda: feature_statistics(np.ones((1, 3))), "features"),
        (lambda: feature_statistics(np.full((3, 2), np.nan)), "features"),
    ],
)
def test_frechet_validation_names_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()


# --------------------------------------------------------------------------------------------
# Precision and recall
# --------------------------------------------------------------------------------------------


def test_precision_recall_identical_sets_are_one():
    f = np.random.default_rng(5).standard_normal((300, 8))
    assert precision_recall(f, f.copy(), k=3) == (1.0, 1.0)


def test_precision_recall_disjoint_far_sets_are_zero():
    rng = np.random.default_rng(6)
    real = rng.standard_normal((200, 8))
    fake = rng.standard_normal((150, 8)) + 100.0
    assert precision_recall(real, fake, k=3) == (0.0, 0.0)


def test_precision_recall_hand_computed_case():
    # Real points 0..4 on a line: with k = 1 every radius is 1. Fake {0.5, 10}: the first lies in
    # the real manifold, the second not -> precision 1/2. Fake radii (k = 1) are both 9.5, so
    # every real point lies within 9.5 of 0.5 -> recall 1.
    real = np.arange(5.0)[:, None]
    fake = np.array([[0.5], [10.0]])
    np.testing.assert_allclose(knn_radii(real, k=1), np.ones(5))
    assert precision_recall(real, fake, k=1) == (0.5, 1.0)
    assert manifold_coverage(real, fake, k=1) == 0.5


def test_precision_recall_chunking_does_not_change_the_result():
    rng = np.random.default_rng(7)
    real = rng.standard_normal((120, 5))
    fake = rng.standard_normal((90, 5)) * 1.3 + 0.4
    full = precision_recall(real, fake, k=3)
    assert 0.0 < full[0] < 1.0 and 0.0 < full[1] < 1.0
    assert precision_recall(real, fake, k=3, chunk_size=7) == full
    np.testing.assert_allclose(knn_radii(real, 3, chunk_size=11), knn_radii(real, 3), rtol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"real_features": np.ones((5, 3)), "fake_features": np.ones((5, 2))}, "real_features"),
        ({"real_features": np.ones((3, 2)), "fake_features": np.ones((9, 2))}, "real_features"),
        ({"real_features": np.ones((9, 2)), "fake_features": np.ones((3, 2))}, "fake_features"),
        ({"real_features": np.ones((9, 2)), "fake_features": np.ones((9, 2)), "k": 0}, "k"),
        ({"real_features": np.ones(9), "fake_features": np.ones((9, 1))}, "real_features"),
    ],
)
def test_precision_recall_validation_names_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        precision_recall(**kwargs)


# --------------------------------------------------------------------------------------------
# KID
# --------------------------------------------------------------------------------------------


def test_polynomial_mmd2_matches_a_brute_force_loop():
    rng = np.random.default_rng(8)
    x, y = rng.standard_normal((7, 3)), rng.standard_normal((5, 3)) + 0.5

    def k(a, b):
        return (a @ b / 3 + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    yy = sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    xy = sum(k(x[i], y[j]) for i in range(7) for j in range(5)) / (7 * 5)
    assert polynomial_mmd2(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def test_kid_of_a_set_with_itself_is_near_zero_and_grows_with_a_shift():
    rng = np.random.default_rng(9)
    real = rng.standard_normal((1000, 16))
    other = rng.standard_normal((1000, 16))
    same_mean, same_std = kernel_inception_distance(real, real, n_subsets=20, subset_size=200)
    indep_mean, _ = kernel_inception_distance(real, other, n_subsets=20, subset_size=200)
    shifted_mean, _ = kernel_inception_distance(real, other + 0.5, n_subsets=20, subset_size=200)
    assert abs(same_mean) < 0.05 and abs(indep_mean) < 0.05
    assert shifted_mean > 0.5
    assert shifted_mean > 10 * abs(indep_mean)
    assert same_std >= 0.0


def test_kid_is_seedable():
    rng = np.random.default_rng(10)
    a, b = rng.standard_normal((300, 4)), rng.standard_normal((200, 4)) + 0.2
    r1 = kernel_inception_distance(a, b, n_subsets=5, subset_size=50, seed=3)
    r2 = kernel_inception_distance(a, b, n_subsets=5, subset_size=50, seed=3)
    r3 = kernel_inception_distance(a, b, n_subsets=5, subset_size=50, seed=4)
    assert r1 == r2 and r1 != r3


def test_standardized_kid_ignores_the_scale_and_offset_of_each_feature():
    rng = np.random.default_rng(11)
    real = rng.standard_normal((400, 6))
    fake = rng.standard_normal((300, 6)) * 1.3 + 0.4
    scale = np.array([1.0, 50.0, 0.01, 3.0, 1e3, 7.0])
    offset = np.array([0.0, -20.0, 5.0, 1.0, 300.0, -2.0])
    kw = {"n_subsets": 10, "subset_size": 100, "seed": 2, "standardize": True}
    plain = kernel_inception_distance(real, fake, **kw)
    rescaled = kernel_inception_distance(real * scale + offset, fake * scale + offset, **kw)
    assert rescaled == pytest.approx(plain, rel=1e-9)
    # without standardisation the large-scale dimensions dominate, and the estimate changes
    raw = kernel_inception_distance(real * scale + offset, fake * scale + offset,
                                    n_subsets=10, subset_size=100, seed=2)
    assert raw[0] != pytest.approx(plain[0], rel=0.5)


def test_standardized_kid_is_the_plain_kid_of_standardized_features():
    rng = np.random.default_rng(12)
    real = rng.standard_normal((200, 3)) * [1.0, 4.0, 0.5] + [0.0, 2.0, -1.0]
    real[:, 2] = 3.0  # a constant dimension is only centred
    fake = rng.standard_normal((150, 3))
    mean, std = real.mean(0), real.std(0)
    std[2] = 1.0
    expected = kernel_inception_distance((real - mean) / std, (fake - mean) / std,
                                         n_subsets=4, subset_size=50, seed=1)
    got = kernel_inception_distance(real, fake, n_subsets=4, subset_size=50, seed=1,
                                    standardize=True)
    assert got == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"fake_features": np.ones((5, 2))}, "real_features and fake_features"),
        ({"n_subsets": 0}, "n_subsets"),
        ({"subset_size": 1}, "subset_size"),
        ({"real_features": np.ones((1, 3))}, "real_features"),
    ],
)
def test_kid_validation_names_the_argument(kwargs, name):
    args = {"real_features": np.ones((5, 3)), "fake_features": np.ones((5, 3))} | kwargs
    with pytest.raises(ValueError, match=name):
        kernel_inception_distance(**args)


# --------------------------------------------------------------------------------------------
# Feature networks
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits16():
    return load_digits_images(16)


@pytest.fixture(scope="module")
def digits_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("conprediff-cache")


@pytest.fixture(scope="module")
def digits8():
    return load_digits_images(8)


@pytest.fixture(scope="module")
def trained_digits(digits_cache):
    # One intra-op thread: on shared, busy cores a tiny network trains faster without thread
    # oversubscription.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        started = time.perf_counter()
        extractor = default_digits_extractor(8, cache_dir=digits_cache)
        seconds = time.perf_counter() - started
    finally:
        torch.set_num_threads(threads)
    return extractor, seconds


def test_load_digits_images_range_and_shape(digits16):
    x8, y8 = load_digits_images(8)
    x16, y16 = digits16
    assert x8.shape == (1797, 1, 8, 8) and x16.shape == (1797, 1, 16, 16)
    assert x8.min() == -1.0 and x8.max() == 1.0
    assert x16.min() >= -1.0 and x16.max() <= 1.0
    assert torch.equal(y8, y16) and set(y8.tolist()) == set(range(10))


def test_lenet_shapes_for_several_sizes():
    model = LeNetClassifier(in_channels=3, n_classes=4, feature_dim=20)
    for size in (8, 13, 32):
        x = torch.rand(2, 3, size, size) * 2 - 1
        assert model.features(x).shape == (2, 20)
        assert model(x).shape == (2, 4)
    with pytest.raises(ValueError, match="x must"):
        model(torch.zeros(2, 3, 7, 7))
    with pytest.raises(ValueError, match="width"):
        LeNetClassifier(width=0)


def test_digits_classifier_reaches_97_percent(trained_digits):
    extractor, seconds = trained_digits
    assert not extractor.loaded_from_cache_
    assert extractor.test_accuracy_ >= 0.97, extractor.test_accuracy_
    print(f"digits 8x8 classifier: accuracy {extractor.test_accuracy_:.4f} in {seconds:.1f} s")


def test_cache_round_trip_loads_instead_of_retraining(trained_digits, digits_cache, digits8):
    first, _ = trained_digits
    images = digits8[0][:64]
    started = time.perf_counter()
    second = default_digits_extractor(8, cache_dir=digits_cache)
    assert time.perf_counter() - started < 5.0
    assert second.loaded_from_cache_
    assert second.cache_path_ == first.cache_path_
    assert second.test_accuracy_ == first.test_accuracy_
    f1, f2 = first.extract(images), second.extract(images)
    assert f1.shape == (64, 128) and f1.dtype == np.float64
    np.testing.assert_array_equal(f1, f2)
    meta = json.loads(first.cache_path_.with_suffix(".json").read_text())
    assert meta["fingerprint"] == first.fingerprint_
    assert meta["test_accuracy"] == first.test_accuracy_
    assert {p.suffix for p in digits_cache.iterdir()} == {".safetensors", ".json"}


def test_cache_dir_from_environment_and_different_data_retrains(tmp_path, monkeypatch, digits8):
    monkeypatch.setenv("CONPREDIFF_CACHE", str(tmp_path))
    x, y = digits8[0][:200], digits8[1][:200]
    a = FeatureExtractor(epochs=1).fit(x, y)
    assert a.cache_path_.parent == tmp_path and a.cache_path_.is_file()
    assert not a.loaded_from_cache_
    assert FeatureExtractor(epochs=1).fit(x, y).loaded_from_cache_
    # Other data (or other training arguments) -> another fingerprint -> trained anew.
    b = FeatureExtractor(epochs=1).fit(x[:150], y[:150])
    assert not b.loaded_from_cache_ and b.fingerprint_ != a.fingerprint_
    c = FeatureExtractor(epochs=2).fit(x, y)
    assert not c.loaded_from_cache_
    # A corrupt cache file is ignored with a warning and retrained.
    a.cache_path_.write_bytes(b"not a safetensors file")
    with pytest.warns(RuntimeWarning, match="unreadable"):
        d = FeatureExtractor(epochs=1).fit(x, y)
    assert not d.loaded_from_cache_
    assert FeatureExtractor(epochs=1).fit(x, y).loaded_from_cache_
    assert FeatureExtractor(epochs=1).get_params()["epochs"] == 1


def test_extractor_with_user_module_and_weights_file(tmp_path):
    torch.manual_seed(0)
    net = LeNetClassifier(feature_dim=12)
    images = torch.rand(10, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        expected = net.features(images).double().numpy()
    # float32 convolutions may differ in the last bits between batch sizes.
    got = FeatureExtractor(net).extract(images, batch_size=3)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    # Weights file plus architecture.
    path = tmp_path / "net.safetensors"
    save_file(net.state_dict(), str(path))
    from_file = FeatureExtractor(weights=path, architecture=lambda: LeNetClassifier(feature_dim=12))
    np.testing.assert_allclose(from_file.extract(images.numpy()), expected, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="do not fit architecture"):
        FeatureExtractor(weights=path, architecture=LeNetClassifier(feature_dim=13)).fit()
    # A plain callable returning (N, D, 1, 1) is flattened.
    pooled = FeatureExtractor(lambda x: x.mean(dim=(2, 3), keepdim=True).repeat(1, 4, 1, 1))
    assert pooled.extract(images).shape == (10, 4)
    # classify: the argmax of a classifier's logits; a plain feature callable has none.
    np.testing.assert_array_equal(
        FeatureExtractor(net).classify(images, batch_size=4), net.eval()(images).argmax(1).numpy()
    )
    with pytest.raises(ValueError, match="needs a classifier"):
        pooled.classify(images)

    # a network with features() whose forward does not return (batch, n_classes) logits
    class SpatialHead(nn.Module):
        def features(self, x):
            return x.flatten(1)

        def forward(self, x):
            return x  # (N, 1, 8, 8): not logits

    with pytest.raises(ValueError, match=r"logits of shape \(batch, n_classes\).*\(4, 1, 8, 8\)"):
        FeatureExtractor(SpatialHead()).classify(images, batch_size=4)
    # The module's training mode is restored.
    net.train()
    FeatureExtractor(net).extract(images)
    assert net.training


def test_extractor_validation(tmp_path):
    with pytest.raises(NotFittedError):
        FeatureExtractor(cache_dir=tmp_path).extract(np.zeros((2, 1, 8, 8)))
    with pytest.raises(ValueError, match="images and labels"):
        FeatureExtractor(cache_dir=tmp_path).fit()
    with pytest.raises(ValueError, match="architecture"):
        FeatureExtractor(weights=tmp_path / "w.safetensors").fit()
    with pytest.raises(ValueError, match="weights file not found"):
        FeatureExtractor(weights=tmp_path / "w.safetensors", architecture=LeNetClassifier()).fit()
    with pytest.raises(ValueError, match="images"):
        FeatureExtractor(nn.Identity()).extract(np.zeros((2, 8)))
    with pytest.raises(ValueError, match="labels"):
        FeatureExtractor(cache_dir=tmp_path).fit(np.zeros((4, 8, 8)), np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match="labels"):
        train_classifier(np.zeros((4, 8, 8)), [0.5, 1, 0, 1], epochs=1, verbose=0)
    with pytest.raises(ValueError, match="test_fraction"):
        train_classifier(np.zeros((4, 8, 8)), [0, 1, 0, 1], epochs=1, test_fraction=1.0)
    with pytest.raises(ValueError, match="images"):
        train_classifier(np.zeros((4, 4, 4)), [0, 1, 0, 1], epochs=1)


def test_evaluate_samples(trained_digits, digits8):
    extractor, _ = trained_digits
    x = digits8[0]
    real, fake = x[:600], x[600:1200]
    same = evaluate_samples(real, real, extractor, kid_subsets=5, kid_subset_size=200)
    assert set(same) >= {"fid", "precision", "recall", "kid_mean", "kid_std"}
    assert same["fid"] == pytest.approx(0.0, abs=1e-6)
    assert same["precision"] == 1.0 and same["recall"] == 1.0
    held_out = evaluate_samples(real, fake, extractor, kid_subsets=5, kid_subset_size=200)
    noise = evaluate_samples(
        real, torch.rand_like(fake) * 2 - 1, extractor, kid_subsets=5, kid_subset_size=200
    )
    # Real digits against real digits score far better than noise against real digits.
    assert held_out["fid"] < 0.1 * noise["fid"]
    balanced = evaluate_samples(
        real, fake, extractor, kid_subsets=5, kid_subset_size=200, class_balanced=True
    )
    cls_real, cls_fake = extractor.classify(real), extractor.classify(fake)
    assert cls_real.shape == (600,) and cls_real.dtype == np.int64
    assert balanced["class_tv"] == pytest.approx(class_total_variation(cls_real, cls_fake))
    assert 0.0 <= balanced["class_tv"] < 0.1  # two halves of the digits: near-equal proportions
    assert balanced["fid_class_balanced"] < 0.1 * noise["fid"]
    assert balanced["fid"] == held_out["fid"]
    with pytest.raises(TypeError, match="FeatureExtractor"):
        evaluate_samples(real, fake, extractor.model_, class_balanced=True)
    assert held_out["kid_mean"] < 0.1 * noise["kid_mean"]
    assert held_out["precision"] > 0.5 and noise["precision"] < 0.1


def test_default_classifier_refuses_images_of_another_size_or_range(tmp_path, digits8):
    x, y = digits8[0][:200], digits8[1][:200]  # 8x8 in [-1, 1]
    ex = FeatureExtractor(epochs=1, cache_dir=tmp_path).fit(x, y)
    assert ex.image_shape_ == (1, 8, 8) and ex.data_range_ == (-1.0, 1.0)
    with pytest.raises(ValueError, match=r"\(C, H, W\) = \(1, 8, 8\).*got \(1, 16, 16\)"):
        ex.extract(torch.zeros(4, 1, 16, 16))
    with pytest.raises(ValueError, match=r"lie in \[0, 255\].*trained on images in \[-1, 1\]"):
        ex.extract((x[:50] + 1) * 127.5)
    with pytest.warns(UserWarning, match=r"another range \(e.g. \[0, 1\] against \[-1, 1\]\)"):
        ex.extract((x[:50] + 1) / 2)
    with pytest.raises(ValueError, match=r"same \(C, H, W\), got \(1, 8, 8\) and \(1, 4, 4\)"):
        evaluate_samples(x[:50], x[:50, :, :4, :4], ex)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ex.extract(x[:50])  # the data itself passes silently
    # a user's network has no recorded size or range: nothing is checked
    FeatureExtractor(LeNetClassifier(feature_dim=4)).extract(torch.zeros(2, 1, 16, 16) + 200)


def test_feature_modules_keep_their_names_and_check_their_inputs(tmp_path):
    from conprediff.evaluation import features
    from conprediff.evaluation.features import cache, extractor, network, training

    assert features.FeatureExtractor is extractor.FeatureExtractor is FeatureExtractor
    assert features.LeNetClassifier is network.LeNetClassifier is LeNetClassifier
    assert features.train_classifier is training.train_classifier is train_classifier
    assert features.default_cache_dir is cache.default_cache_dir
    with pytest.raises(TypeError, match="width"):
        LeNetClassifier(width=1.5)
    net = LeNetClassifier(feature_dim=4)
    with pytest.raises(TypeError, match="batch_size"):
        FeatureExtractor(net).extract(np.zeros((2, 1, 8, 8)), batch_size=2.0)
    # grey (N, H, W) images, and nested lists, are read as (N, 1, H, W)
    x = np.random.default_rng(0).uniform(-1, 1, (3, 8, 8))
    np.testing.assert_array_equal(
        FeatureExtractor(net).extract(x), FeatureExtractor(net).extract(x[:, None].tolist())
    )
    # the cache on its own: nothing, then the weights and the description back
    store = cache.ClassifierCache(tmp_path, "ab" * 32)
    assert store.load() is None
    meta = store.save(net, test_accuracy=0.5)
    model, read = store.load()
    assert read == meta and meta["architecture"] == net.get_config()
    for key, value in net.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)
    assert cache.ClassifierCache(tmp_path, "cd" * 32).load() is None  # another fingerprint
