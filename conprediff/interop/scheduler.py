r"""A diffusers scheduler as the sampler of :meth:`ConPreDiffModel.sample
<conprediff.ConPreDiffModel.sample>`: ``sample(n, sampler=DPMSolverMultistepScheduler(...))``.

The scheduler must describe the model's process: the same :math:`\bar\alpha_t` for every
training time (``alphas_cumprod``, compared to 1e-5) and the same prediction type
(``'epsilon'``, ``'v_prediction'`` or ``'sample'`` for the model's ``'eps'``, ``'v'``,
``'x0'``); :func:`scheduler_config <conprediff.interop.scheduler_config>` writes such a
config. Each step calls ``scale_model_input``, runs the model through the library's
:class:`~conprediff.diffusion.denoiser.Denoiser` (guidance, precision and the clamp of
:math:`\hat x_0` as with the built-in samplers) and hands ``scheduler.step`` the output in the
scheduler's prediction type.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from ..diffusion.denoiser import Denoiser
from ..schedules import NoiseSchedule

__all__ = ["PREDICTION_TYPES", "check_scheduler", "is_scheduler", "sample_with_scheduler"]

#: The library's prediction names and diffusers' ``prediction_type`` for them.
PREDICTION_TYPES = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}


def is_scheduler(sampler: Any) -> bool:
    """Whether ``sampler`` looks like a diffusers scheduler (``set_timesteps``, ``step``,
    ``config``) rather than a sampler's name."""
    return all(hasattr(sampler, a) for a in ("set_timesteps", "step", "config"))


def check_scheduler(scheduler: Any, schedule: NoiseSchedule, prediction: str) -> Any:
    """``scheduler`` if it describes the model's process; ValueError naming ``sampler`` and
    what differs otherwise."""
    config = scheduler.config
    name = type(scheduler).__name__
    want = PREDICTION_TYPES[prediction]
    have = config.get("prediction_type", "epsilon")
    if have != want:
        raise ValueError(f"sampler: the {name}'s prediction_type={have!r} differs from the "
                         f"model's prediction={prediction!r}: set prediction_type={want!r}")
    T = schedule.timesteps
    if config.get("num_train_timesteps") != T:
        raise ValueError(f"sampler: the {name}'s num_train_timesteps="
                         f"{config.get('num_train_timesteps')} differs from the model's "
                         f"timesteps={T}")
    alpha_bar = getattr(scheduler, "alphas_cumprod", None)
    ours = schedule.alpha_bar.to(torch.float64)
    if alpha_bar is None or not torch.allclose(torch.as_tensor(alpha_bar, dtype=torch.float64),
                                               ours, rtol=1e-5, atol=1e-7):
        raise ValueError(
            f"sampler: the {name}'s beta schedule (beta_schedule="
            f"{config.get('beta_schedule')!r}) differs from the model's schedule="
            f"{schedule.kind!r}: build it with scheduler_config(model) "
            "(from conprediff.interop), e.g. DPMSolverMultistepScheduler.from_config(...)")
    return scheduler


def _output(x0: torch.Tensor, eps: torch.Tensor, x: torch.Tensor, t: int,
            schedule: NoiseSchedule, prediction_type: str) -> torch.Tensor:
    """The model output in the scheduler's ``prediction_type`` from :math:`(\\hat x_0,
    \\hat\\varepsilon)` at ``t``."""
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "sample":
        return x0
    ab = float(schedule.alpha_bar[t])
    return ab**0.5 * eps - (1 - ab) ** 0.5 * x0


@torch.no_grad()
def sample_with_scheduler(denoiser: Denoiser, shape: tuple[int, ...], steps: int, scheduler: Any,
                          *, generator: torch.Generator | None = None,
                          device: torch.device | str = "cpu", progress: bool = False
                          ) -> torch.Tensor:
    """Samples ``(B, C, H, W)`` from pure noise (``init_noise_sigma`` times a standard normal
    draw from ``generator``) by ``steps`` steps of ``scheduler`` (checked against the
    denoiser's schedule and prediction)."""
    from tqdm.auto import tqdm

    schedule = denoiser.schedule
    check_scheduler(scheduler, schedule, denoiser.prediction)
    scheduler.set_timesteps(steps, device=device)
    x = torch.randn(shape, generator=generator, device=device) * scheduler.init_noise_sigma
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    extra = {"generator": generator} if takes_generator else {}
    for t in tqdm(scheduler.timesteps, desc="sampling", disable=not progress, leave=False):
        if float(t) != round(float(t)):
            raise ValueError(f"sampler: {type(scheduler).__name__} gives the non-integer time "
                             f"{float(t)}: use timestep_spacing='leading' or 'trailing'")
        step = int(round(float(t)))
        x_in = scheduler.scale_model_input(x, t)
        x0, eps = denoiser(x_in, torch.full((shape[0],), step, device=device, dtype=torch.long))
        out = _output(x0, eps, x_in, step, schedule, scheduler.config.prediction_type)
        x = scheduler.step(out, t, x, return_dict=False, **extra)[0]
    return x
