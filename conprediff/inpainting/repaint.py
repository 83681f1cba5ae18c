r"""RePaint: inpainting with an unconditional diffusion model (Lugmayr et al. 2022).

The reverse chain runs on the whole image, and after every reverse step the known pixels are
replaced by a fresh forward-noised copy of the input at the new time,

.. math::

    x_{t-1} = m \odot x^{\mathrm{unknown}}_{t-1} + (1 - m) \odot x^{\mathrm{known}}_{t-1}, \qquad
    x^{\mathrm{known}}_{t-1} \sim q(x_{t-1} \mid x_0), \quad
    x^{\mathrm{unknown}}_{t-1} \sim p_\theta(x_{t-1} \mid x_t),

(``m`` = 1 where missing). To harmonise the two regions the chain *resamples*: every
``jump_length`` steps it diffuses the current sample forward again by ``jump_length`` steps and
repeats the descent, ``jump_n_sample - 1`` extra times (RePaint, Algorithm 1 and Sec. 4.2).

Functions here are small and pure, as in :mod:`conprediff.diffusion.gaussian`:
:func:`repaint_schedule` (the time-jump schedule), :func:`forward_jump` (the exact forward
re-noising), :func:`merge_known` (the known-region replacement) and the loop :func:`repaint`,
whose reverse steps are the samplers' single steps (:mod:`conprediff.diffusion.samplers`).

The algorithm of :func:`repaint` (RePaint, Algorithm 1, on a respaced grid):

1. ``grid`` = :func:`~conprediff.diffusion.gaussian.ddim_timesteps` ``(T, steps)`` read
   upwards, so schedule index ``i`` is time ``grid[i]`` and index ``-1`` is :math:`x_0`;
   ``steps == T`` is the full chain.
2. :math:`x \sim \mathcal{N}(0, I)`, its known region replaced by
   :func:`merge_known` at the top time.
3. For each consecutive pair ``(i, i')`` of :func:`repaint_schedule` ``(steps, jump_length,
   jump_n_sample)``:

   * ``i' < i`` (reverse): one step of the sampler from ``grid[i]`` to ``grid[i']`` (the
     single step the sampler takes in :mod:`conprediff.diffusion.samplers`, from
     :func:`~conprediff.diffusion.samplers.reverse_step`), then :func:`merge_known` at
     ``grid[i']`` with fresh noise. ``sampler='ddpm'`` is ancestral sampling:
     :func:`~conprediff.diffusion.gaussian.ddpm_step` when ``steps == T``, else
     :func:`~conprediff.diffusion.gaussian.ddim_step` with :math:`\eta = 1` (the ancestral
     step of the respaced process); ``sampler='ddim'`` uses :math:`\eta = 0` (fast variant;
     the forward jumps stay stochastic); ``sampler='dpmpp_2m'`` is DPM-Solver++(2M)
     (Lu et al. 2022), whose history of :math:`\hat x_0` estimates is reset after every
     jump back (the next step is first order, a DDIM step) and carried across the
     known-region replacements otherwise.
   * ``i' > i`` (jump back): :func:`forward_jump` from ``grid[i]`` to ``grid[i']`` on the
     whole image, i.e. one forward step per unit of the schedule with the exact
     :math:`q(x_{t'} \mid x_t)` between grid points (composing ``jump_length`` of them is
     the same law as jumping directly with the cumulative :math:`\bar\alpha` ratio).

4. The result is ``torch.where(mask, x, image)``: the known pixels are the input's,
   bit for bit.
"""

from __future__ import annotations

from functools import partial

import torch
from tqdm.auto import tqdm

from .._validation import check_choice, check_int
from ..diffusion.denoiser import Denoiser
from ..diffusion.gaussian import DenoiseFn, ddim_timesteps
from ..diffusion.samplers import reverse_step
from ..schedules import NoiseSchedule, gather
from .masks import as_mask

__all__ = ["repaint_schedule", "forward_jump", "merge_known", "repaint", "SAMPLERS"]

#: Reverse steps :func:`repaint` can run (those of :data:`conprediff.diffusion.SAMPLERS`).
SAMPLERS = ("ddpm", "ddim", "dpmpp_2m")


def repaint_schedule(t_T: int, jump_length: int = 10, jump_n_sample: int = 10) -> list[int]:
    r"""RePaint's time schedule with jumps (``get_schedule_jump`` of the official code).

    The list of (step) times visited, starting at ``t_T - 1`` and ending at ``-1`` (the clean
    image). Consecutive pairs ``(t_cur, t_next)`` are reverse steps when ``t_next = t_cur - 1``
    and forward re-noising steps when ``t_next = t_cur + 1``; every difference is ±1.

    The descent goes ``t_T - 1, t_T - 2, ...``; on reaching a time ``j`` in
    ``range(0, t_T - jump_length, jump_length)`` (0, ``jump_length``, ``2 jump_length``, ... below
    ``t_T - jump_length``) for the first ``jump_n_sample - 1`` times, it climbs back
    ``j + 1, ..., j + jump_length`` and descends again. Hence

    * number of forward steps: ``F = len(range(0, t_T - jump_length, jump_length))
      * (jump_n_sample - 1) * jump_length``;
    * number of reverse steps (model evaluations): ``t_T + F``;
    * length of the list: ``t_T + 1 + 2 F``.

    ``jump_n_sample = 1`` gives the plain descent ``[t_T - 1, ..., 0, -1]``. For ``t_T = 250``,
    ``jump_length = jump_n_sample = 10`` (RePaint's defaults): 2410 reverse and 2160 forward steps.

    Parameters
    ----------
    t_T : int
        Number of (possibly respaced) steps, ``>= 1``.
    jump_length : int
        Steps climbed back per jump (RePaint's ``j``), ``>= 1``.
    jump_n_sample : int
        Times each stretch is traversed (RePaint's ``r``), ``>= 1``.

    Returns
    -------
    list of int
        Times in ``[-1, t_T - 1]``.

    Examples
    --------
    >>> repaint_schedule(6, 2, 2)
    [5, 4, 3, 2, 3, 4, 3, 2, 1, 0, 1, 2, 1, 0, -1]
    """
    check_int(t_T, "t_T", 1)
    check_int(jump_length, "jump_length", 1)
    check_int(jump_n_sample, "jump_n_sample", 1)
    jumps = {j: jump_n_sample - 1 for j in range(0, t_T - jump_length, jump_length)}
    t = t_T
    times = []
    while t >= 1:
        t -= 1
        times.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(jump_length):
                t += 1
                times.append(t)
    times.append(-1)
    return times


def _alpha_bar_from(schedule: NoiseSchedule) -> torch.Tensor:
    """``(T + 1,)`` table with :math:`\\bar\\alpha_{-1} = 1` first, indexed by ``t + 1``."""
    return torch.cat([torch.ones(1, dtype=torch.float64), schedule.alpha_bar])


def forward_jump(
    x: torch.Tensor,
    t: torch.Tensor,
    t_next: torch.Tensor,
    schedule: NoiseSchedule,
    noise: torch.Tensor,
) -> torch.Tensor:
    r"""Re-noise forward from ``t`` to a later ``t_next`` with the exact marginal (RePaint Alg. 1).

    .. math::

        q(x_{t'} \mid x_t) = \mathcal{N}\Big(\sqrt{\bar\alpha_{t'}/\bar\alpha_t}\; x_t,\
        \big(1 - \bar\alpha_{t'}/\bar\alpha_t\big) I\Big), \qquad t' > t,

    which for ``t' = t + 1`` is the single forward step
    :math:`\mathcal{N}(\sqrt{1-\beta_{t+1}}\,x_t, \beta_{t+1} I)`; ``t = -1`` stands for
    :math:`x_0` (:math:`\bar\alpha_{-1} = 1`).

    Parameters
    ----------
    x : torch.Tensor
        ``(B, C, H, W)`` sample at ``t``.
    t, t_next : torch.Tensor
        ``(B,)`` integer times, ``-1 <= t < t_next < T``.
    noise : torch.Tensor
        ``(B, C, H, W)`` standard normal draw.

    Returns
    -------
    torch.Tensor
        ``(B, C, H, W)`` sample at ``t_next``.
    """
    table = _alpha_bar_from(schedule)
    ratio = gather(table, t_next + 1, x) / gather(table, t + 1, x)
    return ratio.sqrt() * x + (1 - ratio).clamp(min=0).sqrt() * noise


def merge_known(
    x: torch.Tensor,
    image: torch.Tensor,
    mask: torch.Tensor,
    t: torch.Tensor,
    schedule: NoiseSchedule,
    noise: torch.Tensor | None,
) -> torch.Tensor:
    r"""Replace the known region of ``x`` by the input forward-noised to ``t`` (RePaint Eq. 8).

    .. math::

        x_t \leftarrow m \odot x_t + (1 - m) \odot \big(\sqrt{\bar\alpha_t}\, x_0
        + \sqrt{1 - \bar\alpha_t}\, \varepsilon\big),

    with ``m`` True where missing; at ``t = -1`` the known region is the input itself.

    Parameters
    ----------
    x : torch.Tensor
        ``(B, C, H, W)`` current sample at ``t``.
    image : torch.Tensor
        ``(B, C, H, W)`` the input :math:`x_0`.
    mask : torch.Tensor
        Bool, broadcastable to ``(B, C, H, W)``, True where missing.
    t : torch.Tensor
        ``(B,)`` integer times in ``[-1, T)``, all ``-1`` or all ``>= 0``.
    noise : torch.Tensor or None
        ``(B, C, H, W)`` standard normal draw; unused (may be None) when ``t = -1``.

    Returns
    -------
    torch.Tensor
        ``(B, C, H, W)``.
    """
    if bool((t < 0).all()):
        return torch.where(mask, x, image.to(x.dtype))
    known = schedule.q_sample(image.to(x.dtype), t, noise)
    return torch.where(mask, x, known)


@torch.no_grad()
def _time(grid: list[int], batch: int, device: torch.device | str, i: int) -> torch.Tensor:
    """``(batch,)`` long times ``grid[i]`` (``-1`` for ``i = -1``, the clean image)."""
    return torch.full((batch,), grid[i] if i >= 0 else -1, device=device, dtype=torch.long)


def _check_image(image: torch.Tensor) -> None:
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or not image.is_floating_point():
        got = (
            f"{tuple(image.shape)} {image.dtype}"
            if isinstance(image, torch.Tensor)
            else type(image).__name__
        )
        raise ValueError(f"image must be a floating (B, C, H, W) tensor, got {got}")


def repaint(
    denoise: DenoiseFn,
    image: torch.Tensor,
    mask,
    schedule: NoiseSchedule,
    prediction: str = "eps",
    steps: int = 250,
    jump_length: int = 10,
    jump_n_sample: int = 10,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
    sampler: str = "ddpm",
    clip: tuple[float, float] | None = (-1.0, 1.0),
    precision: str = "fp32",
) -> torch.Tensor:
    r"""Inpaint ``image`` where ``mask`` is True with RePaint resampling (Lugmayr et al. 2022).

    The algorithm (RePaint's Algorithm 1 on a respaced grid, the samplers' single steps between
    jumps) is in the module documentation. Known pixels come back bit for bit; an all-known mask
    returns a copy of ``image`` without calling ``denoise``.

    Parameters
    ----------
    denoise : callable
        ``denoise(x_t, t) -> out``, ``(B, C, H, W)`` and ``(B,)`` long inputs, ``out`` of shape
        ``(B, C, H, W)`` interpreted by ``prediction``.
    image : torch.Tensor
        ``(B, C, H, W)`` floating point input, in the model's data range (usually [-1, 1]).
    mask : anything :func:`~conprediff.inpainting.masks.as_mask` accepts
        True (1, white) where pixels are missing; broadcastable to ``image``.
    schedule, prediction : NoiseSchedule, {'eps', 'v', 'x0'}
        The model's training schedule (``T = schedule.timesteps``); what ``denoise`` predicts.
    steps : int
        Number of grid times, ``1 <= steps <= T`` (RePaint: 250).
    jump_length, jump_n_sample : int
        See :func:`repaint_schedule` (RePaint: 10 and 10; ``jump_n_sample=1`` is plain
        replacement without resampling).
    generator, device : torch.Generator (optional), torch.device or str
        Source of all randomness, and where the chain runs and the result lies.
    progress : bool
        Show a tqdm bar over the schedule's steps.
    sampler : {'ddpm', 'ddim', 'dpmpp_2m'}
        Reverse step, see above; default ``'ddpm'``.
    clip, precision : tuple of float or None, str
        Range :math:`\hat x_0` is clamped to in each reverse step; the network's autocast
        precision (:class:`~conprediff.diffusion.Denoiser`; default ``'fp32'``).

    Returns
    -------
    torch.Tensor
        ``(B, C, H, W)`` on ``device`` in ``image``'s dtype; ``image`` where ``mask`` is False.
    """
    denoiser = Denoiser(denoise, schedule, prediction, clip, precision)
    check_choice(sampler, "sampler", SAMPLERS)
    _check_image(image)
    descent = ddim_timesteps(schedule.timesteps, steps)
    grid = descent[::-1]
    times = repaint_schedule(steps, jump_length, jump_n_sample)
    step = reverse_step(sampler, descent, schedule)
    image = image.to(device)
    mask = as_mask(mask, tuple(image.shape)).to(device)
    if not bool(mask.any()):
        return image.clone()
    x0, shape = image.float(), tuple(image.shape)
    at = partial(_time, grid, shape[0], device)
    randn = partial(torch.randn, shape, generator=generator, device=device)
    x = randn()
    x = merge_known(x, x0, mask, at(times[0]), schedule, randn())
    pairs = list(zip(times[:-1], times[1:], strict=True))
    state = None  # the multistep history, dropped at every jump back
    for i, i_next in tqdm(pairs, desc="repaint", disable=not progress, leave=False):
        if i_next > i:
            x = forward_jump(x, at(i), at(i_next), schedule, randn())
            state = None
            continue
        t_next = grid[i_next] if i_next >= 0 else -1
        x, _, state = step(denoiser, x, grid[i], t_next, generator=generator, state=state)
        x = merge_known(x, x0, mask, at(i_next), schedule, randn() if i_next >= 0 else None)
    return torch.where(mask, x.to(image.dtype), image)
