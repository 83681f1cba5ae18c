"""Files the library writes and reads: atomic safetensors writes, and a fitted model's state.

Every file goes through :func:`write_safetensors`: tensors in a safetensors file, everything else
as JSON strings in its metadata, written to a temporary file in the target's folder, flushed to
disk and renamed over the target, so a crash or a kill during a write leaves the old file intact.
Nothing is ever pickled; reading never runs code.

A model file (:func:`save_model`) holds the backbone's, the EMA's and optionally the context
decoder's weights under the prefixes ``backbone.``, ``ema.``, ``context.``, and the JSON key
``conprediff``: the estimator's parameters, the fitted backbone's constructor arguments and the
fitted state listed in :class:`FittedState`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from sklearn.base import clone
from torch import nn

from ._validation import check_device
from .serialization import from_jsonable, to_jsonable

__all__ = [
    "FORMAT_VERSION",
    "FittedState",
    "atomic_write",
    "copy_config",
    "load_model",
    "read_safetensors",
    "save_model",
    "write_json",
    "write_safetensors",
]

#: Version of the model file layout written by :func:`save_model`.
FORMAT_VERSION = 1
_META_KEY = "conprediff"


@dataclass
class FittedState:
    """What ``fit`` learns and ``save``/``load`` keep: the estimator's attributes ending in ``_``.

    Each field ``name`` is the estimator's attribute ``name_`` (``backbone`` is ``backbone_``).
    """

    backbone: nn.Module
    ema_backbone: nn.Module | None
    context_head: nn.Module | None
    context: Any
    image_shape: tuple[int, ...]
    data_range: tuple[float, float]
    n_steps: int
    loss_history: dict[str, list[float]]
    device: torch.device
    seed: int
    n_items_seen: int | None
    world_size: int
    timesteps: int
    schedule: str
    prediction: str
    label_dropout: float

    def apply(self, estimator: Any) -> None:
        """Set ``estimator.<name>_`` for every field."""
        for f in fields(self):
            setattr(estimator, f.name + "_", getattr(self, f.name))

    @classmethod
    def of(cls, estimator: Any) -> FittedState:
        """The fitted state of a fitted estimator."""
        return cls(**{f.name: getattr(estimator, f.name + "_") for f in fields(cls)})


def copy_config(obj: Any) -> Any:
    """An independent copy of a component's configuration (sklearn ``clone`` where it applies)."""
    if obj is None:
        return None
    return clone(obj) if hasattr(obj, "get_params") else copy.deepcopy(obj)


# ---------------------------------------------------------------------------- atomic files
def _umask() -> int:
    """The process's umask, read without changing it where Linux allows."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but brief)
    os.umask(mask)
    return mask


def _remove_stale_temporaries(target: Path) -> None:
    """Delete temporary files of earlier writes of ``target`` whose writer no longer runs."""
    for tmp in target.parent.glob(f".{target.name}.*.tmp"):
        pid = tmp.name[len(target.name) + 2 : -4].split(".")[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # alive under another user: not ours to remove


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Make ``path`` appear whole or not at all: ``write(tmp)``, ``fsync``, ``os.replace``.

    ``write`` writes the complete file at the temporary path it is given. The temporary file
    lies in the target's folder (named ``.<name>.<pid>.<random>.tmp``) and is removed when
    ``write`` fails; ones left by a killed earlier writer are removed by the next write of the
    same file. The file's mode follows the umask, as ``open`` would give. The folder is created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp",
                               dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor],
                      metadata: dict[str, str]) -> Path:
    """Write a safetensors file atomically (see :func:`atomic_write`).

    Parameters
    ----------
    path : str or Path
        Target file; its folder is created.
    tensors : dict of str to torch.Tensor
        Contiguous CPU tensors.
    metadata : dict of str to str
        Stored in the file's header.

    Returns
    -------
    Path
        ``path``.
    """
    from safetensors.torch import save_file

    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON atomically (see :func:`atomic_write`)."""
    text = json.dumps(data, indent=2)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def read_safetensors(path: str | Path, what: str = "file") -> tuple[dict[str, str],
                                                                      dict[str, torch.Tensor]]:
    """``(metadata, tensors)`` of a safetensors file; ``ValueError`` if it cannot be read.

    Raises
    ------
    FileNotFoundError
        If there is no file at ``path``.
    ValueError
        If the file is truncated, corrupted or not a safetensors file (a pickle, say).
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {str(path)!r}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as err:  # safetensors raises several types for damaged files
        raise ValueError(f"{str(path)!r} is not a readable safetensors file: {err}") from err
    return meta, tensors


# ---------------------------------------------------------------------------- model files
def save_model(estimator: Any, path: str | Path, include_decoder: bool = True) -> Path:
    """Write a fitted :class:`~conprediff.ConPreDiffModel` to one safetensors file."""
    state = FittedState.of(estimator)
    tensors: dict[str, torch.Tensor] = {}
    modules = {"backbone": state.backbone, "ema": state.ema_backbone}
    if include_decoder:
        modules["context"] = state.context_head
    for prefix, module in modules.items():
        if module is None:
            continue
        for key, value in module.state_dict().items():
            tensors[f"{prefix}.{key}"] = value.detach().cpu().clone().contiguous()
    params = {k: v for k, v in estimator.get_params(deep=False).items() if k != "backbone"}
    # what the weights were trained with, even if set_params changed it since
    params.update(context=state.context, schedule=state.schedule, timesteps=state.timesteps,
                  prediction=state.prediction)
    backbone = state.backbone
    meta = {
        "format_version": FORMAT_VERSION,
        "params": to_jsonable(params, "params"),
        "backbone": to_jsonable(backbone, "backbone") if hasattr(backbone, "get_params") else None,
        "image_shape": list(state.image_shape),
        "data_range": list(state.data_range),
        "n_steps": state.n_steps,
        "seed": state.seed,
        "loss_history": state.loss_history,
        "has_decoder": bool(include_decoder and state.context_head is not None),
    }
    return write_safetensors(path, tensors, {_META_KEY: json.dumps(meta)})


def _restore(tensors: dict[str, torch.Tensor], prefix: str, module: nn.Module, path: Path,
             device: torch.device) -> nn.Module:
    """Load the ``prefix.`` tensors into ``module`` (strictly); ValueError when they do not fit."""
    state = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"the weights in {str(path)!r} do not fit the {prefix} module "
            f"({type(module).__name__}): was it built with other arguments? "
            f"{str(err).splitlines()[0]}"
        ) from err
    return module.to(device).eval()


def _backbone_from(meta: dict[str, Any], backbone: nn.Module | None, classes: tuple[type, ...],
                   path: Path) -> nn.Module:
    """The architecture the file describes, or the one the caller passes for a custom one."""
    if meta["backbone"] is not None:
        net = from_jsonable(meta["backbone"], classes)
        if backbone is not None:
            warnings.warn(
                f"backbone= is ignored: {str(path)!r} describes its backbone "
                f"({type(net).__name__}) itself; it is needed only for a custom backbone "
                "without get_params",
                stacklevel=4,
            )
        return net
    if backbone is None:
        raise ValueError("this file holds a custom backbone: pass backbone=<module> to load()")
    return copy.deepcopy(backbone)


def _context_head(model: Any, meta: dict[str, Any], net: nn.Module,
                  tensors: dict[str, torch.Tensor], path: Path,
                  device: torch.device) -> nn.Module | None:
    if not (meta["has_decoder"] and model.context is not None):
        return None
    head = model.context.build(net.feature_channels, meta["image_shape"][0])
    try:
        return _restore(tensors, "context", head, path, device)
    except ValueError as err:  # written before save stored the fitted context
        warnings.warn(
            f"the context decoder in {str(path)!r} does not match the file's context "
            f"settings (changed by set_params before save?); loaded without the decoder, "
            f"which sampling and inpainting do not use: {str(err).splitlines()[0]}",
            stacklevel=4,
        )
        return None


def load_model(cls: type, path: str | Path, device: str = "auto",
               backbone: nn.Module | None = None, classes: Iterable[type] = ()) -> Any:
    """Read a file written by :func:`save_model` into a fitted ``cls`` instance."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {str(path)!r}")
    raw, tensors = read_safetensors(path, "model file")
    if _META_KEY not in raw:
        raise ValueError(f"{str(path)!r} was not written by ConPreDiffModel.save")
    meta = json.loads(raw[_META_KEY])
    classes = tuple(classes)
    params = from_jsonable(meta["params"], classes)
    net = _backbone_from(meta, backbone, classes, path)
    model = cls(backbone=copy.deepcopy(net), **params)
    dev = check_device(device)
    net = _restore(tensors, "backbone", net, path, dev)
    ema = None
    if any(k.startswith("ema.") for k in tensors):
        ema = _restore(tensors, "ema", copy.deepcopy(net), path, dev).requires_grad_(False)
    FittedState(
        backbone=net,
        ema_backbone=ema,
        context_head=_context_head(model, meta, net, tensors, path, dev),
        context=copy_config(model.context),
        image_shape=tuple(meta["image_shape"]),
        data_range=tuple(meta["data_range"]),
        n_steps=meta["n_steps"],
        loss_history=meta["loss_history"],
        device=dev,
        seed=meta["seed"],
        n_items_seen=None,
        world_size=1,
        timesteps=model.timesteps,
        schedule=model.schedule,
        prediction=model.prediction,
        label_dropout=model.label_dropout,
    ).apply(model)
    model.device = device
    return model
