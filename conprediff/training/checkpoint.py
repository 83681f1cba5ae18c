"""Training checkpoints: one safetensors file per checkpoint, written atomically, no pickle.

A checkpoint holds every tensor of the run (model, context decoder, EMA and optimizer state, and
the random generators' states as byte tensors) and, as JSON in the file's metadata, everything
else (step, loss history, data position, optimizer hyper-parameters). Reading one never unpickles
anything, so a file crafted to run code when unpickled is just an unreadable file.

Files are named ``ckpt-<step:09d>.safetensors`` inside the checkpoint folder; each is written to a
temporary file in the same folder and renamed into place, so a crash while writing never leaves a
half-written checkpoint under a checkpoint's name. Only the newest ``keep`` are kept.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from ..persistence import write_safetensors

__all__ = [
    "CheckpointError",
    "checkpoint_path",
    "list_checkpoints",
    "write_checkpoint",
    "read_checkpoint",
    "read_latest_checkpoint",
    "flatten_state",
    "unflatten_state",
]

_NAME = re.compile(r"^ckpt-(\d{9})\.safetensors$")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read (truncated, corrupted, or not a checkpoint)."""


def checkpoint_path(folder: str | Path, step: int) -> Path:
    """``folder / f"ckpt-{step:09d}.safetensors"``."""
    return Path(folder) / f"ckpt-{step:09d}.safetensors"


def list_checkpoints(folder: str | Path) -> list[Path]:
    """Checkpoint files in ``folder``, oldest first (by step)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def flatten_state(prefix: str, state: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Move the tensors of a nested state (dicts/lists) into ``tensors``; return the JSON rest.

    Each tensor is replaced by ``{"__tensor__": key}``; tuples become ``{"__tuple__": [...]}``.
    """
    if isinstance(state, torch.Tensor):
        key = prefix
        tensors[key] = state.detach().cpu().clone().contiguous()
        return {"__tensor__": key}
    if isinstance(state, dict):
        return {
            "__dict__": [
                [
                    flatten_state(f"{prefix}.k{i}", k, tensors),
                    flatten_state(f"{prefix}.{i}", v, tensors),
                ]
                for i, (k, v) in enumerate(state.items())
            ]
        }
    if isinstance(state, tuple):
        return {
            "__tuple__": [flatten_state(f"{prefix}.{i}", v, tensors) for i, v in enumerate(state)]
        }
    if isinstance(state, list):
        return [flatten_state(f"{prefix}.{i}", v, tensors) for i, v in enumerate(state)]
    if state is None or isinstance(state, bool | int | float | str):
        return state
    raise TypeError(f"cannot checkpoint a {type(state).__name__} at {prefix!r}")


def unflatten_state(data: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten_state`."""
    if isinstance(data, list):
        return [unflatten_state(v, tensors) for v in data]
    if isinstance(data, dict):
        if "__tensor__" in data:
            return tensors[data["__tensor__"]]
        if "__tuple__" in data:
            return tuple(unflatten_state(v, tensors) for v in data["__tuple__"])
        if "__dict__" in data:
            return {
                unflatten_state(k, tensors): unflatten_state(v, tensors)
                for k, v in data["__dict__"]
            }
    return data


def write_checkpoint(folder: str | Path, step: int, state: dict[str, Any], keep: int = 3) -> Path:
    """Write ``state`` (nested dicts/lists of tensors and plain data) atomically; prune old files.

    Returns
    -------
    Path
        The checkpoint written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    meta = flatten_state("s", state, tensors)
    final = write_safetensors(
        checkpoint_path(folder, step), tensors, {"conprediff_checkpoint": json.dumps(meta)}
    )
    for old in list_checkpoints(folder)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return final


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`write_checkpoint`.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    CheckpointError
        If the file is truncated, corrupted, or not a conprediff checkpoint (e.g. a pickle).
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = (f.metadata() or {}).get("conprediff_checkpoint")
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as err:  # safetensors raises several types for damaged files
        raise CheckpointError(
            f"checkpoint {str(path)!r} is unreadable (truncated, corrupted or not a safetensors "
            f"checkpoint): {err}"
        ) from err
    if meta is None:
        raise CheckpointError(
            f"{str(path)!r} is a safetensors file but not a conprediff checkpoint"
        )
    try:
        return unflatten_state(json.loads(meta), tensors)
    except (json.JSONDecodeError, KeyError) as err:
        raise CheckpointError(f"checkpoint {str(path)!r} has damaged metadata: {err}") from err


def read_latest_checkpoint(folder: str | Path) -> tuple[Path, dict[str, Any]]:
    """Read the newest readable checkpoint in ``folder``, falling back to older ones.

    An unreadable newer file gives a warning and is passed over (it is left on disk for
    inspection).

    Raises
    ------
    FileNotFoundError
        If ``folder`` holds no readable checkpoint.
    """
    for path in reversed(list_checkpoints(folder)):
        try:
            return path, read_checkpoint(path)
        except CheckpointError as err:
            warnings.warn(f"{err}; falling back to an older checkpoint", stacklevel=2)
    raise FileNotFoundError(f"no readable checkpoint in {str(folder)!r}")
