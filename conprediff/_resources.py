"""How much memory a result will take, checked before the work that makes it starts."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

__all__ = ["available_memory", "check_output_size"]

#: Limit on one result when the free memory cannot be read (64 GiB).
FALLBACK_LIMIT = 64 * 2**30


def available_memory() -> int | None:
    """Free physical memory in bytes (``SC_AVPHYS_PAGES`` pages), or None where unknown."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def output_limit() -> int:
    """Largest result allowed: half the free memory, else :data:`FALLBACK_LIMIT`."""
    free = available_memory()
    return FALLBACK_LIMIT if free is None or free <= 0 else free // 2


def check_output_size(n: int, item_shape: Sequence[int], name: str = "n",
                      itemsize: int = 4) -> int:
    """Raise ValueError when ``n`` items of ``item_shape`` exceed :func:`output_limit`.

    The size is :math:`n \\cdot \\prod \\mathrm{item\\_shape} \\cdot \\mathrm{itemsize}` bytes
    (float32 by default); the message names it and asks for chunks. Returns ``n``.
    """
    size = n * math.prod(item_shape) * itemsize
    limit = output_limit()
    if size > limit:
        raise ValueError(
            f"{name}={n} images of shape {tuple(item_shape)} take {size / 2**30:.1f} GiB, more "
            f"than the {limit / 2**30:.1f} GiB allowed (half the free memory): sample in "
            f"chunks to disk with conprediff.export.sample_to_folder(model, {n}, folder) or "
            f"'conprediff sample --n {n} --out folder/'"
        )
    return n
