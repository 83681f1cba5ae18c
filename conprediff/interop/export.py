"""Trained models to diffusers folders, and diffusers UNets (with their schedulers) to models."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from sklearn.utils.validation import check_is_fitted

from ..schedules import NoiseSchedule
from ._load import diffusers_module, read_folder_config
from .scheduler import PREDICTION_TYPES
from .unet import DiffusersUNet, from_diffusers

__all__ = ["import_params", "scheduler_config", "to_diffusers"]

_BETA_NAMES = {"linear": "linear", "cosine": "squaredcos_cap_v2"}


def scheduler_config(model: Any) -> dict[str, Any]:
    """A diffusers scheduler config for a fitted model's process: its exact betas
    (``trained_betas``), ``num_train_timesteps``, ``prediction_type``, and the clamp of
    :math:`\\hat x_0` to ``[-1, 1]`` (pixel models). Any scheduler class reads it:
    ``DPMSolverMultistepScheduler.from_config(scheduler_config(model))``."""
    check_is_fitted(model, "backbone_")
    schedule = NoiseSchedule(model.schedule_, model.timesteps_)
    pixel = getattr(model, "autoencoder_", None) is None
    return {
        "num_train_timesteps": int(model.timesteps_),
        "beta_schedule": _BETA_NAMES.get(model.schedule_, "linear"),  # ignored: trained_betas
        "trained_betas": schedule.betas.tolist(),
        "prediction_type": PREDICTION_TYPES[model.prediction_],
        "clip_sample": pixel,
        "clip_sample_range": 1.0,
        "variance_type": "fixed_small",
        "timestep_spacing": "leading",
        "steps_offset": 0,
        "set_alpha_to_one": True,
    }


def to_diffusers(model: Any, folder: str | os.PathLike, use_ema: bool = True) -> Path:
    """Write a fitted pixel model whose backbone is a :class:`DiffusersUNet` as a diffusers
    folder: ``unet/`` (the EMA weights with ``use_ema`` when there are some) and
    ``scheduler/`` (a ``DDPMScheduler`` with :func:`scheduler_config`), and, for an
    unconditional model, ``model_index.json``, so that ``DDPMPipeline.from_pretrained(folder)``
    and ``DDIMPipeline.from_pretrained(folder)`` load it. The pipelines return images in
    ``[0, 1]``: the model's data range mapped there.

    Raises
    ------
    TypeError
        The backbone is not a :class:`DiffusersUNet`.
    ValueError
        A latent or text model (no diffusers pipeline fits them yet: use ``save``).
    """
    check_is_fitted(model, "backbone_")
    net = model.ema_backbone_ if use_ema and model.ema_backbone_ is not None else model.backbone_
    if not isinstance(net, DiffusersUNet):
        raise TypeError(f"to_diffusers needs a diffusers backbone (DiffusersUNet, or "
                        f"ConPreDiffModel.from_diffusers), this model's is {type(net).__name__}")
    if getattr(model, "autoencoder_", None) is not None or net.text_channels is not None:
        raise ValueError("to_diffusers writes pixel models without text; save a latent or "
                         "text model with model.save(path)")
    d = diffusers_module()
    folder = Path(folder)
    scheduler = d.DDPMScheduler.from_config(scheduler_config(model))
    unet = net.unet.to("cpu")
    if net.num_classes is None:
        d.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    else:  # the pipelines take no labels: the parts only
        unet.save_pretrained(folder / "unet")
        scheduler.save_pretrained(folder / "scheduler")
    net.unet.to(model.device_)
    return folder


def _schedule_of(config: dict[str, Any], where: Path) -> tuple[str, int]:
    """The library's ``(schedule, timesteps)`` whose betas a scheduler config gives;
    ValueError naming the config's ``beta_schedule`` when none does."""
    scheduler = diffusers_module().DDPMScheduler.from_config(config)
    T = int(scheduler.config.num_train_timesteps)
    have = scheduler.alphas_cumprod.to(torch.float64)
    for kind in ("linear", "cosine", "sigmoid"):
        if torch.allclose(have, NoiseSchedule(kind, T).alpha_bar, rtol=1e-4, atol=1e-6):
            return kind, T
    raise ValueError(f"the scheduler in {str(where)!r} (beta_schedule="
                     f"{config.get('beta_schedule')!r}, beta_start={config.get('beta_start')}, "
                     f"beta_end={config.get('beta_end')}, T={T}) matches none of the library's "
                     "schedules ('linear', 'cosine', 'sigmoid')")


def import_params(unet: Any, params: dict[str, Any]) -> dict[str, Any]:
    """:class:`~conprediff.ConPreDiffModel` parameters that fine-tune ``unet``:
    ``backbone=from_diffusers(unet)``; from a folder with a scheduler, ``timesteps``,
    ``schedule`` and ``prediction`` as the scheduler's, unless ``params`` gives them."""
    if "backbone" in params:
        raise TypeError("from_diffusers builds the backbone from unet: do not pass backbone=")
    out = {"backbone": from_diffusers(unet), **params}
    if isinstance(unet, str | os.PathLike):
        root = Path(unet)
        try:
            where, config = read_folder_config(root / "scheduler", "scheduler")
        except FileNotFoundError:
            return out
        kind, T = _schedule_of(config, where)
        names = {v: k for k, v in PREDICTION_TYPES.items()}
        prediction = names.get(config.get("prediction_type", "epsilon"))
        if prediction is None:
            raise ValueError(f"the scheduler in {str(where)!r} has prediction_type="
                             f"{config.get('prediction_type')!r}: the library knows "
                             f"{sorted(names)}")
        out = {"timesteps": T, "schedule": kind, "prediction": prediction, **out}
    return out
