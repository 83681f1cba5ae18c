"""Where the diffusion runs: the map between the user's images and the points it diffuses.

:meth:`~conprediff.ConPreDiffModel.fit` encodes every batch with ``space.encode`` before the
noise is added; :meth:`~conprediff.ConPreDiffModel.sample` decodes the sampler's result with
``space.decode``; :meth:`~conprediff.ConPreDiffModel.inpaint` encodes the input, brings the mask
to the point grid with ``space.point_mask``, runs RePaint on the points and decodes. The context
term's "points" are the elements of that grid.

:class:`PixelSpace` is the pixel grid itself. A latent space (an autoencoder's latents, LDM) is
another class with the same four methods, so the estimator, the training loop and the samplers
need no second copy for it.
"""

from __future__ import annotations

import torch

from .ranges import from_unit, to_unit

__all__ = ["PixelSpace"]


class PixelSpace:
    """Diffusion on the pixels, their range ``data_range`` mapped affinely onto ``[-1, 1]``.

    Parameters
    ----------
    data_range : tuple of float
        ``(lo, hi)`` of the images.
    """

    def __init__(self, data_range: tuple[float, float]):
        self.data_range = (float(data_range[0]), float(data_range[1]))

    def point_shape(self, image_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The ``(C, H, W)`` of the points for images of ``image_shape``: the same."""
        return tuple(image_shape)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` images in ``data_range`` -> points in ``[-1, 1]``."""
        return to_unit(images, self.data_range)

    def decode(self, points: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` points in ``[-1, 1]`` -> images in ``data_range``."""
        return from_unit(points, self.data_range)

    def point_mask(self, missing: torch.Tensor) -> torch.Tensor:
        """The missing region on the point grid (True where missing): the pixel mask itself."""
        return missing

    def __repr__(self) -> str:
        return f"PixelSpace(data_range={self.data_range})"
