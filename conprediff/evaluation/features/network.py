"""The default feature network: a small LeNet-style classifier."""

from __future__ import annotations

import torch
from torch import nn

from ..._validation import check_int

__all__ = ["LeNetClassifier"]


class LeNetClassifier(nn.Module):
    """Small LeNet-style convolutional classifier whose penultimate layer gives the features.

    ``conv3x3(C, w) - ReLU - conv3x3(w, 2w, stride 2) - ReLU - AdaptiveAvgPool(4x4) - flatten -
    Linear(32w, D) - ReLU - Linear(D, n_classes)``. It accepts images of any size >= 8x8; about
    0.15M parameters at the defaults.

    Parameters
    ----------
    in_channels : int, default 1
        Channels ``C`` of the input images.
    n_classes : int, default 10
        Number of classes (logits), at least 2.
    width : int, default 32
        Channels ``w`` of the first convolution (the second has ``2w``).
    feature_dim : int, default 128
        Dimension ``D`` of the feature vectors returned by :meth:`features`.

    Raises
    ------
    TypeError
        If an argument is not an integer.
    ValueError
        If an argument is below 1, or ``n_classes`` below 2.

    Notes
    -----
    Inputs are images in [-1, 1] of shape ``(N, C, H, W)`` with ``H, W >= 8``.
    """

    min_size = 8

    def __init__(
        self, in_channels: int = 1, n_classes: int = 10, width: int = 32, feature_dim: int = 128
    ) -> None:
        super().__init__()
        self.in_channels = check_int(in_channels, "in_channels", 1)
        self.n_classes = check_int(n_classes, "n_classes", 2)
        self.width = check_int(width, "width", 1)
        self.feature_dim = check_int(feature_dim, "feature_dim", 1)
        self.body = nn.Sequential(
            nn.Conv2d(self.in_channels, self.width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(self.width, 2 * self.width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(2 * self.width * 16, self.feature_dim),
            nn.ReLU(),
        )
        self.head = nn.Linear(self.feature_dim, self.n_classes)

    def get_config(self) -> dict[str, int]:
        """Constructor arguments, JSON-serialisable: ``LeNetClassifier(**model.get_config())``."""
        return {
            "in_channels": self.in_channels,
            "n_classes": self.n_classes,
            "width": self.width,
            "feature_dim": self.feature_dim,
        }

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"x must have shape (N, {self.in_channels}, H, W); got {tuple(x.shape)}"
            )
        if min(x.shape[2], x.shape[3]) < self.min_size:
            raise ValueError(
                f"x must be at least {self.min_size}x{self.min_size} pixels; "
                f"got {tuple(x.shape[2:])}"
            )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features.

        Parameters
        ----------
        x : torch.Tensor of shape (N, C, H, W)
            Images in [-1, 1], ``H, W >= 8``.

        Returns
        -------
        torch.Tensor of shape (N, feature_dim)
            Non-negative (post-ReLU) feature vectors.
        """
        self._check_input(x)
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(N, n_classes)`` of images ``x`` as in :meth:`features`."""
        return self.head(self.features(x))
