"""Checks of the tensors the context modules receive (one rule: TypeError for a non-tensor,
ValueError for a wrong number of axes)."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["check_tensor"]


def check_tensor(value: Any, name: str, layout: str) -> torch.Tensor:
    """``value`` if it is a tensor with as many axes as ``layout`` names, e.g. ``'(B, C, H, W)'``.

    Raises ``TypeError`` for anything but a ``torch.Tensor`` and ``ValueError`` for another
    number of axes; both messages name ``name`` and show ``layout``.
    """
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a {layout} tensor, got {type(value).__name__}")
    if value.ndim != len([axis for axis in layout.strip("()").split(",") if axis.strip()]):
        raise ValueError(f"{name} must be a {layout} tensor, got shape {tuple(value.shape)}")
    return value
