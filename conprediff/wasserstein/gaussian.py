r"""The Bures–Wasserstein closed form between Gaussians (:class:`GaussianW2`) and its moments."""

from __future__ import annotations

import torch

from conprediff._validation import check_choice

from .base import W2Metric, check_points, check_weights, normalise, shape_str, weighted_mean

__all__ = ["GaussianW2", "weighted_moments"]

_COVARIANCES = ("full", "diag")


def weighted_moments(
    y: torch.Tensor, weights: torch.Tensor | None = None, covariance: str = "full"
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Weighted mean and (population) covariance or variances of ``P`` point sets.

    .. math::
        m = \sum_k w_k y_k, \qquad
        \Sigma = \sum_k w_k (y_k - m)(y_k - m)^\top, \qquad w_k = \frac{w_k}{\sum_l w_l}

    (biased estimator: divided by the total weight, not by ``K - 1``).

    Parameters
    ----------
    y : torch.Tensor, shape (P, K, C)
        Point sets.
    weights : torch.Tensor, shape (P, K), optional
        Non-negative weights with a positive sum per problem (normalised here); None is uniform.
    covariance : {'full', 'diag'}, default='full'
        Return the full covariance matrices or only the variances.

    Returns
    -------
    mean : torch.Tensor, shape (P, C)
    cov : torch.Tensor, shape (P, C, C) for ``'full'``, or (P, C) variances for ``'diag'``
    """
    check_points(y, "y")
    check_choice(covariance, "covariance", _COVARIANCES)
    P, K, _ = y.shape
    w = check_weights(weights, "weights", P, K, "K", y, validate=False)
    w = normalise(w, P, K, y)
    mean = weighted_mean(y, w)
    yc = y - mean.unsqueeze(1)
    if covariance == "diag":
        return mean, weighted_mean(yc * yc, w)
    return mean, torch.einsum("pk,pkc,pkd->pcd", w, yc, yc)


class _SymSqrtm(torch.autograd.Function):
    """Square root of symmetric PSD matrices ``(..., C, C)`` (eigenvalues clamped at 0).

    The backward pass solves the Sylvester equation ``S dS + dS S = dA`` in the eigenbasis, which is
    stable with repeated eigenvalues (unlike differentiating ``eigh``'s eigenvectors); components
    between two zero eigenvalues get a zero (sub)gradient.
    """

    @staticmethod
    def forward(ctx, A):
        lam, V = torch.linalg.eigh(A)
        s = lam.clamp_min(0).sqrt()
        ctx.save_for_backward(s, V)
        return (V * s.unsqueeze(-2)) @ V.mT

    @staticmethod
    def backward(ctx, G):
        s, V = ctx.saved_tensors
        G = 0.5 * (G + G.mT)
        Gt = V.mT @ G @ V
        den = s.unsqueeze(-1) + s.unsqueeze(-2)
        tiny = torch.finfo(s.dtype).tiny
        Gt = torch.where(den > 0, Gt / den.clamp_min(tiny), torch.zeros_like(Gt))
        return V @ Gt @ V.mT


def _sym(A: torch.Tensor) -> torch.Tensor:
    return 0.5 * (A + A.mT)


def _check_moments(covariance: str, mean_x, cov_x, mean_y, cov_y) -> None:
    """Types and shapes of the moments given to :meth:`GaussianW2.from_moments`."""
    names = ("mean_x", "cov_x", "mean_y", "cov_y")
    for name, t in zip(names, (mean_x, cov_x, mean_y, cov_y), strict=True):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if mean_x.ndim != 2:
        raise ValueError(f"mean_x must have shape (P, C), got {shape_str(mean_x)}")
    P, C = mean_x.shape
    if mean_y.shape != mean_x.shape:
        raise ValueError(
            f"mean_y must have the shape of mean_x {shape_str(mean_x)}, got {shape_str(mean_y)}"
        )
    want = (P, C) if covariance == "diag" else (P, C, C)
    want_s = "(P, C)" if covariance == "diag" else "(P, C, C)"
    for name, t in (("cov_x", cov_x), ("cov_y", cov_y)):
        if tuple(t.shape) != want:
            raise ValueError(
                f"{name} must have shape {want_s} = {want} for covariance="
                f"{covariance!r}, got {shape_str(t)}"
            )


class GaussianW2(W2Metric):
    r"""Bures–Wasserstein closed form between the moment-matched Gaussians of ``x`` and ``y``.

    With the weighted means and population covariances of :func:`weighted_moments`,

    .. math::
        W_2^2\bigl(\mathcal N(m_x, \Sigma_x), \mathcal N(m_y, \Sigma_y)\bigr)
        = \lVert m_x - m_y \rVert^2 + \operatorname{tr}\Bigl(\Sigma_x + \Sigma_y
        - 2 \bigl(\Sigma_y^{1/2} \Sigma_x \Sigma_y^{1/2}\bigr)^{1/2}\Bigr)

    and, for ``covariance='diag'``, :math:`\lVert m_x - m_y \rVert^2 + \sum_c (\sigma_{x,c} -
    \sigma_{y,c})^2`. It is the W2 distance between the Gaussians, not between the point sets
    (equal to it when both sets are Gaussian, e.g. the affine decoder's prediction); it is a lower
    bound of the point sets' :math:`W_2^2` (Gelbrich's bound). The matrix square roots use
    ``torch.linalg.eigh`` with eigenvalues clamped at 0 and a Sylvester-equation backward pass
    that is stable with repeated or zero eigenvalues.

    Parameters
    ----------
    covariance : {'diag', 'full'}, default='diag'
        Moment-match with diagonal (independent channels) or full covariance matrices.
    validate : bool, default=True
        Check the weights' values (non-negative, positive sum) at every call.

    See Also
    --------
    weighted_moments, ot.gaussian.bures_wasserstein_distance

    References
    ----------
    * Dowson, D. C., & Landau, B. V. (1982). The Fréchet distance between multivariate normal
       distributions. Journal of Multivariate Analysis, 12(3), 450-455.
    * Givens, C. R., & Shortt, R. M. (1984). A class of Wasserstein metrics for probability
       distributions. Michigan Mathematical Journal, 31(2), 231-240.
    """

    def __init__(self, covariance: str = "diag", validate: bool = True):
        self.covariance = covariance
        self.validate = validate

    def _compute(self, x, y, a, b):
        covariance = check_choice(self.covariance, "covariance", _COVARIANCES)
        mx, cx = weighted_moments(x, a, covariance)
        my, cy = weighted_moments(y, b, covariance)
        return self._closed_form(mx, cx, my, cy)

    def from_moments(
        self,
        mean_x: torch.Tensor,
        cov_x: torch.Tensor,
        mean_y: torch.Tensor,
        cov_y: torch.Tensor,
    ) -> torch.Tensor:
        r"""Squared W2 between Gaussians given by their moments.

        Parameters
        ----------
        mean_x, mean_y : torch.Tensor, shape (P, C)
            Means.
        cov_x, cov_y : torch.Tensor
            Covariances, shape (P, C, C) (symmetric positive semi-definite) when
            ``covariance='full'``, or variances, shape (P, C) (non-negative), when ``'diag'``.

        Returns
        -------
        torch.Tensor, shape (P,)
            :math:`\lVert m_x - m_y \rVert^2 + \mathcal B^2(\Sigma_x, \Sigma_y)`.
        """
        covariance = check_choice(self.covariance, "covariance", _COVARIANCES)
        _check_moments(covariance, mean_x, cov_x, mean_y, cov_y)
        return self._closed_form(mean_x, cov_x, mean_y, cov_y)

    def _closed_form(self, mx, cx, my, cy):
        mean_term = (mx - my).pow(2).sum(-1)
        tiny = torch.finfo(cx.dtype).tiny
        if self.covariance == "diag":
            d = cx.clamp_min(tiny).sqrt() - cy.clamp_min(tiny).sqrt()
            return mean_term + (d * d).sum(-1)
        sy = _SymSqrtm.apply(_sym(cy))
        cross = torch.linalg.eigvalsh(_sym(sy @ cx @ sy))
        cross = cross.clamp_min(tiny).sqrt().sum(-1)
        trace = torch.diagonal(cx, dim1=-2, dim2=-1).sum(-1) + torch.diagonal(
            cy, dim1=-2, dim2=-1
        ).sum(-1)
        return mean_term + (trace - 2 * cross).clamp_min(0)
