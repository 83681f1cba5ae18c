"""Turning what a user hands to ``fit`` into batches, with the input checks at that boundary."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

__all__ = ["as_loader", "split_batch", "check_images", "infer_data_range", "to_unit", "from_unit"]


def check_images(x: Any, name: str = "data") -> torch.Tensor:
    """Validate a batch of images ``(N, C, H, W)`` and return it as a float32 tensor.

    Raises
    ------
    TypeError
        If ``x`` is neither a tensor nor an array, or has a non-numeric dtype.
    ValueError
        If ``x`` is not 4-dimensional, is empty, or holds NaN/inf values.
    """
    if isinstance(x, np.ndarray):
        if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
            raise TypeError(f"{name} must hold real numbers, got an array of dtype {x.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor, a numpy array or a DataLoader, got {type(x).__name__}"
        )
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
    if x.ndim != 4:
        hint = " (add a channel axis: x[:, None])" if x.ndim == 3 else ""
        raise ValueError(
            f"{name} must be 4-dimensional (N, C, H, W), got {x.ndim} dimensions with shape "
            f"{tuple(x.shape)}{hint}"
        )
    if x.shape[0] == 0 or x.numel() == 0:
        raise ValueError(f"{name} is empty: got shape {tuple(x.shape)}")
    x = x.float()
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return x


def split_batch(batch: Any) -> tuple[Any, Any]:
    """``images`` or ``(images, labels, ...)`` -> ``(images, labels or None)``."""
    if isinstance(batch, list | tuple):
        if len(batch) == 0:
            raise ValueError("data yielded an empty batch")
        return batch[0], (batch[1] if len(batch) > 1 else None)
    if isinstance(batch, dict):
        for key in ("images", "image", "pixel_values", "x"):
            if key in batch:
                return batch[key], batch.get("labels", batch.get("label"))
        raise ValueError(f"data yielded a dict without an 'images' key: keys {sorted(batch)}")
    return batch, None


def as_loader(
    data: Any, y: Any, batch_size: int, generator: torch.Generator
) -> tuple[DataLoader | Any, int | None]:
    """Wrap ``data`` as an iterable of batches.

    Returns
    -------
    loader : iterable
        The user's DataLoader unchanged, or a shuffling DataLoader over a tensor/array/Dataset.
    n_items : int or None
        Number of images when known.
    """
    if isinstance(data, DataLoader):
        if y is not None:
            raise ValueError("y must be None when data is a DataLoader (yield (images, labels))")
        return data, None
    if isinstance(data, Dataset):
        n = len(data)  # type: ignore[arg-type]
        if n == 0:
            raise ValueError("data is empty: the dataset has no items")
        loader = DataLoader(
            data,
            batch_size=min(batch_size, n),
            shuffle=True,
            generator=generator,
            drop_last=n >= batch_size,
            collate_fn=_collate_same_size,
        )
        return loader, n
    images = check_images(data, "data")
    tensors = [images]
    if y is not None:
        labels = torch.as_tensor(np.asarray(y)) if not isinstance(y, torch.Tensor) else y
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"y must be 1-dimensional with one label per image ({images.shape[0]}), "
                f"got shape {tuple(labels.shape)}"
            )
        tensors.append(labels.long())
    n = images.shape[0]
    loader = DataLoader(
        TensorDataset(*tensors),
        batch_size=min(batch_size, n),
        shuffle=True,
        generator=generator,
        drop_last=n >= batch_size,
    )
    return loader, n


def _collate_same_size(items: list[Any]) -> Any:
    first = split_batch(items[0])[0] if isinstance(items[0], list | tuple | dict) else items[0]
    for item in items:
        img = split_batch(item)[0] if isinstance(item, list | tuple | dict) else item
        if tuple(img.shape) != tuple(first.shape):
            raise ValueError(
                f"data holds images of varying size: {tuple(first.shape)} and {tuple(img.shape)}"
                "; resize them to one size (e.g. ImageFolder(root, size=...))"
            )
    return torch.utils.data.default_collate(items)


def infer_data_range(images: torch.Tensor) -> tuple[float, float]:
    """The range images live in: the smallest of ``[0, 1]``, ``[-1, 1]``, ``[0, 255]`` that
    contains them, else their own ``[min, max]``."""
    lo, hi = float(images.min()), float(images.max())
    for a, b in ((0.0, 1.0), (-1.0, 1.0), (0.0, 255.0)):
        if a <= lo and hi <= b:
            return a, b
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


def cycle(loader: Any) -> Iterator[Any]:
    """Iterate over ``loader`` again and again (a fresh epoch each pass)."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("data is empty: the DataLoader yielded no batch")
