r"""Gaussian diffusion: training loss and reverse steps as small pure functions.

Every function takes tensors and a :class:`~conprediff.schedules.NoiseSchedule` and keeps no
hidden state. A model's output ``out`` is interpreted according to ``prediction``:

* ``'eps'``: the noise :math:`\varepsilon` (Ho et al. 2020);
* ``'v'``: the velocity :math:`v = \sqrt{\bar\alpha_t}\varepsilon - \sqrt{1-\bar\alpha_t}x_0`
  (Salimans & Ho 2022);
* ``'x0'``: the clean sample :math:`x_0`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .._validation import check_int
from ..schedules import NoiseSchedule, gather

__all__ = [
    "PREDICTIONS",
    "check_prediction",
    "training_target",
    "diffusion_loss",
    "min_snr_weight",
    "to_x0_eps",
    "ddpm_step",
    "ddpm_update",
    "ddim_step",
    "ddim_update",
    "ddim_timesteps",
    "sample_loop",
]

PREDICTIONS = ("eps", "v", "x0")

#: ``denoise(x_t, t) -> model output`` with ``x_t`` ``(B, C, H, W)`` and ``t`` ``(B,)`` long.
DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def check_prediction(prediction: str) -> str:
    """Return ``prediction`` if it is one of ``'eps'``, ``'v'``, ``'x0'``; raise ValueError else."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    return prediction


def training_target(
    x0: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    schedule: NoiseSchedule,
    prediction: str,
) -> torch.Tensor:
    """The regression target of the model's output for ``prediction``; shape of ``x0``."""
    if prediction == "eps":
        return noise
    if prediction == "v":
        return schedule.velocity(x0, t, noise)
    if prediction == "x0":
        return x0
    raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")


def min_snr_weight(
    t: torch.Tensor, schedule: NoiseSchedule, prediction: str, gamma: float
) -> torch.Tensor:
    r"""Min-SNR-:math:`\gamma` loss weights (Hang et al. 2023), expressed for each target.

    With :math:`\mathrm{snr}_t = \bar\alpha_t / (1-\bar\alpha_t)` the x0-space weight
    :math:`\min(\mathrm{snr}_t, \gamma)` becomes :math:`\min(\mathrm{snr}_t,\gamma)/\mathrm{snr}_t`
    for ε-prediction and :math:`\min(\mathrm{snr}_t,\gamma)/(\mathrm{snr}_t+1)` for v-prediction.

    Returns
    -------
    torch.Tensor
        ``(B,)`` float32 weights on ``t``'s device.
    """
    snr = schedule.snr(t)
    clipped = snr.clamp(max=gamma)
    if prediction == "eps":
        w = clipped / snr
    elif prediction == "v":
        w = clipped / (snr + 1)
    else:
        w = clipped
    return w.float()


def diffusion_loss(
    out: torch.Tensor,
    x0: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    schedule: NoiseSchedule,
    prediction: str = "eps",
    min_snr_gamma: float | None = None,
) -> torch.Tensor:
    r"""Per-sample point-wise loss :math:`w_t \, \lVert f_\theta(x_t, t) - \mathrm{target}\rVert^2`.

    The mean is taken over all non-batch dimensions; :math:`w_t = 1` unless ``min_snr_gamma``
    is given (see :func:`min_snr_weight`). The MSE is computed in float32 even under autocast.

    Parameters
    ----------
    out : torch.Tensor
        ``(B, C, H, W)`` model output.
    x0, noise : torch.Tensor
        ``(B, C, H, W)`` clean samples and the noise used to make ``x_t``.
    t : torch.Tensor
        ``(B,)`` integer timesteps.
    schedule : NoiseSchedule
    prediction : {'eps', 'v', 'x0'}
    min_snr_gamma : float, optional

    Returns
    -------
    torch.Tensor
        ``(B,)`` float32 loss per sample.
    """
    target = training_target(x0, noise, t, schedule, prediction)
    per_sample = (out.float() - target.float()).pow(2).flatten(1).mean(1)
    if min_snr_gamma is not None:
        per_sample = per_sample * min_snr_weight(t, schedule, prediction, min_snr_gamma)
    return per_sample


def to_x0_eps(
    out: torch.Tensor,
    xt: torch.Tensor,
    t: torch.Tensor,
    schedule: NoiseSchedule,
    prediction: str,
    clip: tuple[float, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Convert a model output into :math:`(\hat x_0, \hat\varepsilon)`.

    If ``clip`` is given, :math:`\hat x_0` is clamped to it and :math:`\hat\varepsilon` is
    recomputed from the clamped value so the two stay consistent.

    Returns
    -------
    x0 : torch.Tensor
        ``(B, C, H, W)``.
    eps : torch.Tensor
        ``(B, C, H, W)``.
    """
    if prediction == "eps":
        x0 = schedule.predict_x0(xt, t, out)
        eps = out
    elif prediction == "v":
        x0, eps = schedule.split_v(xt, t, out)
    elif prediction == "x0":
        x0 = out
        eps = schedule.predict_eps(xt, t, out)
    else:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    if clip is not None:
        x0 = x0.clamp(*clip)
        eps = schedule.predict_eps(xt, t, x0)
    return x0, eps


def ddpm_step(
    out: torch.Tensor,
    xt: torch.Tensor,
    t: torch.Tensor,
    schedule: NoiseSchedule,
    prediction: str,
    noise: torch.Tensor,
    clip: tuple[float, float] | None = (-1.0, 1.0),
) -> torch.Tensor:
    r"""One ancestral step :math:`x_{t-1} \sim q(x_{t-1} \mid x_t, \hat x_0)` (Ho et al. 2020).

    .. math::

        x_{t-1} = \tilde\mu_t(x_t, \hat x_0) + \sqrt{\tilde\beta_t}\, z, \qquad z \sim
        \mathcal{N}(0, I),

    with no noise added at ``t = 0``.

    Parameters
    ----------
    out : torch.Tensor
        ``(B, C, H, W)`` model output at ``(x_t, t)``.
    xt : torch.Tensor
        ``(B, C, H, W)`` current sample.
    t : torch.Tensor
        ``(B,)`` integer timesteps (all equal in a usual sampling loop).
    noise : torch.Tensor
        ``(B, C, H, W)`` standard normal draw ``z``.

    Returns
    -------
    torch.Tensor
        ``(B, C, H, W)`` sample at ``t - 1``.
    """
    x0, _ = to_x0_eps(out, xt, t, schedule, prediction, clip)
    return ddpm_update(x0, xt, t, schedule, noise)


def ddpm_update(
    x0: torch.Tensor,
    xt: torch.Tensor,
    t: torch.Tensor,
    schedule: NoiseSchedule,
    noise: torch.Tensor,
) -> torch.Tensor:
    r"""The ancestral step of :func:`ddpm_step` from a clean estimate :math:`\hat x_0`.

    :math:`x_{t-1} = \tilde\mu_t(x_t, \hat x_0) + \sqrt{\tilde\beta_t}\, z`; ``x0``, ``xt``,
    ``noise`` ``(B, C, H, W)``, ``t`` ``(B,)``; returns ``(B, C, H, W)``.
    """
    mean, var = schedule.posterior(x0, xt, t)
    return mean + var.sqrt() * noise


def ddim_step(
    out: torch.Tensor,
    xt: torch.Tensor,
    t: torch.Tensor,
    t_prev: torch.Tensor,
    schedule: NoiseSchedule,
    prediction: str,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
    clip: tuple[float, float] | None = (-1.0, 1.0),
) -> torch.Tensor:
    r"""One DDIM step from ``t`` to ``t_prev`` (Song et al. 2021, Eq. 12).

    .. math::

        x_{t'} = \sqrt{\bar\alpha_{t'}}\,\hat x_0 + \sqrt{1-\bar\alpha_{t'}-\sigma^2}\,
        \hat\varepsilon + \sigma z, \quad \sigma = \eta
        \sqrt{\frac{1-\bar\alpha_{t'}}{1-\bar\alpha_t}\Big(1-\frac{\bar\alpha_t}{\bar\alpha_{t'}}\Big)}

    ``t_prev = -1`` means the final step to :math:`x_0` (:math:`\bar\alpha_{-1} = 1`). With
    ``eta = 0`` the step is deterministic and ``noise`` is not used.

    Returns
    -------
    torch.Tensor
        ``(B, C, H, W)`` sample at ``t_prev``.
    """
    x0, eps = to_x0_eps(out, xt, t, schedule, prediction, clip)
    return ddim_update(x0, eps, xt, t, t_prev, schedule, eta, noise)


def ddim_update(
    x0: torch.Tensor,
    eps: torch.Tensor,
    xt: torch.Tensor,
    t: torch.Tensor,
    t_prev: torch.Tensor,
    schedule: NoiseSchedule,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""The step of :func:`ddim_step` from the estimates :math:`(\hat x_0, \hat\varepsilon)`.

    ``x0``, ``eps``, ``xt``, ``noise`` ``(B, C, H, W)``; ``t``, ``t_prev`` ``(B,)`` with
    ``t_prev = -1`` for the final step; returns ``(B, C, H, W)`` at ``t_prev``.
    """
    ab = gather(schedule.alpha_bar, t, xt)
    ab_all = torch.cat([torch.ones(1, dtype=torch.float64), schedule.alpha_bar])
    ab_prev = gather(ab_all, t_prev + 1, xt)
    sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).clamp(min=0).sqrt()
    x_prev = ab_prev.sqrt() * x0 + (1 - ab_prev - sigma**2).clamp(min=0).sqrt() * eps
    if eta > 0:
        if noise is None:
            raise ValueError("noise is required when eta > 0")
        x_prev = x_prev + sigma * noise
    return x_prev


def ddim_timesteps(timesteps: int, steps: int) -> list[int]:
    """Evenly spaced decreasing timesteps for a ``steps``-step sampler, ending at 0.

    ``steps == timesteps`` gives every step ``T-1, ..., 0``.

    Returns
    -------
    list of int
        ``steps`` distinct timesteps in ``[0, timesteps)``, decreasing.
    """
    steps = check_int(steps, "steps", 1, timesteps)
    grid = torch.linspace(0, timesteps - 1, steps, dtype=torch.float64).round().long()
    return grid.flip(0).tolist()


@torch.no_grad()
def sample_loop(
    denoise: DenoiseFn,
    shape: tuple[int, ...],
    schedule: NoiseSchedule,
    prediction: str = "eps",
    steps: int = 50,
    sampler: str = "ddim",
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    clip: tuple[float, float] | None = (-1.0, 1.0),
    progress: bool = False,
) -> torch.Tensor:
    r"""Draw samples from pure noise: :func:`~conprediff.diffusion.samplers.generate` on a
    :class:`~conprediff.diffusion.denoiser.Denoiser` made of ``denoise``.

    ``sampler='ddim'`` runs :func:`ddim_step` with ``eta``. ``sampler='ddpm'`` is ancestral
    sampling (``eta`` not used): :func:`ddpm_step` when ``steps == T``, and on a respaced grid of
    ``steps < T`` timesteps the DDIM step with :math:`\eta = 1`, which is the ancestral step of
    the respaced process (Nichol & Dhariwal 2021, Sec. 4). ``sampler='dpmpp_2m'`` is
    DPM-Solver++(2M) (``eta`` not used).

    Parameters
    ----------
    denoise : callable
        ``denoise(x_t, t) -> out`` with ``(B, C, H, W)`` and ``(B,)`` inputs.
    shape : tuple of int
        ``(B, C, H, W)``.
    generator : torch.Generator, optional
        Source of all randomness (initial noise and step noise), on ``device``.

    Returns
    -------
    torch.Tensor
        ``(B, C, H, W)`` float32 samples.
    """
    from .denoiser import Denoiser
    from .samplers import generate

    return generate(
        Denoiser(denoise, schedule, prediction, clip),
        shape,
        steps,
        sampler,
        eta=eta if sampler == "ddim" else 0.0,
        generator=generator,
        device=device,
        progress=progress,
    )
