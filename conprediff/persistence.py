"""A fitted model's state, and the model file that keeps it.

Every file goes through :func:`~conprediff.files.write_safetensors`: tensors in a safetensors
file, everything else as JSON strings in its metadata, written to a temporary file in the
target's folder, flushed to disk and renamed over the target, so a crash or a kill during a write
leaves the old file intact. Nothing is ever pickled; reading never runs code
(:mod:`conprediff.files`).

A model file (:func:`save_model`) holds the backbone's, the EMA's and optionally the context
decoder's weights under the prefixes ``backbone.``, ``ema.``, ``context.``, and the JSON key
``conprediff``: the estimator's parameters, the fitted backbone's constructor arguments and the
fitted state listed in :class:`FittedState`.
"""

from __future__ import annotations

import copy
import inspect
import json
import warnings
from collections.abc import Callable, Iterable
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from sklearn.base import clone
from torch import nn

from ._validation import (
    check_bool,
    check_data_range,
    check_device,
    check_int,
    check_real,
    one_of,
)
from .autoencoders.files import META_KEY as AE_META_KEY
from .autoencoders.files import PREFIX as AE_PREFIX
from .autoencoders.files import (
    autoencoder_tensors,
    build_autoencoder,
    check_fitted,
    describe_autoencoder,
)
from .files import (
    MAX_JSON_DEPTH,
    atomic_write,
    build_on_meta,
    check_state_shapes,
    decode_component,
    invalid_file,
    json_depth,
    read_finite_tensors,
    read_header,
    read_safetensors,
    restore_state,
    write_json,
    write_safetensors,
)
from .parameters import check_params
from .serialization import to_jsonable
from .text.conditioned import TextConditioned

__all__ = [
    "FORMAT_VERSION",
    "FittedState",
    "MAX_TIMESTEPS",
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
    ``precision`` is what training ran in (``'auto'`` resolved); a file or an estimator from
    before it was recorded reads as ``'fp32'``. ``autoencoder`` is a latent model's (frozen)
    autoencoder, ``None`` for a pixel model; ``image_shape`` and ``data_range`` are the images',
    in either case.
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
    precision: str = "fp32"
    autoencoder: Any = None  # a latent model's fitted autoencoder
    latent_bound: float | None = None  # a latent model's largest |latent| in its training data

    def apply(self, estimator: Any) -> None:
        """Set ``estimator.<name>_`` for every field."""
        for f in fields(self):
            setattr(estimator, f.name + "_", getattr(self, f.name))

    @classmethod
    def of(cls, estimator: Any) -> FittedState:
        """The fitted state of a fitted estimator."""
        return cls(**{f.name: getattr(estimator, f.name + "_") for f in fields(cls)
                      if f.default is MISSING or hasattr(estimator, f.name + "_")})


def copy_config(obj: Any) -> Any:
    """An independent copy of a component's configuration (sklearn ``clone`` where it applies)."""
    if obj is None:
        return None
    return clone(obj) if hasattr(obj, "get_params") else copy.deepcopy(obj)



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
    if state.autoencoder is not None:
        tensors.update(autoencoder_tensors(state.autoencoder))
    params = {k: v for k, v in estimator.get_params(deep=False).items()
              if k not in ("backbone", "autoencoder", "text_encoder")}  # inside the backbone
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
        "precision": state.precision,
        "autoencoder": None if state.autoencoder is None
        else describe_autoencoder(state.autoencoder),
        "latent_bound": state.latent_bound,
    }
    return write_safetensors(path, tensors, {_META_KEY: json.dumps(meta)})


# ---------------------------------------------------------------------------- model files: checks
#: Largest ``timesteps`` a model file may declare (``make_betas`` allocates ``timesteps`` floats).
MAX_TIMESTEPS = 100_000
_MAX_CHANNELS, _MAX_SIDE = 4096, 65536
_PREFIXES = ("backbone", "ema", "context", "autoencoder")



def _check_version(value: Any, name: str) -> int:
    if type(value) is not int or value != FORMAT_VERSION:
        raise ValueError(f"unknown format version {value!r}; this release reads {FORMAT_VERSION}")
    return value


def _check_type(*types: type) -> Callable[[Any, str], Any]:
    def check(value: Any, name: str) -> Any:
        if not isinstance(value, types):
            raise TypeError(f"expected {' or '.join(t.__name__ for t in types)}, "
                            f"got {type(value).__name__}")
        return value
    return check


def _check_image_shape(value: Any, name: str) -> tuple[int, int, int]:
    if not isinstance(value, list) or len(value) != 3:
        raise ValueError(f"expected [C, H, W], got {value!r}")
    return (check_int(value[0], "C", 1, _MAX_CHANNELS), check_int(value[1], "H", 1, _MAX_SIDE),
            check_int(value[2], "W", 1, _MAX_SIDE))


def _check_history(value: Any, name: str) -> dict[str, list[float]]:
    if not isinstance(value, dict):
        raise TypeError(f"expected an object of lists, got {type(value).__name__}")
    for key, values in value.items():
        if not isinstance(values, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in values
        ):
            raise TypeError(f"{key!r} is not a list of numbers")
    return value


#: The keys of a model file's JSON metadata, each with its check ``check(value, name)``.
_META_SCHEMA: dict[str, Callable[[Any, str], Any]] = {
    "format_version": _check_version,
    "params": _check_type(dict),
    "backbone": _check_type(dict, type(None)),
    "image_shape": _check_image_shape,
    "data_range": lambda v, n: check_data_range(v, n),
    "n_steps": lambda v, n: check_int(v, n, 0),
    "seed": lambda v, n: check_int(v, n, 0, 2**64 - 1),
    "loss_history": _check_history,
    "has_decoder": check_bool,
    "precision": one_of("fp32", "bf16", "fp16"),
    "autoencoder": _check_type(dict, type(None)),
    "latent_bound": lambda v, n: check_real(v, n, 0.0, low_open=True, optional=True),
}
#: Keys a file written before they existed lacks, with the value each then reads as.
_META_DEFAULTS: dict[str, Any] = {"precision": "fp32", "autoencoder": None,
                                  "latent_bound": None}



def _check_meta(raw: dict[str, str], path: Path) -> dict[str, Any]:
    """The file's JSON metadata, every key checked against ``_META_SCHEMA``; one ValueError."""
    if _META_KEY not in raw:
        hint = ("; it is an autoencoder file: read it with KLAutoencoder.load"
                if AE_META_KEY in raw else "")
        raise ValueError(f"{str(path)!r} is not a model file: it was not written by "
                         f"ConPreDiffModel.save{hint}")
    try:
        meta = json.loads(raw[_META_KEY])
    except (ValueError, RecursionError) as err:
        raise invalid_file(path, _META_KEY, f"not valid JSON ({type(err).__name__})") from None
    if not isinstance(meta, dict):
        raise invalid_file(path, _META_KEY, f"expected an object, got {type(meta).__name__}")
    if json_depth(meta) > MAX_JSON_DEPTH:
        raise invalid_file(path, _META_KEY, f"nested deeper than {MAX_JSON_DEPTH} levels")
    for key, check in _META_SCHEMA.items():
        if key not in meta and key in _META_DEFAULTS:
            meta[key] = _META_DEFAULTS[key]
        if key not in meta:
            raise invalid_file(path, key, "missing")
        try:
            meta[key] = check(meta[key], key)
        except (TypeError, ValueError) as err:
            raise invalid_file(path, key, err) from None
    return meta



def _check_params(cls: type, data: dict[str, Any], classes: tuple[type, ...],
                  path: Path) -> dict[str, Any]:
    """The estimator's parameters decoded and checked as ``fit`` would, before any is used.

    Decoded under ``torch.device('meta')``, so a module named where a parameter belongs
    allocates nothing; ``timesteps`` is bounded by :data:`MAX_TIMESTEPS`.
    """
    names = set(inspect.signature(cls.__init__).parameters) - {"self", "backbone", "autoencoder",
                                                                 "text_encoder"}
    unknown = sorted(set(data) - names)
    if unknown:
        raise invalid_file(path, f"params.{unknown[0]}", f"not a parameter of {cls.__name__}")
    try:
        check_int(data.get("timesteps", 1), "timesteps", 1, MAX_TIMESTEPS)
    except (TypeError, ValueError) as err:
        raise invalid_file(path, "params.timesteps", err) from None
    with build_on_meta():
        trial = decode_component(data, classes, path, "params")
    estimator = cls(**trial)
    try:
        if hasattr(estimator, "get_params"):
            check_params(estimator.get_params(deep=False))  # the checks fit runs
    except (TypeError, ValueError) as err:
        raise invalid_file(path, "params", err) from None
    return decode_component(data, classes, path, "params")



def _backbone_from(meta: dict[str, Any], backbone: nn.Module | None, classes: tuple[type, ...],
                   path: Path, dry: bool = False) -> nn.Module:
    """The architecture the file describes, or the one the caller passes for a custom one.

    ``dry`` (the shape check, under ``torch.device('meta')``): the caller's module itself, not
    a copy, and no warning.
    """
    if meta["backbone"] is not None:
        net = decode_component(meta["backbone"], classes, path, "backbone")
        if not isinstance(net, nn.Module):
            raise invalid_file(path, "backbone", f"{type(net).__name__} is not a torch module")
        if backbone is not None and not dry:
            warnings.warn(
                f"backbone= is ignored: {str(path)!r} describes its backbone "
                f"({type(net).__name__}) itself; it is needed only for a custom backbone "
                "without get_params",
                stacklevel=4,
            )
        return net
    if backbone is None:
        raise ValueError("this file holds a custom backbone: pass backbone=<module> to load()")
    return backbone if dry else copy.deepcopy(backbone)


def _autoencoder_from(meta: dict[str, Any], classes: tuple[type, ...],
                      shapes: dict[str, tuple[int, ...]], path: Path) -> nn.Module | None:
    """A latent model file's autoencoder, checked against the file's shapes (weights not yet
    loaded); None for a pixel model."""
    if meta["autoencoder"] is None:
        stray = [k for k in shapes if k.startswith(AE_PREFIX + ".")]
        if stray:
            raise invalid_file(path, stray[0], "autoencoder weights in a pixel model's file")
        return None
    ae = build_autoencoder(meta["autoencoder"], shapes, classes, path)  # protocol checked
    f = ae.downsampling_factor
    if meta["image_shape"][1] % f or meta["image_shape"][2] % f:
        raise invalid_file(path, "image_shape", f"not divisible by the autoencoder's "
                           f"downsampling_factor {f}")
    return ae


def _check_layout(meta: dict[str, Any], context: Any, backbone: nn.Module | None,
                  classes: tuple[type, ...], shapes: dict[str, tuple[int, ...]],
                  path: Path, channels: int) -> bool:
    """Build the file's modules on the meta device (no memory) and compare their shapes with
    the file's; True when the file's context decoder fits ``context`` (else a warning).
    ``channels``: of the points (the images', or a latent model's ``latent_channels``)."""
    stray = [k for k in shapes if k.split(".")[0] not in _PREFIXES]
    if stray:
        raise invalid_file(path, stray[0], "not a tensor of a model file")
    with build_on_meta(len(shapes)):
        net = _backbone_from(meta, backbone, classes, path, dry=True)
        check_state_shapes(net, shapes, "backbone", path)
        if any(k.startswith("ema.") for k in shapes):
            check_state_shapes(net, shapes, "ema", path)
        in_channels = getattr(net, "in_channels", None)
        if isinstance(in_channels, int) and in_channels != channels:
            raise invalid_file(path, "image_shape", f"{channels} channels (of the points), but "
                               f"the backbone takes {in_channels}")
        if not (meta["has_decoder"] and context is not None):
            return False
        try:
            head = context.build(net.feature_channels, channels)
        except (TypeError, ValueError, AttributeError) as err:
            raise invalid_file(path, "params.context", err) from None
    try:
        check_state_shapes(head, shapes, "context", path)
    except ValueError as err:  # written before save stored the fitted context
        warnings.warn(
            f"the context decoder in {str(path)!r} does not match the file's context "
            f"settings (changed by set_params before save?); loaded without the decoder, "
            f"which sampling and inpainting do not use: {str(err).splitlines()[0]}",
            stacklevel=4,
        )
        return False
    return True



def load_model(cls: type, path: str | Path, device: str = "auto",
               backbone: nn.Module | None = None, classes: Iterable[type] = (),
               allow_nonfinite: bool = False) -> Any:
    """Read a file written by :func:`save_model` into a fitted ``cls`` instance.

    The file is data, checked before anything is built: its JSON metadata as a whole (every
    key's type and range, the estimator's parameters as ``fit`` checks them), then the
    modules it describes, built on the meta device, against the tensor shapes in its header.
    Only then are the tensors read (non-finite ones refused unless ``allow_nonfinite``) and
    the modules built for real. Every failure is one ``ValueError`` naming the file and the
    key (``FileNotFoundError`` when there is no file).
    """
    path = Path(path)
    raw, shapes = read_header(path)
    meta = _check_meta(raw, path)
    classes = tuple(classes)
    params = _check_params(cls, meta["params"], classes, path)
    ae = _autoencoder_from(meta, classes, shapes, path)
    channels = meta["image_shape"][0] if ae is None else int(ae.latent_channels)
    has_head = _check_layout(meta, params.get("context"), backbone, classes, shapes, path,
                             channels)
    tensors = read_finite_tensors(path, allow_nonfinite)
    net = _backbone_from(meta, backbone, classes, path)
    template = copy.deepcopy(net)
    if isinstance(template, TextConditioned):  # the parameters: the backbone and its encoder
        params["text_encoder"] = template.text_encoder
        template = template.backbone
    model = cls(backbone=template, **params)
    dev = check_device(device)
    net = restore_state(tensors, "backbone", net, path, dev)
    ema = None
    if any(k.startswith("ema.") for k in tensors):
        ema = restore_state(tensors, "ema", copy.deepcopy(net), path, dev).requires_grad_(False)
    head = None
    if has_head:
        head = model.context.build(net.feature_channels, channels)
        head = restore_state(tensors, "context", head, path, dev)
    if ae is not None:
        ae = check_fitted(restore_state(tensors, AE_PREFIX, ae, path, dev), path)
        model.autoencoder = ae.requires_grad_(False)
    FittedState(
        backbone=net,
        ema_backbone=ema,
        context_head=head,
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
        precision=meta["precision"],
        autoencoder=ae,
        latent_bound=meta["latent_bound"],
    ).apply(model)
    model.device = device
    return model
