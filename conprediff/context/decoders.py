r"""Context decoders: from a point's feature :math:`h_i` to a predicted neighbour distribution.

Both decoders share the Gaussian latent of the ConPreDiff deck,

.. math::

    z_i = \mathrm{SiLU}(W_h h_i + W_t\, e(t_i) + c), \qquad
    \mu_i = \mathrm{FNN}_\mu(h_i, t_i) = W_\mu z_i + b_\mu, \qquad
    \log \sigma_i^2 = \mathrm{FNN}_\sigma(h_i, t_i) = W_\sigma z_i + b_\sigma,

with :math:`e(t)` the sinusoidal timestep embedding and :math:`\log\sigma^2` clamped to
``[LOGVAR_MIN, LOGVAR_MAX]``. They differ in the output map :math:`\mathrm{FNN}_n`:

* :class:`SampledDecoder` draws :math:`\xi_{iq} = \mu_i + \sigma_i \odot \varepsilon_{iq}`,
  :math:`\varepsilon_{iq} \sim \mathcal{N}(0, I)`, :math:`q = 1..Q` (reparameterisation) and maps
  each through a small MLP; the Q outputs :math:`\hat y_{iq}` form the predicted set.
* :class:`GaussianDecoder` uses an affine :math:`\mathrm{FNN}_n(\xi) = A \xi + b`, so the predicted
  distribution is exactly :math:`\mathcal{N}(A\mu_i + b,\ A\,\mathrm{diag}(\sigma_i^2) A^\top)` and
  needs no sampling.

Both run on the chosen points of every training batch, so they are deliberately narrow.
"""

from __future__ import annotations

import torch
from torch import nn

from conprediff._validation import check_int
from conprediff.layers import timestep_embedding

__all__ = ["SampledDecoder", "GaussianDecoder", "LOGVAR_MIN", "LOGVAR_MAX"]

#: Clamp range of the predicted log-variance :math:`\log\sigma^2` (σ from about 7e-3 to 7.4).
LOGVAR_MIN = -10.0
LOGVAR_MAX = 4.0


def _check_dims(**dims: int) -> list[int]:
    """Each of ``dims`` as an ``int`` >= 1, in order (``TypeError`` / ``ValueError`` naming it)."""
    return [check_int(value, name, 1) for name, value in dims.items()]


class _GaussianLatent(nn.Module):
    """The shared trunk: ``(h, t) -> (mu, logvar)`` in the latent space."""

    def __init__(self, in_features: int, latent_dim: int, hidden: int, time_dim: int):
        super().__init__()
        in_features, latent_dim, hidden, time_dim = _check_dims(
            in_features=in_features, latent_dim=latent_dim, hidden=hidden, time_dim=time_dim
        )
        self.in_features = in_features
        self.latent_dim = latent_dim
        self.hidden = hidden
        self.time_dim = time_dim
        self.feature_proj = nn.Linear(in_features, hidden)
        self.time_proj = nn.Linear(time_dim, hidden, bias=False)
        self.heads = nn.Linear(hidden, 2 * latent_dim)  # [mu | logvar]
        with torch.no_grad():  # start at mu = W z (default init), sigma = 1
            self.heads.weight[latent_dim:].mul_(0.1)
            self.heads.bias.zero_()

    def _check_inputs(self, h: torch.Tensor, t: torch.Tensor) -> None:
        if h.ndim != 2 or h.shape[1] != self.in_features:
            raise ValueError(f"h must be (P, {self.in_features}), got {tuple(h.shape)}")
        if t.shape != (h.shape[0],):
            raise ValueError(f"t must be ({h.shape[0]},) timesteps, got {tuple(t.shape)}")

    def latent(self, h: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Latent mean and clamped log-variance.

        Parameters
        ----------
        h : torch.Tensor
            ``(P, F)`` point features.
        t : torch.Tensor
            ``(P,)`` integer timesteps of the points.

        Returns
        -------
        mu : torch.Tensor
            ``(P, L)`` :math:`\mu = \mathrm{FNN}_\mu(h, t)`.
        logvar : torch.Tensor
            ``(P, L)`` :math:`\log\sigma^2 = \mathrm{FNN}_\sigma(h, t)`, clamped to
            ``[LOGVAR_MIN, LOGVAR_MAX]``.
        """
        self._check_inputs(h, t)
        # a batch has few distinct timesteps (one per image): embed those and index back
        t_unique, inverse = torch.unique(t, return_inverse=True)
        emb = timestep_embedding(t_unique, self.time_dim).to(h.dtype)
        # index_select rather than [inverse]: its backward is a fast index_add, not index_put
        time_bias = torch.index_select(self.time_proj(emb), 0, inverse)
        z = nn.functional.silu(self.feature_proj(h) + time_bias)
        mu, logvar = self.heads(z).chunk(2, dim=-1)
        return mu, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)


class SampledDecoder(_GaussianLatent):
    r"""Gaussian-reparameterised context decoder with a non-linear output map.

    .. math::

        \xi_{iq} = \mu_i + \sigma_i \odot \varepsilon_{iq}, \quad
        \hat y_{iq} = \mathrm{FNN}_n(\xi_{iq})
        = W_2\, \mathrm{SiLU}(W_1 \xi_{iq} + b_1) + b_2, \quad q = 1, \dots, Q,

    with :math:`\mu_i, \log\sigma_i^2` from the shared trunk (see the module docstring). The
    predicted distribution :math:`\psi_n(h_i, t)` is the uniform empirical distribution of the
    :math:`\hat y_{iq}`.

    Parameters
    ----------
    in_features : int
        Feature size ``F`` of :math:`h_i`.
    out_channels : int
        Channels ``C`` of the targets.
    latent_dim : int, default=16
        Size ``L`` of :math:`\xi`.
    hidden : int, default=64
        Width of the trunk's hidden layer (one row per point).
    n_samples : int, default=8
        Default number ``Q`` of samples per point.
    time_dim : int, default=32
        Size of the sinusoidal timestep embedding.
    output_hidden : int, default=16
        Width of :math:`\mathrm{FNN}_n`'s hidden layer. It runs on ``P * Q`` rows (400k for a
        64 x 28 x 28 batch with ``Q = 8``), so it is the decoder's main cost and is kept narrow.

    Notes
    -----
    :math:`W_2` starts at a small scale (std 0.01) and :math:`b_2` at zero, so the first
    predictions are close to 0 (the centre of normalised data) rather than arbitrary.
    """

    def __init__(
        self,
        in_features: int,
        out_channels: int,
        latent_dim: int = 16,
        hidden: int = 64,
        n_samples: int = 8,
        time_dim: int = 32,
        output_hidden: int = 16,
    ):
        super().__init__(in_features, latent_dim, hidden, time_dim)
        out_channels, n_samples, output_hidden = _check_dims(
            out_channels=out_channels, n_samples=n_samples, output_hidden=output_hidden
        )
        self.out_channels = out_channels
        self.n_samples = n_samples
        self.output = nn.Sequential(
            nn.Linear(self.latent_dim, output_hidden),
            nn.SiLU(),
            nn.Linear(output_hidden, out_channels),
        )
        with torch.no_grad():
            nn.init.normal_(self.output[2].weight, std=0.01)
            self.output[2].bias.zero_()

    def sample_latent(
        self,
        h: torch.Tensor,
        t: torch.Tensor,
        n_samples: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        r"""Reparameterised latent samples :math:`\xi_{iq} = \mu_i + \sigma_i \odot \epsilon_{iq}`.

        Parameters
        ----------
        h : torch.Tensor
            ``(P, F)`` point features.
        t : torch.Tensor
            ``(P,)`` integer timesteps.
        n_samples : int, optional
            ``Q``; defaults to ``self.n_samples``.
        generator : torch.Generator, optional
            Source of :math:`\varepsilon` (on ``h``'s device), for reproducible samples.

        Returns
        -------
        torch.Tensor
            ``(P, Q, L)``, differentiable in :math:`\mu` and :math:`\sigma`.
        """
        (q,) = _check_dims(n_samples=self.n_samples if n_samples is None else n_samples)
        mu, logvar = self.latent(h, t)
        eps = torch.randn(
            (mu.shape[0], q, mu.shape[1]), generator=generator, device=mu.device, dtype=mu.dtype
        )
        return torch.addcmul(mu[:, None], (0.5 * logvar).exp()[:, None], eps)

    def forward(
        self,
        h: torch.Tensor,
        t: torch.Tensor,
        generator: torch.Generator | None = None,
        n_samples: int | None = None,
    ) -> torch.Tensor:
        r"""Predicted neighbour set :math:`\hat y_{iq} = \mathrm{FNN}_n(\xi_{iq})`.

        Parameters
        ----------
        h : torch.Tensor
            ``(P, F)`` point features.
        t : torch.Tensor
            ``(P,)`` integer timesteps.
        generator : torch.Generator, optional
            Source of the reparameterisation noise.
        n_samples : int, optional
            ``Q``; defaults to ``self.n_samples``.

        Returns
        -------
        torch.Tensor
            ``(P, Q, C)`` samples.
        """
        return self.output(self.sample_latent(h, t, n_samples, generator))


class GaussianDecoder(_GaussianLatent):
    r"""Context decoder with an affine output map: a closed-form Gaussian prediction.

    With :math:`\mathrm{FNN}_n(\xi) = A \xi + b` and
    :math:`\xi_i \sim \mathcal{N}(\mu_i, \mathrm{diag}(\sigma_i^2))`, the predicted distribution is

    .. math::

        \psi_n(h_i, t) = \mathcal{N}\big(A \mu_i + b,\ A\, \mathrm{diag}(\sigma_i^2)\, A^\top\big),

    which is compared with the neighbours' moment-matched Gaussian by the Bures–Wasserstein
    formula, with no sampling.

    Parameters
    ----------
    in_features, out_channels, latent_dim, hidden, time_dim : int
        As for :class:`SampledDecoder`: feature size ``F``, target channels ``C``, size ``L``
        of :math:`\xi` (default 16), the trunk's width (64), the timestep embedding's (32).
    """

    def __init__(
        self,
        in_features: int,
        out_channels: int,
        latent_dim: int = 16,
        hidden: int = 64,
        time_dim: int = 32,
    ):
        super().__init__(in_features, latent_dim, hidden, time_dim)
        (out_channels,) = _check_dims(out_channels=out_channels)
        self.out_channels = out_channels
        self.output = nn.Linear(self.latent_dim, out_channels)  # A, b

    def forward(self, h: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Mean and covariance of the predicted Gaussian.

        Parameters
        ----------
        h : torch.Tensor
            ``(P, F)`` point features.
        t : torch.Tensor
            ``(P,)`` integer timesteps.

        Returns
        -------
        mean : torch.Tensor
            ``(P, C)`` :math:`A\mu_i + b`.
        cov : torch.Tensor
            ``(P, C, C)`` :math:`A\,\mathrm{diag}(\sigma_i^2)A^\top`, symmetric positive
            semi-definite (built as :math:`M M^\top`, :math:`M = A\,\mathrm{diag}(\sigma_i)`).
        """
        mu, logvar = self.latent(h, t)
        mean = self.output(mu)
        m = self.output.weight.to(mu.dtype)[None] * (0.5 * logvar).exp()[:, None, :]  # (P, C, L)
        cov = m @ m.transpose(1, 2)
        return mean, 0.5 * (cov + cov.transpose(1, 2))

    def sample(
        self,
        h: torch.Tensor,
        t: torch.Tensor,
        n_samples: int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        r"""Draw ``Q`` samples :math:`A(\mu_i + \sigma_i \odot \varepsilon_{iq}) + b`.

        Not used in training (the closed form replaces it); useful to check the closed form and to
        plug this decoder into a sample-based metric.

        Returns
        -------
        torch.Tensor
            ``(P, Q, C)``.
        """
        (n_samples,) = _check_dims(n_samples=n_samples)
        mu, logvar = self.latent(h, t)
        eps = torch.randn(
            (mu.shape[0], n_samples, mu.shape[1]),
            generator=generator,
            device=mu.device,
            dtype=mu.dtype,
        )
        return self.output(torch.addcmul(mu[:, None], (0.5 * logvar).exp()[:, None], eps))
