"""Where the diffusion runs: the map between the user's images and the points it diffuses.

:meth:`~conprediff.ConPreDiffModel.fit` trains on ``space.encode(images)``;
:meth:`~conprediff.ConPreDiffModel.sample` decodes the sampler's result with ``space.decode``;
:meth:`~conprediff.ConPreDiffModel.inpaint` encodes the known part of the input
(``space.encode_known``), brings the mask to the point grid with ``space.point_mask``, runs
RePaint on the points and decodes. The context term's "points" are the elements of that grid;
``space.clip`` is the range the samplers clamp their estimate of the clean points to.

:class:`PixelSpace` is the pixel grid itself; :class:`LatentSpace` an autoencoder's latent grid
(LDM). The estimator, the training loop and the samplers need no second copy for either.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .ranges import from_unit, to_unit

__all__ = ["LatentSpace", "PixelSpace"]


class PixelSpace:
    """Diffusion on the pixels, their range ``data_range`` mapped affinely onto ``[-1, 1]``.

    Parameters
    ----------
    data_range : tuple of float
        ``(lo, hi)`` of the images.
    """

    #: Range of the clean points: samplers clamp their estimate to it.
    clip: tuple[float, float] | None = (-1.0, 1.0)

    def __init__(self, data_range: tuple[float, float]):
        self.data_range = (float(data_range[0]), float(data_range[1]))

    def point_shape(self, image_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The ``(C, H, W)`` of the points for images of ``image_shape``: the same."""
        return tuple(image_shape)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` images in ``data_range`` -> points in ``[-1, 1]``."""
        return to_unit(images, self.data_range)

    def encode_known(self, images: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
        """The points of ``images`` whose ``missing`` pixels are unknown: :meth:`encode` (RePaint
        never reads a missing pixel's point)."""
        return self.encode(images)

    def decode(self, points: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` points in ``[-1, 1]`` -> images in ``data_range``."""
        return from_unit(points, self.data_range)

    def point_mask(self, missing: torch.Tensor) -> torch.Tensor:
        """The missing region on the point grid (True where missing): the pixel mask itself."""
        return missing

    def __repr__(self) -> str:
        return f"PixelSpace(data_range={self.data_range})"


class LatentSpace:
    r"""Diffusion on an autoencoder's scaled latents :math:`s \cdot E(x)` (LDM).

    Parameters
    ----------
    autoencoder : Autoencoder
        A fitted autoencoder (:mod:`conprediff.autoencoders.protocol`), on the device the points
        live on.
    data_range : tuple of float
        ``(lo, hi)`` of the images, mapped onto the autoencoder's ``[-1, 1]``.
    bound : float, optional
        The largest absolute scaled latent of the training data: the samplers clamp their
        estimate of the clean latents to ``[-bound, bound]``, as pixel models clamp to
        ``[-1, 1]`` (without it, an epsilon-predicting model's estimate at the last timesteps of
        a cosine schedule is its error divided by :math:`\sqrt{\bar\alpha_T}`, and sampling
        diverges). None: no clamping.
    """

    def __init__(self, autoencoder: Any, data_range: tuple[float, float],
                 bound: float | None = None):
        self.autoencoder = autoencoder
        self.data_range = (float(data_range[0]), float(data_range[1]))
        self.clip = None if bound is None else (-float(bound), float(bound))
        self.factor = int(autoencoder.downsampling_factor)
        self.scale = float(autoencoder.scaling_factor)

    def point_shape(self, image_shape: tuple[int, ...]) -> tuple[int, ...]:
        """``(latent_channels, H / f, W / f)`` for images ``(C, H, W)``."""
        _, h, w = image_shape
        return (int(self.autoencoder.latent_channels), h // self.factor, w // self.factor)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` images in ``data_range`` -> scaled latents ``(B, c, H/f, W/f)``."""
        return self.autoencoder.encode(to_unit(images, self.data_range)) * self.scale

    def encode_known(self, images: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
        """:meth:`encode` of ``images`` with the ``missing`` pixels set to the middle of the
        range, so that the result does not depend on what lies under the mask."""
        middle = sum(self.data_range) / 2
        return self.encode(torch.where(missing, torch.full_like(images, middle), images))

    @torch.no_grad()
    def decode(self, points: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> ``(B, C, f h, f w)`` images in ``data_range`` (clamped to it)."""
        return from_unit(self.autoencoder.decode(points / self.scale).clamp(-1.0, 1.0),
                         self.data_range)

    def point_mask(self, missing: torch.Tensor) -> torch.Tensor:
        """``(B, c, h, w)``: a latent is missing when any pixel of its ``f x f`` patch is, in any
        channel, so no latent that saw an unknown pixel counts as known."""
        f = self.factor
        cells = F.max_pool2d(missing.float().amax(dim=1, keepdim=True), f, f) > 0
        return cells.expand(-1, int(self.autoencoder.latent_channels), -1, -1)

    def __repr__(self) -> str:
        return (f"LatentSpace({type(self.autoencoder).__name__}, f={self.factor}, "
                f"scale={self.scale:.4g}, data_range={self.data_range}, clip={self.clip})")
