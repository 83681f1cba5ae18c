"""Turning what a user hands to ``fit`` into batches, with the input checks at that boundary."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from .._validation import check_images, check_in_range, check_labels, integer_labels
from ..ranges import from_unit, infer_data_range, to_unit

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
            if not isinstance(y, torch.Tensor) and np.asarray(y).dtype.kind in "USO":
                integer_labels(y, "labels y")  # raises: class names, not class numbers
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
