"""Exponential moving average of a module's weights, with warm-up."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    r"""An exponential moving average of ``module``'s parameters (buffers are copied).

    .. math::

        \theta_{\mathrm{ema}} \leftarrow d_n\, \theta_{\mathrm{ema}} + (1 - d_n)\, \theta, \qquad
        d_n = \min\Big(d,\ \frac{1 + n}{10 + n}\Big)

    The warm-up term (as in TensorFlow's ``ExponentialMovingAverage`` with ``num_updates``) keeps
    an average started from the random initialisation from lagging far behind early in training.

    Parameters
    ----------
    module : nn.Module
        The trained module; the average starts as a deep copy of it.
    decay : float
        Final decay ``d`` in ``[0, 1)``.
    warmup : bool
        Use the warm-up term; if False, ``d_n = d`` from the first update.
    """

    def __init__(self, module: nn.Module, decay: float = 0.999, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {decay!r}")
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.module = copy.deepcopy(module).eval().requires_grad_(False)

    def current_decay(self) -> float:
        """The decay ``d_n`` the next update will use."""
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Move the average towards ``module``'s current parameters."""
        d = self.current_decay()
        ema_params = list(self.module.parameters())
        params = [p.detach() for p in module.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - d)
        for b_ema, b in zip(self.module.buffers(), module.buffers(), strict=True):
            b_ema.copy_(b)
        self.num_updates += 1
