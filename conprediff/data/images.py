"""Reading one image file (PNG, JPEG, ...) as a ``(C, H, W)`` tensor, at its full bit depth."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

__all__ = ["read_image"]

# Pillow's modes for one grey channel of more than 8 bits (16-bit PNGs open as "I" or "I;16"),
# read as 16-bit values
_HIGH_DEPTH = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
_HIGH_MAX = 65535.0


def read_image(path: str | os.PathLike, mode: str = "L",
               size: tuple[int, int] | None = None) -> torch.Tensor:
    """One image file as float32 ``(C, H, W)`` in ``[-1, 1]``.

    Parameters
    ----------
    path : str or path
        A file Pillow can open (PNG, JPEG, BMP, GIF, WebP).
    mode : {'L', 'RGB'}, default='L'
        One grey channel or three colour channels.
    size : tuple of int, optional
        ``(H, W)`` to resize to (bicubic); the file's own size when None.

    Returns
    -------
    torch.Tensor
        ``(1, H, W)`` for ``'L'``, ``(3, H, W)`` for ``'RGB'``: ``2 v / v_max - 1`` where
        ``v_max`` is 255 for 8-bit files and 65535 for 16-bit ones, which are read at their full
        range (not clipped at 255) and resized in floating point.

    Raises
    ------
    ValueError
        If the file is not an image Pillow can read (the message names the file).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if img.mode in _HIGH_DEPTH:
                arr = _read_high_depth(img, size)
                arr = np.repeat(arr, 3, axis=0) if mode == "RGB" else arr
                return torch.from_numpy(arr) * 2.0 - 1.0
            img = img.convert(mode)
            if size is not None:
                img = img.resize((size[1], size[0]), Image.BICUBIC)
            arr = np.asarray(img, dtype=np.float32)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:  # PIL raises all three
        raise ValueError(f"cannot read {str(Path(path))!r} as an image: {err}") from err
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(arr.copy()) / 127.5 - 1.0


def _read_high_depth(img, size: tuple[int, int] | None) -> np.ndarray:
    """A high-depth grey image as ``(1, H, W)`` float32 in ``[0, 1]``."""
    from PIL import Image

    arr = np.asarray(img, dtype=np.float32) / _HIGH_MAX
    if size is not None:
        arr = np.asarray(Image.fromarray(arr).resize((size[1], size[0]), Image.BICUBIC))
    return np.ascontiguousarray(np.clip(arr, 0.0, 1.0)[None], dtype=np.float32)
