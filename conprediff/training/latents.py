"""Latent training's preparation: a fitted, frozen autoencoder and the data encoded once.

:func:`~conprediff.training.setup.fit_model` calls these when the estimator has an
``autoencoder``: the data set is encoded into scaled latents once, before the first step, so a
training step costs no encoder pass; the diffusion then trains on the latents as it would on
pixels.
"""

from __future__ import annotations

import copy
import hashlib
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .._validation import check_images, check_in_range, check_labels
from ..autoencoders.protocol import check_autoencoder, check_image_size, is_fitted
from ..spaces import LatentSpace
from .data import as_loader, split_batch

__all__ = ["autoencoder_digest", "encode_data", "fitted_autoencoder"]


def fitted_autoencoder(autoencoder: Any, data: Any, y: Any, seed: int, distributed: bool,
                       verbose: int) -> Any:
    """A frozen copy of ``autoencoder``, fitted first on ``data`` when it is not (with a
    warning); the object passed is never modified."""
    check_autoencoder(autoencoder, "autoencoder", fitted=False)
    if not is_fitted(autoencoder):
        if not hasattr(autoencoder, "fit"):
            check_autoencoder(autoencoder, "autoencoder")  # raises: not fitted
        if distributed:
            raise ValueError("autoencoder is not fitted: under torchrun fit it once first "
                             "(autoencoder.fit(images)) and pass the fitted one, so that every "
                             "process encodes with the same weights")
        ae = copy.deepcopy(autoencoder)
        if getattr(ae, "seed", 0) is None:
            ae.set_params(seed=seed + 5)
        if hasattr(ae, "verbose"):
            ae.set_params(verbose=verbose)
        warnings.warn(
            f"autoencoder is not fitted: fitting it on the same data first "
            f"({type(ae).__name__}, max_steps={getattr(ae, 'max_steps', '?')}); to share one "
            "autoencoder between models (a fair comparison), fit it once and pass the fitted one",
            stacklevel=5,
        )
        ae.fit(data, y)
    else:
        ae = copy.deepcopy(autoencoder)
    check_autoencoder(ae, "autoencoder")
    if isinstance(ae, nn.Module):
        ae.requires_grad_(False).eval()
    return ae


def autoencoder_digest(autoencoder: Any) -> str | None:
    """SHA-256 of the autoencoder's state (None for one that is not a module): what a checkpoint
    records, so that a run resumes only with the autoencoder it started with."""
    if not isinstance(autoencoder, nn.Module):
        return None
    h = hashlib.sha256()
    for key, value in sorted(autoencoder.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def encode_data(space: LatentSpace, data: Any, y: Any, batch_size: int,
                image_shape: tuple[int, ...], num_classes: int | None,
                device: torch.device, progress: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """All of ``data`` encoded once: ``(latents (N, c, h, w) on the CPU, labels (N,) or None)``.

    A tensor, array or Dataset is read once in order; a DataLoader is iterated once (an epoch of
    it: random augmentations it applies are drawn once). Every batch is checked as training
    checks it (shape, range, labels).
    """
    check_image_size(image_shape, space.factor)
    if isinstance(data, torch.Tensor | np.ndarray | torch.utils.data.Dataset):
        loader, n = as_loader(data, y, batch_size, seed=0)
        loader = torch.utils.data.DataLoader(loader.dataset, batch_size=batch_size,
                                             collate_fn=loader.collate_fn)
    else:
        loader, n = data, None
    latents, labels = [], []
    with torch.random.fork_rng(devices=[]):
        for batch in tqdm(loader, desc="encoding", disable=not progress, leave=False,
                          total=None if n is None else -(-n // batch_size)):
            images, lab = split_batch(batch)
            images = check_images(images, "data")
            if tuple(images.shape[1:]) != tuple(image_shape):
                raise ValueError(f"data holds images of varying size: expected {image_shape}, "
                                 f"got a batch of {tuple(images.shape[1:])}")
            check_in_range(images, space.data_range, "data")
            latents.append(space.encode(images.to(device)).float().cpu())
            if num_classes is not None:
                labels.append(check_labels(lab, num_classes, len(images), "data's labels"))
    return torch.cat(latents), (torch.cat(labels) if labels else None)
