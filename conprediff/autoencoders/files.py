"""Autoencoder files, and the autoencoder inside a model file.

An autoencoder file (:meth:`KLAutoencoder.save <conprediff.autoencoders.KLAutoencoder.save>`)
is a safetensors file whose tensors are the autoencoder's ``state_dict`` (weights and fitted
buffers) under the prefix ``autoencoder.`` and whose JSON key ``conprediff_autoencoder`` holds
its class and constructor arguments. A latent model file holds the same tensors and the same
description under its own key. Reading checks the description, builds the module on the meta
device and compares its shapes with the file's before any tensor is read
(:mod:`conprediff.files`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._validation import check_device
from ..files import (
    MAX_JSON_DEPTH,
    build_on_meta,
    check_state_shapes,
    decode_component,
    invalid_file,
    json_depth,
    read_finite_tensors,
    read_header,
    restore_state,
    write_safetensors,
)
from ..serialization import to_jsonable
from .protocol import is_fitted

__all__ = ["PREFIX", "autoencoder_tensors", "build_autoencoder", "describe_autoencoder",
           "load_autoencoder", "save_autoencoder"]

#: Prefix of an autoencoder's tensors, in its own file and in a model file.
PREFIX = "autoencoder"
FORMAT_VERSION = 1
_KEY = "conprediff_autoencoder"


def describe_autoencoder(autoencoder: Any) -> dict[str, Any]:
    """Its class and constructor arguments as JSON data; TypeError when it cannot be saved."""
    if not (isinstance(autoencoder, nn.Module) and hasattr(autoencoder, "get_params")):
        raise TypeError(
            f"cannot save the autoencoder: {type(autoencoder).__name__} is not a torch module "
            "with get_params() (see conprediff.autoencoders.protocol)"
        )
    return to_jsonable(autoencoder, "autoencoder")


def autoencoder_tensors(autoencoder: nn.Module) -> dict[str, torch.Tensor]:
    """Its ``state_dict`` under :data:`PREFIX`, as contiguous CPU tensors."""
    return {f"{PREFIX}.{k}": v.detach().cpu().clone().contiguous()
            for k, v in autoencoder.state_dict().items()}


def build_autoencoder(entry: Any, shapes: dict[str, tuple[int, ...]],
                      classes: tuple[type, ...], path: Path) -> nn.Module:
    """The module ``entry`` describes, checked on the meta device against the file's shapes
    first; its weights are not yet loaded."""
    if not isinstance(entry, dict):
        raise invalid_file(path, "autoencoder", f"expected an object, got {type(entry).__name__}")
    with build_on_meta(len(shapes)):
        trial = decode_component(entry, classes, path, "autoencoder")
        if not isinstance(trial, nn.Module):
            raise invalid_file(path, "autoencoder", f"{type(trial).__name__} is not a module")
        check_state_shapes(trial, shapes, PREFIX, path)
    return decode_component(entry, classes, path, "autoencoder")


def save_autoencoder(autoencoder: nn.Module, path: str | Path) -> Path:
    """Write a fitted autoencoder to one safetensors file (atomically)."""
    meta = {"format_version": FORMAT_VERSION,
            "autoencoder": describe_autoencoder(autoencoder),
            "loss_history": getattr(autoencoder, "loss_history_", {})}
    return write_safetensors(path, autoencoder_tensors(autoencoder), {_KEY: json.dumps(meta)})


def _meta(raw: dict[str, str], path: Path) -> dict[str, Any]:
    if _KEY not in raw:
        raise ValueError(f"{str(path)!r} was not written by an autoencoder's save()")
    try:
        meta = json.loads(raw[_KEY])
    except (ValueError, RecursionError) as err:
        raise invalid_file(path, _KEY, f"not valid JSON ({type(err).__name__})") from None
    if not isinstance(meta, dict) or json_depth(meta) > MAX_JSON_DEPTH:
        raise invalid_file(path, _KEY, "expected an object of limited depth")
    if meta.get("format_version") != FORMAT_VERSION:
        raise invalid_file(path, "format_version", f"unknown version "
                           f"{meta.get('format_version')!r}; this release reads {FORMAT_VERSION}")
    history = meta.get("loss_history", {})
    if not isinstance(history, dict) or not all(
        isinstance(v, list) and all(isinstance(x, int | float) for x in v)
        for v in history.values()
    ):
        raise invalid_file(path, "loss_history", "expected an object of lists of numbers")
    return meta


def load_autoencoder(path: str | Path, device: str = "cpu",
                     classes: Iterable[type] = ()) -> nn.Module:
    """Read an autoencoder file; every failure is a ValueError naming the file and the key."""
    path = Path(path)
    raw, shapes = read_header(path)
    meta = _meta(raw, path)
    stray = [k for k in shapes if not k.startswith(PREFIX + ".")]
    if stray:
        raise invalid_file(path, stray[0], "not a tensor of an autoencoder file")
    ae = build_autoencoder(meta.get("autoencoder"), shapes, tuple(classes), path)
    tensors = read_finite_tensors(path, allow_nonfinite=False)
    restore_state(tensors, PREFIX, ae, path, check_device(device))
    if not is_fitted(ae):
        raise invalid_file(path, "autoencoder", "holds an autoencoder that was never fitted")
    ae.loss_history_ = meta.get("loss_history", {})
    return ae
