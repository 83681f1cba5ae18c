r"""Noise schedules for Gaussian diffusion.

A schedule fixes the forward process

.. math::

    q(x_t \mid x_0) = \mathcal{N}\big(\sqrt{\bar\alpha_t}\, x_0,\ (1 - \bar\alpha_t) I\big),
    \qquad t = 0, \dots, T - 1,

through the cumulative product :math:`\bar\alpha_t = \prod_{s \le t} (1 - \beta_s)`.
This module imports nothing else from conprediff but its input checks.

Timesteps are integers in ``[0, T)``: ``t = 0`` is the least noisy step (its :math:`x_{t-1}` is
the clean sample :math:`x_0`), ``t = T - 1`` the noisiest.
"""

from __future__ import annotations

import math

import torch
from sklearn.base import BaseEstimator

from conprediff._validation import check_choice, check_int

__all__ = [
    "NoiseSchedule",
    "cosine_betas",
    "gather",
    "linear_betas",
    "make_betas",
    "sigmoid_betas",
]


def linear_betas(
    timesteps: int, beta_start: float = 1e-4, beta_end: float = 2e-2, max_beta: float = 0.999
) -> torch.Tensor:
    r"""Linearly spaced :math:`\beta_t` (Ho et al. 2020).

    The endpoints are given for ``T = 1000`` and rescaled by ``1000 / T`` so that shorter
    schedules reach about the same final :math:`\bar\alpha_T`; betas are capped at ``max_beta``
    (very short schedules would otherwise exceed 1).

    Returns
    -------
    torch.Tensor
        ``(T,)`` float64 betas in ``(0, max_beta]``.
    """
    timesteps = check_int(timesteps, "timesteps", 1)
    scale = 1000.0 / timesteps
    betas = torch.linspace(beta_start * scale, beta_end * scale, timesteps, dtype=torch.float64)
    return betas.clamp(max=max_beta)


def _unit_grid(timesteps: int) -> torch.Tensor:
    """``(T + 1,)`` float64 ``t / T`` for ``t = 0..T``, ``timesteps`` checked."""
    timesteps = check_int(timesteps, "timesteps", 1)
    return torch.arange(timesteps + 1, dtype=torch.float64) / timesteps


def cosine_betas(timesteps: int, s: float = 8e-3, max_beta: float = 0.999) -> torch.Tensor:
    r"""Cosine schedule (Nichol & Dhariwal 2021).

    .. math::

        \bar\alpha(t) = \frac{f(t)}{f(0)}, \quad f(t) = \cos^2\!\Big(\frac{t/T + s}{1 + s}
        \cdot \frac{\pi}{2}\Big), \quad \beta_t = \min\!\Big(1 - \frac{\bar\alpha(t+1)}
        {\bar\alpha(t)},\ \beta_{\max}\Big)

    Returns
    -------
    torch.Tensor
        ``(T,)`` float64 betas in ``(0, max_beta]``.
    """
    steps = _unit_grid(timesteps)
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
    return betas.clamp(1e-8, max_beta)


def sigmoid_betas(
    timesteps: int, start: float = -3.0, end: float = 3.0, tau: float = 1.0, max_beta: float = 0.999
) -> torch.Tensor:
    r"""Sigmoid schedule (Jabri et al. 2022, "Scalable adaptive computation").

    .. math::

        \bar\alpha(t) = \frac{\sigma(-(\mathrm{end} - (\mathrm{end}-\mathrm{start}) (1 - t/T))
        / \tau) - v_{\mathrm{end}}}{v_{\mathrm{start}} - v_{\mathrm{end}}}

    with :math:`v = \sigma(\cdot/\tau)` at the two ends, then
    :math:`\beta_t = 1 - \bar\alpha(t+1) / \bar\alpha(t)`.

    Returns
    -------
    torch.Tensor
        ``(T,)`` float64 betas in ``(0, max_beta]``.
    """
    steps = _unit_grid(timesteps)
    v_start = torch.sigmoid(torch.tensor(start / tau, dtype=torch.float64))
    v_end = torch.sigmoid(torch.tensor(end / tau, dtype=torch.float64))
    alpha_bar = (-torch.sigmoid((steps * (end - start) + start) / tau) + v_end) / (v_end - v_start)
    alpha_bar = alpha_bar / alpha_bar[0]
    betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
    return betas.clamp(1e-8, max_beta)


_BETAS = {"linear": linear_betas, "cosine": cosine_betas, "sigmoid": sigmoid_betas}


def make_betas(kind: str, timesteps: int) -> torch.Tensor:
    """Betas of a named schedule: ``'linear'``, ``'cosine'`` or ``'sigmoid'``; ``(T,)`` float64.

    Raises ``TypeError`` for a ``kind`` that is not a string or ``timesteps`` that is not an
    integer, ``ValueError`` for an unknown ``kind`` or ``timesteps < 2``.
    """
    check_choice(kind, "schedule kind", sorted(_BETAS))
    return _BETAS[kind](check_int(timesteps, "timesteps", 2))


def gather(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    r"""Per-timestep coefficients :math:`c_t`, broadcast to the shape of ``like``.

    Parameters
    ----------
    values : torch.Tensor
        ``(T,)`` table of a coefficient over the timesteps (e.g. ``schedule.alpha_bar``).
    t : torch.Tensor
        ``(B,)`` integer timesteps, one per sample of ``like``.
    like : torch.Tensor
        ``(B, ...)`` the tensor the coefficients will multiply.

    Returns
    -------
    torch.Tensor
        ``(B, 1, ..., 1)`` (as many singleton axes as ``like`` has after the first):
        ``values[t[b]]`` in row ``b``, in ``like``'s dtype and on its device, so
        ``gather(values, t, x) * x`` scales each sample by its own timestep's coefficient.
    """
    out = values.to(like.device)[t.to(like.device).long()]
    return out.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


#: The former private name of :func:`gather`, kept for the modules that still import it.
_gather = gather


class NoiseSchedule(BaseEstimator):
    r"""A discrete-time Gaussian noise schedule and its closed forms.

    Parameters
    ----------
    kind : {'linear', 'cosine', 'sigmoid'}, default='cosine'
        The beta schedule.
    timesteps : int, default=1000
        Number of diffusion steps ``T``, at least 2 (checked when the tables are first used).

    Attributes
    ----------
    betas, alphas, alpha_bar, alpha_bar_prev : torch.Tensor
        ``(T,)`` float64 tables; ``alpha_bar_prev[0] = 1``.
    posterior_variance : torch.Tensor
        ``(T,)`` :math:`\tilde\beta_t = \beta_t (1-\bar\alpha_{t-1}) / (1-\bar\alpha_t)`.

    Notes
    -----
    All tables are kept in float64 on the CPU and cast to the dtype and device of the tensor they
    are applied to, so a schedule can serve models on any device and in any precision.
    """

    def __init__(self, kind: str = "cosine", timesteps: int = 1000):
        self.kind = kind
        self.timesteps = timesteps

    # Tables are derived from the two parameters on first use and re-derived if they change.
    def _tables(self) -> dict[str, torch.Tensor]:
        key = (self.kind, self.timesteps)
        cache = self.__dict__.get("_cache")
        if cache is None or cache[0] != key:
            betas = make_betas(self.kind, self.timesteps)
            alphas = 1.0 - betas
            alpha_bar = torch.cumprod(alphas, 0)
            alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
            tables = {
                "betas": betas,
                "alphas": alphas,
                "alpha_bar": alpha_bar,
                "alpha_bar_prev": alpha_bar_prev,
                "posterior_variance": betas * (1 - alpha_bar_prev) / (1 - alpha_bar),
            }
            self.__dict__["_cache"] = (key, tables)
            return tables
        return cache[1]

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_cache", None)
        return state

    betas = property(lambda self: self._tables()["betas"],
                     doc=r"``(T,)`` float64 :math:`\beta_t`.")
    alphas = property(lambda self: self._tables()["alphas"],
                      doc=r"``(T,)`` float64 :math:`\alpha_t = 1 - \beta_t`.")
    alpha_bar = property(lambda self: self._tables()["alpha_bar"],
                         doc=r"``(T,)`` float64 :math:`\bar\alpha_t = \prod_{s \le t} \alpha_s`.")
    alpha_bar_prev = property(lambda self: self._tables()["alpha_bar_prev"],
                              doc=r"``(T,)`` float64 :math:`\bar\alpha_{t-1}` (1 at ``t = 0``).")
    posterior_variance = property(
        lambda self: self._tables()["posterior_variance"],
        doc=r"``(T,)`` float64 :math:`\tilde\beta_t = \beta_t (1 - \bar\alpha_{t-1}) / "
        r"(1 - \bar\alpha_t)`.",
    )

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        r"""Signal-to-noise ratio :math:`\bar\alpha_t / (1 - \bar\alpha_t)` at integer steps ``t``.

        Parameters
        ----------
        t : torch.Tensor
            ``(B,)`` integer timesteps.

        Returns
        -------
        torch.Tensor
            ``(B,)`` float64 on ``t``'s device.
        """
        ab = self.alpha_bar.to(t.device)[t.long()]
        return ab / (1 - ab)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        r"""Draw :math:`x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1-\bar\alpha_t}\, \varepsilon`.

        Parameters
        ----------
        x0 : torch.Tensor
            ``(B, ...)`` clean samples.
        t : torch.Tensor
            ``(B,)`` integer timesteps.
        noise : torch.Tensor
            ``(B, ...)`` standard normal noise :math:`\varepsilon`.

        Returns
        -------
        torch.Tensor
            ``(B, ...)`` noisy samples, in ``x0``'s dtype.
        """
        ab = gather(self.alpha_bar, t, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def posterior(
        self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Mean and variance of :math:`q(x_{t-1} \mid x_t, x_0)`.

        .. math::

            \tilde\mu_t = \frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1-\bar\alpha_t} x_0
            + \frac{\sqrt{\alpha_t}\,(1-\bar\alpha_{t-1})}{1-\bar\alpha_t} x_t, \qquad
            \tilde\beta_t = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t} \beta_t

        Parameters
        ----------
        x0, xt : torch.Tensor
            ``(B, ...)`` clean and noisy samples.
        t : torch.Tensor
            ``(B,)`` integer timesteps.

        Returns
        -------
        mean : torch.Tensor
            ``(B, ...)``.
        variance : torch.Tensor
            ``(B, 1, ..., 1)``, broadcastable against ``mean``; zero at ``t = 0``.
        """
        tab = self._tables()
        b = gather(tab["betas"], t, x0)
        ab = gather(tab["alpha_bar"], t, x0)
        ab_prev = gather(tab["alpha_bar_prev"], t, x0)
        a = gather(tab["alphas"], t, x0)
        coef0 = ab_prev.sqrt() * b / (1 - ab)
        coeft = a.sqrt() * (1 - ab_prev) / (1 - ab)
        return coef0 * x0 + coeft * xt, gather(tab["posterior_variance"], t, x0)

    def predict_x0(self, xt: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        r"""Clean sample: :math:`\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\hat\varepsilon)
        / \sqrt{\bar\alpha_t}`; shapes as ``xt``."""
        ab = gather(self.alpha_bar, t, xt)
        return (xt - (1 - ab).sqrt() * eps) / ab.sqrt()

    def predict_eps(self, xt: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        r"""Noise from clean sample: :math:`\hat\varepsilon = (x_t - \sqrt{\bar\alpha_t}\,\hat x_0)
        / \sqrt{1-\bar\alpha_t}`; shapes as ``xt``."""
        ab = gather(self.alpha_bar, t, xt)
        return (xt - ab.sqrt() * x0) / (1 - ab).sqrt()

    def velocity(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        r"""The v-target :math:`v = \sqrt{\bar\alpha_t}\,\varepsilon - \sqrt{1-\bar\alpha_t}\,x_0`
        (Salimans & Ho 2022)."""
        ab = gather(self.alpha_bar, t, x0)
        return ab.sqrt() * noise - (1 - ab).sqrt() * x0

    def split_v(
        self, xt: torch.Tensor, t: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Recover :math:`(\hat x_0, \hat\varepsilon)` from a v-prediction:
        :math:`\hat x_0 = \sqrt{\bar\alpha_t} x_t - \sqrt{1-\bar\alpha_t} v`,
        :math:`\hat\varepsilon = \sqrt{1-\bar\alpha_t} x_t + \sqrt{\bar\alpha_t} v`."""
        ab = gather(self.alpha_bar, t, xt)
        return ab.sqrt() * xt - (1 - ab).sqrt() * v, (1 - ab).sqrt() * xt + ab.sqrt() * v
