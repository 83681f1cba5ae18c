"""Input checks shared by the metrics: feature sets, class labels and image batches.

They follow the rule of :mod:`conprediff._validation` (``TypeError`` for a wrong type,
``ValueError`` for a wrong value, the argument named) and build on its checks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .._validation import check_images, check_int

__all__ = ["check_class_labels", "check_features", "check_image_batch", "check_same_dim"]


def check_features(x: Any, name: str, *, min_samples: int = 1) -> np.ndarray:
    """``x`` as a finite float64 array of shape ``(N, D)`` with ``N >= min_samples``.

    A ``torch.Tensor`` is detached and copied to the CPU.
    """
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a numeric array of shape (N, D); got {type(x)}") from exc
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (N, D); got an array of shape {arr.shape}")
    if arr.shape[1] < 1:
        raise ValueError(f"{name} must have at least one feature column; got shape {arr.shape}")
    if arr.shape[0] < min_samples:
        raise ValueError(f"{name} needs at least {min_samples} samples (rows); got {arr.shape[0]}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def check_same_dim(name1: str, x1: np.ndarray, name2: str, x2: np.ndarray) -> None:
    """Raise ``ValueError`` unless the last dimensions of ``x1`` and ``x2`` agree."""
    if x1.shape[-1] != x2.shape[-1]:
        raise ValueError(
            f"{name1} and {name2} must have the same feature dimension; "
            f"got {x1.shape[-1]} and {x2.shape[-1]}"
        )


def check_class_labels(
    labels: Any, name: str, n: int | None = None, n_classes: int | None = None
) -> np.ndarray:
    """Class indices as an int64 array of shape ``(n,)`` (any length when ``n`` is None).

    Integer arrays, and float arrays holding whole numbers, are accepted; the indices must be
    ``>= 0``, below ``n_classes`` when it is given, and fit in int64.
    """
    n_classes = check_int(n_classes, "n_classes", 1, optional=True)
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.ndim != 1 or (n is not None and arr.shape[0] != n):
        want = "(N,)" if n is None else f"({n},), one label per image"
        raise ValueError(f"{name} must have shape {want}; got {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise ValueError(f"{name} must hold integer class indices; got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating) and (
        not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr))
    ):
        raise ValueError(f"{name} must hold integer class indices")
    low, high = arr.min(), arr.max()
    if low < 0:
        raise ValueError(f"{name} must hold non-negative class indices; got minimum {low}")
    if n_classes is not None and high >= n_classes:
        raise ValueError(f"{name} must hold class indices in [0, {n_classes}); got maximum {high}")
    if high >= 2**63:  # exact for integer dtypes; floats from 2.0**63 on do not fit either
        raise ValueError(f"{name} holds a class index too large for int64: {high}")
    return arr.astype(np.int64)


def check_image_batch(images: Any, name: str = "images", *, min_size: int = 1) -> torch.Tensor:
    """Images as a float32 CPU tensor ``(N, C, H, W)``, through
    :func:`conprediff._validation.check_images`.

    Grey images ``(N, H, W)`` get a channel axis; a list or tuple is read as an array; the
    images must be at least ``min_size`` pixels on each side.
    """
    if isinstance(images, list | tuple):
        images = np.asarray(images)
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu()
    if isinstance(images, torch.Tensor | np.ndarray) and images.ndim == 3:
        images = images[:, None]
    x = check_images(images, name)
    if min(x.shape[2], x.shape[3]) < min_size:
        raise ValueError(
            f"{name} must be at least {min_size}x{min_size} pixels; got {tuple(x.shape[2:])}"
        )
    return x
