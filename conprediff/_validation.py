"""Every input check of the library, with one rule for errors.

* ``TypeError`` when a value has the wrong type, ``ValueError`` when it has the right type and a
  wrong value;
* the message names the argument, says what was expected and shows what was given;
* numpy scalars are accepted wherever Python numbers are (``np.int64(3)`` is an integer,
  ``np.float32(0.5)`` a real); ``bool`` is never a number.

Each ``check_*`` returns the value in its plain form (``int``, ``float``, ``str``,
``torch.device``, a float32 image tensor ...), so callers store what they checked.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "check_bool",
    "check_choice",
    "check_data_range",
    "check_device",
    "check_images",
    "check_in_range",
    "check_int",
    "check_labels",
    "check_real",
    "check_seed",
    "integer_labels",
    "is_int",
]


def is_int(value: Any) -> bool:
    """True for Python and numpy integers (not ``bool``)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)


def check_int(
    value: Any,
    name: str,
    minimum: int | None = None,
    maximum: int | None = None,
    *,
    optional: bool = False,
) -> int | None:
    """``value`` as an ``int`` in ``[minimum, maximum]`` (either bound may be None).

    ``optional=True`` lets ``None`` through (returned as ``None``).
    """
    if value is None and optional:
        return None
    if not is_int(value):
        kind = "an integer or None" if optional else "an integer"
        raise TypeError(f"{name} must be {kind}, got {value!r} ({type(value).__name__})")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be an integer {_bounds(minimum, maximum)}, got {value!r}")
    return int(value)


def _bounds(minimum: Any, maximum: Any) -> str:
    if maximum is None:
        return f">= {minimum}"
    if minimum is None:
        return f"<= {maximum}"
    return f"in [{minimum}, {maximum}]"


def check_real(
    value: Any,
    name: str,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
) -> float | None:
    """``value`` as a finite ``float`` in the interval from ``low`` to ``high``.

    The bounds are closed unless ``low_open``/``high_open``; ``None`` means unbounded.
    ``optional=True`` lets ``None`` through.
    """
    if value is None and optional:
        return None
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        kind = "a number or None" if optional else "a number"
        raise TypeError(f"{name} must be {kind}, got {value!r} ({type(value).__name__})")
    x = float(value)
    bad_low = low is not None and (x <= low if low_open else x < low)
    bad_high = high is not None and (x >= high if high_open else x > high)
    if bad_low or bad_high or not math.isfinite(x):
        raise ValueError(
            f"{name} must be a finite number{_interval(low, high, low_open, high_open)}, "
            f"got {value!r}"
        )
    return x


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is None and high is None:
        return ""
    if high is None:
        return f" {'>' if low_open else '>='} {low:g}"
    if low is None:
        return f" {'<' if high_open else '<='} {high:g}"
    return f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def check_bool(value: Any, name: str) -> bool:
    """``value`` if it is ``True`` or ``False`` (numpy booleans too)."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_choice(value: Any, name: str, choices: Iterable[Any]) -> Any:
    """``value`` if it is one of ``choices``; a ``TypeError`` for a non-string given strings."""
    choices = tuple(choices)
    if all(isinstance(c, str) for c in choices) and not isinstance(value, str):
        raise TypeError(f"{name} must be one of {_names(choices)}, got {value!r}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {_names(choices)}, got {value!r}")
    return value


def _names(choices: tuple[Any, ...]) -> str:
    return ", ".join(repr(c) for c in choices)


def check_seed(value: Any, name: str = "seed", maximum: int = 2**64 - 1) -> int | None:
    """``None`` or an integer that ``torch.Generator.manual_seed`` accepts."""
    return check_int(value, name, -(2**63), maximum, optional=True)


def check_device(device: Any, name: str = "device") -> torch.device:
    """``'auto'`` -> CUDA when available, else CPU; anything else -> ``torch.device(device)``.

    Raises ``ValueError`` for an unknown device or CUDA asked for where there is none.
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, str | torch.device):
        raise TypeError(f"{name} must be a string or a torch.device, got {device!r}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"{name} must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}"
        ) from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name} {device!r} was asked for but CUDA is not available")
    return dev


def check_data_range(value: Any, name: str = "data_range") -> tuple[float, float]:
    """A ``(lo, hi)`` pair of finite numbers with ``lo < hi``, as floats."""
    if not isinstance(value, tuple | list) or len(value) != 2:
        raise ValueError(f"{name} must be a pair (lo, hi) with lo < hi, got {value!r}")
    lo = check_real(value[0], f"{name}[0]")
    hi = check_real(value[1], f"{name}[1]")
    if not lo < hi:
        raise ValueError(f"{name} must be a pair (lo, hi) with lo < hi, got {value!r}")
    return lo, hi


def check_images(x: Any, name: str = "data") -> torch.Tensor:
    """Validate a batch of images ``(N, C, H, W)`` and return it as a float32 tensor.

    Raises
    ------
    TypeError
        If ``x`` is neither a tensor nor an array, or has a non-numeric dtype.
    ValueError
        If ``x`` is not 4-dimensional, looks channels-last, is empty, or holds NaN/inf values.
    """
    if isinstance(x, np.ndarray):
        if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
            raise TypeError(f"{name} must hold real numbers, got an array of dtype {x.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        kinds = ("a torch.Tensor, a numpy array, a Dataset or a DataLoader" if name == "data"
                 else "a torch.Tensor or a numpy array")
        hint = ""
        if type(x).__module__.startswith("PIL") and name == "data":
            hint = (
                " (a Dataset must yield (C, H, W) image tensors: convert each PIL image, e.g. "
                "torch.from_numpy(numpy.asarray(img)).permute(2, 0, 1) for RGB or [None] for "
                "grey, or read a folder with conprediff.data.ImageFolder)"
            )
        raise TypeError(f"{name} must be {kinds}, got {type(x).__name__}{hint}")
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
    if x.ndim != 4:
        hint = " (add a channel axis: x[:, None])" if x.ndim == 3 else ""
        raise ValueError(
            f"{name} must be 4-dimensional (N, C, H, W), got {x.ndim} dimensions with shape "
            f"{tuple(x.shape)}{hint}"
        )
    if x.shape[3] in (1, 3, 4) and x.shape[1] > 4 and x.shape[2] > 4:
        raise ValueError(
            f"{name} of shape {tuple(x.shape)} looks channels-last (N, H, W, C); conprediff "
            f"expects (N, C, H, W): use x.permute(0, 3, 1, 2) (numpy: x.transpose(0, 3, 1, 2))"
        )
    if x.shape[0] == 0 or x.numel() == 0:
        raise ValueError(f"{name} is empty: got shape {tuple(x.shape)}")
    x = x.float()
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return x


def check_in_range(
    x: torch.Tensor, data_range: tuple[float, float], name: str, tol: float = 0.02
) -> None:
    """Raise ValueError if ``x`` leaves ``data_range`` by more than ``tol`` of its width.

    The default tolerance is :func:`conprediff.ranges.infer_data_range`'s (resizing overshoots
    a little).
    """
    lo, hi = data_range
    margin = tol * (hi - lo)
    x_lo, x_hi = float(x.min()), float(x.max())
    if x_lo < lo - margin or x_hi > hi + margin:
        raise ValueError(
            f"{name} values must lie in the data range [{lo:g}, {hi:g}], got "
            f"[{x_lo:.4g}, {x_hi:.4g}]"
            + (" (set data_range to the data's range, or 'auto')" if name == "data" else "")
        )


def integer_labels(labels: Any, name: str = "labels") -> np.ndarray | int:
    """``labels`` as an integer array (or one Python int), refusing every other kind clearly.

    Raises
    ------
    ValueError
        If the labels are not integers: booleans, floats, and strings (class names, for which
        the message shows how to number them).
    """
    if isinstance(labels, torch.Tensor):
        if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
            raise ValueError(f"{name} must be integers, got dtype {labels.dtype}")
        return labels.detach().cpu().numpy()
    if is_int(labels):
        return labels  # a Python int of any size: the caller checks its range
    try:
        values = np.asarray(labels)
    except ValueError as err:  # ragged sequences
        raise ValueError(f"{name} must be integers, got {type(labels).__name__}: {err}") from None
    if values.dtype.kind in "USO" and values.size:
        example = values.reshape(-1)[0]
        example = example.item() if isinstance(example, np.generic) else example
        kind = "strings" if isinstance(example, str | bytes) else f"{type(example).__name__} values"
        raise ValueError(
            f"{name} must be integers, got {kind} such as {example!r}: "
            "number the classes, e.g. names, y = numpy.unique(y, return_inverse=True)"
        )
    if values.dtype == np.bool_ or not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"{name} must be integers, got {values.dtype} values")
    return values


def check_labels(labels: Any, num_classes: int, n: int, name: str = "labels") -> torch.Tensor:
    """Validate ``n`` class labels in ``[0, num_classes)`` and return them as an int64 tensor.

    Accepts a tensor, an array or a sequence of integers (``(n,)``), or one integer (a Python or
    numpy integer, or a 0-dimensional tensor or array) for all ``n``.

    Raises
    ------
    ValueError
        If labels are missing, not integers, not ``(n,)``, or outside ``[0, num_classes)``.
        (Non-integer labels raise ``ValueError`` rather than ``TypeError`` for compatibility
        with earlier releases.)
    """
    if labels is None:
        raise ValueError(
            f"the backbone is class-conditional (num_classes={num_classes}) but the {name} are "
            "missing: pass y= to fit, or let the data yield (images, labels)"
        )
    values = integer_labels(labels, name)
    if np.ndim(values) == 0:
        lo = hi = int(values)
    else:
        if np.shape(values) != (n,):
            raise ValueError(
                f"{name} must have shape ({n},), one per image, got {tuple(np.shape(values))}"
            )
        lo, hi = (int(values.min()), int(values.max())) if n else (0, 0)
    if lo < 0 or hi >= num_classes:
        raise ValueError(
            f"{name} must lie in [0, {num_classes}) (num_classes={num_classes}), got values from "
            f"{lo} to {hi}"
        )
    if np.ndim(values) == 0:
        return torch.full((n,), lo, dtype=torch.long)
    return torch.from_numpy(np.asarray(values, dtype=np.int64))


def check_image_or_batch(img: Any, shape: tuple[int, ...] | None,
                         data_range: tuple[float, float],
                         name: str = "img") -> tuple[torch.Tensor, bool]:
    """One image ``(C, H, W)`` or a batch ``(B, C, H, W)`` of ``shape`` (any when None) within
    ``data_range``.

    Returns the batch as float32 ``(B, C, H, W)`` and whether ``img`` was one image.
    """
    single = getattr(img, "ndim", None) == 3
    if isinstance(img, torch.Tensor | np.ndarray) and img.ndim not in (3, 4):
        hint = f" (add a channel axis: {name}[None])" if img.ndim == 2 else ""
        raise ValueError(
            f"{name} must be one image (C, H, W) or a batch (B, C, H, W), got shape "
            f"{tuple(img.shape)}{hint}"
        )
    images = check_images(img[None] if single else img, name)
    if shape is not None and tuple(images.shape[1:]) != tuple(shape):
        raise ValueError(
            f"{name} must have the fitted model's (C, H, W) = {tuple(shape)}, got "
            f"{tuple(images.shape[1:])}"
        )
    check_in_range(images, data_range, name)
    return images, single


# ---------------------------------------------------------------------------- declared checks
# Factories for a table of checks ``{name: check(value, name)}`` (see ConPreDiffModel).


def int_between(minimum: int, optional: bool = False) -> Callable[[Any, str], int | None]:
    """``check(value, name)``: an integer ``>= minimum`` (or None when ``optional``)."""
    return partial(check_int, minimum=minimum, optional=optional)


def real_between(low: float, high: float | None = None, **kw: bool) -> Callable[[Any, str], Any]:
    """``check(value, name)``: a finite number between the bounds (see :func:`check_real`)."""
    return partial(check_real, low=low, high=high, **kw)


def one_of(*choices: str) -> Callable[[Any, str], str]:
    """``check(value, name)``: one of ``choices``."""
    return partial(check_choice, choices=choices)


def module_or_none(value: Any, name: str) -> nn.Module | None:
    """``value`` if it is a ``torch.nn.Module`` or None."""
    if value is not None and not isinstance(value, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module or None, got {type(value).__name__}")
    return value


def context_or_none(value: Any, name: str) -> Any:
    """``value`` if it has ``build()`` (a :class:`~conprediff.ContextPrediction`) or is None."""
    if value is not None and not hasattr(value, "build"):
        raise TypeError(
            f"{name} must be a ContextPrediction (an object with build()) or None, got "
            f"{type(value).__name__}"
        )
    return value


def range_or_auto(value: Any, name: str) -> Any:
    """``'auto'`` or a checked ``(lo, hi)`` (see :func:`check_data_range`)."""
    return "auto" if isinstance(value, str) and value == "auto" else check_data_range(value, name)


def as_is(value: Any, name: str) -> Any:
    """``value`` unchecked (checked elsewhere)."""
    return value
