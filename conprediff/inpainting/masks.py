r"""Inpainting masks: the six families of RePaint's benchmark, and mask parsing.

Every mask is a boolean tensor that is **True where pixels are missing** (to be generated) and
False where they are known (kept). The families follow Lugmayr et al. 2022 (RePaint, Table 1),
which takes its Wide and Narrow brush masks from Suvorov et al. 2022 (LaMa):

=====================  =========================================================================
``wide``               a few thick random brush strokes (20%–60% missing)
``narrow``             many thin random brush strokes (4%–30% missing)
``super_resolve``      2× super-resolution: only pixels with both coordinates even are known
``alternating_lines``  every other row missing (the odd rows)
``half``               one half of the image missing (``side``, default ``'right'``)
``expand``             only the centred square of a quarter of the side is known (64 of 256)
=====================  =========================================================================

Every generator has the signature ``fn(height, width, seed=None, **kw) -> (H, W)`` bool tensor;
``seed`` is an int, a :class:`torch.Generator` (drawn from, so its state advances) or ``None``
(fresh entropy). The deterministic families accept and ignore ``seed``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

__all__ = [
    "MASK_FAMILIES",
    "WIDE_BAND",
    "NARROW_BAND",
    "HALF_SIDES",
    "make_mask",
    "as_mask",
    "wide",
    "narrow",
    "super_resolve",
    "alternating_lines",
    "half",
    "expand",
]

Seed = int | torch.Generator | None

#: Inclusive range of the missing fraction of a :func:`wide` mask.
WIDE_BAND = (0.20, 0.60)
#: Inclusive range of the missing fraction of a :func:`narrow` mask.
NARROW_BAND = (0.04, 0.30)
#: The sides :func:`half` can remove.
HALF_SIDES = ("left", "right", "top", "bottom")

_MAX_TRIES = 1000


def _generator(seed: Seed) -> torch.Generator:
    """A CPU generator from an int seed, an existing generator (returned as is) or ``None``."""
    if isinstance(seed, torch.Generator):
        return seed
    g = torch.Generator()
    if seed is None:
        g.seed()
    elif isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        g.manual_seed(int(seed))
    else:
        raise TypeError(f"seed must be an int, a torch.Generator or None, got {seed!r}")
    return g


def _check_size(height: int, width: int, minimum: int = 1) -> None:
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=g, dtype=torch.float64).item()


def _randint(g: torch.Generator, low: int, high: int) -> int:
    """An integer in ``[low, high]`` (both included)."""
    return int(torch.randint(low, high + 1, (), generator=g).item())


def _stamp_segment(
    mask: torch.Tensor, p: tuple[float, float], q: tuple[float, float], radius: float
) -> None:
    """Set to True the pixels within ``radius`` of segment ``pq``: discs stamped along it."""
    H, W = mask.shape
    (y0, x0), (y1, x1) = p, q
    top = max(0, math.floor(min(y0, y1) - radius))
    bottom = min(H - 1, math.ceil(max(y0, y1) + radius))
    left = max(0, math.floor(min(x0, x1) - radius))
    right = min(W - 1, math.ceil(max(x0, x1) + radius))
    ys = torch.arange(top, bottom + 1, dtype=torch.float64)[:, None]
    xs = torch.arange(left, right + 1, dtype=torch.float64)[None, :]
    dy, dx = y1 - y0, x1 - x0
    length2 = dy * dy + dx * dx
    if length2 > 0:
        s = (((ys - y0) * dy + (xs - x0) * dx) / length2).clamp(0.0, 1.0)
    else:
        s = torch.zeros(())
    dist2 = (ys - (y0 + s * dy)) ** 2 + (xs - (x0 + s * dx)) ** 2
    mask[top : bottom + 1, left : right + 1] |= dist2 <= radius * radius


def _strokes(
    height: int,
    width: int,
    g: torch.Generator,
    n_strokes: tuple[int, int],
    n_segments: tuple[int, int],
    length: tuple[float, float],
    brush: tuple[float, float],
    max_turn: float,
) -> torch.Tensor:
    """Random polylines of random brush widths (LaMa's irregular masks); lengths and widths are
    fractions of the side ``sqrt(H W)``."""
    side = math.sqrt(height * width)
    mask = torch.zeros(height, width, dtype=torch.bool)
    for _ in range(_randint(g, *n_strokes)):
        y, x = _uniform(g, 0, height - 1), _uniform(g, 0, width - 1)
        angle = _uniform(g, 0, 2 * math.pi)
        for _ in range(_randint(g, *n_segments)):
            angle += _uniform(g, -max_turn, max_turn)
            seg = _uniform(g, *length) * side
            radius = max(0.5, _uniform(g, *brush) * side / 2)
            y1 = min(max(y + seg * math.sin(angle), 0.0), height - 1.0)
            x1 = min(max(x + seg * math.cos(angle), 0.0), width - 1.0)
            _stamp_segment(mask, (y, x), (y1, x1), radius)
            y, x = y1, x1
    return mask


def _banded(draw: Callable[[], torch.Tensor], band: tuple[float, float], name: str) -> torch.Tensor:
    """Redraw until the missing fraction lies in ``band`` (rejection sampling)."""
    for _ in range(_MAX_TRIES):
        mask = draw()
        if band[0] <= mask.double().mean().item() <= band[1]:
            return mask
    raise RuntimeError(f"could not draw a {name} mask in the band {band}; is the image too small?")


def wide(height: int, width: int, seed: Seed = None) -> torch.Tensor:
    r"""Thick random brush strokes (LaMa's "thick" irregular masks, RePaint's *Wide*).

    One to five polylines of one to five segments each, starting at a uniform point in a uniform
    direction; segment lengths are uniform in ``[0.1, 0.6] S`` with ``S = sqrt(H W)``, brush
    widths uniform in ``[0.08, 0.3] S`` (at least one pixel), turns between segments uniform in
    ±1.5 rad; vertices are clipped to the image. Each segment is drawn by stamping discs of the
    brush's radius along it (all pixels whose centre lies within the radius of the segment).
    Masks whose missing fraction is outside :data:`WIDE_BAND` = ``[0.20, 0.60]`` are redrawn, so
    a mask is never empty nor full. Needs ``height, width >= 4``.

    Parameters
    ----------
    height, width : int
        Image size.
    seed : int, torch.Generator or None
        Source of randomness; the same int gives the same mask.

    Returns
    -------
    torch.BoolTensor
        ``(H, W)``, True where missing.
    """
    _check_size(height, width, 4)
    g = _generator(seed)
    return _banded(
        lambda: _strokes(height, width, g, (1, 5), (1, 5), (0.1, 0.6), (0.08, 0.3), 1.5),
        WIDE_BAND,
        "wide",
    )


def narrow(height: int, width: int, seed: Seed = None) -> torch.Tensor:
    r"""Thin random brush strokes (LaMa's "thin" irregular masks, RePaint's *Narrow*).

    Four to twelve polylines of one to five segments each (for ``S = sqrt(H W) < 32`` both
    counts are scaled by ``S / 32``, at least one, since brushes cannot be thinner than a pixel);
    segment lengths uniform in ``[0.05, 0.4] S``, brush widths uniform in ``[0.01, 0.05] S`` (at
    least one pixel), turns uniform in ±1.5 rad, drawn by stamping discs as in :func:`wide`.
    Masks whose missing fraction is outside :data:`NARROW_BAND` = ``[0.04, 0.30]`` are redrawn, so
    a mask is never empty nor full. Needs ``height, width >= 4``.

    Parameters and result as for :func:`wide`: ``height, width`` the image size, ``seed`` an
    int, a ``torch.Generator`` or None; an ``(H, W)`` bool tensor, True where missing.
    """
    _check_size(height, width, 4)
    g = _generator(seed)
    f = min(1.0, math.sqrt(height * width) / 32)
    n_strokes = (max(1, round(4 * f)), max(1, round(12 * f)))
    return _banded(
        lambda: _strokes(height, width, g, n_strokes, (1, 5), (0.05, 0.4), (0.01, 0.05), 1.5),
        NARROW_BAND,
        "narrow",
    )


def super_resolve(height: int, width: int, seed: Seed = None) -> torch.Tensor:
    r"""2× super-resolution: pixel ``(i, j)`` is known iff ``i`` and ``j`` are both even.

    Exactly :math:`\lceil H/2\rceil \lceil W/2\rceil` pixels are known: a quarter for even sizes,
    so three quarters are missing. ``seed`` is ignored.

    Returns
    -------
    torch.BoolTensor
        ``(H, W)``, True where missing.
    """
    _check_size(height, width)
    rows = torch.arange(height)[:, None] % 2 == 0
    cols = torch.arange(width)[None, :] % 2 == 0
    return ~(rows & cols)


def alternating_lines(height: int, width: int, seed: Seed = None) -> torch.Tensor:
    r"""Every other row missing: exactly the odd rows ``1, 3, 5, ...``; ``seed`` is ignored.

    Returns
    -------
    torch.BoolTensor
        ``(H, W)``, True where missing.
    """
    _check_size(height, width)
    return (torch.arange(height)[:, None] % 2 == 1).expand(height, width).clone()


def half(height: int, width: int, seed: Seed = None, side: str = "right") -> torch.Tensor:
    r"""One half of the image missing.

    ``side`` names the missing half: ``'left'``, ``'right'`` (default), ``'top'``, ``'bottom'``,
    or ``'random'`` for one of the four drawn from ``seed``. The missing half has
    :math:`\lfloor W/2\rfloor` columns (left/right) or :math:`\lfloor H/2\rfloor` rows
    (top/bottom); for odd sizes the middle line stays known. ``seed`` is only used by
    ``'random'``.

    Returns
    -------
    torch.BoolTensor
        ``(H, W)``, True where missing.
    """
    _check_size(height, width)
    if side == "random":
        side = HALF_SIDES[_randint(_generator(seed), 0, 3)]
    mask = torch.zeros(height, width, dtype=torch.bool)
    if side == "left":
        mask[:, : width // 2] = True
    elif side == "right":
        mask[:, width - width // 2 :] = True
    elif side == "top":
        mask[: height // 2] = True
    elif side == "bottom":
        mask[height - height // 2 :] = True
    else:
        raise ValueError(f"side must be one of {HALF_SIDES + ('random',)}, got {side!r}")
    return mask


def _centred(size: int) -> slice:
    keep = max(1, round(size / 4))
    start = (size - keep) // 2
    return slice(start, start + keep)


def expand(height: int, width: int, seed: Seed = None) -> torch.Tensor:
    r"""Outpainting: only the centred rectangle of a quarter of each side is known.

    The known block has ``kh = max(1, round(H / 4))`` rows starting at row ``(H - kh) // 2``
    and ``kw = max(1, round(W / 4))`` columns starting at ``(W - kw) // 2`` (Python's ``round``,
    halves to even). For ``H = W = 256`` that is the 64 × 64 square at rows and columns 96–159.
    ``seed`` is ignored.

    Returns
    -------
    torch.BoolTensor
        ``(H, W)``, True where missing.
    """
    _check_size(height, width)
    mask = torch.ones(height, width, dtype=torch.bool)
    mask[_centred(height), _centred(width)] = False
    return mask


#: Name -> generator ``fn(height, width, seed=None, **kw)``.
MASK_FAMILIES: dict[str, Callable[..., torch.Tensor]] = {
    "wide": wide,
    "narrow": narrow,
    "super_resolve": super_resolve,
    "alternating_lines": alternating_lines,
    "half": half,
    "expand": expand,
}


def make_mask(family: str, height: int, width: int, seed: Seed = None, **kw) -> torch.Tensor:
    """A mask of the named family; ``kw`` goes to the generator (e.g. ``side`` for ``'half'``).

    Returns
    -------
    torch.BoolTensor
        ``(H, W)``, True where missing.
    """
    if family not in MASK_FAMILIES:
        raise ValueError(f"family must be one of {sorted(MASK_FAMILIES)}, got {family!r}")
    return MASK_FAMILIES[family](height, width, seed, **kw)


def as_mask(mask, image_shape: tuple[int, ...]) -> torch.Tensor:
    r"""Parse a user mask into a bool tensor broadcastable to the image, True where missing.

    Accepted values:

    * bool tensors or arrays: True = missing;
    * numbers (int or float tensors, arrays, nested lists) that are all 0 or 1: 1 = missing;
    * a PIL image of mode ``'1'`` or ``'L'`` (other modes are converted to ``'L'``) whose pixels
      are all 0 or 255: **white (255) = missing**, black (0) = known, as in the mask files of
      LaMa and RePaint.

    Accepted shapes, for an image ``(C, H, W)`` or ``(B, C, H, W)``: ``(H, W)``, ``(1, H, W)``,
    ``(C, H, W)``, ``(B, 1, H, W)`` or ``(B, C, H, W)``. The result has the input's dimensions,
    completed with leading singleton axes to the image's rank (so ``(H, W)`` becomes
    ``(1, 1, H, W)`` for a batch); it stays on the mask's device.

    Parameters
    ----------
    mask : torch.Tensor, numpy.ndarray, list or PIL.Image.Image
    image_shape : tuple of int
        ``(C, H, W)`` or ``(B, C, H, W)``.

    Returns
    -------
    torch.BoolTensor
        Broadcastable to ``image_shape``.

    Raises
    ------
    TypeError
        For other types of ``mask``.
    ValueError
        For values other than 0/1 (0/255 for PIL images) or shapes that do not match the image.
    """
    image_shape = tuple(int(s) for s in image_shape)
    if len(image_shape) not in (3, 4):
        raise ValueError(f"image shape must be (C, H, W) or (B, C, H, W), got {image_shape}")
    m = _missing_from_pil(mask) if _is_pil(mask) else _missing_from_values(mask)
    shape = tuple(m.shape)
    if not _fits(shape, image_shape):
        raise ValueError(
            f"mask shape {shape} does not match image shape {image_shape}; expected (H, W), "
            "(1, H, W), (C, H, W), (B, 1, H, W) or (B, C, H, W)"
        )
    return m.reshape((1,) * (len(image_shape) - m.ndim) + shape)


def _is_pil(mask: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        return False
    return isinstance(mask, Image.Image)


def _missing_from_pil(mask: Any) -> torch.Tensor:
    """White (255) = missing, black (0) = known; other grey levels are refused."""
    arr = np.asarray(mask.convert("L"))
    if not np.isin(arr, (0, 255)).all():
        raise ValueError(
            "mask as a PIL image must be black (0, known) and white (255, missing) only, got "
            f"values {np.unique(arr)[:8].tolist()}"
        )
    return torch.from_numpy(arr == 255)


def _missing_from_values(mask: Any) -> torch.Tensor:
    """Booleans (True = missing) or numbers that are all 0 or 1 (1 = missing)."""
    if isinstance(mask, torch.Tensor):
        m = mask.detach()
    elif isinstance(mask, (np.ndarray, list, tuple)):
        try:
            m = torch.as_tensor(np.asarray(mask))
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"mask must be numeric or boolean, got {type(mask)}") from err
    else:
        raise TypeError(
            "mask must be a torch.Tensor, numpy.ndarray, nested list or PIL.Image.Image, "
            f"got {type(mask).__name__}"
        )
    if m.dtype == torch.bool:
        return m
    if m.is_complex() or not (m.is_floating_point() or _is_int(m.dtype)):
        raise TypeError(f"mask must be boolean or 0/1 numbers, got dtype {m.dtype}")
    ok = (m == 0) | (m == 1)
    if not bool(ok.all()):
        bad = torch.unique(m[~ok])[:8].tolist()
        raise ValueError(f"mask values must be 0 or 1 (1 = missing), got also {bad}")
    return m == 1


def _fits(shape: tuple[int, ...], image_shape: tuple[int, ...]) -> bool:
    """Whether a mask of ``shape`` broadcasts to images of ``image_shape`` as documented."""
    H, W = image_shape[-2:]
    C = image_shape[-3]
    B = image_shape[0] if len(image_shape) == 4 else None
    if len(shape) < 2 or shape[-2:] != (H, W):
        return False
    if len(shape) == 3:
        return shape[0] in (1, C)
    if len(shape) == 4:
        return B is not None and shape[0] in (1, B) and shape[1] in (1, C)
    return len(shape) == 2


def _is_int(dtype: torch.dtype) -> bool:
    return dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
