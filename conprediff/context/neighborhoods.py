r"""Multi-stride neighbourhoods of every point of a ``(B, C, H, W)`` map.

For a point :math:`i = (b, y, x)` and a stride :math:`s`, the neighbourhood :math:`N_i^s` is the set
of grid points :math:`(b, y + dy, x + dx)` for the offsets :math:`(dy, dx)` of one shape:

* ``'ring'``: the 8 points :math:`s \cdot \{-1, 0, 1\}^2 \setminus \{(0, 0)\}`;
* ``'square'``: the :math:`(2s+1)^2 - 1` points of :math:`\{-s, \dots, s\}^2 \setminus \{(0, 0)\}`.

The empirical distribution of the neighbours' values,

.. math::

    P_{N_i^s} = \sum_{k=1}^{K} w_{ik}\, \delta_{y_{n_k(i)}}, \qquad \sum_k w_{ik} = 1,

is what the context decoder must predict. Borders: ``'drop'`` gives the neighbours outside the grid
weight 0 and the others uniform weights (never a made-up value); ``'reflect'`` maps outside
coordinates back into the grid (numpy's ``'reflect'``, the edge is not repeated) and keeps uniform
weights :math:`1/K`.

Everything is index arithmetic on a flat ``(B \cdot H \cdot W, C)`` view, broadcast to ``(P, K)``;
the per-pixel neighbour tables depend only on ``(H, W, offsets, border)`` and are cached.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import torch
from sklearn.base import BaseEstimator

__all__ = ["Neighborhood", "NeighborhoodSampler", "reflect_index"]

_SHAPES = ("ring", "square")
_BORDERS = ("drop", "reflect")


class Neighborhood(NamedTuple):
    """The neighbours of P points at one stride.

    Attributes
    ----------
    values : torch.Tensor
        ``(P, K, C)`` the neighbours' values, in the dtype and on the device of the gathered map.
        With ``border='drop'`` an entry whose neighbour lies outside the grid holds the value of the
        point itself (a finite number that is never used, since its weight is 0).
    weights : torch.Tensor
        ``(P, K)`` float32 weights, non-negative, summing to 1 over ``K`` for every point.
    """

    values: torch.Tensor
    weights: torch.Tensor


def reflect_index(index: torch.Tensor, size: int) -> torch.Tensor:
    r"""Reflect integer coordinates into ``[0, size)`` without repeating the edge.

    Numpy's ``'reflect'`` padding (scipy's ``'mirror'``), applied as often as needed, so any
    distance outside the grid is handled: with period :math:`p = 2(n - 1)`,

    .. math::

        m = i \bmod p, \qquad r(i) = m \text{ if } m < n \text{ else } p - m,

    and :math:`r(i) = 0` when :math:`n = 1`. For example, with :math:`n = 4`,
    ``-1 -> 1``, ``-2 -> 2``, ``4 -> 2``, ``6 -> 0``, ``7 -> 1``.

    Parameters
    ----------
    index : torch.Tensor
        Integer coordinates, any shape.
    size : int
        The grid side :math:`n \ge 1`.

    Returns
    -------
    torch.Tensor
        Coordinates in ``[0, size)``, same shape and dtype.
    """
    if size == 1:
        return torch.zeros_like(index)
    period = 2 * (size - 1)
    m = torch.remainder(index, period)
    return torch.where(m < size, m, period - m)


def _offsets(shape: str, stride: int) -> torch.Tensor:
    if shape == "square":
        r = torch.arange(-stride, stride + 1)
    else:
        r = torch.tensor([-1, 0, 1]) * stride
    dy, dx = torch.meshgrid(r, r, indexing="ij")
    off = torch.stack([dy.reshape(-1), dx.reshape(-1)], dim=1)
    return off[(off != 0).any(dim=1)]


@functools.lru_cache(maxsize=64)
def _tables(
    height: int, width: int, shape: str, stride: int, border: str, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Per-pixel neighbour table ``(H*W, K)`` of flat in-image indices, weights ``(H*W, K)``
    float32, and whether every pixel has at least one neighbour."""
    off = _offsets(shape, stride)
    pix = torch.arange(height * width)
    i = (pix // width)[:, None] + off[None, :, 0]
    j = (pix % width)[:, None] + off[None, :, 1]
    if border == "reflect":
        i, j = reflect_index(i, height), reflect_index(j, width)
        weights = torch.full(i.shape, 1.0 / off.shape[0])
        complete = True
    else:
        valid = (i >= 0) & (i < height) & (j >= 0) & (j < width)
        # outside neighbours point at the centre pixel: a finite value with weight 0
        i = torch.where(valid, i, (pix // width)[:, None])
        j = torch.where(valid, j, (pix % width)[:, None])
        count = valid.sum(dim=1, keepdim=True)
        complete = bool((count > 0).all())
        weights = valid.float() / count.clamp(min=1).float()
    table = i * width + j
    return table.to(device), weights.to(device), complete


class NeighborhoodSampler(BaseEstimator):
    r"""Gather the multi-stride neighbourhoods :math:`N_i^s` of points of a ``(B, C, H, W)`` map.

    Parameters
    ----------
    strides : tuple of int, default=(1, 2)
        The strides :math:`s \ge 1`; one neighbourhood (and one W2 term) per stride.
        A single int means one stride.
    shape : {'ring', 'square'}, default='ring'
        ``'ring'``: the 8 points :math:`s \cdot \{-1, 0, 1\}^2` without the centre
        (:math:`K = 8`); ``'square'``: all points of the square of radius :math:`s` without the
        centre (:math:`K = (2s + 1)^2 - 1`).
    border : {'drop', 'reflect'}, default='drop'
        ``'drop'``: neighbours outside the grid get weight 0, the others :math:`1 / K_{valid}`; a
        point with no neighbour inside the grid at some stride is an error (``ValueError``).
        ``'reflect'``: outside coordinates are reflected back into the grid without repeating the
        edge (numpy's ``'reflect'``), repeatedly when the stride exceeds the side, so a neighbour
        may coincide with the point itself or another neighbour; weights :math:`1 / K`.

    Notes
    -----
    The constructor only stores its arguments; they are validated when :meth:`offsets`,
    :meth:`size` or :meth:`gather` is called.

    Examples
    --------
    >>> import torch
    >>> sampler = NeighborhoodSampler(strides=(1,), shape="ring", border="drop")
    >>> y = torch.arange(9.0).reshape(1, 1, 3, 3)
    >>> (nb,) = sampler.gather(y, index=torch.tensor([0]))
    >>> sorted(nb.values[0, nb.weights[0] > 0, 0].tolist())
    [1.0, 3.0, 4.0]
    """

    def __init__(
        self, strides: Sequence[int] | int = (1, 2), shape: str = "ring", border: str = "drop"
    ):
        self.strides = strides
        self.shape = shape
        self.border = border

    # -- validation ---------------------------------------------------------------------------
    def _strides(self) -> tuple[int, ...]:
        strides = self.strides
        if isinstance(strides, int) and not isinstance(strides, bool):
            strides = (strides,)
        try:
            strides = tuple(strides)
        except TypeError:
            raise ValueError(
                f"strides must be a positive int or a non-empty tuple of them, got {self.strides!r}"
            ) from None
        if not strides or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in strides
        ):
            raise ValueError(
                f"strides must be a positive int or a non-empty tuple of them, got {self.strides!r}"
            )
        return strides

    def _check(self) -> tuple[int, ...]:
        if self.shape not in _SHAPES:
            raise ValueError(f"shape must be one of {_SHAPES}, got {self.shape!r}")
        if self.border not in _BORDERS:
            raise ValueError(f"border must be one of {_BORDERS}, got {self.border!r}")
        return self._strides()

    @staticmethod
    def _check_stride(stride: int) -> None:
        if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
            raise ValueError(f"stride must be a positive int, got {stride!r}")

    # -- public -------------------------------------------------------------------------------
    def offsets(self, stride: int) -> torch.Tensor:
        r"""The neighbour offsets at one stride.

        Parameters
        ----------
        stride : int
            :math:`s \ge 1`.

        Returns
        -------
        torch.Tensor
            ``(K, 2)`` int64 ``(dy, dx)``, row-major over ``dy`` then ``dx``, centre excluded;
            ``K = 8`` for ``'ring'``, ``(2s + 1)**2 - 1`` for ``'square'``.
        """
        self._check()
        self._check_stride(stride)
        return _offsets(self.shape, stride)

    def size(self, stride: int) -> int:
        """Number ``K`` of neighbours per point at ``stride`` (including dropped ones)."""
        self._check()
        self._check_stride(stride)
        return 8 if self.shape == "ring" else (2 * stride + 1) ** 2 - 1

    def gather(self, y: torch.Tensor, index: torch.Tensor | None = None) -> list[Neighborhood]:
        r"""The neighbours' values and weights of the selected points, one entry per stride.

        Parameters
        ----------
        y : torch.Tensor
            ``(B, C, H, W)`` map; values are taken from it as given (detach it first if no gradient
            should flow through the targets).
        index : torch.LongTensor, optional
            ``(P,)`` flat point indices into :math:`B \cdot H \cdot W`, row-major over
            ``(b, i, j)``: ``p = (b H + i) W + j``. ``None`` selects all points
            (``P = B H W``, in that order).

        Returns
        -------
        list of Neighborhood
            One ``Neighborhood(values (P, K, C), weights (P, K))`` per stride, in the order of
            ``strides``.

        Raises
        ------
        ValueError
            If ``y`` is not 4-D, ``index`` is not a 1-D integer tensor of valid indices, or, with
            ``border='drop'``, some point has no neighbour inside the grid at a stride.
        """
        strides = self._check()
        if not isinstance(y, torch.Tensor) or y.ndim != 4:
            shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(f"y must be a (B, C, H, W) tensor, got {shape}")
        b, c, h, w = y.shape
        hw = h * w
        flat = y.permute(0, 2, 3, 1).reshape(b * hw, c)
        if index is None:
            base = torch.arange(b, device=y.device).repeat_interleave(hw) * hw
            pix = torch.arange(hw, device=y.device).repeat(b)
        else:
            if (
                not isinstance(index, torch.Tensor)
                or index.ndim != 1
                or index.dtype.is_floating_point
                or index.dtype == torch.bool
            ):
                raise ValueError("index must be a 1-D integer tensor of flat point indices")
            index = index.to(device=y.device, dtype=torch.long)
            if index.numel() and (int(index.min()) < 0 or int(index.max()) >= b * hw):
                raise ValueError(f"index values must lie in [0, {b * hw}) for a {tuple(y.shape)} y")
            pix = index % hw
            base = index - pix
        out = []
        for s in strides:
            table, weights, complete = _tables(h, w, self.shape, s, self.border, y.device)
            if not complete:
                raise ValueError(
                    f"strides: with border='drop' stride {s} leaves some points of a {h}x{w} map "
                    "without any neighbour inside the grid; use smaller strides, "
                    "shape='square' or border='reflect'"
                )
            nbr = base[:, None] + table[pix]
            out.append(Neighborhood(flat[nbr], weights[pix]))
        return out
