r"""Sliced W2: random directions, then the exact 1-D solver (:class:`SlicedW2`)."""

from __future__ import annotations

import torch

from conprediff._validation import check_int, check_seed

from .base import W2Metric
from .one_d import w2_1d

__all__ = ["SlicedW2"]


def _directions(
    n_projections: int, C: int, seed: int | None, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    r"""``n_projections`` directions ``(L, C)``, uniform on the unit sphere :math:`\mathbb S^{C-1}`.

    Normalised Gaussian draws in float64 on the CPU, from a ``torch.Generator`` seeded with
    ``seed`` (None: torch's global generator), then moved to ``device`` and ``dtype``.
    """
    gen = None
    if seed is not None:
        gen = torch.Generator(device="cpu")
        gen.manual_seed(seed)
    theta = torch.randn(n_projections, C, generator=gen, dtype=torch.float64)
    theta = theta / theta.norm(dim=1, keepdim=True).clamp_min(1e-300)
    return theta.to(device=device, dtype=dtype)


class SlicedW2(W2Metric):
    r"""Sliced squared W2: the exact 1-D solver averaged over random directions.

    .. math::
        \mathrm{SW}_2^2(\mu, \nu) \approx \frac1L \sum_{l=1}^{L}
        W_2^2\bigl((\theta_l)_\# \mu, (\theta_l)_\# \nu\bigr), \qquad
        \theta_l \sim \mathcal U(\mathbb S^{C-1}),

    with the same ``L = n_projections`` directions for all problems of a call and the 1-D problems
    solved exactly by :class:`~conprediff.wasserstein.SortedW2`'s solver (weights included). It is
    a distance in its own right, a lower bound of :math:`W_2^2` (each projection is
    1-Lipschitz); for isotropic differences it is about :math:`W_2^2 / C`. For ``C == 1`` it
    equals :class:`~conprediff.wasserstein.SortedW2`.

    Parameters
    ----------
    n_projections : int, default=64
        Number of random directions ``L`` (>= 1).
    seed : int or None, default=None
        Seed of the directions (a ``torch.Generator`` on the CPU): two calls with the same seed
        use the same directions. None draws fresh directions from torch's global generator at
        every call (an unbiased stochastic estimate, suitable for a training loss).
    validate : bool, default=True
        Check the weights' values (non-negative, positive sum) at every call.

    References
    ----------
    * Bonneel, N., Rabin, J., Peyré, G., & Pfister, H. (2015). Sliced and Radon Wasserstein
       barycenters of measures. JMIV 51(1), 22-45.
    """

    def __init__(self, n_projections: int = 64, seed: int | None = None, validate: bool = True):
        self.n_projections = n_projections
        self.seed = seed
        self.validate = validate

    def _compute(self, x, y, a, b):
        L = check_int(self.n_projections, "n_projections", 1)
        seed = check_seed(self.seed)
        P, Q, C = x.shape
        K = y.shape[1]
        theta = _directions(L, C, seed, x.device, x.dtype)  # (L, C)
        # (P, n, L) -> (P, L, n) -> (P * L, n)
        xp = (x @ theta.T).transpose(1, 2).reshape(P * L, Q)
        yp = (y @ theta.T).transpose(1, 2).reshape(P * L, K)
        ar = None if a is None else a.unsqueeze(1).expand(P, L, Q).reshape(P * L, Q)
        br = None if b is None else b.unsqueeze(1).expand(P, L, K).reshape(P * L, K)
        return w2_1d(xp, yp, ar, br).view(P, L).mean(-1)
