"""The training loop behind :meth:`ConPreDiffModel.fit`.

One step: draw ``t`` and ``ε`` from the noise generator, form ``x_t``, run the backbone, take the
point-wise diffusion loss, add the λ_t-weighted context term when a context head is present, and
step the optimiser. Randomness is split into independent generators so that a run with context
prediction and one without draw the *same* batches, timesteps and noise (paired comparisons).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..backbones.protocol import check_backbone_output
from ..diffusion.gaussian import diffusion_loss
from ..schedules import NoiseSchedule
from .data import check_images, split_batch, to_unit
from .ema import EMA

__all__ = ["TrainState", "train_steps"]


@dataclass
class TrainState:
    """What the loop needs besides the models; mutable across calls."""

    schedule: NoiseSchedule
    prediction: str
    data_range: tuple[float, float]
    image_shape: tuple[int, int, int]
    device: torch.device
    noise_generator: torch.Generator
    context_generator: torch.Generator
    min_snr_gamma: float | None = None
    step: int = 0
    history: dict[str, list[float]] = field(default_factory=dict)

    def log(self, **values: float) -> None:
        for key, value in values.items():
            self.history.setdefault(key, []).append(value)


def _images_from(batch: Any, state: TrainState) -> torch.Tensor:
    images, _ = split_batch(batch)
    images = check_images(images, "data")
    if tuple(images.shape[1:]) != state.image_shape:
        raise ValueError(
            f"data holds images of varying size: expected (C, H, W) = {state.image_shape}, "
            f"got a batch of {tuple(images.shape[1:])}"
        )
    lo, hi = state.data_range
    return to_unit(images.to(state.device, non_blocking=True), (lo, hi))


def train_steps(
    backbone: nn.Module,
    context_head: nn.Module | None,
    batches: Iterator[Any],
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    n_steps: int,
    ema: EMA | None = None,
    progress: bool = True,
) -> None:
    """Run ``n_steps`` optimisation steps, logging each loss term into ``state.history``.

    Logged per step: ``loss`` (total), ``point`` (diffusion loss), and with a context head
    ``context`` (λ_t-weighted term added to the loss) and ``w2`` (unweighted mean W2²).
    """
    schedule = state.schedule
    backbone.train()
    if context_head is not None:
        context_head.train()
    bar = tqdm(total=n_steps, desc="training", disable=not progress, dynamic_ncols=True)
    try:
        for _ in range(n_steps):
            x0 = _images_from(next(batches), state)
            B = x0.shape[0]
            t = torch.randint(
                0, schedule.timesteps, (B,), device=state.device, generator=state.noise_generator
            )
            noise = torch.randn(x0.shape, device=state.device, generator=state.noise_generator)
            xt = schedule.q_sample(x0, t, noise)
            out, features = check_backbone_output(backbone(xt, t), xt)
            point = diffusion_loss(
                out, x0, noise, t, schedule, state.prediction, state.min_snr_gamma
            ).mean()
            loss = point
            logged = {"point": point.detach()}
            if context_head is not None:
                ctx = context_head(features, t, x0, xt, schedule, generator=state.context_generator)
                loss = loss + ctx.loss
                logged["context"] = ctx.loss.detach()
                logged["w2"] = ctx.w2.detach()
            if not torch.isfinite(loss):
                terms = {k: float(v) for k, v in logged.items()}
                raise FloatingPointError(
                    f"non-finite loss at step {state.step}: {terms}; training stopped before "
                    "the weights were updated"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if ema is not None:
                ema.update(backbone)
            state.step += 1
            state.log(loss=float(loss.detach()), **{k: float(v) for k, v in logged.items()})
            bar.update(1)
            bar.set_postfix(loss=f"{state.history['loss'][-1]:.4f}", refresh=False)
    finally:
        bar.close()
        backbone.eval()
        if context_head is not None:
            context_head.eval()
