r"""Samplers as small pure functions with one signature, and a registry of them.

Every sampler is

.. code-block:: python

    sampler(denoiser, x, timesteps, *, generator=None, callback=None, **options) -> x0

with ``denoiser`` a :class:`~conprediff.diffusion.denoiser.Denoiser` (``(x_t, t) -> (x0_hat,
eps_hat)``, so a sampler never asks what the network predicts), ``x`` the ``(B, C, H, W)``
sample at ``timesteps[0]`` (pure noise at the top of the grid), ``timesteps`` the decreasing
grid of integer times, and the result the ``(B, C, H, W)`` sample at ``t = -1`` (the clean
image, :math:`\bar\alpha_{-1} = 1`). ``callback``, if given, is called after every step with a
dict ``{'i', 't', 't_prev', 'x', 'denoised'}``: the step's index, its times, the new sample at
``t_prev`` and the estimate :math:`\hat x_0` made at ``t``.

A sampler is a loop (:func:`run_steps`) over its single reverse step, ``step(denoiser, x, t,
t_prev, *, generator=None, state=None, **options) -> (x_prev, x0_hat, state)``, where ``state``
is what a multistep method carries from one step to the next (None to start afresh). RePaint
(:func:`conprediff.inpainting.repaint`) takes the same steps between its jumps
(:func:`reverse_step`).

:data:`SAMPLERS` maps the names ``'ddim'``, ``'ddpm'`` and ``'dpmpp_2m'`` to the samplers;
:func:`generate` draws the noise and the grid and runs one of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch

from .._validation import check_choice, check_real, is_int
from ..schedules import NoiseSchedule
from .denoiser import Denoiser
from .gaussian import ddim_timesteps, ddim_update, ddpm_update

__all__ = [
    "SAMPLERS",
    "STEPS",
    "check_sampler",
    "generate",
    "get_sampler",
    "is_full_chain",
    "reverse_step",
    "run_steps",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "step_ddim",
    "step_ddpm",
    "step_dpmpp_2m",
]

#: ``callback(info)`` with ``info`` the dict described in the module docstring.
Callback = Callable[[dict[str, Any]], None]
#: ``step(denoiser, x, t, t_prev, *, generator, state) -> (x_prev, x0_hat, state)``.
StepFn = Callable[..., tuple[torch.Tensor, torch.Tensor, Any]]


def _times(x: torch.Tensor, t: int) -> torch.Tensor:
    """``(B,)`` long tensor filled with ``t`` on ``x``'s device."""
    return torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)


def _noise(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """A standard normal draw shaped like ``x``."""
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _alpha_sigma(schedule: NoiseSchedule, t: int) -> tuple[float, float]:
    r""":math:`(\alpha_t, \sigma_t) = (\sqrt{\bar\alpha_t}, \sqrt{1-\bar\alpha_t})` in float64,
    ``t >= 0``."""
    ab = float(schedule.alpha_bar[t])
    return math.sqrt(ab), math.sqrt(1.0 - ab)


def _log_snr(schedule: NoiseSchedule, t: int) -> float:
    r"""Half log-SNR :math:`\lambda_t = \log(\alpha_t / \sigma_t)`, ``t >= 0``."""
    ab = float(schedule.alpha_bar[t])
    return 0.5 * (math.log(ab) - math.log1p(-ab))


# ---------------------------------------------------------------------------------- single steps
def step_ddim(denoiser: Denoiser, x: torch.Tensor, t: int, t_prev: int, *,
              generator: torch.Generator | None = None, state: Any = None, eta: float = 0.0
              ) -> tuple[torch.Tensor, torch.Tensor, None]:
    """One DDIM step ``t -> t_prev`` (Song et al. 2021, Eq. 12); noise drawn only if ``eta > 0``.

    ``x`` ``(B, C, H, W)``; returns ``(x_prev, x0_hat, None)``, both ``(B, C, H, W)``.
    """
    tt = _times(x, t)
    x0, eps = denoiser(x, tt)
    z = _noise(x, generator) if eta > 0 else None
    return ddim_update(x0, eps, x, tt, _times(x, t_prev), denoiser.schedule, eta, z), x0, None


def step_ddpm(denoiser: Denoiser, x: torch.Tensor, t: int, t_prev: int, *,
              generator: torch.Generator | None = None, state: Any = None,
              posterior: bool = False) -> tuple[torch.Tensor, torch.Tensor, None]:
    r"""One ancestral step ``t -> t_prev`` (Ho et al. 2020; Nichol & Dhariwal 2021, Sec. 4).

    ``posterior=True`` (needs ``t_prev = t - 1``) samples :math:`q(x_{t-1} \mid x_t, \hat x_0)`
    in its posterior form; otherwise the DDIM step with :math:`\eta = 1`, the ancestral step of
    the respaced process (the same law for ``t_prev = t - 1``). One noise draw per step.
    ``x`` ``(B, C, H, W)``; returns ``(x_prev, x0_hat, None)``.
    """
    if not posterior:
        return step_ddim(denoiser, x, t, t_prev, generator=generator, eta=1.0)
    if t_prev != t - 1:
        raise ValueError(f"posterior=True needs t_prev = t - 1, got t={t}, t_prev={t_prev}")
    tt = _times(x, t)
    x0, _ = denoiser(x, tt)
    return ddpm_update(x0, x, tt, denoiser.schedule, _noise(x, generator)), x0, None


def step_dpmpp_2m(denoiser: Denoiser, x: torch.Tensor, t: int, t_prev: int, *,
                  generator: torch.Generator | None = None,
                  state: tuple[torch.Tensor, int] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, int]]:
    r"""One DPM-Solver++(2M) step ``t -> t_prev`` (Lu et al. 2022, Algorithm 2).

    In the half log-SNR :math:`\lambda = \log(\alpha/\sigma)`, with :math:`h = \lambda_{t'} -
    \lambda_t`, the previous step's :math:`h_{-1} = \lambda_t - \lambda_{s}` and
    :math:`r = h_{-1}/h`,

    .. math::

        D = \Big(1 + \frac{1}{2r}\Big)\hat x_0(t) - \frac{1}{2r}\hat x_0(s), \qquad
        x_{t'} = \frac{\sigma_{t'}}{\sigma_t} x_t - \alpha_{t'}\big(e^{-h} - 1\big) D.

    Without history (``state`` None: the first step, or after a RePaint jump) and on the last
    steps, into ``t_prev = 0`` and from it to the clean sample (``t_prev = -1``), it takes the
    first-order step, which is the DDIM step with :math:`\eta = 0` (the final one returns
    :math:`\hat x_0`). The step into ``t = 0`` (where :math:`\bar\alpha_0` is close to 1) is
    the grid's last real step, which diffusers' ``lower_order_final`` also takes in first order:
    a second-order step over its long :math:`h` extrapolates far and loses accuracy.
    ``state`` is ``(x0_hat, t)`` of the previous step. ``x`` ``(B, C, H, W)``; returns
    ``(x_prev, x0_hat, (x0_hat, t))``.
    """
    schedule = denoiser.schedule
    tt = _times(x, t)
    x0, eps = denoiser(x, tt)
    if state is None or t_prev <= 0:
        return ddim_update(x0, eps, x, tt, _times(x, t_prev), schedule), x0, (x0, t)
    x0_last, t_last = state
    lam, lam_prev = _log_snr(schedule, t), _log_snr(schedule, t_prev)
    h = lam_prev - lam
    r = (lam - _log_snr(schedule, t_last)) / h
    d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_last
    alpha_prev, sigma_prev = _alpha_sigma(schedule, t_prev)
    _, sigma = _alpha_sigma(schedule, t)
    return (sigma_prev / sigma) * x - (alpha_prev * math.expm1(-h)) * d, x0, (x0, t)


#: The single reverse step of each sampler, by name.
STEPS: dict[str, StepFn] = {"ddim": step_ddim, "ddpm": step_ddpm, "dpmpp_2m": step_dpmpp_2m}


def is_full_chain(timesteps: Sequence[int], schedule: NoiseSchedule) -> bool:
    """True when the grid is every time ``T - 1, ..., 0`` of ``schedule`` (no respacing)."""
    return [int(t) for t in timesteps] == list(range(schedule.timesteps - 1, -1, -1))


def _options(name: str, eta: float) -> dict[str, Any]:
    """The keyword options of sampler ``name``: ``{'eta': eta}`` for DDIM, none otherwise."""
    get_sampler(name)
    eta = check_real(eta, "eta", 0.0)
    if name == "ddim":
        return {"eta": eta}
    if eta != 0:
        raise ValueError(f"eta applies to sampler='ddim' only, got eta={eta!r} for {name!r}")
    return {}


def check_sampler(sampler: Any, eta: float) -> Any:
    """``sampler`` checked: a name of :data:`SAMPLERS` (with ``eta`` only for ``'ddim'``) or a
    diffusers scheduler (:mod:`conprediff.interop.scheduler`; ``eta`` must be 0)."""
    from ..interop.scheduler import is_scheduler

    if is_scheduler(sampler):
        if check_real(eta, "eta", 0.0) != 0:
            raise ValueError("eta applies to sampler='ddim' only: set a scheduler's own "
                             "options on the scheduler")
        return sampler
    _options(sampler, eta)
    return sampler


def reverse_step(
    name: str, timesteps: Sequence[int], schedule: NoiseSchedule, *, eta: float = 0.0
) -> StepFn:
    """The single step the sampler ``name`` takes on the grid ``timesteps``, its options bound.

    ``'ddim'`` gets ``eta``; ``'ddpm'`` takes the posterior form on the full chain of
    ``schedule`` (:func:`is_full_chain`) and the DDIM step with :math:`\\eta = 1` on a respaced
    grid; ``'dpmpp_2m'`` has no options. ``eta`` other than 0 is a ValueError for the latter two.
    """
    options = _options(name, eta)
    if name == "ddpm":
        options["posterior"] = is_full_chain(timesteps, schedule)
    return partial(STEPS[name], **options)


def _check_grid(timesteps: Sequence[int], schedule: NoiseSchedule) -> list[int]:
    """The grid as a list of ints, strictly decreasing in ``[0, T)``; ValueError otherwise."""
    ts = timesteps.tolist() if isinstance(timesteps, torch.Tensor) else list(timesteps)
    if not all(is_int(t) for t in ts):
        raise TypeError(f"timesteps must be integers, got {timesteps!r}")
    ts = [int(t) for t in ts]
    T = schedule.timesteps
    ok = ts and all(a > b for a, b in zip(ts, ts[1:], strict=False))
    if not ok or ts[-1] < 0 or ts[0] >= T:
        raise ValueError(
            f"timesteps must be a non-empty strictly decreasing grid in [0, {T}), got {ts!r}"
        )
    return ts


def run_steps(
    step: StepFn,
    denoiser: Denoiser,
    x: torch.Tensor,
    timesteps: Sequence[int],
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Iterate ``step`` from ``timesteps[0]`` down the grid to ``t = -1``; ``(B, C, H, W)``."""
    ts = _check_grid(timesteps, denoiser.schedule)
    state = None
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        x, x0, state = step(denoiser, x, t, t_prev, generator=generator, state=state)
        if callback is not None:
            callback({"i": i, "t": t, "t_prev": t_prev, "x": x, "denoised": x0})
    return x


# -------------------------------------------------------------------------------------- samplers
@torch.no_grad()
def sample_ddim(denoiser: Denoiser, x: torch.Tensor, timesteps: Sequence[int], *,
                generator: torch.Generator | None = None, callback: Callback | None = None,
                eta: float = 0.0) -> torch.Tensor:
    """DDIM (Song et al. 2021); ``eta`` 0 is deterministic; ``x`` ``(B, C, H, W)`` -> same."""
    step = reverse_step("ddim", timesteps, denoiser.schedule, eta=eta)
    return run_steps(step, denoiser, x, timesteps, generator=generator, callback=callback)


@torch.no_grad()
def sample_ddpm(denoiser: Denoiser, x: torch.Tensor, timesteps: Sequence[int], *,
                generator: torch.Generator | None = None, callback: Callback | None = None
                ) -> torch.Tensor:
    """Ancestral DDPM (Ho et al. 2020), respaced (Nichol & Dhariwal 2021); ``(B, C, H, W)``."""
    step = reverse_step("ddpm", timesteps, denoiser.schedule)
    return run_steps(step, denoiser, x, timesteps, generator=generator, callback=callback)


@torch.no_grad()
def sample_dpmpp_2m(denoiser: Denoiser, x: torch.Tensor, timesteps: Sequence[int], *,
                    generator: torch.Generator | None = None, callback: Callback | None = None
                    ) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022), deterministic; ``x`` ``(B, C, H, W)`` -> same."""
    return run_steps(step_dpmpp_2m, denoiser, x, timesteps, generator=generator,
                     callback=callback)


#: Samplers by name; each ``sampler(denoiser, x, timesteps, *, generator, callback, ...)``.
SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "ddim": sample_ddim,
    "ddpm": sample_ddpm,
    "dpmpp_2m": sample_dpmpp_2m,
}


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    """The sampler registered as ``name`` in :data:`SAMPLERS`; ValueError naming the choices."""
    return SAMPLERS[check_choice(name, "sampler", SAMPLERS)]


@torch.no_grad()
def generate(
    denoiser: Denoiser,
    shape: tuple[int, ...],
    steps: int,
    sampler: str = "ddim",
    *,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
    callback: Callback | None = None,
) -> torch.Tensor:
    r"""Draw samples from pure noise with a named sampler on an evenly respaced grid.

    Draws :math:`x \sim \mathcal{N}(0, I)` of ``shape`` from ``generator`` on ``device``, makes
    the grid :func:`~conprediff.diffusion.gaussian.ddim_timesteps` ``(T, steps)`` and runs
    ``SAMPLERS[sampler]`` on it (the step noise from the same ``generator``, after the initial
    draw).

    Parameters
    ----------
    denoiser : Denoiser
        The wrapped network (its schedule gives ``T``).
    shape : tuple of int
        ``(B, C, H, W)``.
    steps : int
        Grid size, ``1 <= steps <= T``; ``steps == T`` is the full chain.
    sampler : {'ddim', 'ddpm', 'dpmpp_2m'}
        Default ``'ddim'``.
    eta : float
        DDIM noise scale, default 0 (deterministic); must be 0 for the other samplers.
    generator : torch.Generator, optional
        Source of all randomness, on ``device``.
    device : torch.device or str
        Where the samples are drawn; default CPU.
    progress : bool
        Show a tqdm bar over the steps; default False.
    callback : callable, optional
        Called after every step as described in the module docstring.

    Returns
    -------
    torch.Tensor
        ``(B, C, H, W)`` float32 samples on ``device``.
    """
    from tqdm.auto import tqdm

    if not isinstance(sampler, str):
        from ..interop.scheduler import sample_with_scheduler

        return sample_with_scheduler(denoiser, shape, steps, check_sampler(sampler, eta),
                                     generator=generator, device=device, progress=progress)
    fn = get_sampler(sampler)
    options = _options(sampler, eta)
    ts = ddim_timesteps(denoiser.schedule.timesteps, steps)
    x = torch.randn(shape, generator=generator, device=device)
    with tqdm(total=len(ts), desc="sampling", disable=not progress, leave=False) as bar:

        def tick(info: dict[str, Any]) -> None:
            bar.update()
            if callback is not None:
                callback(info)

        return fn(denoiser, x, ts, generator=generator, callback=tick, **options)
