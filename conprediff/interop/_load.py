"""The optional ``diffusers`` package, imported when first needed (extra ``[diffusers]``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["diffusers_module", "model_class", "plain_config", "read_folder_config"]


def diffusers_module() -> ModuleType:
    """``import diffusers``, or an ImportError that says how to install it."""
    try:
        import diffusers
    except ImportError as err:  # pragma: no cover - exercised without the extra
        raise ImportError("conprediff.interop needs the diffusers package: pip install "
                          "'conprediff[diffusers]'") from err
    return diffusers


def model_class(name: str, allowed: tuple[str, ...], what: str) -> type:
    """The diffusers class ``name``, one of ``allowed``; ValueError naming ``what`` otherwise."""
    if name not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(allowed)}, got {name!r}")
    return getattr(diffusers_module(), name)


def plain_config(config: Any, what: str) -> dict[str, Any]:
    """A diffusers config (a FrozenDict or a dict) as a plain dict without its private
    ``_class_name``/``_diffusers_version`` keys; TypeError naming ``what`` otherwise."""
    if not isinstance(config, dict):
        raise TypeError(f"{what} must be a dict (a diffusers model's config), got "
                        f"{type(config).__name__}")
    return {str(k): (list(v) if isinstance(v, tuple) else v) for k, v in config.items()
            if not str(k).startswith("_")}


def read_folder_config(folder: str | os.PathLike, subfolder: str) -> tuple[Path, dict[str, Any]]:
    """``(the folder holding config.json, its content)`` for a model folder, or a pipeline
    folder with the model in ``subfolder``; FileNotFoundError naming the folder otherwise."""
    root = Path(folder)
    for where in (root, root / subfolder):
        for name in ("config.json", "scheduler_config.json"):
            if (where / name).is_file():
                return where, json.loads((where / name).read_text())
    raise FileNotFoundError(f"no diffusers model in {str(root)!r}: expected config.json there "
                            f"or in {subfolder}/ (a folder written by save_pretrained)")
