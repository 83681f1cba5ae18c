"""Diffusion processes: Gaussian (continuous) diffusion losses and reverse steps."""

from .gaussian import (
    PREDICTIONS,
    ddim_step,
    ddim_timesteps,
    ddpm_step,
    diffusion_loss,
    min_snr_weight,
    sample_loop,
    to_x0_eps,
    training_target,
)

__all__ = [
    "PREDICTIONS",
    "ddim_step",
    "ddim_timesteps",
    "ddpm_step",
    "diffusion_loss",
    "min_snr_weight",
    "sample_loop",
    "to_x0_eps",
    "training_target",
]
