"""Constructor arguments to JSON and back, without pickle.

Components (backbones, context prediction, metrics, λ_t schedules) are written as
``{"__class__": "module.QualName", "params": {...}}`` from their ``get_params(deep=False)`` and
rebuilt by calling the class with those parameters. Only classes of conprediff itself, or classes
the caller names explicitly, are rebuilt: a file cannot make the loader call anything else.
"""

from __future__ import annotations

import importlib
import numbers
import os
import sys
from collections.abc import Iterable
from typing import Any

from sklearn.base import BaseEstimator
from torch import nn

__all__ = ["class_path", "from_jsonable", "to_jsonable"]


def to_jsonable(value: Any, name: str = "value") -> Any:
    """Encode a constructor argument (recursively) as JSON-compatible data.

    Raises
    ------
    TypeError
        If ``value`` (or a part of it) is neither plain data nor a component with ``get_params``.
    """
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, numbers.Integral):  # numpy integers
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, tuple):
        return {"__tuple__": [to_jsonable(v, name) for v in value]}
    if isinstance(value, list):
        return [to_jsonable(v, name) for v in value]
    if isinstance(value, dict):
        return {
            str(k): to_jsonable(v, k if name == "params" else f"{name}__{k}")
            for k, v in value.items()
        }
    if hasattr(value, "get_params"):
        return {
            "__class__": class_path(type(value)),
            "params": {
                k: to_jsonable(v, f"{name}__{k}") for k, v in value.get_params(deep=False).items()
            },
        }
    raise TypeError(
        f"cannot save parameter {name!r}: {type(value).__name__} is neither plain data nor a "
        "component with get_params(); use a component (e.g. a metric class from "
        "conprediff.wasserstein) so the model can be saved"
    )


def class_path(cls: type) -> str:
    """``module.QualName`` of ``cls``, by the innermost package above its module that exports it.

    ``conprediff.wasserstein.one_d.SortedW2`` is written ``conprediff.wasserstein.SortedW2``, so
    files keep naming a class by its public path when the module that defines it moves.
    """
    parts = cls.__module__.split(".")
    for i in range(len(parts) - 1, 0, -1):
        name = ".".join(parts[:i])
        module = sys.modules.get(name)
        if module is not None and getattr(module, cls.__qualname__, None) is cls:
            return f"{name}.{cls.__qualname__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def _resolve_class(path: str, allowed: Iterable[type]) -> type:
    allowed = list(allowed)
    for cls in allowed:
        if f"{cls.__module__}.{cls.__qualname__}" == path:
            return cls
    module_name, _, qualname = path.rpartition(".")
    if not (module_name == "conprediff" or module_name.startswith("conprediff.")):
        raise ValueError(
            f"refusing to build {path!r} from a saved file: only conprediff classes are rebuilt; "
            "pass the class in classes=[...] if you trust it"
        )
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, nn.Module | BaseEstimator)):
        raise ValueError(f"refusing to build {path!r}: not a component class")
    if getattr(obj, "reads_local_files", False) and obj not in allowed:
        raise ValueError(f"{path!r} reads a local folder that the file names: pass "
                         f"classes=[{obj.__name__}] to load it if you trust the file")
    return obj


def from_jsonable(data: Any, classes: Iterable[type] = ()) -> Any:
    """Inverse of :func:`to_jsonable`; ``classes`` lists extra classes allowed to be rebuilt."""
    classes = tuple(classes)
    if isinstance(data, list):
        return [from_jsonable(v, classes) for v in data]
    if isinstance(data, dict):
        if "__tuple__" in data:
            return tuple(from_jsonable(v, classes) for v in data["__tuple__"])
        if "__class__" in data:
            cls = _resolve_class(data["__class__"], classes)
            return cls(**{k: from_jsonable(v, classes) for k, v in data["params"].items()})
        return {k: from_jsonable(v, classes) for k, v in data.items()}
    return data
