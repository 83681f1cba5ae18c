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

from .._validation import check_data_range, check_device
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
from .protocol import check_autoencoder, is_fitted

__all__ = ["META_KEY", "PREFIX", "autoencoder_tensors", "build_autoencoder", "check_fitted",
           "describe_autoencoder", "load_autoencoder", "save_autoencoder"]

#: Prefix of an autoencoder's tensors, in its own file and in a model file.
PREFIX = "autoencoder"
FORMAT_VERSION = 1
#: The JSON key of an autoencoder file's metadata.
META_KEY = "conprediff_autoencoder"


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
    """The module ``entry`` describes, checked on the meta device first (an autoencoder with
    weights, of the file's shapes); its weights are not yet loaded."""
    if not isinstance(entry, dict):
        raise invalid_file(path, "autoencoder", f"expected an object, got {type(entry).__name__}")
    with build_on_meta(len(shapes)):
        trial = decode_component(entry, classes, path, "autoencoder")
        if not isinstance(trial, nn.Module):
            raise invalid_file(path, "autoencoder", f"{type(trial).__name__} is not a module")
        try:
            check_autoencoder(trial, fitted=False)
        except (TypeError, ValueError) as err:
            raise invalid_file(path, "autoencoder", err) from None
        if next(trial.parameters(), None) is None:
            raise invalid_file(path, "autoencoder", "describes an autoencoder without weights "
                               "(in_channels null?)")
        check_state_shapes(trial, shapes, PREFIX, path)
    return decode_component(entry, classes, path, "autoencoder")


def save_autoencoder(autoencoder: nn.Module, path: str | Path) -> Path:
    """Write a fitted autoencoder to one safetensors file (atomically)."""
    meta = {"format_version": FORMAT_VERSION,
            "autoencoder": describe_autoencoder(autoencoder),
            "loss_history": getattr(autoencoder, "loss_history_", {})}
    return write_safetensors(path, autoencoder_tensors(autoencoder), {META_KEY: json.dumps(meta)})


def check_fitted(autoencoder: nn.Module, path: Path) -> nn.Module:
    """``autoencoder``, its weights loaded, if fitted and (where it has one) its
    ``data_range_`` finite with ``lo < hi``; else a ValueError naming the file."""
    if not is_fitted(autoencoder):
        raise invalid_file(path, "autoencoder", "holds an autoencoder that was never fitted")
    if hasattr(autoencoder, "data_range_"):
        try:
            check_data_range(tuple(autoencoder.data_range_), "data_range_")
        except (TypeError, ValueError) as err:
            raise invalid_file(path, "autoencoder", err) from None
    return autoencoder


def _meta(raw: dict[str, str], path: Path) -> dict[str, Any]:
    if META_KEY not in raw:
        hint = ("; it is a model file: read it with ConPreDiffModel.load"
                if "conprediff" in raw else "")
        raise ValueError(f"{str(path)!r} is not an autoencoder file: it was not written by an "
                         f"autoencoder's save() (no {META_KEY!r} key){hint}")
    try:
        meta = json.loads(raw[META_KEY])
    except (ValueError, RecursionError) as err:
        raise invalid_file(path, META_KEY, f"not valid JSON ({type(err).__name__})") from None
    if not isinstance(meta, dict) or json_depth(meta) > MAX_JSON_DEPTH:
        raise invalid_file(path, META_KEY, "expected an object of limited depth")
    version = meta.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise invalid_file(path, "format_version", f"unknown version {version!r}; this "
                           f"release reads {FORMAT_VERSION}")
    history = meta.get("loss_history", {})
    if not isinstance(history, dict) or not all(
        isinstance(v, list) and all(isinstance(x, int | float) and not isinstance(x, bool)
                                    for x in v)
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
    check_fitted(restore_state(tensors, PREFIX, ae, path, check_device(device)), path)
    ae.loss_history_ = meta.get("loss_history", {})
    return ae
