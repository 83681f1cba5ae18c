r"""The metric API: the common call signature, its input checks and the base class.

Every metric is a :class:`W2Metric` (a scikit-learn ``BaseEstimator``: the constructor only
stores its arguments) called as ``metric(x, y, x_weights=None, y_weights=None)`` on ``x``
``(P, Q, C)``, ``y`` ``(P, K, C)`` and weights ``(P, Q)``/``(P, K)`` or None, returning the
squared W2 distances ``(P,)``. Subclasses implement ``_compute(x, y, a, b)`` on checked inputs.
"""

from __future__ import annotations

import torch
from sklearn.base import BaseEstimator

from conprediff._validation import check_bool

__all__ = [
    "W2Metric",
    "check_inputs",
    "check_points",
    "check_weights",
    "normalise",
    "shape_str",
    "sq_cost",
    "weighted_mean",
]


def shape_str(t: torch.Tensor) -> str:
    """The shape of ``t`` written as a tuple, e.g. ``'(2, 3, 1)'``."""
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def check_weights(
    w: torch.Tensor | None,
    name: str,
    P: int,
    n: int,
    n_name: str,
    ref: torch.Tensor,
    validate: bool,
) -> torch.Tensor | None:
    """Check weights ``(P, n)`` (or None) against the points ``ref``; return them in its dtype.

    With ``validate`` also check their values: finite, non-negative, a positive sum per row
    (a device synchronisation on CUDA).
    """
    if w is None:
        return None
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(w).__name__}")
    if w.dtype.is_complex:
        raise TypeError(f"{name} must be a real tensor, got dtype {w.dtype}")
    if w.ndim != 2 or w.shape[0] != P or w.shape[1] != n:
        raise ValueError(f"{name} must have shape (P, {n_name}) = ({P}, {n}), got {shape_str(w)}")
    if w.device != ref.device:
        raise ValueError(f"{name} must be on the device of x ({ref.device}), got {w.device}")
    w = w.to(ref.dtype)
    if validate:
        if bool((w < 0).any()) or not bool(torch.isfinite(w).all()):
            raise ValueError(
                f"{name} must be finite and non-negative; got negative or non-finite entries"
            )
        if bool((w.sum(-1) <= 0).any()):
            raise ValueError(
                f"{name} must have a positive sum in every problem (row); got a row of zeros"
            )
    return w


def check_points(x: torch.Tensor, name: str) -> None:
    """Check that ``x`` is a floating-point tensor ``(P, n_points, C)`` with ``n_points >= 1``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor (float32 or float64), got dtype {x.dtype}"
        )
    if x.ndim != 3:
        raise ValueError(
            f"{name} must have shape (P, n_points, C) (3 dimensions), got "
            f"{x.ndim} dimensions with shape {shape_str(x)}"
        )
    if x.shape[1] == 0:
        raise ValueError(
            f"{name} must hold at least one point per problem, got shape {shape_str(x)}"
        )


def check_inputs(
    x: torch.Tensor,
    y: torch.Tensor,
    x_weights: torch.Tensor | None,
    y_weights: torch.Tensor | None,
    validate: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Validate the common call signature; return the weights cast to x's dtype."""
    check_points(x, "x")
    check_points(y, "y")
    if y.dtype != x.dtype:
        raise TypeError(f"y must have the dtype of x ({x.dtype}), got {y.dtype}")
    if y.device != x.device:
        raise ValueError(f"y must be on the device of x ({x.device}), got {y.device}")
    if y.shape[0] != x.shape[0]:
        raise ValueError(
            f"y must have the number of problems P of x ({x.shape[0]}) in its first "
            f"dimension, got shape {shape_str(y)}"
        )
    if y.shape[2] != x.shape[2]:
        raise ValueError(
            f"y must have the number of channels C of x ({x.shape[2]}) in its last "
            f"dimension, got shape {shape_str(y)}"
        )
    P, Q, _ = x.shape
    K = y.shape[1]
    xw = check_weights(x_weights, "x_weights", P, Q, "Q", x, validate)
    yw = check_weights(y_weights, "y_weights", P, K, "K", x, validate)
    return xw, yw


def normalise(w: torch.Tensor | None, P: int, n: int, ref: torch.Tensor) -> torch.Tensor:
    """Weights ``(P, n)`` summing to 1 per row (uniform, ``1 / n``, when ``w`` is None)."""
    if w is None:
        return ref.new_full((P, n), 1.0 / n)
    return w / w.sum(-1, keepdim=True)


def sq_cost(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""Squared Euclidean cost :math:`C_{pij} = \lVert x_{pi} - y_{pj} \rVert^2`, ``(P, Q, K)``.

    Computed from the differences, so it is exact and never negative.
    """
    return (x.unsqueeze(2) - y.unsqueeze(1)).pow(2).sum(-1)


def weighted_mean(z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    r"""Weighted means :math:`\sum_n w_{pn} z_{pnc}`, ``(P, C)``, of ``z`` ``(P, n, C)``.

    ``w`` ``(P, n)`` are the weights, used as given (not normalised).
    """
    return torch.einsum("pn,pnc->pc", w, z)


class W2Metric(BaseEstimator):
    """Common base of the metrics: input checks and the call signature.

    Subclasses store their constructor arguments, check them in ``_compute(x, y, a, b)`` and
    compute there the squared distances ``(P,)`` from checked points and weights (None for
    uniform). A ``validate`` attribute (default True) turns the weights' value checks on or off.
    """

    def __call__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        x_weights: torch.Tensor | None = None,
        y_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Squared W2 (or its approximation) for ``P`` problems.

        Parameters
        ----------
        x : torch.Tensor, shape (P, Q, C)
            First point sets (floating point).
        y : torch.Tensor, shape (P, K, C)
            Second point sets, same dtype and device as ``x``.
        x_weights : torch.Tensor, shape (P, Q), optional
            Non-negative masses of ``x`` (normalised per problem); None means uniform.
        y_weights : torch.Tensor, shape (P, K), optional
            Non-negative masses of ``y`` (normalised per problem); None means uniform.

        Returns
        -------
        torch.Tensor, shape (P,)
            Squared distances, dtype and device of ``x``.
        """
        validate = check_bool(getattr(self, "validate", True), "validate")
        xw, yw = check_inputs(x, y, x_weights, y_weights, validate)
        return self._compute(x, y, xw, yw)

    def _compute(self, x, y, a, b):  # pragma: no cover - abstract
        raise NotImplementedError
