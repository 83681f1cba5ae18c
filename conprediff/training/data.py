"""Turning what a user hands to ``fit`` into batches, with the input checks at that boundary."""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torch.utils.data.distributed import DistributedSampler

__all__ = [
    "BatchStream",
    "as_loader",
    "check_images",
    "check_in_range",
    "check_labels",
    "from_unit",
    "infer_data_range",
    "split_batch",
    "to_unit",
]


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
        kinds = ("a torch.Tensor, a numpy array, a Dataset or a DataLoader" if name == "data"
                 else "a torch.Tensor or a numpy array")
        hint = ""
        if type(x).__module__.startswith("PIL") and name == "data":
            hint = (
                " (a Dataset must yield (C, H, W) image tensors: convert each PIL image, e.g. "
                "torch.from_numpy(numpy.asarray(img)).permute(2, 0, 1) for RGB or [None] for "
                "grey, or read a folder with conprediff.data.ImageFolder)"
            )
        raise TypeError(f"{name} must be {kinds}, got {type(x).__name__}{hint}")
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
    if x.ndim != 4:
        hint = " (add a channel axis: x[:, None])" if x.ndim == 3 else ""
        raise ValueError(
            f"{name} must be 4-dimensional (N, C, H, W), got {x.ndim} dimensions with shape "
            f"{tuple(x.shape)}{hint}"
        )
    if x.shape[3] in (1, 3, 4) and x.shape[1] == x.shape[2] > 4:
        raise ValueError(
            f"{name} of shape {tuple(x.shape)} looks channels-last (N, H, W, C); conprediff "
            f"expects (N, C, H, W): use x.permute(0, 3, 1, 2) (numpy: x.transpose(0, 3, 1, 2))"
        )
    if x.shape[0] == 0 or x.numel() == 0:
        raise ValueError(f"{name} is empty: got shape {tuple(x.shape)}")
    x = x.float()
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return x


def check_in_range(
    x: torch.Tensor, data_range: tuple[float, float], name: str, tol: float = 0.02
) -> None:
    """Raise ValueError if ``x`` leaves ``data_range`` by more than ``tol`` of its width.

    The default tolerance is :func:`infer_data_range`'s (resizing overshoots a little).
    """
    lo, hi = data_range
    margin = tol * (hi - lo)
    x_lo, x_hi = float(x.min()), float(x.max())
    if x_lo < lo - margin or x_hi > hi + margin:
        raise ValueError(
            f"{name} values must lie in the data range [{lo:g}, {hi:g}], got "
            f"[{x_lo:.4g}, {x_hi:.4g}]"
            + (" (set data_range to the data's range, or 'auto')" if name == "data" else "")
        )


def check_labels(labels: Any, num_classes: int, n: int, name: str = "labels") -> torch.Tensor:
    """Validate ``n`` class labels in ``[0, num_classes)`` and return them as an int64 tensor.

    Accepts a tensor, an array or a sequence of integers (``(n,)``), or one integer (a Python or
    numpy integer, or a 0-dimensional tensor or array) for all ``n``.

    Raises
    ------
    ValueError
        If labels are missing, not integers, not ``(n,)``, or outside ``[0, num_classes)``.
    """
    if labels is None:
        raise ValueError(
            f"the backbone is class-conditional (num_classes={num_classes}) but the {name} are "
            "missing: pass y= to fit, or let the data yield (images, labels)"
        )
    if isinstance(labels, torch.Tensor):
        if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
            raise ValueError(f"{name} must be integers, got dtype {labels.dtype}")
        values = labels.detach().cpu().numpy()
    elif isinstance(labels, numbers.Integral) and not isinstance(labels, bool):
        values = labels  # a Python int of any size: checked against the range below
    else:
        values = np.asarray(labels)
        if values.dtype == np.bool_ or not np.issubdtype(values.dtype, np.integer):
            raise ValueError(f"{name} must be integers, got {values.dtype} values")
    if np.ndim(values) == 0:
        lo = hi = int(values)
    else:
        if np.shape(values) != (n,):
            raise ValueError(
                f"{name} must have shape ({n},), one per image, got {tuple(np.shape(values))}"
            )
        lo, hi = (int(values.min()), int(values.max())) if n else (0, 0)
    if lo < 0 or hi >= num_classes:
        raise ValueError(
            f"{name} must lie in [0, {num_classes}) (num_classes={num_classes}), got values from "
            f"{lo} to {hi}"
        )
    if np.ndim(values) == 0:
        return torch.full((n,), lo, dtype=torch.long)
    return torch.from_numpy(np.asarray(values, dtype=np.int64))


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
    data: Any, y: Any, batch_size: int, seed: int, world_size: int = 1, rank: int = 0
) -> tuple[Any, int | None]:
    """Wrap ``data`` as an iterable of batches.

    A tensor, array or Dataset gets a DataLoader over a
    :class:`~torch.utils.data.distributed.DistributedSampler` (shuffled with ``seed`` and the epoch;
    with one process it is a plain seeded shuffle), so one process and N processes visit the same
    global batches; each of N processes loads ``batch_size / N`` images. A DataLoader is used as
    it is; under DDP without a ``DistributedSampler`` a warning says that every rank sees all data.

    Returns
    -------
    loader : iterable
    n_items : int or None
        Number of images when known.
    """
    if isinstance(data, DataLoader | Dataset) and y is not None:
        kind = "DataLoader" if isinstance(data, DataLoader) else "Dataset"
        raise ValueError(f"y must be None when data is a {kind} (yield (images, labels))")
    if isinstance(data, DataLoader):
        if world_size > 1 and not isinstance(data.sampler, DistributedSampler):
            warnings.warn(
                "data is a DataLoader without a DistributedSampler: under DDP every rank iterates "
                "over all of it; pass the Dataset (fit shards it) or use a DistributedSampler",
                stacklevel=3,
            )
        return data, None
    if isinstance(data, Dataset):
        dataset, collate = data, _collate_same_size
    else:
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
        dataset, collate = TensorDataset(*tensors), None
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise ValueError("data is empty: it holds no images")
    if batch_size % world_size:
        raise ValueError(
            f"batch_size ({batch_size}) must be divisible by the number of processes ({world_size})"
        )
    per_rank = min(batch_size // world_size, max(1, n // world_size))
    sampler = DistributedSampler(
        dataset,
        num_replicas=world_size,
        rank=rank,
        shuffle=True,
        seed=seed,
        drop_last=n >= world_size,
    )
    loader = DataLoader(
        dataset, batch_size=per_rank, sampler=sampler, drop_last=n >= batch_size, collate_fn=collate
    )
    return loader, n


class BatchStream:
    """Endless batches from a loader, with a position that can be saved and replayed exactly.

    At the start of each epoch the stream records the CPU random state and the loader's generator
    state (a shuffling sampler draws from them when the epoch's iterator is created) and calls the
    sampler's ``set_epoch``; :meth:`load_state_dict` restores those, re-creates the epoch's
    iterator and skips the batches already consumed, so the next batch is the one the interrupted
    run would have drawn.
    """

    def __init__(self, loader: Any):
        self.loader = loader
        self.epoch = 0
        self.index = 0
        self.last_batch_size = 0
        self._it: Iterator[Any] | None = None
        self._epoch_rng: dict[str, Any] = {}

    def _start_epoch(self) -> None:
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)
        gen = getattr(self.loader, "generator", None)
        self._epoch_rng = {
            "cpu": torch.get_rng_state(),
            "loader": gen.get_state() if gen is not None else None,
        }
        self._it = iter(self.loader)

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> Any:
        if self._it is None:
            self._start_epoch()
        try:
            batch = next(self._it)
        except StopIteration:
            if self.index == 0:
                raise ValueError("data is empty: it yielded no batch") from None
            self.epoch += 1
            self.index = 0
            self._start_epoch()
            try:
                batch = next(self._it)
            except StopIteration:
                raise ValueError("data is empty: it yielded no batch") from None
        self.index += 1
        images = split_batch(batch)[0]
        self.last_batch_size = int(images.shape[0]) if hasattr(images, "shape") else 0
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Epoch, batches consumed in it, and the random states at the epoch's start."""
        if self._it is None:
            return {"epoch": 0, "index": 0, "cpu": None, "loader": None}
        return {"epoch": self.epoch, "index": self.index, **self._epoch_rng}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at a saved position (see the class documentation)."""
        self.epoch, self.index = int(state["epoch"]), 0
        if state["cpu"] is None:
            self._it = None
            return
        torch.set_rng_state(state["cpu"])
        gen = getattr(self.loader, "generator", None)
        if gen is not None and state["loader"] is not None:
            gen.set_state(state["loader"])
        self._start_epoch()
        for _ in range(int(state["index"])):
            next(self._it)
        self.index = int(state["index"])


def _collate_same_size(items: list[Any]) -> Any:
    first = split_batch(items[0])[0] if isinstance(items[0], list | tuple | dict) else items[0]
    for item in items:
        img = split_batch(item)[0] if isinstance(item, list | tuple | dict) else item
        if not isinstance(img, torch.Tensor | np.ndarray):
            check_images(img, "data")  # raises a TypeError that says what the items must be
        if tuple(img.shape) != tuple(first.shape):
            raise ValueError(
                f"data holds images of varying size: {tuple(first.shape)} and {tuple(img.shape)}"
                "; resize them to one size (e.g. ImageFolder(root, size=...))"
            )
    return torch.utils.data.default_collate(items)


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
