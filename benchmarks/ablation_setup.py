"""The ablation's arms, their protocol and the model of one (arm, seed) run.

Used by ``benchmarks/ablation.py`` (see its docstring and ``docs/benchmarks/ablation.md``).
"""

from __future__ import annotations

import argparse
import ast
import json
import math
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path
from typing import Any

import torch
from common import describe_context

from conprediff import ConPreDiffModel, UNet
from conprediff.context import (
    ContextPrediction,
    DecayingWeight,
    SNRWeight,
    TruncatedWeight,
)

BASELINE = "baseline"
DEFAULT = "conprediff"
BACKBONE = "backbone"  # an arm's key for UNet arguments (the rest are ContextPrediction's)


# ------------------------------------------------------------------------------------------ arms
def arm_catalogue(
    timesteps: int, context_base: dict[str, Any] | None = None
) -> dict[str, dict[str, Any] | None]:
    """Every arm by name: ``None`` is the baseline, a dict the ``ContextPrediction`` arguments
    (and, under the key ``'backbone'``, UNet arguments that leave the parameters and the
    prediction as they are, so that the baseline is the same run for every arm).

    Each arm is ``context_base`` (the output folder's :attr:`Protocol.context_base`; empty: the
    library's defaults, i.e. strides (1, 2), lambda 0.1, sampled decoder with the exact sorted W2
    ('auto'), x0 targets, point_fraction 0.1) updated with the arm's own settings. The
    reference arm ``conprediff`` is ``context_base`` itself.
    """
    # JSON has no tuples: the protocol keeps strides=(1, 2) as [1, 2]
    context_base = {k: tuple(v) if isinstance(v, list) else v
                    for k, v in (context_base or {}).items()}
    base = float(ContextPrediction(**context_base).weight)
    arms: dict[str, dict[str, Any] | None] = {
        BASELINE: None,
        DEFAULT: {},
        "strides=1": {"strides": (1,)},
        "strides=1,2": {"strides": (1, 2)},
        "strides=1,2,3": {"strides": (1, 2, 3)},
        "lambda=0.05": {"weight": 0.05},
        "lambda=0.1": {"weight": 0.1},
        "lambda=0.3": {"weight": 0.3},
        "lambda=1": {"weight": 1.0},
        # the schedules peak at the default constant, so that only their shape differs
        "lambda=decaying": {"weight": DecayingWeight(base, power=1.0)},
        "lambda=snr": {"weight": SNRWeight(base)},
        "lambda=truncated": {"weight": TruncatedWeight(base, t_max=timesteps // 2 - 1)},
        "lambda=high-t": {
            "weight": TruncatedWeight(base, t_max=timesteps - 1, t_min=timesteps // 2)
        },
        # the pilot's gain sat in the noisier half and grew with lambda: both together, at the
        # high-t window's cost (the points of images with lambda_t = 0 are skipped)
        "lambda=0.3-high-t": {
            "weight": TruncatedWeight(0.3, t_max=timesteps - 1, t_min=timesteps // 2)
        },
        # both settings, so that neither arm inherits the other's from a context_base
        "metric=auto": {"decoder": "sampled", "metric": "auto"},
        "metric=gaussian": {"decoder": "gaussian", "metric": "auto"},
        "target=x0": {"target": "x0"},
        "target=posterior": {"target": "posterior"},
        "point_fraction=0.1": {"point_fraction": 0.1},
        "point_fraction=0.25": {"point_fraction": 0.25},
        "point_fraction=0.5": {"point_fraction": 0.5},
        "point_fraction=1": {"point_fraction": 1.0},
        # the two arms of the pilot ahead of the baseline on plain FID in every pair, together
        "strides=1,2,3+lambda=0.05": {"strides": (1, 2, 3), "weight": 0.05},
        # the decoder reads the UNet's bottleneck, repeated to the grid, instead of its last map
        "features=mid": {BACKBONE: {"features": "mid"}},
        # every point of the (2s + 1)^2 square per stride: 8 + 24 neighbours instead of 8 + 8
        "shape=square": {"shape": "square"},
    }
    return {name: None if kw is None else {**context_base, **kw} for name, kw in arms.items()}


SWEEPS = {
    "main": [DEFAULT],
    "strides": ["strides=1", "strides=1,2", "strides=1,2,3"],
    "lambda": ["lambda=0.05", "lambda=0.1", "lambda=0.3", "lambda=1", "lambda=decaying",
               "lambda=snr", "lambda=truncated", "lambda=high-t", "lambda=0.3-high-t"],
    "metric": ["metric=auto", "metric=gaussian"],
    "target": ["target=x0", "target=posterior"],
    "point-fraction": ["point_fraction=0.1", "point_fraction=0.25", "point_fraction=0.5",
                       "point_fraction=1"],
    "features": ["features=mid"],
    "shape": ["shape=square"],
}


def make_context(kwargs: dict[str, Any] | None) -> ContextPrediction | None:
    if kwargs is None:
        return None
    return ContextPrediction(**{k: v for k, v in kwargs.items() if k != BACKBONE})


def config_key(kwargs: dict[str, Any] | None) -> str:
    """A canonical text of an arm's full configuration (to find arms that are the same run)."""
    backbone = (kwargs or {}).get(BACKBONE)
    extra = "" if not backbone else " + UNet(" + ", ".join(
        f"{k}={backbone[k]!r}" for k in sorted(backbone)) + ")"
    return describe_context(make_context(kwargs)) + extra


def select_arms(args: argparse.Namespace, timesteps: int,
                context_base: dict[str, Any] | None = None) -> tuple[list[str], dict[str, str]]:
    """The arms to run (baseline first, duplicates removed) and the aliases dropped."""
    catalogue = arm_catalogue(timesteps, context_base)
    names = [BASELINE]
    for sweep in args.sweep:
        for group in SWEEPS if sweep == "all" else [sweep]:
            names += SWEEPS[group]
    names += args.arms or []
    # the canonical name of a configuration is its first name in the catalogue ('conprediff' for
    # the defaults), so the same run keeps the same results folder whichever sweep asks for it
    canonical: dict[str, str] = {}
    for name, kwargs in catalogue.items():
        canonical.setdefault(config_key(kwargs), name)
    chosen: list[str] = []
    aliases: dict[str, str] = {}
    for name in names:
        if name not in catalogue:
            raise SystemExit(f"unknown arm {name!r}; known: {', '.join(catalogue)}")
        main_name = canonical[config_key(catalogue[name])]
        if main_name != name:
            aliases[name] = main_name
        if main_name not in chosen:
            chosen.append(main_name)
    return chosen, aliases


def slug(name: str) -> str:
    return name.replace("=", "-").replace(",", "_").replace(".", "p")


# ------------------------------------------------------------------------------------- protocol
@dataclass
class Protocol:
    """Everything that must be the same for all results in one output folder."""

    dataset: str
    size: int
    base_channels: int
    channel_mults: tuple[int, ...]
    batch_size: int
    lr: float
    lr_warmup_steps: int
    grad_clip: float
    ema_decay: float
    timesteps: int
    n_samples: int
    sample_steps: int
    sample_seed: int
    classifier_epochs: int
    kid_subset_size: int
    # ContextPrediction arguments under every arm (--context-base): pins settings whose library
    # default changed after a folder's first results, so that its arms keep their meaning
    context_base: dict[str, Any] = field(default_factory=dict)


# the library defaults that differed when Protocol.context_base was introduced: every folder
# written before then ran its arms on them (see docs/benchmarks/ablation.md, "Arms")
LEGACY_CONTEXT_BASE = {"point_fraction": 0.5}


def saved_protocol(d: dict[str, Any]) -> dict[str, Any]:
    """A ``protocol.json`` (or archive) dict in the current form: files written before
    ``context_base`` existed ran on :data:`LEGACY_CONTEXT_BASE`."""
    return {"context_base": dict(LEGACY_CONTEXT_BASE), **d}


def load_protocol(out: Path) -> Protocol:
    """The protocol an output folder's results were produced with (its ``protocol.json``)."""
    saved = saved_protocol(json.loads((out / "protocol.json").read_text()))
    return Protocol(**{**saved, "channel_mults": tuple(saved["channel_mults"])})


def context_base_text(base: dict[str, Any], sep: str = ", ") -> str:
    """``{"point_fraction": 0.5, "strides": [1, 2]}`` -> ``point_fraction=0.5, strides=(1, 2)``
    (the inverse of :func:`parse_context_base`, with ``sep=" "`` and no spaces in values)."""
    def literal(v: Any) -> str:
        text = repr(tuple(v) if isinstance(v, list) else v)
        return text if sep == ", " else text.replace(" ", "")
    return sep.join(f"{k}={literal(v)}" for k, v in base.items())


def parse_context_base(items: list[str] | None) -> dict[str, Any]:
    """``["point_fraction=0.5", "strides=(1, 2)"]`` -> ``{"point_fraction": 0.5, ...}``.

    Values are Python literals (numbers, tuples, strings), so that the protocol stays plain
    JSON; the names must be ``ContextPrediction`` arguments and the whole must build (checked
    here, before anything is written into ``--out``).
    """
    known = set(ContextPrediction().get_params(deep=False))
    base: dict[str, Any] = {}
    for item in items or []:
        name, sep, text = item.partition("=")
        if not sep or name not in known:
            raise SystemExit(f"--context-base takes NAME=VALUE with NAME one of {sorted(known)}, "
                             f"got {item!r}")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text  # a bare word: a string such as decoder=gaussian
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, str | int | float | bool | list):
            raise SystemExit(f"--context-base {name}: a number, string or tuple, got {text!r}")
        base[name] = value
    try:
        ContextPrediction(**arm_catalogue(1000, base)[DEFAULT]).build(8, 1)
    except (TypeError, ValueError) as err:
        raise SystemExit(f"--context-base {' '.join(items or [])}: {err}") from None
    return base


def load_data(dataset: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    from conprediff.data import load_digits_images, load_mnist_images

    if dataset == "digits":
        return load_digits_images(size=size)
    return load_mnist_images()


def make_model(p: Protocol, arm: dict[str, Any] | None, seed: int, steps: int,
               ckpt_dir: Path | None, every: int | None, device: str, verbose: int
               ) -> ConPreDiffModel:
    return ConPreDiffModel(
        backbone=UNet(in_channels=1, base_channels=p.base_channels,
                      channel_mults=tuple(p.channel_mults), **(arm or {}).get(BACKBONE, {})),
        context=make_context(arm),
        timesteps=p.timesteps,
        lr=p.lr,
        lr_warmup_steps=p.lr_warmup_steps,
        lr_schedule="constant",  # segments of a run are then exactly one long run
        grad_clip=p.grad_clip,
        batch_size=p.batch_size,
        max_steps=steps,
        ema_decay=p.ema_decay,
        log_every=every or 50,
        checkpoint_dir=ckpt_dir,
        checkpoint_every=every,
        keep_checkpoints=1,
        device=device,
        seed=seed,
        verbose=verbose,
    )


def eval_grid(steps: list[int], factor: float) -> tuple[list[int], list[int], int]:
    """ConPreDiff steps, baseline steps (extended for the equal wall-clock comparison) and the
    checkpoint interval (their greatest common divisor)."""
    steps = sorted(set(steps))
    every = reduce(math.gcd, steps)
    last = steps[-1]
    extra = every * math.ceil(last * factor / every)
    base_steps = sorted(set(steps) | ({extra} if extra > last else set()))
    return steps, base_steps, reduce(math.gcd, base_steps)


def arm_steps(arm: str, steps: list[int], base_steps: list[int]) -> list[int]:
    """The evaluation steps of ``arm``: the baseline's grid is extended for equal time."""
    return base_steps if arm == BASELINE else steps
