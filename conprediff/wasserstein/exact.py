r"""The reference metric: POT's network simplex, one problem at a time (:class:`ExactW2`)."""

from __future__ import annotations

import numpy as np
import torch

from conprediff._validation import check_int

from .base import W2Metric, normalise, sq_cost

__all__ = ["ExactW2"]


class ExactW2(W2Metric):
    r"""Exact squared W2 by POT's network simplex (``ot.emd``), one problem at a time.

    The reference metric: the plan :math:`T^\star_p` of every problem is computed in float64 with
    NumPy on the CPU, and the value is returned as the torch expression

    .. math::
        W_2^2(\mu_p, \nu_p) = \sum_{i,j} T^\star_{p,ij}\, \lVert x_{p,i} - y_{p,j} \rVert^2,

    so that autograd gives, with the plan held fixed, the envelope-theorem gradient
    :math:`\partial W_2^2 / \partial x_{p,i} = 2 \sum_j T^\star_{p,ij} (x_{p,i} - y_{p,j})` (a true
    gradient wherever the optimal plan is unique). Slow: a Python loop over the problems.

    Parameters
    ----------
    num_iter_max : int, default=100000
        Maximum number of network-simplex iterations per problem (POT's ``numItermax``, >= 1).
    validate : bool, default=True
        Check the weights' values (non-negative, positive sum) at every call.

    See Also
    --------
    ot.emd2 : the POT solver this wraps.

    References
    ----------
    * Peyré, G., & Cuturi, M. (2019). Computational optimal transport, ch. 3.
    """

    def __init__(self, num_iter_max: int = 100000, validate: bool = True):
        self.num_iter_max = num_iter_max
        self.validate = validate

    def _compute(self, x, y, a, b):
        import ot

        num_iter_max = check_int(self.num_iter_max, "num_iter_max", 1)
        P, Q, _ = x.shape
        K = y.shape[1]
        cost = sq_cost(x, y)
        M = cost.detach().to("cpu", torch.float64).numpy()
        an = normalise(a, P, Q, x).detach().to("cpu", torch.float64).numpy()
        bn = normalise(b, P, K, x).detach().to("cpu", torch.float64).numpy()
        plans = np.empty((P, Q, K))
        for p in range(P):
            ap = an[p] / an[p].sum()
            bp = bn[p] / bn[p].sum()
            plans[p] = ot.emd(ap, bp, M[p], numItermax=num_iter_max)
        T = torch.from_numpy(plans).to(device=x.device, dtype=x.dtype)
        return (T * cost).sum((1, 2))
