"""Training checkpoints: one safetensors file per checkpoint, written atomically, no pickle.

A checkpoint holds every tensor of the run (model, context decoder, EMA and optimizer state, and
the random generators' states as byte tensors) and, as JSON in the file's metadata, everything
else (step, loss history, data position, optimizer hyper-parameters, training arguments). Reading
one never unpickles anything, so a file crafted to run code when unpickled is just an unreadable
file.

Each file carries a SHA-256 of its JSON and its tensors (:func:`state_checksum`); reading checks
it, and checks that the state holds every entry a training state has (:data:`REQUIRED_ENTRIES`), so
a flipped byte or a missing entry is a :class:`CheckpointError`, not a silently different run.

Files are named ``ckpt-<step:09d>.safetensors`` inside the checkpoint folder; each is written to a
temporary file in the same folder and renamed into place, so a crash while writing never leaves a
half-written checkpoint under a checkpoint's name. Only the newest ``keep`` are kept. A damaged
file that :func:`read_latest_checkpoint` passes over is renamed to ``<name>.corrupt``, out of the
pattern: kept for inspection, never read, pruned or overwritten again.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..persistence import write_safetensors

__all__ = [
    "CheckpointError",
    "REQUIRED_ENTRIES",
    "checkpoint_path",
    "list_checkpoints",
    "write_checkpoint",
    "read_checkpoint",
    "read_latest_checkpoint",
    "flatten_state",
    "unflatten_state",
    "state_checksum",
]

_NAME = re.compile(r"^ckpt-(\d{9})\.safetensors$")
_META, _CHECKSUM = "conprediff_checkpoint", "conprediff_checksum"


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

    The file's metadata holds the state's JSON and its :func:`state_checksum`. Only the newest
    ``keep`` files named like checkpoints are kept (damaged ones set aside do not count).

    Returns
    -------
    Path
        The checkpoint written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    meta = json.dumps(flatten_state("s", state, tensors))
    final = write_safetensors(
        checkpoint_path(folder, step),
        tensors,
        {_META: meta, _CHECKSUM: state_checksum(meta, tensors)},
    )
    for old in list_checkpoints(folder)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return final


def state_checksum(meta: str, tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a checkpoint's JSON and its tensors, as written in the file's metadata.

    The digest reads ``meta``'s UTF-8 bytes, then each tensor by sorted key: its key, dtype and
    shape, then its raw bytes in C order. A flipped byte, and a renamed, reshaped or retyped
    tensor, all change it.

    Parameters
    ----------
    meta : str
        The state's JSON (:func:`flatten_state`'s output, dumped).
    tensors : dict of str to torch.Tensor
        The state's tensors, any shape and dtype.

    Returns
    -------
    str
        64 hexadecimal digits.
    """
    digest = hashlib.sha256(meta.encode())
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        digest.update(f"\0{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _tensors(v: Any) -> bool:
    return isinstance(v, dict) and all(
        isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in v.items()
    )


def _rng_state(v: Any, optional: bool = False) -> bool:
    if optional and v is None:
        return True
    return isinstance(v, torch.Tensor) and v.dtype == torch.uint8 and v.ndim == 1


def _plain(v: Any) -> bool:
    return v is None or isinstance(v, bool | int | float | str)


def _history(v: Any) -> bool:
    return isinstance(v, dict) and all(
        isinstance(k, str) and isinstance(xs, list)
        and all(isinstance(x, int | float) and not isinstance(x, bool) for x in xs)
        for k, xs in v.items()
    )


def _optimizer(v: Any) -> bool:
    return (isinstance(v, dict) and isinstance(v.get("state"), dict)
            and isinstance(v.get("param_groups"), list)
            and all(isinstance(g, dict) for g in v["param_groups"]))


def _ema(v: Any) -> bool:
    return v is None or (isinstance(v, dict) and _tensors(v.get("module"))
                         and _count(v.get("num_updates")))


def _data(v: Any) -> bool:
    return (isinstance(v, dict) and _count(v.get("epoch")) and _count(v.get("index"))
            and _rng_state(v.get("cpu"), optional=True)
            and _rng_state(v.get("loader"), optional=True))


def _rng(v: Any) -> bool:
    return (isinstance(v, dict) and all(_rng_state(v.get(k)) for k in ("cpu", "noise", "context"))
            and _rng_state(v.get("cuda"), optional=True))


# The entries of a training state (what Trainer.state_dict writes): name -> (check of its
# value, what the check expects). read_checkpoint refuses a state holding a malformed one.
_ENTRY_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "step": (_count, "an integer >= 0"),
    "history": (_history, "lists of numbers by name"),
    "objective": (_tensors, "tensors by name"),
    "optimizer": (_optimizer, "an optimizer state with 'state' and 'param_groups'"),
    "scaler": (lambda v: isinstance(v, dict), "a dict"),
    "ema": (_ema, "null or 'module' tensors and 'num_updates'"),
    "data": (_data, "'epoch', 'index' and the epoch's random states"),
    "rng": (_rng, "'cpu', 'noise' and 'context' generator states"),
    "seed": (_count, "an integer >= 0"),
    "run": (lambda v: isinstance(v, dict), "a dict"),
    "train_args": (
        lambda v: isinstance(v, dict) and all(_plain(x) for x in v.values()),
        "plain values by name",
    ),
}
#: The entries every training state holds (what
#: :meth:`~conprediff.training.loop.Trainer.state_dict` writes); ``seed``, ``run`` and
#: ``train_args`` are checked when present (files of older versions lack them).
REQUIRED_ENTRIES = ("step", "history", "objective", "optimizer", "scaler", "ema", "data", "rng")


def _check_entries(path: Path, state: Any) -> None:
    """CheckpointError naming the first missing or malformed entry of ``state``."""
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} holds no training state")
    for name in REQUIRED_ENTRIES:
        if name not in state:
            raise CheckpointError(f"checkpoint {str(path)!r} lacks the entry {name!r}")
    for name, (check, expected) in _ENTRY_CHECKS.items():
        if name in state and not check(state[name]):
            raise CheckpointError(
                f"checkpoint {str(path)!r} has a malformed entry {name!r} (expected {expected})"
            )


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`write_checkpoint`, checked.

    The checksum is compared with the contents (a file without one, written by an older
    version, is read with a warning that it could not be verified), and the state must hold
    every entry of :data:`REQUIRED_ENTRIES`, each well-formed (``step`` an integer >= 0,
    ``objective`` tensors by name, ``rng`` the ``cpu``, ``noise`` and ``context`` generator
    states, ...).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    CheckpointError
        If the file is truncated, corrupted (checksum mismatch), not a conprediff checkpoint
        (e.g. a pickle), or lacks an entry or holds a malformed one (the message names it).
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as err:  # safetensors raises several types for damaged files
        raise CheckpointError(
            f"checkpoint {str(path)!r} is unreadable (truncated, corrupted or not a safetensors "
            f"checkpoint): {err}"
        ) from err
    meta, checksum = header.get(_META), header.get(_CHECKSUM)
    if meta is None:
        raise CheckpointError(
            f"{str(path)!r} is a safetensors file but not a conprediff checkpoint"
        )
    if checksum is None:
        warnings.warn(
            f"checkpoint {str(path)!r} has no checksum (written by an older version): its "
            "contents could not be verified",
            stacklevel=2,
        )
    elif checksum != state_checksum(meta, tensors):
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupted: its contents do not match its checksum"
        )
    try:
        state = unflatten_state(json.loads(meta), tensors)
    except (ValueError, KeyError, TypeError, RecursionError) as err:
        raise CheckpointError(f"checkpoint {str(path)!r} has damaged metadata: {err}") from err
    _check_entries(path, state)
    return state


def _set_aside(path: Path) -> Path | str:
    """Rename a damaged checkpoint to ``<name>.corrupt`` (``.corrupt-2``, ... when taken), out
    of the checkpoint pattern: the new name, or why the file was not renamed."""
    target, n = path.with_name(path.name + ".corrupt"), 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{n}")
    try:
        path.rename(target)
    except FileNotFoundError:  # under torchrun every rank reads the folder: another moved it
        return "moved aside by another process"
    except OSError as err:
        return f"left in place (it could not be renamed: {err})"
    return target


def read_latest_checkpoint(folder: str | Path) -> tuple[Path, dict[str, Any]]:
    """Read the newest readable checkpoint in ``folder``, falling back to older ones.

    A damaged newer file (:class:`CheckpointError`) gives a warning naming it and is renamed to
    ``<name>.corrupt`` (``<name>.corrupt-2``, ... when that name is taken): kept for inspection,
    and out of reach of the resumed run, which neither overwrites nor prunes it.

    Raises
    ------
    FileNotFoundError
        If ``folder`` holds no readable checkpoint (the message lists the damaged files kept).
    """
    kept: list[str] = []
    for path in reversed(list_checkpoints(folder)):
        try:
            return path, read_checkpoint(path)
        except FileNotFoundError:  # moved aside by another process since it was listed
            continue
        except CheckpointError as err:
            aside = _set_aside(path)
            if isinstance(aside, Path):
                kept.append(str(aside))
            where = f"kept as {str(aside)!r}" if isinstance(aside, Path) else aside
            warnings.warn(
                f"{err}; falling back to the previous checkpoint (the damaged file is {where})",
                stacklevel=2,
            )
    damaged = f"; the damaged files are kept as {', '.join(map(repr, kept))}" if kept else ""
    raise FileNotFoundError(f"no readable checkpoint in {str(folder)!r}{damaged}")
