"""The estimator's constructor arguments: one check each, declared in a table.

:func:`check_params` is what :meth:`~conprediff.ConPreDiffModel.fit` runs on its parameters and
what :func:`~conprediff.persistence.load_model` runs on the parameters a file holds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from ._validation import (
    as_is,
    check_bool,
    check_int,
    context_or_none,
    int_between,
    module_or_none,
    one_of,
    range_or_auto,
    real_between,
)
from .autoencoders.protocol import check_autoencoder
from .diffusion.gaussian import check_prediction
from .precision import PRECISIONS
from .schedules import make_betas

__all__ = ["PARAMETERS", "check_params"]

_MAX_SEED = 2**63 - 16  # fit seeds its generators with seed + 0..4 (torch takes < 2**64)


#: How each constructor argument is checked at ``fit`` (one line each; see ``_validation``).
PARAMETERS: dict[str, Callable[[Any, str], Any]] = {
    "backbone": module_or_none,
    "context": context_or_none,
    "schedule": as_is,  # with timesteps, by make_betas
    "timesteps": as_is,
    "prediction": lambda v, n: check_prediction(v),
    "min_snr_gamma": real_between(0.0, low_open=True, optional=True),
    "lr": real_between(0.0, low_open=True),
    "weight_decay": real_between(0.0),
    "batch_size": int_between(1),
    "max_steps": int_between(1),
    "epochs": int_between(1, optional=True),
    "ema_decay": real_between(0.0, 1.0, high_open=True, optional=True),
    "precision": one_of(*PRECISIONS),  # 'auto' resolved by fit, with the device
    "compile": check_bool,
    "grad_accum_steps": int_between(1),
    "grad_clip": real_between(0.0, low_open=True, optional=True),
    "lr_warmup_steps": int_between(0),
    "lr_schedule": one_of("constant", "cosine", "linear"),
    "on_nonfinite": one_of("raise", "skip"),
    "log_every": int_between(1),
    "checkpoint_dir": as_is,
    "checkpoint_every": int_between(1, optional=True),
    "keep_checkpoints": int_between(1),
    "data_range": range_or_auto,
    "device": as_is,  # resolved by fit
    "seed": partial(check_int, minimum=0, maximum=_MAX_SEED, optional=True),
    "verbose": int_between(0),
    "label_dropout": real_between(0.0, 1.0, high_open=True),
    # fitted or not: fit fits an unfitted one first
    "autoencoder": lambda v, n: None if v is None else check_autoencoder(v, n, fitted=False),
    "text_encoder": module_or_none,  # its protocol and width are checked against the backbone
}


def check_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Every parameter in :data:`PARAMETERS` checked, by name (numbers as ``int``/``float``).

    Raises ``TypeError``/``ValueError`` naming the first bad parameter.
    """
    make_betas(params["schedule"], params["timesteps"])  # validates schedule and timesteps
    p = {name: check(params[name], name) for name, check in PARAMETERS.items()}
    p["timesteps"] = int(params["timesteps"])
    if p["checkpoint_every"] is not None and p["checkpoint_dir"] is None:
        raise ValueError("checkpoint_every needs checkpoint_dir to be set")
    return p
