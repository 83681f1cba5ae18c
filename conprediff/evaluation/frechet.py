"""Fréchet distance between Gaussians fitted to feature sets (FID).

The Fréchet (Wasserstein-2) distance between :math:`\\mathcal N(\\mu_1, \\Sigma_1)` and
:math:`\\mathcal N(\\mu_2, \\Sigma_2)` is

.. math::

    d^2 = \\lVert \\mu_1 - \\mu_2 \\rVert_2^2
          + \\operatorname{tr}\\big(\\Sigma_1 + \\Sigma_2
          - 2 (\\Sigma_1^{1/2} \\Sigma_2 \\Sigma_1^{1/2})^{1/2}\\big).

Evaluated on the features of a network, this is the FID of Heusel et al. (2017). The usual
implementation takes ``scipy.linalg.sqrtm`` of the non-symmetric product :math:`\\Sigma_1
\\Sigma_2`, which returns complex values or garbage when the covariances are singular (fewer
samples than feature dimensions, dead ReLU units). Here both square roots are of symmetric positive
semi-definite matrices, computed by ``scipy.linalg.eigh`` with tiny negative eigenvalues clamped to
zero, which is stable in those cases.

References
----------
Heusel, M., Ramsauer, H., Unterthiner, T., Nessler, B. and Hochreiter, S. (2017). GANs trained by a
two time-scale update rule converge to a local Nash equilibrium. NeurIPS.

Dowson, D. C. and Landau, B. V. (1982). The Fréchet distance between multivariate normal
distributions. Journal of Multivariate Analysis 12(3), 450-455.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg

from ._checks import check_class_labels, check_features, check_same_dim

__all__ = [
    "class_balance_weights",
    "class_balanced_frechet_distance",
    "class_total_variation",
    "feature_statistics",
    "frechet_distance",
    "frechet_distance_from_features",
]

# Relative tolerances for the checks on user-supplied covariances.
_SYMMETRY_RTOL = 1e-6
_PSD_RTOL = 1e-6


def _as_mean(name: str, mu: Any) -> np.ndarray:
    arr = np.asarray(mu, dtype=np.float64)
    if arr.ndim != 1 or arr.shape[0] < 1:
        raise ValueError(f"{name} must be a vector of shape (D,); got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _as_covariance(name: str, sigma: Any, dim: int) -> np.ndarray:
    arr = np.asarray(sigma, dtype=np.float64)
    if arr.shape != (dim, dim):
        raise ValueError(
            f"{name} must be a covariance matrix of shape ({dim}, {dim}) matching the mean; "
            f"got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    scale = max(float(np.max(np.abs(arr))), np.finfo(np.float64).tiny)
    if np.max(np.abs(arr - arr.T)) > _SYMMETRY_RTOL * scale:
        raise ValueError(f"{name} must be symmetric; max |{name} - {name}.T| is too large")
    return 0.5 * (arr + arr.T)


def _psd_eigh(
    name: str, sigma: np.ndarray, *, eigvals_only: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """Eigen-decomposition of a symmetric PSD matrix with tiny negative eigenvalues set to 0."""
    if eigvals_only:
        w, v = scipy.linalg.eigh(sigma, eigvals_only=True), None
    else:
        w, v = scipy.linalg.eigh(sigma)
    scale = max(float(np.max(np.abs(w))), np.finfo(np.float64).tiny)
    if w.min() < -_PSD_RTOL * scale * sigma.shape[0]:
        raise ValueError(
            f"{name} must be positive semi-definite; its smallest eigenvalue is {w.min():.3g} "
            f"(largest {w.max():.3g})"
        )
    return _clamp_eigenvalues(w), v


def _clamp_eigenvalues(w: np.ndarray) -> np.ndarray:
    """Set eigenvalues at rounding level (below ``D * eps * max|w|``) or negative to zero.

    Square roots amplify rounding noise (``sqrt(1e-16) = 1e-8``), so eigenvalues that ``eigh``
    cannot tell from zero are treated as zero, as a pseudo-inverse would.
    """
    cutoff = w.shape[0] * np.finfo(np.float64).eps * float(np.max(np.abs(w), initial=0.0))
    return np.where(w > cutoff, w, 0.0)


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> float:
    """Squared Fréchet (Wasserstein-2) distance between two Gaussians.

    .. math::

        d^2 = \\lVert \\mu_1 - \\mu_2 \\rVert_2^2
              + \\operatorname{tr}\\big(\\Sigma_1 + \\Sigma_2
              - 2 (\\Sigma_1^{1/2} \\Sigma_2 \\Sigma_1^{1/2})^{1/2}\\big)

    The trace of the inner square root is the sum of the square roots of the eigenvalues of the
    symmetric PSD matrix :math:`\\Sigma_1^{1/2} \\Sigma_2 \\Sigma_1^{1/2}`, both square roots taken
    by ``scipy.linalg.eigh`` in float64 with tiny negative eigenvalues clamped to zero. This is
    stable for singular (rank-deficient) covariances, where ``scipy.linalg.sqrtm(sigma1 @ sigma2)``
    is not.

    Parameters
    ----------
    mu1, mu2 : array_like of shape (D,)
        Means of the two Gaussians.
    sigma1, sigma2 : array_like of shape (D, D)
        Covariances of the two Gaussians: symmetric positive semi-definite.

    Returns
    -------
    float
        :math:`d^2 \\ge 0` (rounding below zero is clamped to 0). This is the number reported as
        FID when the moments are those of network features.

    Raises
    ------
    ValueError
        If the shapes do not match, a covariance is not symmetric or not positive semi-definite,
        or a value is not finite.

    References
    ----------
    Dowson and Landau (1982); Heusel et al. (2017), "GANs trained by a two time-scale update rule
    converge to a local Nash equilibrium", NeurIPS.

    Examples
    --------
    >>> import numpy as np
    >>> frechet_distance(np.zeros(2), np.eye(2), np.ones(2), 4 * np.eye(2))
    4.0
    """
    mu1 = _as_mean("mu1", mu1)
    mu2 = _as_mean("mu2", mu2)
    check_same_dim("mu1", mu1, "mu2", mu2)
    dim = mu1.shape[0]
    sigma1 = _as_covariance("sigma1", sigma1, dim)
    sigma2 = _as_covariance("sigma2", sigma2, dim)

    w1, v1 = _psd_eigh("sigma1", sigma1)
    _psd_eigh("sigma2", sigma2, eigvals_only=True)  # validation only
    sqrt_sigma1 = (v1 * np.sqrt(w1)) @ v1.T
    inner = sqrt_sigma1 @ sigma2 @ sqrt_sigma1
    inner = 0.5 * (inner + inner.T)
    w_inner = scipy.linalg.eigh(inner, eigvals_only=True)
    trace_sqrt = float(np.sum(np.sqrt(_clamp_eigenvalues(w_inner))))

    diff = mu1 - mu2
    value = float(diff @ diff) + float(np.trace(sigma1) + np.trace(sigma2)) - 2.0 * trace_sqrt
    return max(value, 0.0)


def feature_statistics(features: Any, weights: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and bias-corrected covariance of a feature set, optionally weighted.

    Parameters
    ----------
    features : array_like of shape (N, D)
        One feature vector per row; ``N >= 2``. A ``torch.Tensor`` is accepted.
    weights : array_like of shape (N,), optional
        Non-negative sample weights (normalised here to :math:`w_n` summing to 1), e.g. from
        :func:`class_balance_weights`; at least two must be positive. None: uniform.

    Returns
    -------
    mu : numpy.ndarray of shape (D,)
        :math:`\\mu = \\sum_n w_n f_n` (:math:`w_n = 1/N` when unweighted), float64.
    sigma : numpy.ndarray of shape (D, D)
        :math:`\\Sigma = \\frac{1}{1 - \\sum_n w_n^2} \\sum_n w_n (f_n - \\mu)(f_n - \\mu)^\\top`
        (the reliability-weights correction: unbiased for weights fixed in advance; with
        uniform weights the usual :math:`\\frac1{N-1}` estimate), float64.

    Raises
    ------
    ValueError
        If ``features`` is not 2-D, has fewer than two rows, or holds non-finite values, or if
        ``weights`` has the wrong length, negative or non-finite entries, or fewer than two
        positive ones.
    """
    f = check_features(features, "features", min_samples=2)
    if weights is None:
        mu = f.mean(axis=0)
        centred = f - mu
        sigma = centred.T @ centred / (f.shape[0] - 1)
        return mu, 0.5 * (sigma + sigma.T)
    if hasattr(weights, "detach"):
        weights = weights.detach().cpu().numpy()
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (f.shape[0],):
        raise ValueError(f"weights must have shape ({f.shape[0]},); got {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("weights must be finite and non-negative")
    if np.count_nonzero(w) < 2:
        raise ValueError("weights need at least two positive entries")
    w = w / w.max()  # first to the largest, so that the sum cannot overflow or underflow
    w = w / w.sum()
    mu = w @ f
    centred = f - mu
    sigma = (centred * w[:, None]).T @ centred / (1.0 - float(w @ w))
    return mu, 0.5 * (sigma + sigma.T)


def _class_counts(
    a: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-class counts of two label sets over the classes that occur in either.

    Returns ``(ia, ib, count_a, count_b)``: ``a`` and ``b`` renumbered to ``0..K-1`` and the
    counts of each of the ``K`` classes. Counting only the classes that occur keeps the memory
    at ``O(N)`` whatever the class indices (a ``bincount`` over ``max + 1`` would not); classes
    absent from both sets change neither the weights nor the total variation.
    """
    _, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
    inverse = inverse.reshape(-1)
    ia, ib = inverse[: a.shape[0]], inverse[a.shape[0] :]
    k = int(inverse.max()) + 1
    return ia, ib, np.bincount(ia, minlength=k), np.bincount(ib, minlength=k)


def class_balance_weights(
    labels: Any, target_labels: Any, n_classes: int | None = None
) -> np.ndarray:
    """Sample weights that give ``labels`` the class proportions of ``target_labels``.

    Sample :math:`n` of class :math:`c` gets :math:`w_n = q_c / (N p_c)`, where :math:`p_c` and
    :math:`q_c` are the class frequencies in ``labels`` and ``target_labels``; the weights sum to
    1 and the weighted class proportions equal :math:`q`, restricted (and renormalised) to the
    classes present in ``labels``: a class with no sample cannot be given weight, and is counted
    by :func:`class_total_variation` instead. Samples of a class absent from ``target_labels``
    get weight 0.

    Parameters
    ----------
    labels : array_like of int, shape (N,)
        Class of each sample to weight (e.g. a classifier's predictions for generated images).
    target_labels : array_like of int, shape (M,)
        Classes whose proportions are wanted (e.g. the real images').
    n_classes : int, optional
        Number of classes: the labels are checked to lie in ``[0, n_classes)``. Classes that
        occur in neither set change nothing, so it only validates.

    Returns
    -------
    numpy.ndarray of shape (N,)
        Non-negative float64 weights summing to 1.

    Raises
    ------
    ValueError
        If the labels are not 1-D integer class indices, or no class of ``labels`` occurs in
        ``target_labels``.
    """
    a = check_class_labels(labels, "labels", None, n_classes)
    b = check_class_labels(target_labels, "target_labels", None, n_classes)
    ia, _, p, q = _class_counts(a, b)
    p, q = p.astype(np.float64), q.astype(np.float64)
    q[p == 0] = 0.0
    if q.sum() == 0:
        raise ValueError("no class of labels occurs in target_labels: nothing to balance to")
    q /= q.sum()
    w = q[ia] / p[ia]
    return w / w.sum()


def class_total_variation(labels1: Any, labels2: Any, n_classes: int | None = None) -> float:
    """Total variation between the class proportions of two label sets.

    :math:`\\mathrm{TV} = \\tfrac12 \\sum_c |p_c - q_c|`, in [0, 1]: the share of one set
    that would have to change class to match the other's proportions. With a classifier's
    predictions for real and generated images it measures mode balance (0: the same
    proportions; a class of share :math:`q_c` in ``labels2`` that is missing from ``labels1``
    makes it at least :math:`q_c`).

    Parameters
    ----------
    labels1, labels2 : array_like of int, shapes (N1,), (N2,)
        Class indices.
    n_classes : int, optional
        As in :func:`class_proportion_distance` (only validates the labels).

    Returns
    -------
    float
    """
    a = check_class_labels(labels1, "labels1", None, n_classes)
    b = check_class_labels(labels2, "labels2", None, n_classes)
    _, _, count_a, count_b = _class_counts(a, b)
    p = count_a / a.shape[0]
    q = count_b / b.shape[0]
    return float(0.5 * np.abs(p - q).sum())


def class_balanced_frechet_distance(
    real_features: Any,
    real_labels: Any,
    fake_features: Any,
    fake_labels: Any,
    n_classes: int | None = None,
) -> float:
    """FID with the generated set reweighted to the real set's class proportions.

    The generated features are weighted by :func:`class_balance_weights` (their classes given
    the proportions of the real set's), and the Fréchet distance is taken between the real
    set's statistics and the weighted statistics of :func:`feature_statistics`. This removes the
    part of FID due to the class proportions of one draw of samples, which in the features of a
    small classifier is large (measured on the digits in ``docs/benchmarks/ablation.md``,
    "Sampling noise, class proportions and the noise floor"). Report it beside the plain FID and
    :func:`class_total_variation`, which measures the proportions themselves.

    Parameters
    ----------
    real_features : array_like of shape (N1, D)
    real_labels : array_like of int, shape (N1,)
        Classes of the real images: their labels, or a classifier's predictions (the same
        classifier as for ``fake_labels`` keeps the two comparable).
    fake_features : array_like of shape (N2, D)
    fake_labels : array_like of int, shape (N2,)
        Classes of the generated images, e.g. the feature classifier's predictions
        (:meth:`FeatureExtractor.classify`).
    n_classes : int, optional
        Number of classes: the labels are checked to lie in ``[0, n_classes)``. Classes that
        occur in neither set change nothing, so it only validates.

    Returns
    -------
    float
        The Fréchet distance, :math:`\\ge 0`; equal to
        :func:`frechet_distance_from_features` when the proportions already agree.

    Raises
    ------
    ValueError
        On shapes or labels that do not match, or fewer than two generated samples of the
        classes present in the real set.
    """
    f1 = check_features(real_features, "real_features", min_samples=2)
    f2 = check_features(fake_features, "fake_features", min_samples=2)
    check_same_dim("real_features", f1, "fake_features", f2)
    y1 = check_class_labels(real_labels, "real_labels", f1.shape[0], n_classes)
    y2 = check_class_labels(fake_labels, "fake_labels", f2.shape[0], n_classes)
    w = class_balance_weights(y2, y1, n_classes)
    if np.count_nonzero(w) < 2:
        raise ValueError(
            "fewer than two generated samples belong to classes present in the real set: "
            "their class-balanced statistics cannot be estimated"
        )
    return frechet_distance(*feature_statistics(f1), *feature_statistics(f2, weights=w))


def frechet_distance_from_features(features1: Any, features2: Any) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (FID on given features).

    Parameters
    ----------
    features1 : array_like of shape (N1, D)
        E.g. features of real images; ``N1 >= 2``.
    features2 : array_like of shape (N2, D)
        E.g. features of generated images; ``N2 >= 2``.

    Returns
    -------
    float
        ``frechet_distance(*feature_statistics(features1), *feature_statistics(features2))``.

    Raises
    ------
    ValueError
        If the feature dimensions differ or a set has fewer than two samples.

    Notes
    -----
    The estimate is biased upwards for small ``N`` (Chong and Forsyth, 2020, "Effectively unbiased
    FID and Inception Score and where to find them"); compare FIDs only at equal sample sizes.
    """
    f1 = check_features(features1, "features1", min_samples=2)
    f2 = check_features(features2, "features2", min_samples=2)
    check_same_dim("features1", f1, "features2", f2)
    mu1, sigma1 = feature_statistics(f1)
    mu2, sigma2 = feature_statistics(f2)
    return frechet_distance(mu1, sigma1, mu2, sigma2)
