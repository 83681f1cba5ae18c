r"""Paired comparisons of two variants over the same seeds.

Two variants (a model with and without a component, two samplers, two settings) evaluated with
the same seeds -- the same initialisation, batches and sampling noise for seed :math:`i` --
give pairs :math:`(a_i, b_i)` of a metric. The seed's share of the variance is common to both
sides of a pair and cancels in the difference :math:`d_i = a_i - b_i`, so the differences
resolve an effect that the spread of :math:`a` and :math:`b` across seeds would hide.

For :math:`n` pairs with mean difference :math:`\bar d = \frac1n \sum_i d_i` and sample
standard deviation :math:`s = \sqrt{\frac{1}{n-1} \sum_i (d_i - \bar d)^2}`, the
:math:`c` confidence interval of the mean difference is Student's

.. math::

    \bar d \pm t_{(1 + c)/2,\; n - 1} \, \frac{s}{\sqrt n},

exact when the differences are normal and independent across seeds (the paired t-test's
interval, ``scipy.stats.ttest_rel(a, b).confidence_interval(c)``). With few pairs it is wide:
:math:`t_{0.975, 4} = 2.78` for five. Report beside it each difference and how many pairs favour
a variant (:math:`k` of :math:`n`), which assume nothing about the distribution.

Missing results (``None``, NaN, or infinite values) are left out: a pair counts only when both
of its values are finite.

Examples
--------
>>> from conprediff.evaluation import paired_difference
>>> r = paired_difference([10.0, 12.0, 9.0], [11.0, 12.5, 10.0])  # FID of a and b per seed
>>> r.differences.tolist(), r.n_favour, r.n
([-1.0, -0.5, -1.0], 3, 3)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from .._validation import check_choice, check_real

__all__ = ["PairedResult", "finite_summary", "paired_difference", "t_interval"]


def _as_values(values: Any, name: str) -> np.ndarray:
    """``values`` as a float64 vector ``(N,)``, missing entries (``None``) as NaN."""
    try:
        values = values.detach().cpu() if hasattr(values, "detach") else values
        x = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a sequence of numbers (None for missing)") from exc
    if x.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {x.shape}")
    return x


def finite_summary(values: Any) -> tuple[float, float, int]:
    r"""Mean, sample standard deviation and count of the finite values.

    Parameters
    ----------
    values : array_like of shape (N,)
        Numbers; missing results may be ``None``, NaN or infinite, and are left out of all three.

    Returns
    -------
    mean : float
        :math:`\bar x = \frac1n \sum_i x_i` over the ``n`` finite values; NaN when ``n = 0``.
    sd : float
        :math:`s = \sqrt{\frac{1}{n-1} \sum_i (x_i - \bar x)^2}`; NaN when ``n < 2``.
    n : int
        The number of finite values.

    Examples
    --------
    >>> finite_summary([1.0, None, 3.0])
    (2.0, 1.4142135623730951, 2)
    """
    x = _as_values(values, "values")
    x = x[np.isfinite(x)]
    mean = float(x.mean()) if x.size else math.nan
    sd = float(x.std(ddof=1)) if x.size > 1 else math.nan
    return mean, sd, int(x.size)


def t_interval(values: Any, confidence: float = 0.95) -> tuple[float, float, float]:
    r"""Mean of the finite values and Student's t confidence interval of it.

    .. math::

        \bar x \pm t_{(1 + c)/2,\; n - 1} \, \frac{s}{\sqrt n}

    with :math:`\bar x`, :math:`s` and :math:`n` those of :func:`finite_summary`.

    Parameters
    ----------
    values : array_like of shape (N,)
        E.g. paired differences; ``None``, NaN and infinite values are left out.
    confidence : float, default 0.95
        The interval's confidence level :math:`c`, in (0, 1).

    Returns
    -------
    mean, low, high : float
        NaN mean when no value is finite; NaN bounds when fewer than two are.

    Examples
    --------
    >>> [round(v, 3) for v in t_interval([1.0, 2.0, 3.0])]  # 2 +- t(0.975, 2) / sqrt(3)
    [2.0, -0.484, 4.484]
    """
    confidence = check_real(confidence, "confidence", 0.0, 1.0, low_open=True, high_open=True)
    mean, sd, n = finite_summary(values)
    if n < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf((1.0 + confidence) / 2.0, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


@dataclass(frozen=True)
class PairedResult:
    """The comparison of variant ``a`` with variant ``b`` over paired seeds.

    Attributes
    ----------
    mean : float
        Mean difference :math:`\\bar d` of ``a - b`` (NaN without pairs).
    low, high : float
        Bounds of its ``confidence`` t-interval (NaN with fewer than two pairs).
    sd : float
        Sample standard deviation :math:`s` of the differences (NaN with fewer than two).
    n : int
        Pairs used: those with both values finite.
    n_favour : int
        Pairs in favour of ``a``: :math:`a_i < b_i` when lower is better, :math:`a_i > b_i`
        when higher is (ties favour neither).
    ratio_of_means : float
        :math:`\\bar a / \\bar b` over the pairs used (NaN when :math:`\\bar b = 0`).
    mean_ratio : float
        :math:`\\frac1n \\sum_i a_i / b_i` (NaN when some :math:`b_i = 0`).
    differences : numpy.ndarray of shape (n,)
        :math:`d_i = a_i - b_i` of the pairs used, in input order.
    used : numpy.ndarray of shape (N,), bool
        Which input pairs were used.
    confidence : float
        The interval's confidence level.
    better : str
        ``'lower'`` or ``'higher'``: which values count as better for ``n_favour``.
    """

    mean: float
    low: float
    high: float
    sd: float
    n: int
    n_favour: int
    ratio_of_means: float
    mean_ratio: float
    differences: np.ndarray
    used: np.ndarray
    confidence: float
    better: str

    def __str__(self) -> str:
        level = f"{100 * self.confidence:g} %"
        return (
            f"mean difference {self.mean:+.4g} [{level} CI {self.low:+.4g}, {self.high:+.4g}], "
            f"{self.n_favour} of {self.n} pairs in favour of a ({self.better} is better)"
        )


def paired_difference(
    a: Any, b: Any, *, confidence: float = 0.95, better: str = "lower"
) -> PairedResult:
    """Compare variant ``a`` with variant ``b`` from one metric per seed, paired by position.

    The differences :math:`d_i = a_i - b_i`, their mean with Student's t interval (see
    :func:`t_interval` and the module's notes), the number of pairs in favour of ``a``, and
    the ratios of ``a`` to ``b``.

    Parameters
    ----------
    a, b : array_like of shape (N,)
        The metric of the two variants, entry ``i`` of both from seed ``i``. ``None``, NaN or
        infinite values mark missing results: such a pair is left out.
    confidence : float, default 0.95
        Confidence level of the interval, in (0, 1).
    better : {'lower', 'higher'}, default 'lower'
        Which values are better (``'lower'`` for FID or a loss, ``'higher'`` for precision or
        accuracy): decides which pairs count in ``n_favour``.

    Returns
    -------
    PairedResult

    Raises
    ------
    TypeError
        If ``a`` or ``b`` does not hold numbers, or ``confidence`` is not a number.
    ValueError
        If ``a`` and ``b`` are not one-dimensional and of the same length, ``confidence`` is
        outside (0, 1) or ``better`` is neither ``'lower'`` nor ``'higher'``.

    Examples
    --------
    >>> r = paired_difference([0.5, 0.7, 0.6], [0.4, 0.7, 0.5], better="higher")
    >>> r.n_favour, round(r.mean, 3), round(r.ratio_of_means, 3)
    (2, 0.067, 1.125)
    """
    better = check_choice(better, "better", ("lower", "higher"))
    confidence = check_real(confidence, "confidence", 0.0, 1.0, low_open=True, high_open=True)
    x, y = _as_values(a, "a"), _as_values(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"a and b must pair up: got {x.shape[0]} and {y.shape[0]} values")
    used = np.isfinite(x) & np.isfinite(y)
    x, y = x[used], y[used]
    d = x - y
    mean, low, high = t_interval(d, confidence)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(y != 0, x / np.where(y != 0, y, 1.0), math.nan)
        mean_y = float(y.mean()) if y.size else math.nan
        ratio_of_means = float(x.mean()) / mean_y if y.size and mean_y != 0 else math.nan
    return PairedResult(
        mean=mean,
        low=low,
        high=high,
        sd=finite_summary(d)[1],
        n=int(d.size),
        n_favour=int(np.sum(d < 0 if better == "lower" else d > 0)),
        ratio_of_means=ratio_of_means,
        mean_ratio=float(ratios.mean()) if ratios.size else math.nan,
        differences=d,
        used=used,
        confidence=confidence,
        better=better,
    )
