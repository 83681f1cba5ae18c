"""Improved precision and recall with k-nearest-neighbour manifolds.

Each feature set approximates its manifold by the union of balls centred on its samples, each
ball's radius being the distance to the sample's k-th nearest neighbour within the same set:

.. math::

    \\Phi(S) = \\bigcup_{s \\in S} B\\big(s, \\lVert s - \\mathrm{NN}_k(s, S) \\rVert_2\\big).

Precision is the fraction of generated samples that fall inside the real manifold, recall the
fraction of real samples that fall inside the generated manifold:

.. math::

    \\mathrm{precision} = \\frac{1}{|F|} \\sum_{f \\in F} [f \\in \\Phi(R)], \\qquad
    \\mathrm{recall} = \\frac{1}{|R|} \\sum_{r \\in R} [r \\in \\Phi(F)].

References
----------
Kynkäänniemi, T., Karras, T., Laine, S., Lehtinen, J. and Aila, T. (2019). Improved precision and
recall metric for assessing generative models. NeurIPS.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .._validation import check_int
from ._checks import check_features, check_same_dim

__all__ = ["knn_radii", "manifold_coverage", "precision_recall"]

# Rows per block of the pairwise-distance matrix: blocks of at most this many entries (float64).
_BLOCK_ENTRIES = 2**24  # 128 MiB


def _row_block(n_cols: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        return check_int(chunk_size, "chunk_size", 1)
    return max(1, _BLOCK_ENTRIES // max(n_cols, 1))


def _pairwise_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances ``(len(a), len(b))`` in float64, clamped at zero."""
    return torch.cdist(a, b).clamp_min_(0.0)


def knn_radii(features: Any, k: int = 3, *, chunk_size: int | None = None) -> np.ndarray:
    """Distance from each sample to its k-th nearest neighbour in the same set.

    Parameters
    ----------
    features : array_like of shape (N, D)
        The set; ``N > k``.
    k : int, default 3
        Which neighbour; the sample itself is not counted.
    chunk_size : int, optional
        Rows of the ``(N, N)`` distance matrix computed at once (default: blocks of 2**24 entries,
        so 10,000 x 10,000 fits in a few hundred MiB).

    Returns
    -------
    numpy.ndarray of shape (N,)
        :math:`r_n = \\lVert f_n - \\mathrm{NN}_k(f_n) \\rVert_2`, float64.

    Raises
    ------
    ValueError
        If ``k < 1`` or ``k >= N``.
    """
    f = check_features(features, "features")
    k = _check_k(k, f.shape[0], "features")
    return _knn_radii(torch.from_numpy(f), k, chunk_size).numpy()


def _check_k(k: Any, n: int, name: str) -> int:
    k = check_int(k, "k", 1)
    if k >= n:
        raise ValueError(f"k must be smaller than the number of samples in {name}; got {k=}, N={n}")
    return k


def _knn_radii(f: torch.Tensor, k: int, chunk_size: int | None) -> torch.Tensor:
    n = f.shape[0]
    rows = _row_block(n, chunk_size)
    radii = torch.empty(n, dtype=f.dtype)
    for start in range(0, n, rows):
        d = _pairwise_distances(f[start : start + rows], f)
        # The (k + 1)-th smallest distance: the sample itself sits at distance 0.
        radii[start : start + rows] = torch.kthvalue(d, k + 1, dim=1).values
    return radii


def _coverage(
    queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk_size: int | None
) -> float:
    rows = _row_block(centres.shape[0], chunk_size)
    inside = 0
    for start in range(0, queries.shape[0], rows):
        d = _pairwise_distances(queries[start : start + rows], centres)
        inside += int((d <= radii[None, :]).any(dim=1).sum())
    return inside / queries.shape[0]


def manifold_coverage(
    manifold_features: Any,
    query_features: Any,
    k: int = 3,
    *,
    chunk_size: int | None = None,
) -> float:
    """Fraction of query samples inside the k-NN manifold of another set.

    Parameters
    ----------
    manifold_features : array_like of shape (M, D)
        The set whose manifold :math:`\\Phi` is estimated; ``M > k``.
    query_features : array_like of shape (Q, D)
        The samples tested for membership.
    k : int, default 3
        Neighbour that sets each ball's radius.
    chunk_size : int, optional
        Rows of the distance matrices computed at once.

    Returns
    -------
    float
        :math:`\\frac{1}{Q} \\sum_q [\\exists m: \\lVert q - m \\rVert \\le r_m]` in [0, 1].

    Raises
    ------
    ValueError
        If the feature dimensions differ or ``k >= M``.
    """
    m = check_features(manifold_features, "manifold_features")
    q = check_features(query_features, "query_features")
    check_same_dim("manifold_features", m, "query_features", q)
    k = _check_k(k, m.shape[0], "manifold_features")
    mt, qt = torch.from_numpy(m), torch.from_numpy(q)
    return _coverage(qt, mt, _knn_radii(mt, k, chunk_size), chunk_size)


def precision_recall(
    real_features: Any,
    fake_features: Any,
    k: int = 3,
    *,
    chunk_size: int | None = None,
) -> tuple[float, float]:
    """Improved precision and recall of generated samples (Kynkäänniemi et al., 2019).

    .. math::

        \\mathrm{precision} = \\frac{1}{|F|} \\sum_{f \\in F} [f \\in \\Phi_k(R)], \\qquad
        \\mathrm{recall} = \\frac{1}{|R|} \\sum_{r \\in R} [r \\in \\Phi_k(F)],

    where :math:`\\Phi_k(S)` is the union of balls around the samples of :math:`S` with radii their
    distances to their k-th nearest neighbour in :math:`S`. Distances are computed in float64 in
    blocks of rows, so 10,000 x 10,000 sets fit in memory.

    Parameters
    ----------
    real_features : array_like of shape (N_real, D)
        Features of real images; ``N_real > k``.
    fake_features : array_like of shape (N_fake, D)
        Features of generated images; ``N_fake > k``.
    k : int, default 3
        Neighbour that sets the radii (the paper uses 3).
    chunk_size : int, optional
        Rows of the distance matrices computed at once (default: blocks of 2**24 entries).

    Returns
    -------
    precision : float
        In [0, 1]: how much of what is generated looks real (fidelity).
    recall : float
        In [0, 1]: how much of the real distribution is covered (diversity).

    Raises
    ------
    ValueError
        If the feature dimensions differ, ``k < 1``, or ``k`` is not smaller than either set's size.

    References
    ----------
    Kynkäänniemi et al. (2019), "Improved precision and recall metric for assessing generative
    models", NeurIPS.
    """
    real = check_features(real_features, "real_features")
    fake = check_features(fake_features, "fake_features")
    check_same_dim("real_features", real, "fake_features", fake)
    k = _check_k(k, real.shape[0], "real_features")
    _check_k(k, fake.shape[0], "fake_features")
    rt, ft = torch.from_numpy(real), torch.from_numpy(fake)
    precision = _coverage(ft, rt, _knn_radii(rt, k, chunk_size), chunk_size)
    recall = _coverage(rt, ft, _knn_radii(ft, k, chunk_size), chunk_size)
    return precision, recall
