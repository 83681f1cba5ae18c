"""From an estimator's checked parameters and the user's data to a trained :class:`FittedState`.

:func:`fit_model` is everything behind :meth:`~conprediff.ConPreDiffModel.fit`: device and DDP
set-up, the seed, the data's loader, shape and range, the backbone and context head, the
:class:`~conprediff.training.loop.Trainer`, resuming from a checkpoint, and the run itself.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._validation import check_device, check_images, check_in_range, check_labels
from ..backbones.defaults import build_backbone
from ..backbones.protocol import num_classes_of
from ..persistence import FittedState, copy_config
from ..precision import channels_last_for, resolve_precision
from ..ranges import infer_data_range
from ..schedules import NoiseSchedule
from ..spaces import LatentSpace
from ..text.conditioned import captioned_data, collect_captions, with_text_encoder
from . import distributed
from .checkpoint import read_checkpoint, read_latest_checkpoint
from .data import BatchStream, as_loader, split_batch
from .latents import autoencoder_digest, encode_data, fitted_autoencoder
from .loop import DiffusionObjective, TrainConfig, Trainer

__all__ = ["TRAIN_ARGS", "check_resume", "fit_model", "num_classes_of", "read_resume_state"]

#: The estimator's parameters a run depends on: recorded in every checkpoint, and a resume that
#: changes one is refused. The others may change on resume: ``max_steps`` and ``epochs`` (to
#: extend a run), ``verbose``, ``log_every``, the checkpoint settings, ``device`` and ``compile``.
TRAIN_ARGS = ("lr", "batch_size", "grad_accum_steps", "weight_decay", "ema_decay", "precision",
              "prediction", "timesteps", "schedule", "min_snr_gamma", "label_dropout",
              "lr_schedule", "lr_warmup_steps", "grad_clip", "on_nonfinite")


def _random_seed(dist_info: distributed.DistInfo) -> int:
    """A fresh seed, the same on every rank (rank 0's, broadcast)."""
    seed = int(np.random.SeedSequence().entropy % 2**31)
    if dist_info.enabled:
        import torch.distributed as dist

        box = [seed]
        dist.broadcast_object_list(box, src=0)
        seed = int(box[0])
    return seed


def read_resume_state(resume: str | Path, checkpoint_dir: str | Path | None
                      ) -> dict[str, Any] | None:
    """The checkpoint state ``fit(resume=...)`` continues from (None: start afresh).

    ``'latest'``: the newest readable checkpoint in ``checkpoint_dir``, passing over damaged
    ones (each warned about and renamed to ``<name>.corrupt``); a warning and None when there is
    none (the message names the damaged files kept). A path: that file, which must be readable.
    """
    if resume == "latest":
        if checkpoint_dir is None:
            raise ValueError("resume='latest' needs checkpoint_dir to be set")
        try:
            return read_latest_checkpoint(checkpoint_dir)[1]
        except FileNotFoundError as err:
            warnings.warn(f"resume='latest': {err}; starting from scratch", stacklevel=4)
            return None
    return read_checkpoint(resume)


def check_resume(state: dict[str, Any], shape: tuple, data_range: tuple | None,
                 has_context: bool, train_args: dict[str, Any] | None = None,
                 precision: str | None = None, autoencoder: str | None = None) -> None:
    """Refuse a checkpoint written for other data, with/without context prediction, or with
    other training arguments.

    ``train_args``: the resumed run's values of :data:`TRAIN_ARGS`; each that differs from the
    checkpoint's record is named in one ``ValueError`` (a checkpoint without the record,
    written by an older version, is accepted). ``precision``: the resumed run's resolved
    precision; a warning when ``precision='auto'`` resolved otherwise where the checkpoint was
    written (another device: the run goes on, but not bit for bit as it would have there).
    ``shape`` and ``data_range`` are those of the points trained on (a latent run's: the latent
    shape and None); ``autoencoder``: the digest of a latent run's autoencoder.
    """
    _check_train_args(state.get("train_args"), train_args)
    run = state.get("run", {})
    if precision is not None and run.get("precision", precision) != precision:
        warnings.warn(f"the checkpoint's run computed in {run['precision']}, this device in "
                      f"{precision}: the resumed run is not bitwise the one it continues",
                      stacklevel=4)
    now = {"image_shape": list(shape),
           "data_range": None if data_range is None else list(data_range)}
    for name, value in now.items():
        if name in run and run[name] != value:
            raise ValueError(
                f"the checkpoint was written for {name} {run[name]}, this data gives {value}"
            )
    if run.get("autoencoder") != autoencoder:
        raise ValueError("the checkpoint was written with another autoencoder (its weights "
                         "differ): resume with the autoencoder the run was started with")
    had_context = any(k.startswith("context_head.") for k in state["objective"])
    if had_context != has_context:
        raise ValueError(
            "the checkpoint was written "
            + ("with" if had_context else "without")
            + " context prediction, but context is "
            + ("set" if has_context else "None")
            + ": resume with the parameters the run was started with"
        )


def _check_train_args(saved: dict[str, Any] | None, now: dict[str, Any] | None) -> None:
    if saved is None or now is None:
        return
    changed = [f"{k}={saved[k]!r} in the checkpoint, {now[k]!r} now"
               for k in now if k in saved and saved[k] != now[k]]
    if changed:
        raise ValueError(
            "the training arguments differ from the checkpoint's: " + "; ".join(changed)
            + ": resume with the parameters the run was started with"
        )


def _seed(p: dict[str, Any], resume_state: dict[str, Any] | None,
          dist_info: distributed.DistInfo) -> int:
    if resume_state is not None and "seed" in resume_state:
        seed = int(resume_state["seed"])  # a seed=None run resumes with the seed it drew
        if p["seed"] is not None and p["seed"] != seed:
            raise ValueError(
                f"seed={p['seed']} differs from the checkpoint's seed {seed}: resume with "
                "the parameters the run was started with"
            )
        return seed
    return p["seed"] if p["seed"] is not None else _random_seed(dist_info)


def _first_batch(data: Any, loader: Any, num_classes: int | None) -> torch.Tensor:
    """The data's first images (checked), without touching the global random state."""
    if isinstance(data, torch.Tensor | np.ndarray):
        return check_images(data, "data")
    try:
        # creating an iterator draws the loader's base seed (and a user sampler may shuffle)
        # from the global generator: peek without touching it. A loader with its own
        # generator= still advances that generator here, and persistent workers started by
        # the peek keep the seeds it gave them.
        with torch.random.fork_rng(devices=[]):
            first, labels = split_batch(next(iter(loader)))
        first = check_images(first, "data")
        if num_classes is not None:
            check_labels(labels, num_classes, len(first), "data's labels")
        return first
    except StopIteration:
        raise ValueError("data is empty: it yielded no batch") from None
    except RuntimeError as err:  # default_collate on images of different sizes
        if "stack expects each tensor to be equal size" in str(err):
            raise ValueError(f"data holds images of varying size: {err}") from err
        raise


def _build(p: dict[str, Any], context: Any, shape: tuple[int, int, int], seed: int,
           device: torch.device) -> tuple[nn.Module, nn.Module | None]:
    """Backbone (seeded with ``seed``) and context head (``seed + 1``), on ``device``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = build_backbone(p["backbone"], shape).to(device)
        head = None
        if context is not None:
            torch.manual_seed(seed + 1)  # separate stream: the backbone init is unchanged
            head = context.build(backbone.feature_channels, shape[0]).to(device)
    return backbone, head


def _total_steps(p: dict[str, Any], loader: Any) -> int:
    if p["epochs"] is None:
        return p["max_steps"]
    try:
        return max(1, -(-p["epochs"] * len(loader) // p["grad_accum_steps"]))
    except TypeError:
        raise ValueError("epochs needs data of known length; use max_steps") from None


def _config(p: dict[str, Any], shape: tuple[int, int, int],
            data_range: tuple[float, float] | None, device: torch.device, n_steps: int,
            num_classes: int | None, autoencoder: str | None, tokenize: Any = None
            ) -> TrainConfig:
    """The run's settings; ``precision`` resolved for ``device`` (``'auto'``), and the memory
    format chosen for both (see :mod:`conprediff.precision`)."""
    keys = ("lr", "min_snr_gamma", "grad_accum_steps", "grad_clip", "lr_warmup_steps",
            "lr_schedule", "on_nonfinite", "log_every", "checkpoint_every", "keep_checkpoints",
            "label_dropout")
    precision = resolve_precision(p["precision"], device)
    return TrainConfig(
        schedule=NoiseSchedule(p["schedule"], p["timesteps"]),
        prediction=p["prediction"],
        data_range=data_range,
        image_shape=shape,
        device=device,
        max_steps=n_steps,
        checkpoint_dir=None if p["checkpoint_dir"] is None else str(p["checkpoint_dir"]),
        precision=precision,
        channels_last=channels_last_for(device, precision),
        num_classes=num_classes,
        autoencoder=autoencoder,
        tokenize=tokenize,
        **{k: p[k] for k in keys},
    )


def _run(trainer: Trainer, resume_state: dict[str, Any] | None, seed: int,
         device: torch.device, callback: Callable | None, progress: bool) -> None:
    rng_devices = [device] if device.type == "cuda" else []
    try:
        # Training draws from the global generators too (dropout, a user DataLoader's
        # shuffle): seed them, and leave the caller's random state as it was.
        with torch.random.fork_rng(devices=rng_devices):
            torch.manual_seed(seed + 4)
            if resume_state is not None:
                trainer.load_state_dict(resume_state)
            trainer.run(callback=callback, progress=progress)
    except RuntimeError as err:
        if "stack expects each tensor to be equal size" in str(err):
            raise ValueError(f"data holds images of varying size: {err}") from err
        raise


def _latent_range(p: dict[str, Any], ae: Any, first: torch.Tensor) -> tuple[float, float]:
    """The pixel range of a latent model: the autoencoder's (``data_range_``) unless it has none;
    a ``data_range`` given beside it must be the same."""
    own = getattr(ae, "data_range_", None)
    if p["data_range"] == "auto":
        data_range = tuple(own) if own is not None else infer_data_range(first)
    else:
        data_range = p["data_range"]
        if own is not None and tuple(own) != tuple(data_range):
            raise ValueError(f"data_range={data_range} differs from the autoencoder's "
                             f"data_range_={tuple(own)}: leave data_range='auto'")
    check_in_range(first, data_range, "data")
    return data_range


def _latent_loader(p: dict[str, Any], ae: Any, data: Any, y: Any, shape: tuple[int, ...],
                   data_range: tuple[float, float], num_classes: int | None, seed: int,
                   dist_info: distributed.DistInfo, device: torch.device
                   ) -> tuple[Any, tuple[int, ...], float]:
    """A loader over the data encoded once into latents, the latents' ``(c, h, w)`` and their
    largest absolute value (the samplers' clamp)."""
    template = p["backbone"]
    in_channels = getattr(template, "in_channels", None)
    if in_channels is not None and in_channels != ae.latent_channels:
        raise ValueError(f"backbone in_channels={in_channels} does not match the autoencoder's "
                         f"latent_channels={ae.latent_channels}: a latent model's backbone "
                         "takes latents (leave in_channels=None to fill it in)")
    latents, labels = encode_data(LatentSpace(ae.to(device), data_range), data, y,
                                  p["batch_size"], shape, num_classes, device,
                                  progress=p["verbose"] > 0)
    loader, _ = as_loader(latents, labels, p["batch_size"], seed, dist_info.world_size,
                          dist_info.rank)
    return loader, tuple(latents.shape[1:]), float(latents.abs().max())


def fit_model(p: dict[str, Any], data: Any, y: Any = None, *, resume: str | Path | None = None,
              callback: Callable[[dict[str, float]], None] | None = None) -> FittedState:
    """Train a diffusion model as :meth:`~conprediff.ConPreDiffModel.fit` documents.

    Parameters
    ----------
    p : dict
        The estimator's parameters by name, checked (plain ``int``/``float`` values).
    data, y, resume, callback
        As :meth:`~conprediff.ConPreDiffModel.fit` takes them.

    Returns
    -------
    FittedState
        The trained modules and the record of the run.
    """
    context = copy_config(p["context"])  # kept for save: set_params may change it after fit
    dist_info, device = distributed.setup(check_device(p["device"]))
    resume_state = None if resume is None else read_resume_state(resume, p["checkpoint_dir"])
    seed = _seed(p, resume_state, dist_info)
    num_classes = num_classes_of(p["backbone"])
    if num_classes is not None and isinstance(data, torch.Tensor | np.ndarray):
        check_labels(y, num_classes, len(data), "labels y")
    captions = None
    if p["text_encoder"] is not None:
        data, y = captioned_data(data, y), None
        captions = collect_captions(data)
    loader, n_items = as_loader(data, y, p["batch_size"], seed, dist_info.world_size,
                                dist_info.rank)
    first = _first_batch(data, loader, num_classes)
    shape = tuple(first.shape[1:])
    ae = None
    if p["autoencoder"] is not None:
        ae = fitted_autoencoder(p["autoencoder"], data, y, seed, dist_info.enabled, p["verbose"])
        data_range = _latent_range(p, ae, first)
        loader, point_shape, bound = _latent_loader(p, ae, data, y, shape, data_range,
                                                    num_classes, seed, dist_info, device)
        train_range = None  # latents are not bounded; the pixels were checked as encoded
    else:
        data_range = infer_data_range(first) if p["data_range"] == "auto" else p["data_range"]
        check_in_range(first, data_range, "data")
        point_shape, train_range, bound = shape, data_range, None
    backbone, head = _build(p, context, point_shape, seed, device)
    if captions is not None:
        backbone = with_text_encoder(backbone, p["text_encoder"], captions, seed + 5).to(device)
    train_args = {k: p[k] for k in TRAIN_ARGS}
    digest = None if ae is None else autoencoder_digest(ae)
    config = _config(p, point_shape, train_range, device, _total_steps(p, loader), num_classes,
                     digest, tokenize=None if captions is None else backbone.tokenize)
    trainer = Trainer(DiffusionObjective(backbone, head), BatchStream(loader), config, dist_info,
                      seed, ema_decay=p["ema_decay"], weight_decay=p["weight_decay"],
                      compile=p["compile"], train_args=train_args)
    if resume_state is not None:
        check_resume(resume_state, point_shape, train_range, has_context=head is not None,
                     train_args=train_args, precision=config.precision, autoencoder=digest)
    _run(trainer, resume_state, seed, device, callback, progress=p["verbose"] > 0)
    to_plain = {"memory_format": torch.contiguous_format}
    return FittedState(
        backbone=backbone.to(**to_plain).eval(),
        ema_backbone=trainer.ema.module.to(**to_plain) if trainer.ema else None,
        context_head=head,
        context=context,
        image_shape=shape,
        data_range=data_range,
        n_steps=trainer.state.step,
        loss_history=trainer.state.history,
        device=device,
        seed=seed,
        n_items_seen=n_items,
        world_size=dist_info.world_size,
        timesteps=p["timesteps"],
        schedule=p["schedule"],
        prediction=p["prediction"],
        label_dropout=p["label_dropout"],
        precision=config.precision,
        autoencoder=ae,
        latent_bound=bound,
    )
