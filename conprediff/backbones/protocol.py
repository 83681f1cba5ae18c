"""The backbone protocol: what any denoiser must offer to plug into
:class:`~conprediff.estimator.ConPreDiffModel`.

A backbone is any :class:`torch.nn.Module` whose forward pass is

.. code-block:: python

    prediction, features = backbone(x, t, cond=None)

with

* ``x``: ``(B, C, H, W)`` noisy input :math:`x_t` (pixels or latents);
* ``t``: ``(B,)`` integer timesteps in ``[0, T)``;
* ``cond``: ``None``, or a condition the backbone understands (e.g. ``(B,)`` class labels);
* ``prediction``: ``(B, C, H, W)``, the model output (ε, v or x0 per the estimator's
  ``prediction``);
* ``features``: ``(B, F, H, W)``, the backbone's **last hidden map before its output
  projection**, on the same ``H x W`` grid as ``prediction``. Context prediction reads the hidden
  feature :math:`h_i` of every point *i* from here.

It must also expose ``feature_channels`` (the ``F`` above) as an attribute or property, so the
context decoder can be built before the first forward pass. Optional: ``get_params()`` (with the
constructor's arguments) lets :func:`sklearn.base.clone` and nested parameters such as
``backbone__base_channels`` reach it; without it, the estimator deep-copies the module.

Example
-------
A minimal custom backbone::

    class TinyDenoiser(nn.Module):
        feature_channels = 32

        def __init__(self):
            super().__init__()
            self.body = nn.Conv2d(1, 32, 3, padding=1)
            self.t_emb = nn.Embedding(1000, 32)  # t < T: the model's timesteps (default 1000)
            self.out = nn.Conv2d(32, 1, 1)

        def forward(self, x, t, cond=None):
            h = torch.relu(self.body(x) + self.t_emb(t)[:, :, None, None])
            return self.out(h), h
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

__all__ = ["Backbone", "check_backbone_output", "num_classes_of"]


@runtime_checkable
class Backbone(Protocol):
    """Structural type of a denoiser backbone (see the module documentation)."""

    feature_channels: int

    def __call__(
        self, x: torch.Tensor, t: torch.Tensor, cond: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


def check_backbone_output(out: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a backbone's return value against its input ``x`` ``(B, C, H, W)``.

    Raises
    ------
    TypeError
        If the backbone did not return a ``(prediction, features)`` pair of tensors.
    ValueError
        If ``prediction`` does not have ``x``'s shape, or ``features`` is not ``(B, F, H, W)``.
    """
    if not (isinstance(out, tuple | list) and len(out) == 2):
        raise TypeError(
            "backbone must return a (prediction, features) pair of tensors, "
            f"got {type(out).__name__}"
        )
    pred, feats = out
    if not isinstance(pred, torch.Tensor) or not isinstance(feats, torch.Tensor):
        raise TypeError("backbone must return a (prediction, features) pair of tensors")
    if pred.shape != x.shape:
        raise ValueError(
            f"backbone prediction must have the input's shape {tuple(x.shape)}, "
            f"got {tuple(pred.shape)}"
        )
    if feats.ndim != 4 or feats.shape[0] != x.shape[0] or feats.shape[2:] != x.shape[2:]:
        raise ValueError(
            f"backbone features must be (B, F, H, W) = ({x.shape[0]}, F, {x.shape[2]}, "
            f"{x.shape[3]}) on the input's grid, got {tuple(feats.shape)}"
        )
    return pred, feats


def num_classes_of(backbone: Any) -> int | None:
    """The backbone's ``num_classes`` (class-conditional when set), checked; None otherwise."""
    k = getattr(backbone, "num_classes", None)
    if k is None:
        return None
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"backbone num_classes must be None or an integer >= 1, got {k!r}")
    return int(k)
