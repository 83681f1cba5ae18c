r"""Entropic optimal transport: batched log-domain Sinkhorn with ε-scaling (:class:`SinkhornW2`)."""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from conprediff._validation import check_bool, check_int, check_real

from .base import W2Metric, normalise, sq_cost, weighted_mean

__all__ = ["SinkhornW2"]

_EPS_DECAY = 0.8  # epsilon-scaling factor per iteration


def _log_weights(w: torch.Tensor) -> torch.Tensor:
    """``log w`` with ``log 0 = -inf``, without an infinite gradient on the weights."""
    tiny = torch.finfo(w.dtype).tiny
    return torch.where(w > 0, w.clamp_min(tiny).log(), torch.full_like(w, -float("inf")))


def _round_to_marginals(T: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Project a positive plan ``(P, Q, K)`` onto the plans with marginals ``a`` and ``b``.

    Altschuler, Weed & Rigollet (2017), algorithm 2: scale down the rows, then the columns, that
    carry too much mass, and add the rank-one correction of the remaining deficits.
    """
    tiny = torch.finfo(T.dtype).tiny
    row = T.sum(2)
    T = T * torch.where(row > a, a / row.clamp_min(tiny), 1.0).unsqueeze(2)
    col = T.sum(1)
    T = T * torch.where(col > b, b / col.clamp_min(tiny), 1.0).unsqueeze(1)
    da = (a - T.sum(2)).clamp_min(0)
    db = (b - T.sum(1)).clamp_min(0)
    tot = da.sum(1, keepdim=True)
    scale = torch.where(tot > 0, 1.0 / tot.clamp_min(tiny), 0.0)
    return T + (da * scale).unsqueeze(2) * db.unsqueeze(1)


def _sinkhorn_step(f, g, C, la, lb, eps):
    """One log-domain Sinkhorn iteration: potentials ``(P, Q)``, ``(P, K)``, ``eps`` ``(P, 1)``."""
    e3 = eps.unsqueeze(-1)
    f = -eps * torch.logsumexp(lb.unsqueeze(1) + (g.unsqueeze(1) - C) / e3, dim=2)
    g = -eps * torch.logsumexp(la.unsqueeze(2) + (f.unsqueeze(2) - C) / e3, dim=1)
    return f, g


class SinkhornW2(W2Metric):
    r"""Entropic approximation of squared W2: batched log-domain Sinkhorn with ε-scaling.

    Each problem's two sets are first centred at their weighted means
    :math:`m_x, m_y` (the squared cost decomposes exactly as
    :math:`W_2^2 = \lVert m_x - m_y \rVert^2 + W_2^2(\bar\mu, \bar\nu)` between the centred
    measures), and entropic OT is solved between the centred sets with the cost
    :math:`C_{ij} = \lVert \bar x_i - \bar y_j \rVert^2` and a regularisation relative to the
    spread of the data,

    .. math::
        \varepsilon_p = \varepsilon \,
        \bigl(\operatorname{tr}\Sigma_x + \operatorname{tr}\Sigma_y\bigr),
        \qquad T^\varepsilon = \operatorname*{argmin}_{T \in U(a, b)} \langle T, C \rangle
        + \varepsilon_p \operatorname{KL}(T \,\Vert\, a \otimes b),

    so that the result does not depend on the units of the data (scaling both sets by ``s``
    multiplies it by ``s²`` exactly) nor on a shift of either set. The log-domain iterations
    :math:`f_i = -\varepsilon \log \sum_j b_j e^{(g_j - C_{ij})/\varepsilon}`,
    :math:`g_j = -\varepsilon \log \sum_i a_i e^{(f_i - C_{ij})/\varepsilon}` start at
    :math:`\varepsilon = \operatorname{tr}\Sigma_x + \operatorname{tr}\Sigma_y` and multiply it by
    0.8 at every iteration down to :math:`\varepsilon_p` (ε-scaling), then continue at
    :math:`\varepsilon_p` for the rest of the ``n_iter`` iterations.

    **Returned quantity** (not debiased): the transport cost of the entropic plan, without the
    entropy term,

    .. math::
        \mathrm{OT}_\varepsilon(x, y) = \lVert m_x - m_y \rVert^2 + \langle T^\varepsilon, C \rangle
        \;\ge\; W_2^2 \quad\text{and}\quad
        \mathrm{OT}_\varepsilon - W_2^2 \le \varepsilon_p \log \min(Q, K)

    at convergence. With ``debiased=True``, the Sinkhorn divergence built on the same quantity with
    the same :math:`\varepsilon_p` (that of the pair ``(x, y)``):
    :math:`S(x, y) = \mathrm{OT}_\varepsilon(x, y) - \tfrac12 \mathrm{OT}_\varepsilon(x, x) -
    \tfrac12 \mathrm{OT}_\varepsilon(y, y)`, which is exactly 0 for ``y = x``.

    The last plan is rounded onto the transport polytope :math:`U(a, b)` (Altschuler et al.,
    2017), so the value is always the cost of a feasible plan (never below :math:`W_2^2`), even
    before convergence.

    Gradients are those of the returned value, by autograd through the iterations; each
    iteration is checkpointed, so memory stays of the order of one ``(P, Q, K)`` cost matrix.

    Parameters
    ----------
    epsilon : float, default=1e-2
        Regularisation relative to :math:`\operatorname{tr}\Sigma_x + \operatorname{tr}\Sigma_y`
        (> 0).
    n_iter : int, default=100
        Number of Sinkhorn iterations (each updates both potentials), ε-scaling included (>= 1).
    debiased : bool, default=False
        Return the Sinkhorn divergence instead of the entropic transport cost.
    validate : bool, default=True
        Check the weights' values (non-negative, positive sum) at every call.

    References
    ----------
    * Peyré, G., & Cuturi, M. (2019). Computational optimal transport, ch. 4.
    * Feydy, J. et al. (2019). Interpolating between optimal transport and MMD using Sinkhorn
       divergences. AISTATS.
    * Altschuler, J., Weed, J., & Rigollet, P. (2017). Near-linear time approximation
       algorithms for optimal transport via Sinkhorn iteration. NeurIPS.
    """

    def __init__(
        self,
        epsilon: float = 1e-2,
        n_iter: int = 100,
        debiased: bool = False,
        validate: bool = True,
    ):
        self.epsilon = epsilon
        self.n_iter = n_iter
        self.debiased = debiased
        self.validate = validate

    def _compute(self, x, y, a, b):
        epsilon = check_real(self.epsilon, "epsilon", 0.0, low_open=True)
        n_iter = check_int(self.n_iter, "n_iter", 1)
        debiased = check_bool(self.debiased, "debiased")
        P, Q, _ = x.shape
        K = y.shape[1]
        a = normalise(a, P, Q, x)
        b = normalise(b, P, K, x)
        mx, my = weighted_mean(x, a), weighted_mean(y, b)
        xc, yc = x - mx.unsqueeze(1), y - my.unsqueeze(1)
        spread = (weighted_mean(xc * xc, a) + weighted_mean(yc * yc, b)).sum(-1)
        spread = torch.where(spread > 0, spread, torch.ones_like(spread))
        la, lb = _log_weights(a), _log_weights(b)
        run = (epsilon, n_iter, spread)
        ot_xy = _centred_cost(xc, yc, a, b, la, lb, *run)
        mean_term = (mx - my).pow(2).sum(-1)
        if not debiased:
            return mean_term + ot_xy
        ot_xx = _centred_cost(xc, xc, a, a, la, la, *run)
        ot_yy = _centred_cost(yc, yc, b, b, lb, lb, *run)
        return mean_term + ot_xy - 0.5 * (ot_xx + ot_yy)


def _centred_cost(xc, yc, a, b, la, lb, epsilon: float, n_iter: int, spread: torch.Tensor):
    r"""Transport cost :math:`\langle T^\varepsilon, C \rangle` ``(P,)`` between centred sets.

    ``n_iter`` Sinkhorn iterations with ε-scaling from ``spread`` ``(P,)`` down to
    ``epsilon * spread``, then the last plan rounded onto the marginals ``a``, ``b``.
    """
    C = sq_cost(xc, yc)
    f = C.new_zeros(C.shape[:2])
    g = C.new_zeros(C.shape[0], C.shape[2])
    use_ckpt = torch.is_grad_enabled() and C.requires_grad
    for k in range(n_iter):
        rel = max(epsilon, _EPS_DECAY**k)
        eps = (rel * spread).unsqueeze(-1)
        if use_ckpt:
            f, g = checkpoint(_sinkhorn_step, f, g, C, la, lb, eps, use_reentrant=False)
        else:
            f, g = _sinkhorn_step(f, g, C, la, lb, eps)
    # plan of the last iteration (eps is then epsilon * spread once n_iter exceeds the scaling)
    logT = (f.unsqueeze(2) + g.unsqueeze(1) - C) / eps.unsqueeze(-1)
    T = _round_to_marginals(torch.exp(logT + la.unsqueeze(2) + lb.unsqueeze(1)), a, b)
    return (T * C).sum((1, 2))
