"""Training the default feature network, :class:`~.network.LeNetClassifier`, on labelled images."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split
from torch import nn
from tqdm.auto import tqdm

from ..._validation import check_bool, check_device, check_int, check_real
from .._checks import check_class_labels, check_image_batch
from .network import LeNetClassifier

__all__ = ["check_training_data", "train_classifier"]


def check_training_data(images: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Labelled images for :func:`train_classifier`, checked.

    Returns
    -------
    images : torch.Tensor of shape (N, C, H, W)
        float32 on the CPU, ``H, W >= 8``; grey ``(N, H, W)`` images get a channel axis.
    labels : torch.Tensor of shape (N,)
        int64 class indices ``>= 0``.
    """
    x = check_image_batch(images, "images", min_size=LeNetClassifier.min_size)
    y = torch.from_numpy(check_class_labels(labels, "labels", x.shape[0]))
    return x, y


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image of ``x`` ``(N, C, H, W)`` by up to ``max_shift`` pixels along each
    axis, filling with the background (-1)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
    rows = (offsets[:, 0, None] + torch.arange(h))[:, :, None]  # (n, h, 1)
    cols = (offsets[:, 1, None] + torch.arange(w))[:, None, :]  # (n, 1, w)
    # Advanced indexing gives (n, h, w, C); move the channels back.
    out = padded.permute(0, 2, 3, 1)[torch.arange(n)[:, None, None], rows, cols]
    return out.permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Share of the images ``x`` whose argmax logit is their label ``y``."""
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, x.shape[0], batch_size):
        logits = model(x[start : start + batch_size].to(device))
        correct += int((logits.argmax(1).cpu() == y[start : start + batch_size]).sum())
    return correct / x.shape[0]


def _split(y: torch.Tensor, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a train/test split, stratified when every class has two images or more."""
    test_fraction = check_real(test_fraction, "test_fraction", 0.0, 1.0, low_open=True,
                               high_open=True)
    if int(y.max()) < 1:
        raise ValueError(f"labels must contain at least two classes; got {int(y.max()) + 1}")
    counts = torch.bincount(y)
    stratify = y.numpy() if int(counts[counts > 0].min()) >= 2 else None
    return train_test_split(
        np.arange(y.shape[0]), test_size=test_fraction, random_state=seed, stratify=stratify
    )


def _fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    augment: bool,
    generator: torch.Generator,
    verbose: int,
) -> tqdm:
    """Adam with a cosine decay to 0 and cross-entropy over ``epochs`` passes; returns the bar."""
    device = next(model.parameters()).device
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = -(-x.shape[0] // batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, epochs * steps_per_epoch)
    bar = tqdm(range(epochs), desc="training feature classifier", disable=not verbose)
    model.train()
    for _ in bar:
        order = torch.randperm(x.shape[0], generator=generator)
        total = 0.0
        for start in range(0, x.shape[0], batch_size):
            batch = order[start : start + batch_size]
            xb = random_shift(x[batch], 1, generator) if augment else x[batch]
            loss = F.cross_entropy(model(xb.to(device)), y[batch].to(device))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            total += loss.item() * batch.shape[0]
        bar.set_postfix(loss=f"{total / x.shape[0]:.4f}")
    model.eval()
    return bar


def train_classifier(
    images: Any,
    labels: Any,
    *,
    epochs: int = 30,
    seed: int = 0,
    test_fraction: float = 0.2,
    verbose: int = 1,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    augment: bool = True,
    width: int = 32,
    feature_dim: int = 128,
    device: str | torch.device | None = None,
) -> tuple[LeNetClassifier, float]:
    """Train a :class:`LeNetClassifier` on labelled images and measure its held-out accuracy.

    Adam with a cosine learning-rate decay and cross-entropy loss; a stratified split of
    ``test_fraction`` of the images is held out and never trained on. Deterministic for a given
    ``seed`` on CPU; the global torch random state is left untouched.

    Parameters
    ----------
    images : array_like or torch.Tensor of shape (N, C, H, W) or (N, H, W)
        Images in [-1, 1], ``H, W >= 8``.
    labels : array_like of shape (N,)
        Integer class indices; ``n_classes = max(labels) + 1``, at least 2.
    epochs : int, default 30
        Passes over the training split.
    seed : int, default 0
        Seeds the split, the initialisation, the batches and the augmentation.
    test_fraction : float, default 0.2
        Fraction held out for the test accuracy, in (0, 1).
    verbose : int, default 1
        0: silent; otherwise a tqdm progress bar over epochs with the loss.
    batch_size : int, default 64
        Training batch size.
    lr, weight_decay : float, defaults 3e-3 and 1e-4
        Adam's initial learning rate (decayed to 0 by a cosine schedule) and L2 weight decay.
    augment : bool, default True
        Random translations by up to one pixel (background-filled) while training.
    width, feature_dim : int
        Passed to :class:`LeNetClassifier`.
    device : str or torch.device, optional
        Where to train; default CUDA when available, else CPU.

    Returns
    -------
    model : LeNetClassifier
        The trained model in eval mode, on ``device``.
    test_accuracy : float
        Accuracy on the held-out split, in [0, 1].

    Raises
    ------
    TypeError
        If an integer argument is not an integer.
    ValueError
        If the shapes of ``images`` and ``labels`` disagree, there are fewer than two classes,
        ``epochs`` or ``batch_size`` is not positive or ``test_fraction`` is outside (0, 1).
    """
    x, y = check_training_data(images, labels)
    epochs = check_int(epochs, "epochs", 1)
    batch_size = check_int(batch_size, "batch_size", 1)
    device = check_device("auto" if device is None else device)
    idx_train, idx_test = _split(y, test_fraction, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LeNetClassifier(x.shape[1], int(y.max()) + 1, width=width,
                                feature_dim=feature_dim)
    bar = _fit(
        model.to(device), x[idx_train], y[idx_train], epochs=epochs, batch_size=batch_size,
        lr=lr, weight_decay=weight_decay, augment=check_bool(augment, "augment"),
        generator=torch.Generator().manual_seed(seed), verbose=verbose,
    )
    test_accuracy = accuracy(model, x[idx_test], y[idx_test])
    if verbose:
        bar.write(f"feature classifier: test accuracy {test_accuracy:.4f} ({len(idx_test)} images)")
    return model, test_accuracy
