r"""The context loss's default metric (:class:`AutoW2`); metric names (:func:`resolve_metric`)."""

from __future__ import annotations

from conprediff._validation import check_int

from .base import W2Metric
from .exact import ExactW2
from .gaussian import GaussianW2
from .one_d import SortedW2
from .sinkhorn import SinkhornW2
from .sliced import SlicedW2

__all__ = ["AutoW2", "resolve_metric"]


class AutoW2(W2Metric):
    r"""The context loss's default metric: exact :class:`~conprediff.wasserstein.SortedW2` for
    ``C == 1``, else :class:`~conprediff.wasserstein.SlicedW2`.

    Why sliced for ``C > 1`` (``benchmarks/w2_speed.py``, see docs/benchmarks/w2_speed.md): it
    keeps the exact 1-D solver (weights and dropped border neighbours included) and its cost grows
    only linearly with the number of directions, so it stays far faster than the Python loop over
    ``ot.emd2``; :class:`~conprediff.wasserstein.SinkhornW2` needs on the order of a hundred
    iterations over ``(P, Q, K)`` cost matrices to be accurate, which costs about as much as the
    exact loop on the loss's workload. Sliced W2 is a different distance (a lower bound of W2²,
    about W2²/C), not an approximation of W2²; with a fresh set of directions at every call
    (``seed=None``) it is an unbiased estimate of the sliced distance, which is what a training
    loss needs.

    Parameters
    ----------
    n_projections : int, default=16
        Directions of the sliced metric for ``C > 1``.
    seed : int or None, default=None
        Seed of the directions (None: fresh directions at every call).
    validate : bool, default=True
        Check the weights' values (non-negative, positive sum) at every call.
    """

    def __init__(self, n_projections: int = 16, seed: int | None = None, validate: bool = True):
        self.n_projections = n_projections
        self.seed = seed
        self.validate = validate

    def metric_for(self, n_channels: int) -> W2Metric:
        """The metric used for points with ``n_channels`` channels."""
        if n_channels == 1:
            return SortedW2(validate=self.validate)
        return SlicedW2(n_projections=self.n_projections, seed=self.seed, validate=self.validate)

    def _compute(self, x, y, a, b):
        return self.metric_for(x.shape[2])._compute(x, y, a, b)


_NAMES = {
    "exact": ExactW2,
    "sorted": SortedW2,
    "sinkhorn": SinkhornW2,
    "sliced": SlicedW2,
    "gaussian": GaussianW2,
    "auto": AutoW2,
}


def resolve_metric(metric: str | W2Metric = "auto", n_channels: int | None = None) -> W2Metric:
    """Turn a metric name or object into a metric object.

    Parameters
    ----------
    metric : {'auto', 'exact', 'sorted', 'sinkhorn', 'sliced', 'gaussian'} or metric object
        A name (the class with its default arguments) or an object with the common call
        signature, returned unchanged.
    n_channels : int, optional
        Number of channels ``C`` of the points (>= 1). With ``'auto'``, the concrete metric that
        :class:`AutoW2` would use for ``C`` channels; ``'sorted'`` with ``n_channels > 1`` is
        rejected here rather than at the first call.

    Returns
    -------
    metric object

    Raises
    ------
    ValueError
        Unknown name, ``'sorted'`` with ``n_channels > 1``, or ``n_channels < 1``.
    TypeError
        Neither a string nor a callable, or ``n_channels`` not an integer.
    """
    n_channels = check_int(n_channels, "n_channels", 1, optional=True)
    if isinstance(metric, str):
        key = metric.lower()
        if key not in _NAMES:
            raise ValueError(
                f"metric must be one of {sorted(_NAMES)} or a metric object, got {metric!r}"
            )
        if key == "auto":
            auto = AutoW2()
            return auto if n_channels is None else auto.metric_for(n_channels)
        if key == "sorted" and n_channels is not None and n_channels > 1:
            raise ValueError(
                f"metric 'sorted' is exact in one dimension only, but n_channels="
                f"{n_channels}; use 'sliced', 'sinkhorn', 'gaussian' or 'auto'"
            )
        return _NAMES[key]()
    if callable(metric):
        return metric
    raise TypeError(
        f"metric must be a string or a metric object (callable), got {type(metric).__name__}"
    )
