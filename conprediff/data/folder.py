"""A dataset of the images in a folder (PNG/JPEG through Pillow)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.utils.data import Dataset

from .._validation import check_bool, check_choice, check_int, is_int
from .captions import read_captions
from .images import read_image

__all__ = ["ImageFolder", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def _check_size(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """``None``, or ``(H, W)`` from an int or a pair of ints, each at least 1."""
    if size is None:
        return None
    if is_int(size):
        side = check_int(size, "size", 1)
        return side, side
    if not isinstance(size, tuple | list):
        raise TypeError(f"size must be an integer, a pair (H, W) of integers or None, got {size!r}")
    if len(size) != 2:
        raise ValueError(f"size must be a pair (H, W), got {len(size)} values: {size!r}")
    return check_int(size[0], "size[0]", 1), check_int(size[1], "size[1]", 1)


class ImageFolder(Dataset):
    """Every image file below ``root`` (recursively, sorted by path) as a ``(C, H, W)`` tensor.

    Parameters
    ----------
    root : str or Path
        Folder to scan.
    mode : {'L', 'RGB'}, default='L'
        Pillow mode the images are converted to: 1 or 3 channels.
    size : int or tuple of int, optional
        Resize every image to ``(size, size)`` or ``(H, W)`` (bicubic). Without it (the
        default), all images
        must already share one size (checked when the model is fitted).
    labels : bool, default=False
        Items are ``(image, label)``: the class of an image is its first-level subfolder
        (``root/<class>/...``), numbered in the sorted order of the names (``classes``), as in
        torchvision's ``ImageFolder``. Every image must then lie in a subfolder.
    captions : str or Path, optional
        Items are ``(image, caption)``, for a text model (:doc:`/text`): ``'txt'`` reads one
        ``.txt`` file beside each image (same name, UTF-8); a file name (in ``root``, e.g.
        ``'captions.jsonl'``) or path reads JSON lines ``{"file": "a/b.png", "text": "..."}``,
        ``file`` relative to ``root``. Every image needs a caption. Not with ``labels``.

    Attributes
    ----------
    classes : list of str
        The class names with ``labels=True`` (label ``i`` is ``classes[i]``); empty otherwise.

    Notes
    -----
    Items are float32 in ``[-1, 1]``, read by :func:`~conprediff.data.read_image` (16-bit files
    at their full range; a file that is not an image gives a ``ValueError`` naming it).
    """

    def __init__(
        self,
        root: str | Path,
        mode: str = "L",
        size: int | tuple[int, int] | None = None,
        labels: bool = False,
        captions: str | os.PathLike | None = None,
    ):
        if not isinstance(root, str | os.PathLike):
            raise TypeError(f"root must be a str or a path, got {type(root).__name__}")
        self.root = Path(root)
        self.mode = check_choice(mode, "mode", ("L", "RGB"))
        self.size = _check_size(size)
        self.labels = check_bool(labels, "labels")
        if captions is not None and not isinstance(captions, str | os.PathLike):
            raise TypeError(f"captions must be 'txt' or a file path, got {type(captions).__name__}")
        if captions is not None and self.labels:
            raise ValueError("labels=True and captions: an ImageFolder yields labels or captions")
        self.captions = captions
        if not self.root.is_dir():
            raise ValueError(f"root must be an existing folder, got {str(root)!r}")
        self.paths = sorted(
            p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        if not self.paths:
            raise ValueError(f"root {str(root)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        self.classes: list[str] = []
        self._targets: list[int] = []
        if labels:
            loose = [p.name for p in self.paths if p.parent == self.root]
            if loose:
                raise ValueError(
                    f"labels=True takes the class of an image from its subfolder of {str(root)!r}, "
                    f"but {len(loose)} images lie in it directly (e.g. {loose[0]!r})"
                )
            names = [p.relative_to(self.root).parts[0] for p in self.paths]
            self.classes = sorted(set(names))
            index = {name: i for i, name in enumerate(self.classes)}
            self._targets = [index[name] for name in names]
        if captions is not None:
            self._targets = read_captions(self.root, self.paths, captions)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def texts(self) -> list[str] | None:
        """The captions, in the order of ``paths`` (None without ``captions``)."""
        return list(self._targets) if self.captions is not None else None

    def __getitem__(self, index: int) -> torch.Tensor | tuple[torch.Tensor, int | str]:
        image = read_image(self.paths[index], self.mode, self.size)
        return (image, self._targets[index]) if self._targets else image
