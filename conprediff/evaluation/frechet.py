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

__all__ = ["feature_statistics", "frechet_distance", "frechet_distance_from_features"]

# Relative tolerances for the checks on user-supplied covariances.
_SYMMETRY_RTOL = 1e-6
_PSD_RTOL = 1e-6


def _as_features(name: str, x: Any, *, min_samples: int = 1) -> np.ndarray:
    """Return ``x`` as a finite float64 array of shape ``(N, D)``, or raise naming ``name``."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a numeric array of shape (N, D); got {type(x)}") from exc
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (N, D); got an array of shape {arr.shape}")
    if arr.shape[1] < 1:
        raise ValueError(f"{name} must have at least one feature column; got shape {arr.shape}")
    if arr.shape[0] < min_samples:
        raise ValueError(f"{name} needs at least {min_samples} samples (rows); got {arr.shape[0]}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _check_same_dim(name1: str, x1: np.ndarray, name2: str, x2: np.ndarray) -> None:
    if x1.shape[-1] != x2.shape[-1]:
        raise ValueError(
            f"{name1} and {name2} must have the same feature dimension; "
            f"got {x1.shape[-1]} and {x2.shape[-1]}"
        )


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
    _check_same_dim("mu1", mu1, "mu2", mu2)
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


def feature_statistics(features: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of a feature set.

    Parameters
    ----------
    features : array_like of shape (N, D)
        One feature vector per row; ``N >= 2``. A ``torch.Tensor`` is accepted.

    Returns
    -------
    mu : numpy.ndarray of shape (D,)
        :math:`\\mu = \\frac1N \\sum_n f_n`, float64.
    sigma : numpy.ndarray of shape (D, D)
        :math:`\\Sigma = \\frac1{N-1} \\sum_n (f_n - \\mu)(f_n - \\mu)^\\top`, float64.

    Raises
    ------
    ValueError
        If ``features`` is not 2-D, has fewer than two rows, or holds non-finite values.
    """
    f = _as_features("features", features, min_samples=2)
    mu = f.mean(axis=0)
    centred = f - mu
    sigma = centred.T @ centred / (f.shape[0] - 1)
    return mu, 0.5 * (sigma + sigma.T)


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
    f1 = _as_features("features1", features1, min_samples=2)
    f2 = _as_features("features2", features2, min_samples=2)
    _check_same_dim("features1", f1, "features2", f2)
    mu1, sigma1 = feature_statistics(f1)
    mu2, sigma2 = feature_statistics(f2)
    return frechet_distance(mu1, sigma1, mu2, sigma2)
