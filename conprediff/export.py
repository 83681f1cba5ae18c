"""Many samples to a folder of PNG files, in chunks, resumable: what FID evaluation needs."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._validation import check_bool, check_data_range, check_int
from .text.embedding import check_prompts

__all__ = ["save_images", "sample_to_folder"]

_DIGITS = 6  # file names 000000.png ... (more digits when n needs them)


def _to_uint8(images: torch.Tensor, data_range: tuple[float, float]) -> np.ndarray:
    """``(N, C, H, W)`` in ``data_range`` -> ``(N, H, W)`` or ``(N, H, W, C)`` uint8."""
    lo, hi = data_range
    x = ((images.detach().float().cpu() - lo) / (hi - lo)).clamp(0, 1).mul(255).round()
    arr = x.to(torch.uint8).numpy()
    return arr[:, 0] if arr.shape[1] == 1 else arr.transpose(0, 2, 3, 1)


def _name(index: int, width: int) -> str:
    return f"{index:0{width}d}.png"


def save_images(images: torch.Tensor, folder: str | os.PathLike, *, start: int = 0,
                data_range: tuple[float, float] = (-1.0, 1.0), width: int = _DIGITS
                ) -> list[Path]:
    """Write each image of ``images`` ``(N, C, H, W)`` as an 8-bit PNG named by its index.

    Image ``i`` goes to ``folder / f"{start + i:0{width}d}.png"``; values are mapped from
    ``data_range`` to 0-255 and clipped. Each file is written under a temporary name and renamed,
    so a killed run never leaves a partial PNG under an image's name.

    Returns
    -------
    list of Path
        The files written, in order.
    """
    from PIL import Image

    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError("images must be a (N, C, H, W) tensor with 1 or 3 channels, got "
                         f"{getattr(images, 'shape', type(images).__name__)}")
    start = check_int(start, "start", 0)
    width = check_int(width, "width", 1)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, arr in enumerate(_to_uint8(images, check_data_range(data_range))):
        path = folder / _name(start + i, width)
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(arr)).save(buffer, format="PNG")
        tmp = folder / f".{path.name}.{os.getpid()}.tmp"
        tmp.write_bytes(buffer.getvalue())
        os.replace(tmp, path)
        paths.append(path)
    return paths


def _chunk_seed(seed: int, chunk: int) -> int:
    """A seed for chunk ``chunk`` of a run seeded ``seed``, independent of the other chunks."""
    return int(np.random.SeedSequence([seed, chunk]).generate_state(1)[0])


def _check_labels_count(labels: Any, n: int) -> bool:
    """Whether ``labels`` are per image (``n`` of them) rather than one shared label or None."""
    if labels is None or np.ndim(labels) == 0:
        return False
    if len(labels) != n:
        raise ValueError(f"labels must be one label or n={n} labels, got {len(labels)}")
    return True


def sample_to_folder(model: Any, n: int, folder: str | os.PathLike, *, batch_size: int = 256,
                     seed: int = 0, resume: bool = False, progress: bool = True,
                     labels: Any = None, **sample_kwargs: Any) -> Path:
    """Sample ``n`` images with ``model`` and write them as PNG files, one chunk at a time.

    Memory holds one chunk of ``batch_size`` images, whatever ``n``; chunk ``k`` (images
    ``k * batch_size`` to ``(k + 1) * batch_size - 1``) is drawn with its own seed made from
    ``(seed, k)``, so a run interrupted and continued with the same arguments and ``resume=True``
    writes the same files as one that was not.

    Parameters
    ----------
    model : ConPreDiffModel
        A fitted model.
    n : int
        Number of images, at least 1.
    folder : str or path
        Where the files ``000000.png``, ``000001.png``, ... go (created).
    batch_size : int, default=256
        Images per chunk (and per forward pass).
    seed : int, default=0
        Seeds every chunk.
    resume : bool, default=False
        Skip the chunks whose files all exist already.
    progress : bool, default=True
        Show a progress bar over the images.
    labels : int or array-like of int, optional
        One class for all images or ``(n,)`` classes (class-conditional models).
        ``prompts`` and ``negative_prompts`` (text models) may likewise be one or ``n``.
    **sample_kwargs
        Passed to :meth:`~conprediff.ConPreDiffModel.sample` (``steps``, ``sampler``,
        ``guidance_scale``, ``eta``, ...).

    Returns
    -------
    Path
        ``folder``.
    """
    from tqdm.auto import tqdm

    n = check_int(n, "n", 1)
    batch_size = check_int(batch_size, "batch_size", 1)
    seed = check_int(seed, "seed", 0)  # every chunk's seed derives from it: not None
    resume = check_bool(resume, "resume")
    per_image = _check_labels_count(labels, n)
    for key in ("prompts", "negative_prompts"):
        if isinstance(sample_kwargs.get(key), list | tuple):
            sample_kwargs[key] = check_prompts(sample_kwargs[key], n, key)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".*.png.*.tmp"):  # left by a killed run
        stale.unlink(missing_ok=True)
    width = max(_DIGITS, len(str(n - 1)))
    with tqdm(total=n, desc="sampling to folder", unit="img", disable=not progress) as bar:
        for chunk, lo in enumerate(range(0, n, batch_size)):
            hi = min(n, lo + batch_size)
            if resume and all((folder / _name(i, width)).is_file() for i in range(lo, hi)):
                bar.update(hi - lo)
                continue
            text = {k: v[lo:hi] if isinstance(v, list | tuple) else v
                    for k, v in sample_kwargs.items() if k in ("prompts", "negative_prompts")}
            images = model.sample(hi - lo, seed=_chunk_seed(seed, chunk), batch_size=batch_size,
                                  labels=labels[lo:hi] if per_image else labels,
                                  **{**sample_kwargs, **text})
            save_images(images, folder, start=lo, data_range=model.data_range_, width=width)
            bar.update(hi - lo)
    return folder
