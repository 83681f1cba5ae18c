"""A colour data set that installs with the package: crops of scikit-image's sample photographs.

scikit-image ships a few colour photographs inside its wheel (nothing is downloaded). Random
square crops of them, each labelled with its photograph, make a small colour data set with
classes: what the grey digits cannot show (colour, texture) and what class-balanced metrics
need (labels). The photographs are public domain or CC0 (see scikit-image's ``skimage.data``).
"""

from __future__ import annotations

import numpy as np
import torch

from .._validation import check_int, check_seed

__all__ = ["PHOTOS", "load_photo_crops"]

#: The photographs, one class each, in label order (``skimage.data`` function names).
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
          "immunohistochemistry", "retina")


def _photo(name: str, scale: int) -> np.ndarray:
    """Photograph ``name`` as ``(H, W, 3)`` uint8, its shorter side resized to ``scale``."""
    from PIL import Image

    try:
        import skimage.data
    except ImportError as err:  # pragma: no cover - a dependency
        raise ImportError("load_photo_crops needs scikit-image (pip install scikit-image)") from err
    img = getattr(skimage.data, name)()[..., :3]
    if name == "retina":  # the fundus photograph: its central square, not the black border
        h, w = img.shape[:2]
        img = img[h // 5 : h - h // 5, w // 5 : w - w // 5]
    pil = Image.fromarray(img)
    factor = scale / min(pil.size)
    size = (max(scale, round(pil.size[0] * factor)), max(scale, round(pil.size[1] * factor)))
    return np.asarray(pil.resize(size, Image.Resampling.LANCZOS))


def load_photo_crops(size: int = 32, n_per_photo: int = 700, scale: int = 128,
                     seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ``size x size`` colour crops of seven photographs, labelled by photograph.

    Each photograph of :data:`PHOTOS` is resized so that its shorter side is ``scale`` pixels
    (a 32-pixel crop then shows about a quarter of its width), and ``n_per_photo`` crops are
    drawn at uniformly random positions.

    Parameters
    ----------
    size : int
        Side of the crops, at most ``scale``.
    n_per_photo : int
        Crops per photograph (the default gives 4,900 images).
    scale : int
        Shorter side of each photograph before cropping.
    seed : int
        Seeds the crop positions.

    Returns
    -------
    images : torch.Tensor
        ``(7 * n_per_photo, 3, size, size)`` float32 in ``[-1, 1]``.
    labels : torch.Tensor
        ``(7 * n_per_photo,)`` int64: the index of the photograph in :data:`PHOTOS`.
    """
    scale = check_int(scale, "scale", 8)
    size = check_int(size, "size", 1, scale)
    n = check_int(n_per_photo, "n_per_photo", 1)
    rng = np.random.default_rng(check_seed(seed))
    images, labels = [], []
    for label, name in enumerate(PHOTOS):
        img = _photo(name, scale)
        h, w = img.shape[:2]
        rows = rng.integers(0, h - size + 1, n)
        cols = rng.integers(0, w - size + 1, n)
        crops = np.stack([img[r : r + size, c : c + size] for r, c in zip(rows, cols,
                                                                          strict=True)])
        images.append(crops)
        labels.append(np.full(n, label, dtype=np.int64))
    x = torch.from_numpy(np.concatenate(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x.contiguous(), torch.from_numpy(np.concatenate(labels))
