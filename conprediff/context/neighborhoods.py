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
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import torch
from einops import rearrange, repeat
from sklearn.base import BaseEstimator

from conprediff._validation import check_choice, check_int, is_int
from conprediff.context._checks import check_tensor

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


def _check_index(index: torch.Tensor, n: int, y: torch.Tensor) -> torch.Tensor:
    """``index`` as a ``(P,)`` int64 tensor on ``y``'s device, every value in ``[0, n)``."""
    if (
        not isinstance(index, torch.Tensor)
        or index.dtype.is_floating_point
        or index.dtype.is_complex
        or index.dtype == torch.bool
    ):
        kind = f"dtype {index.dtype}" if isinstance(index, torch.Tensor) else type(index).__name__
        raise TypeError(f"index must be a 1-D integer tensor of flat point indices, got {kind}")
    if index.ndim != 1:
        raise ValueError(f"index must be 1-D (P,), got shape {tuple(index.shape)}")
    index = index.to(device=y.device, dtype=torch.long)
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n):
        raise ValueError(f"index values must lie in [0, {n}) for a {tuple(y.shape)} y")
    return index


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
    The constructor only stores its arguments; they are validated by :meth:`validate`, which
    :meth:`offsets`, :meth:`size` and :meth:`gather` call.

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
        if is_int(strides):
            return (check_int(strides, "strides", 1),)
        if isinstance(strides, str | bytes) or not isinstance(strides, Iterable):
            raise TypeError(
                f"strides must be an integer >= 1 or a non-empty tuple of them, got {strides!r}"
            )
        strides = tuple(strides)
        if not strides:
            raise ValueError("strides must be an integer >= 1 or a non-empty tuple of them, got ()")
        return tuple(check_int(s, f"strides[{i}]", 1) for i, s in enumerate(strides))

    def validate(self) -> tuple[int, ...]:
        """Check the parameters and return the strides as a tuple of ``int``.

        Raises
        ------
        TypeError
            If ``strides`` is not an integer or a sequence of them, or ``shape`` or ``border`` is
            not a string.
        ValueError
            If a stride is below 1, ``strides`` is empty, or ``shape`` or ``border`` is unknown.
        """
        check_choice(self.shape, "shape", _SHAPES)
        check_choice(self.border, "border", _BORDERS)
        return self._strides()

    _check = validate  # the former private name

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
        self.validate()
        return _offsets(self.shape, check_int(stride, "stride", 1))

    def size(self, stride: int) -> int:
        """Number ``K`` of neighbours per point at ``stride`` (including dropped ones)."""
        self.validate()
        stride = check_int(stride, "stride", 1)
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
        TypeError
            If ``y`` is not a tensor or ``index`` not an integer tensor.
        ValueError
            If ``y`` is not 4-D, ``index`` is not 1-D or holds an index outside the map, or, with
            ``border='drop'``, some point has no neighbour inside the grid at a stride.
        """
        strides = self.validate()
        b, c, h, w = check_tensor(y, "y", "(B, C, H, W)").shape
        hw = h * w
        flat = rearrange(y, "b c h w -> (b h w) c")
        if index is None:
            base = repeat(torch.arange(b, device=y.device) * hw, "b -> (b p)", p=hw)
            pix = repeat(torch.arange(hw, device=y.device), "p -> (b p)", b=b)
        else:
            index = _check_index(index, b * hw, y)
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
