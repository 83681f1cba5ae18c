r"""A network wrapped once into a denoiser: ``(x_t, t) -> (x0_hat, eps_hat)``.

The samplers of :mod:`conprediff.diffusion.samplers` only see a :class:`Denoiser`, never what
the network predicts (the role of k-diffusion's ``external.py`` wrappers).
"""

from __future__ import annotations

import torch

from .._validation import check_choice
from ..precision import PRECISIONS, autocast
from ..schedules import NoiseSchedule
from .gaussian import DenoiseFn, check_prediction, to_x0_eps

__all__ = ["Denoiser"]


class Denoiser:
    r"""The clean-sample and noise estimates of a network, whatever it predicts.

    Called on ``(x_t, t)`` it runs ``model(x_t, t)`` (under autocast in ``precision``), casts the
    output to ``x_t``'s dtype and converts it with
    :func:`~conprediff.diffusion.gaussian.to_x0_eps`, so the conversion and the samplers'
    arithmetic stay in ``x_t``'s dtype (float32) whatever the network computes in:

    * ``'eps'``: :math:`\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\hat\varepsilon) /
      \sqrt{\bar\alpha_t}`;
    * ``'v'``: :math:`\hat x_0 = \sqrt{\bar\alpha_t}\,x_t - \sqrt{1-\bar\alpha_t}\,v`,
      :math:`\hat\varepsilon = \sqrt{1-\bar\alpha_t}\,x_t + \sqrt{\bar\alpha_t}\,v`;
    * ``'x0'``: :math:`\hat\varepsilon = (x_t - \sqrt{\bar\alpha_t}\,\hat x_0) /
      \sqrt{1-\bar\alpha_t}`.

    With ``clip`` the estimate :math:`\hat x_0` is clamped to it and :math:`\hat\varepsilon`
    recomputed from the clamped value, so the pair stays consistent with ``x_t``.

    Parameters
    ----------
    model : callable
        ``model(x_t, t) -> out``, ``x_t`` ``(B, C, H, W)``, ``t`` ``(B,)`` long, ``out``
        ``(B, C, H, W)``.
    schedule : NoiseSchedule
        The schedule the model was trained with.
    prediction : {'eps', 'v', 'x0'}
        What ``model`` predicts; default ``'eps'``.
    clip : tuple of float or None
        Range of :math:`\hat x_0`; default ``(-1, 1)``, None for no clamping.
    precision : {'fp32', 'bf16', 'fp16', 'auto'}
        Autocast precision of the network's forward pass (:func:`conprediff.precision.autocast`;
        ``'auto'`` resolved on ``x_t``'s device); default ``'fp32'``, no autocast.
    """

    def __init__(
        self,
        model: DenoiseFn,
        schedule: NoiseSchedule,
        prediction: str = "eps",
        clip: tuple[float, float] | None = (-1.0, 1.0),
        precision: str = "fp32",
    ):
        self.model = model
        self.schedule = schedule
        self.prediction = check_prediction(prediction)
        self.clip = clip
        self.precision = check_choice(precision, "precision", PRECISIONS)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x0_hat, eps_hat)``, both ``(B, C, H, W)`` in ``x``'s dtype, at ``t`` ``(B,)``."""
        with autocast(self.precision, x.device):
            out = self.model(x, t)
        out = out.to(x.dtype)
        return to_x0_eps(out, x, t, self.schedule, self.prediction, self.clip)

    def __repr__(self) -> str:
        return (
            f"Denoiser({self.model!r}, {self.schedule!r}, prediction={self.prediction!r}, "
            f"clip={self.clip!r}, precision={self.precision!r})"
        )
