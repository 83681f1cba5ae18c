r"""Classifier-free guidance as a wrapper of the network (Ho & Salimans 2022)."""

from __future__ import annotations

import torch
from torch import nn

from .gaussian import DenoiseFn

__all__ = ["guided"]


def guided(
    net: nn.Module, cond: torch.Tensor | None, null: int | None, scale: float
) -> DenoiseFn:
    r"""``denoise(x, t) -> out`` with classifier-free guidance (Ho & Salimans 2022).

    ``net(x, t[, labels])`` returns a tuple whose first item is the ``(B, C, H, W)`` output.
    With a scale :math:`w` the output is

    .. math::

        \hat\epsilon_\varnothing + w\,(\hat\epsilon_c - \hat\epsilon_\varnothing),

    the null label :math:`\varnothing` being ``null`` (``= num_classes``): one forward pass of a
    doubled batch. ``w = 1`` is the plain conditional model (one pass of the batch), ``w = 0``
    the unconditional one.

    Parameters
    ----------
    net : torch.nn.Module
        The backbone.
    cond : torch.Tensor or None
        ``(B,)`` long labels, or None: then the null label ``null`` for a class-conditional
        backbone, no condition at all for an unconditional one (``null`` None); ``scale`` is not
        used.
    null : int or None
        The null label, None for an unconditional backbone.
    scale : float
        The guidance scale :math:`w`.

    Returns
    -------
    callable
        ``denoise(x, t) -> out`` with ``x`` ``(B, C, H, W)``, ``t`` ``(B,)``, ``out`` ``(B, C, H,
        W)``.
    """
    if cond is None:
        if null is None:  # an unconditional backbone
            return lambda x, t: net(x, t)[0]
        return lambda x, t: net(x, t, torch.full_like(t, null))[0]  # the null label
    if scale == 1.0:
        return lambda x, t: net(x, t, cond.to(x.device))[0]
    uncond = torch.full_like(cond, null)
    if scale == 0.0:
        return lambda x, t: net(x, t, uncond.to(x.device))[0]
    both = torch.cat([cond, uncond])

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = net(torch.cat([x, x]), torch.cat([t, t]), both.to(x.device))[0]
        c, u = out.to(x.dtype).chunk(2)  # combined in x's dtype (float32) under autocast too
        return u + scale * (c - u)

    return denoise
