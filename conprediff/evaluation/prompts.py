"""The prompt-following score of a text model on captioned digits."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..data.captioned import ATTRIBUTES, measure_digit_attributes

__all__ = ["prompt_following"]


def prompt_following(images: torch.Tensor, digits: Sequence[int],
                     attributes: dict[str, Sequence[str]], thresholds: dict[str, np.ndarray],
                     classify: Callable[[torch.Tensor], Any]) -> dict[str, float]:
    """The share of images that show what their prompt asked for.

    Parameters
    ----------
    images : torch.Tensor
        ``(N, 1, H, W)`` samples in ``[-1, 1]``, drawn from prompts stating ``digits`` and
        ``attributes``.
    digits : sequence of int
        ``(N,)`` requested classes.
    attributes : dict of str to sequence of str
        Requested words per attribute (``'thickness'``, ``'slant'``, ``'size'``,
        ``'position'``), as :func:`~conprediff.data.load_captioned_digits` words them.
    thresholds : dict
        :attr:`~conprediff.data.captioned.CaptionedDigits.thresholds` of the training data.
    classify : callable
        ``images -> (N,)`` predicted classes, e.g. a fitted
        :class:`~conprediff.evaluation.FeatureExtractor`'s ``classify``.

    Returns
    -------
    dict
        ``'digit'`` (the classifier agrees), one entry per attribute (the measured word
        agrees), and ``'all'`` (everything agrees), each a share in ``[0, 1]``.
    """
    want = np.asarray(digits, dtype=int)
    ok = {"digit": np.asarray(classify(images)).astype(int) == want}
    measured = measure_digit_attributes(images, want, thresholds)
    for name in ATTRIBUTES:
        ok[name] = np.array([a == b for a, b in zip(measured[name], attributes[name],
                                                    strict=True)])
    ok["all"] = np.logical_and.reduce([ok[k] for k in ("digit", *ATTRIBUTES)])
    return {k: float(v.mean()) for k, v in ok.items()}
