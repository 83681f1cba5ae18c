"""Data ranges: which range images live in, and the affine maps to ``[-1, 1]`` and back.

Training maps the data's range onto ``[-1, 1]``; sampling and inpainting map back. Both sides use
these three functions, so inference never reaches into :mod:`conprediff.training`.
"""

from __future__ import annotations

import torch

__all__ = ["from_unit", "infer_data_range", "to_unit"]


def infer_data_range(images: torch.Tensor, tol: float = 0.02) -> tuple[float, float]:
    """The range images live in.

    ``[0, 1]`` or ``[-1, 1]`` when the data lies in one of them (up to ``tol`` of overshoot, as
    resizing leaves), ``[0, 255]`` when the values are within it and exceed ``1 + tol``, else
    the data's own ``[min, max]``.
    """
    lo, hi = float(images.min()), float(images.max())
    if lo >= -tol and hi <= 1 + tol:
        return 0.0, 1.0
    if lo >= -1 - tol and hi <= 1 + tol:
        return -1.0, 1.0
    if lo >= -tol * 255 and 100.0 <= hi <= 255 * (1 + tol):
        return 0.0, 255.0
    if hi <= lo:
        raise ValueError(f"data is constant ({lo}); it has no range to model")
    return lo, hi


def to_unit(x: torch.Tensor, data_range: tuple[float, float]) -> torch.Tensor:
    """Map ``data_range`` affinely onto ``[-1, 1]``."""
    lo, hi = data_range
    return (x - lo) * (2.0 / (hi - lo)) - 1.0


def from_unit(x: torch.Tensor, data_range: tuple[float, float]) -> torch.Tensor:
    """Map ``[-1, 1]`` affinely back onto ``data_range``."""
    lo, hi = data_range
    return (x + 1.0) * ((hi - lo) / 2.0) + lo
