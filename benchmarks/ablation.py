"""Ablation: ConPreDiff against the same backbone without context prediction, with paired seeds.

Every arm (the baseline, ``context=None``, and each ConPreDiff variant) is trained with the same
seeds: with the same seed the estimator gives both arms the same backbone initialisation, the same
batches, timesteps and noise (separate generators), so the only difference within a pair is the
context term. Every model samples with the same noise (``sample(seed=--sample-seed)``, DDIM) from
its EMA weights (decay 0.999 with warm-up). FID, precision/recall and KID are computed in the
features of a LeNet trained on the data set (cached) at several checkpoints of training: each
(arm, seed) run is trained in segments, ``max_steps`` increasing and ``resume='latest'`` from its
own checkpoint folder (constant learning rate, so the segments are exactly one long run), and
sampled at the end of each segment.

The report gives, per ConPreDiff arm and step, each paired difference (ConPreDiff - baseline FID,
same seed), their mean with a 95 % t-interval and the fraction of pairs in ConPreDiff's favour; the
same at equal wall-clock time (the baseline's FID and class-balanced FID interpolated at the
arm's cumulative training time, the baseline being trained on past the last step for that
purpose); precision, recall and
KID; a markdown table and a figure (FID against steps, mean +- s.d. over seeds).

Resumable: one JSON per (arm, seed, step) under ``--out``; a rerun skips the finished ones and
resumes training from the checkpoints. ``--report-only`` rewrites the report from what is there.

    python benchmarks/ablation.py --quick                       # smoke run (numbers mean nothing)
    python benchmarks/ablation.py --estimate                    # projected wall time of the run
    python benchmarks/ablation.py --dataset digits --seeds 5    # the main comparison
    python benchmarks/ablation.py --sweep strides lambda metric target point-fraction
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import multiprocessing
import os
import statistics
import sys
import time
import warnings
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from functools import reduce
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from conprediff import ConPreDiffModel, UNet
from conprediff.context import (
    ContextPrediction,
    DecayingWeight,
    SNRWeight,
    TruncatedWeight,
)
from conprediff.evaluation import (
    FeatureExtractor,
    LeNetClassifier,
    class_balanced_frechet_distance,
    class_total_variation,
    frechet_distance_from_features,
    kernel_inception_distance,
    precision_recall,
)
from conprediff.training.checkpoint import list_checkpoints

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import describe_context  # noqa: E402
from common import machine as common_machine  # noqa: E402

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


# the library defaults that differed when Protocol.context_base was introduced (2026-11-29):
# every folder written before then ran its arms on them
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


# ---------------------------------------------------------------------------------- evaluation
class Evaluator:
    """Features of the real images once; FID, precision/recall (k=3) and KID of samples.

    With the default LeNet feature network (a classifier) it also gives the class-balanced FID
    and the total variation between the class proportions of the samples and the real images
    (both sets' classes predicted by the LeNet, from the features through its output layer).
    """

    def __init__(self, extractor: FeatureExtractor, real: torch.Tensor, kid_subset_size: int):
        self.extractor = extractor
        self.real = np.asarray(extractor.extract(real), dtype=np.float64)
        self.kid_subset_size = kid_subset_size
        net = getattr(extractor, "model_", None)
        self.head = net.head if isinstance(net, LeNetClassifier) else None
        self.real_classes = self.classes(self.real)

    def features(self, samples: torch.Tensor) -> np.ndarray:
        return np.asarray(self.extractor.extract(samples.clamp(-1, 1)), dtype=np.float64)

    def classes(self, features: np.ndarray) -> np.ndarray | None:
        """The LeNet's predicted classes from its features (None for other networks)."""
        if self.head is None:
            return None
        w = self.head.weight.detach().double().cpu().numpy()
        b = self.head.bias.detach().double().cpu().numpy()
        return np.argmax(np.asarray(features, dtype=np.float64) @ w.T + b, axis=1)

    def class_metrics(self, fake: np.ndarray) -> dict[str, float]:
        """``fid_class_balanced`` and ``class_tv`` of sample features (empty without classes)."""
        fake_classes = self.classes(fake)
        if fake_classes is None:
            return {}
        return {
            "fid_class_balanced": class_balanced_frechet_distance(
                self.real, self.real_classes, fake, fake_classes),
            "class_tv": class_total_variation(self.real_classes, fake_classes),
        }

    def __call__(self, fake: np.ndarray) -> dict[str, float]:
        """Metrics of the samples' features ``fake`` (N, D) against the real images'."""
        precision, recall = precision_recall(self.real, fake, k=3)
        kid = {}
        for key, standardize in (("kid", False), ("kid_standardized", True)):
            kid[key], kid[key + "_std"] = kernel_inception_distance(
                self.real, fake, n_subsets=100, subset_size=self.kid_subset_size, seed=0,
                standardize=standardize,
            )
        return {
            "fid": frechet_distance_from_features(self.real, fake),
            "precision": float(precision),
            "recall": float(recall),
            **{k: float(v) for k, v in kid.items()},
            **self.class_metrics(fake),
        }

    FLOOR_VERSION = 3

    def floor(self, n_samples: int, repeats: int = 40, groups: int = 5, seed: int = 0
              ) -> dict[str, Any]:
        """FIDs of two ideal models against the real set: where "no better" lies.

        With finitely many samples FID is above 0 even for a perfect model. Two references:

        * **generalising**: a model that samples the data distribution itself, independently of
          the real set. Disjoint random halves of the real set, at five sizes ``n`` up to half of
          it, give FIDs linear in ``1/n1 + 1/n2`` (the bias of the moment estimates); the fit
          evaluated at ``1/n_samples + 1/n_real`` is this model's mean FID against the full real
          set. Made ``groups`` times on independent sets of ``repeats`` splits per size.
        * **copy**: a model that samples the real (training) images themselves, with
          replacement. Measured directly: ``repeats x groups`` bootstrap draws of ``n_samples``
          real images against the full real set. Its FID is about ``1/n_samples`` on the same
          line, roughly half the generalising model's.

        A model trained on the real set can sit anywhere between the two; the copy level is
        typical, not a bound. Keys: ``fid``, ``fid_class_balanced`` (generalising) and
        ``copy_fid``, ``copy_fid_class_balanced``, each with ``_se``: the standard error of the
        mean over the ``groups`` (Monte-Carlo error of the procedure only, not the spread of
        one model's FID across sampling draws).
        """
        rng = np.random.default_rng(seed)
        n_real = len(self.real)
        sizes = np.linspace(n_real // 6, n_real // 2, 5).astype(int)
        at = 1.0 / n_samples + 1.0 / n_real
        estimates: dict[str, list[float]] = {
            "fid": [], "fid_class_balanced": [], "copy_fid": [], "copy_fid_class_balanced": []}
        balance = self.real_classes is not None
        for _ in range(groups):
            xs, plain, balanced = [], [], []
            for n in sizes:
                for _ in range(repeats):
                    perm = rng.permutation(n_real)
                    a, b = perm[:n], perm[n:2 * n]
                    xs.append(2.0 / n)
                    plain.append(frechet_distance_from_features(self.real[a], self.real[b]))
                    if balance:
                        balanced.append(class_balanced_frechet_distance(
                            self.real[a], self.real_classes[a], self.real[b],
                            self.real_classes[b]))
            for key, ys in (("fid", plain), ("fid_class_balanced", balanced)):
                if ys:
                    slope, intercept = np.polyfit(xs, ys, 1)
                    estimates[key].append(float(slope * at + intercept))
            copies, copies_balanced = [], []
            for _ in range(repeats):
                idx = rng.integers(0, n_real, n_samples)
                copies.append(frechet_distance_from_features(self.real[idx], self.real))
                if balance:
                    copies_balanced.append(class_balanced_frechet_distance(
                        self.real, self.real_classes, self.real[idx], self.real_classes[idx]))
            estimates["copy_fid"].append(float(np.mean(copies)))
            if copies_balanced:
                estimates["copy_fid_class_balanced"].append(float(np.mean(copies_balanced)))
        result: dict[str, Any] = {"version": self.FLOOR_VERSION, "n_samples": n_samples,
                                  "n_real": n_real, "halves": [int(n) for n in sizes],
                                  "repeats": repeats, "groups": groups}
        for key, values in estimates.items():
            if values:
                result[key] = float(np.mean(values))
                result[key + "_se"] = (float(np.std(values, ddof=1) / math.sqrt(len(values)))
                                       if len(values) > 1 else math.nan)
                result[key + "_groups"] = values
        return result


def backfill(out: Path, evaluate: Evaluator) -> int:
    """Add the class metrics to result files that lack them, from their saved features."""
    n = 0
    for path in sorted((out / "results").glob("*/seed*/step*.json")):
        r = json.loads(path.read_text())
        feats = path.with_suffix(".features.npy")
        if "fid_class_balanced" in r or not feats.is_file():
            continue
        extra = evaluate.class_metrics(np.load(feats).astype(np.float64))
        if extra:
            atomic_json(path, {**r, **extra})
            n += 1
    return n


def make_extractor(p: Protocol, images: torch.Tensor, labels: torch.Tensor,
                   cache_dir: str | None, device: str, verbose: int = 1) -> FeatureExtractor:
    dev = None if device == "auto" else device
    extractor = FeatureExtractor(cache_dir=cache_dir, epochs=p.classifier_epochs, device=dev,
                                 verbose=verbose).fit(images, labels)
    extractor.verbose = 0  # no bar per evaluation
    return extractor


# ------------------------------------------------------------------------------------ running
def result_path(out: Path, arm: str, seed: int, step: int) -> Path:
    return out / "results" / slug(arm) / f"seed{seed}" / f"step{step:07d}.json"


def restore(p: Protocol, arm_kwargs: dict[str, Any] | None, seed: int, ckpt_dir: Path,
            images: torch.Tensor, device: str) -> tuple[ConPreDiffModel | None, int]:
    """The model of a run at its newest checkpoint in ``ckpt_dir`` (trained 0 further steps),
    and that step; ``(None, 0)`` when there is no checkpoint."""
    step = latest_step(ckpt_dir) if ckpt_dir.is_dir() else 0
    if step == 0:
        return None, 0
    model = make_model(p, arm_kwargs, seed, step, ckpt_dir, step, device, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(images, resume="latest")  # restores the checkpoint, trains 0 steps
    return model, step


def latest_step(ckpt_dir: Path) -> int:
    found = list_checkpoints(ckpt_dir)
    return int(found[-1].name.split("-")[1].split(".")[0]) if found else 0


def atomic_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def run_one(p: Protocol, arm: str, arm_kwargs: dict[str, Any] | None, seed: int,
            steps: list[int], every: int, out: Path, images: torch.Tensor,
            evaluate: Evaluator, device: str, verbose: int, bar: tqdm,
            workers: int = 1) -> None:
    """Train one (arm, seed) in segments and evaluate at each step not yet done.

    ``workers``: how many such runs share the machine (recorded: with more than one, the
    training times were measured under each other's load).
    """
    ckpt_dir = out / "checkpoints" / slug(arm) / f"seed{seed}"
    timing_path = ckpt_dir / "train_seconds.json"
    key = config_key(arm_kwargs)
    for step in steps:
        path = result_path(out, arm, seed, step)
        if path.is_file():
            done = json.loads(path.read_text())
            if done.get("config") != key:
                raise SystemExit(f"{path} was produced by another configuration of arm {arm!r} "
                                 f"({done.get('config')}); use another --out")
            continue
        bar.set_postfix_str(f"{arm} seed {seed} step {step}")
        start_step = latest_step(ckpt_dir)
        if start_step > step:
            warnings.warn(f"{arm} seed {seed}: the checkpoint is at step {start_step}, past "
                          f"{step} whose result is missing; step {step} skipped", stacklevel=2)
            bar.update(1)
            continue
        timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
        base_seconds = timing.get(str(start_step), 0.0 if start_step == 0 else math.nan)
        model = make_model(p, arm_kwargs, seed, step, ckpt_dir, every, device, verbose)
        t0 = time.perf_counter()

        def record(logs: dict[str, float], t0=t0, base=base_seconds, timing=timing) -> None:
            timing[str(int(logs["step"]))] = base + time.perf_counter() - t0
            atomic_json(timing_path, timing)

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="resume='latest': no checkpoint")
            model.fit(images, resume="latest", callback=record)
        if model.n_steps_ != step:
            raise RuntimeError(f"{arm} seed {seed}: trained to {model.n_steps_}, not {step}")
        train_seconds = timing.get(str(step), base_seconds + time.perf_counter() - t0)
        t1 = time.perf_counter()
        samples = model.sample(p.n_samples, steps=p.sample_steps, seed=p.sample_seed)
        t2 = time.perf_counter()
        features = evaluate.features(samples)
        # the samples' features (float32), so that another metric can be computed later
        # without sampling again
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path.with_suffix(".features.npy"), features.astype(np.float32))
        metrics = evaluate(features)
        history = model.loss_history_
        atomic_json(path, {
            "arm": arm, "seed": seed, "step": step, "config": key, "protocol": asdict(p),
            **metrics,
            "train_seconds": train_seconds,
            "segment_seconds_per_step": ((train_seconds - base_seconds) / (step - start_step)
                                         if step > start_step else None),
            "sample_seconds": t2 - t1,
            "eval_seconds": time.perf_counter() - t2,
            "point_loss_last100": float(np.mean(history["point"][-100:])),
            "w2_last100": float(np.mean(history["w2"][-100:])) if "w2" in history else None,
            "load_average": os.getloadavg()[0],
            "threads": torch.get_num_threads(),
            "workers": workers,
            "device": str(model.device_),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        })
        bar.update(1)


def _run_job(p: Protocol, arm: str, arm_kwargs: dict[str, Any] | None, seed: int,
             steps: list[int], every: int, out: Path, cache_dir: str | None, device: str,
             threads: int, workers: int) -> None:
    """One (arm, seed) run in a worker process: data and evaluator rebuilt, classifier cached."""
    torch.set_num_threads(threads)
    images, labels = load_data(p.dataset, p.size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extractor = make_extractor(p, images, labels, cache_dir, device, verbose=0)
    evaluate = Evaluator(extractor, images, p.kid_subset_size)
    with tqdm(disable=True) as bar:
        run_one(p, arm, arm_kwargs, seed, steps, every, out, images, evaluate, device, 0, bar,
                workers)


def run_parallel(p: Protocol, jobs: list[tuple[str, int]], catalogue: dict[str, Any],
                 steps: list[int], base_steps: list[int], every: int, out: Path,
                 cache_dir: str | None, device: str, workers: int, threads: int,
                 bar: tqdm, poll_seconds: float = 5.0) -> None:
    """Run the (arm, seed) jobs in ``workers`` processes at once, ``threads`` torch threads each.

    For a GPU, where one small model leaves the device mostly idle, so that several runs share it
    at little cost to each. The feature classifier must already be in its cache (the workers
    load it). Every job writes its own result files, which the bar counts as they appear; the
    first job that fails stops the rest (the finished results stay; a rerun resumes).
    """
    grids = {job: arm_steps(job[0], steps, base_steps) for job in jobs}

    def finished() -> int:
        return sum(result_path(out, a, s, k).is_file() for (a, s), g in grids.items() for k in g)

    todo = [job for job in jobs  # a process only for a job with an evaluation still to do
            if not all(result_path(out, *job, k).is_file() for k in grids[job])]
    if not todo:
        return
    context = multiprocessing.get_context("spawn")  # no forked CUDA state, same on every OS
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        pending = {pool.submit(_run_job, p, arm, catalogue[arm], seed, grids[(arm, seed)], every,
                               out, cache_dir, device, threads, workers) for arm, seed in todo}
        while pending:
            done, pending = wait(pending, timeout=poll_seconds, return_when=FIRST_EXCEPTION)
            bar.n = finished()
            bar.refresh()
            for future in done:
                if future.exception() is not None:
                    for other in pending:
                        other.cancel()
                    raise future.exception()


# ------------------------------------------------------------------------------------- report
def finite_summary(values: list[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation and count of the finite values.

    Parameters
    ----------
    values : list of float or None
        Missing results may be NaN or None; they are left out of all three.

    Returns
    -------
    mean, sd, n : float, float, int
        NaN mean with no finite value, NaN s.d. with fewer than two.
    """
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    mean = float(np.mean(finite)) if finite else math.nan
    sd = float(np.std(finite, ddof=1)) if len(finite) > 1 else math.nan
    return mean, sd, len(finite)


def sample_sd(values: list[float]) -> float:
    """Sample standard deviation of the finite values (NaN with fewer than two)."""
    return finite_summary(values)[1]


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and the 95 % t-interval (NaN bounds with fewer than two values)."""
    from scipy import stats

    mean = float(np.mean(values)) if values else math.nan
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def load_results(out: Path) -> dict[tuple[str, int, int], dict[str, Any]]:
    found = {}
    for path in sorted((out / "results").glob("*/seed*/step*.json")):
        r = json.loads(path.read_text())
        found[(r["arm"], r["seed"], r["step"])] = r
    return found


def fmt(x: float, digits: int = 1) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def signed(x: float, digits: int = 1) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:+.{digits}f}"


def per_seed(seeds: list[int], diffs: list[float], digits: int = 1) -> str:
    """Paired differences labelled by seed: ``"-5.0 (s0), +4.0 (s1)"``."""
    return ", ".join(f"{signed(d, digits)} (s{k})" for k, d in zip(seeds, diffs, strict=True))


def interp_time(points: list[tuple[float, float]], t: float) -> float:
    """Linear interpolation of (seconds, FID); NaN outside the measured range."""
    points = sorted(p for p in points if math.isfinite(p[0]))
    if not points or not points[0][0] <= t <= points[-1][0]:
        return math.nan
    xs, ys = zip(*points, strict=True)
    return float(np.interp(t, xs, ys))


def equal_time_rows(res: dict, arm: str, seeds: list[int], steps: list[int],
                    base_steps: list[int], metric: str = "fid") -> list[dict[str, Any]]:
    """The arm against the baseline at equal cumulative training time, per step.

    For each step where some seed of ``arm`` has ``metric``: the arm's value minus the same
    seed's baseline value, linearly interpolated at the arm's training seconds; the mean training
    seconds; and the mean per-seed ratio of the arm's time to the baseline's at the same step.
    A seed the comparison cannot use is named in ``left_out`` with the reason. Linear
    interpolation of a falling, convex curve overstates the baseline between its evaluations,
    which favours the arm.

    Returns
    -------
    list of dict
        Keys ``step``, ``metric``, ``seconds``, ``time_ratio`` (NaN without a timed baseline at
        that step), ``seeds`` and ``diffs`` (the used seeds and their differences, same order)
        and ``left_out`` (seed -> reason).
    """
    curves = {k: [(res[(BASELINE, k, s)]["train_seconds"], res[(BASELINE, k, s)][metric])
                  for s in base_steps
                  if (BASELINE, k, s) in res and metric in res[(BASELINE, k, s)]
                  and math.isfinite(res[(BASELINE, k, s)]["train_seconds"])]
              for k in seeds}
    rows = []
    for step in steps:
        used, diffs, times, rel, left_out = [], [], [], [], {}
        for k in seeds:
            a = res.get((arm, k, step))
            if not a or metric not in a:
                continue
            if not math.isfinite(a["train_seconds"]):
                left_out[k] = "its timing is missing"
                continue
            times.append(a["train_seconds"])
            b_same = res.get((BASELINE, k, step))
            if b_same and math.isfinite(b_same["train_seconds"]):
                rel.append(a["train_seconds"] / b_same["train_seconds"])
            if not curves[k]:
                left_out[k] = f"no timed baseline {metric}"
                continue
            value_b = interp_time(curves[k], a["train_seconds"])
            if math.isfinite(value_b):
                used.append(k)
                diffs.append(a[metric] - value_b)
            else:
                first, last = min(curves[k])[0], max(curves[k])[0]
                left_out[k] = (f"{a['train_seconds']:.0f} s is outside the baseline's "
                               f"{first:.0f}-{last:.0f} s")
        if times or left_out:
            rows.append({"step": step, "metric": metric,
                         "seconds": float(np.mean(times)) if times else math.nan,
                         "time_ratio": float(np.mean(rel)) if rel else math.nan,
                         "seeds": used, "diffs": diffs, "left_out": left_out})
    return rows


def paired(res: dict, arm: str, seeds: list[int], step: int, metric: str = "fid",
           reference: str = BASELINE) -> tuple[list[int], list[float], list[float]]:
    """Seeds where both ``arm`` and ``reference`` have ``metric`` at ``step``, and per seed
    the difference arm - reference and the ratio arm / reference."""
    used, diffs, ratios = [], [], []
    for s in seeds:
        a, b = res.get((arm, s, step)), res.get((reference, s, step))
        if a and b and metric in a and metric in b:
            used.append(s)
            diffs.append(a[metric] - b[metric])
            ratios.append(a[metric] / b[metric] if b[metric] else math.nan)
    return used, diffs, ratios


def write_report(out: Path, docs: Path, arms: list[str], aliases: dict[str, str],
                 seeds: list[int], steps: list[int], base_steps: list[int], p: Protocol,
                 command: str, accuracy: float | None, quick: bool,
                 report_only: bool = False) -> Path:
    res = load_results(out)
    catalogue = arm_catalogue(p.timesteps, p.context_base)
    for (arm, seed, step), r in res.items():
        if arm in arms and r.get("config") != config_key(catalogue[arm]):
            raise SystemExit(
                f"the result of arm {arm!r}, seed {seed}, step {step} was produced by "
                f"{r.get('config')}, not by the arm's configuration {config_key(catalogue[arm])} "
                "(did a library default change? the folder's protocol.json can pin the old "
                "value in its context_base, see --context-base); rename its folder to the arm "
                "it is, or use another --out")
    others = [a for a in arms if a != BASELINE]
    lines = []
    title = f"Ablation results: {p.dataset}" + ("" if out.name == p.dataset else f" ({out.name})")
    lines += ["---", "orphan: true", "---", "", f"# {title}", ""]
    if quick:
        lines += ["**SMOKE RUN (`--quick`): tiny models, 20 steps, 64 samples. These numbers are",
                  "not results and say nothing about context prediction.**", ""]
    lines += [
        (f"Rewritten by `{command}` on {time.strftime('%Y-%m-%d %H:%M')} from the results on "
         "disk; the commands that produced them are given where the results are discussed "
         "(`docs/benchmarks/ablation.md`)." if report_only else
         f"Written by `{command}` on {time.strftime('%Y-%m-%d %H:%M')}, {machine()}."),
        "",
        f"Protocol: {p.dataset} ({p.size}x{p.size}), UNet base {p.base_channels} mults "
        f"{tuple(p.channel_mults)}, batch {p.batch_size}, lr {p.lr} (constant, warm-up "
        f"{p.lr_warmup_steps}), grad clip {p.grad_clip}, EMA {p.ema_decay} with warm-up, "
        f"T = {p.timesteps}; {len(seeds)} paired seeds {seeds}; {p.n_samples} DDIM-"
        f"{p.sample_steps} samples per model, sampling seed {p.sample_seed} for every model; "
        f"features of a LeNet trained on the data"
        + (f" (held-out accuracy {accuracy:.4f})" if accuracy is not None else "") + ". "
        "Differences are ConPreDiff - baseline on the same seed (negative favours ConPreDiff); "
        "CI: 95 % t-interval of the mean difference.",
        "",
    ]
    if p.context_base:
        lines += [
            f"Every arm is built on `ContextPrediction({context_base_text(p.context_base)})` "
            "(the folder's "
            "`--context-base`), not on today's library defaults: the reference arm "
            f"`{DEFAULT}` is `{config_key(catalogue[DEFAULT])}`.", ""]
    if aliases:
        lines += ["Arms that are the same run: " + ", ".join(
            f"`{a}` = `{b}`" for a, b in aliases.items()) + ".", ""]

    # FID against steps
    lines += ["## FID against training steps (mean +- s.d. over seeds, n)", ""]
    lines += ["| arm | " + " | ".join(str(s) for s in base_steps) + " |",
              "|---" * (len(base_steps) + 1) + "|"]
    curves: dict[str, list[tuple[int, float, float]]] = {}
    for arm in arms:
        cells, curve = [], []
        for s in base_steps:
            vals = [res[(arm, k, s)]["fid"] for k in seeds if (arm, k, s) in res]
            if vals:
                sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
                cells.append(f"{np.mean(vals):.1f} +- {sd:.1f} ({len(vals)})")
                curve.append((s, float(np.mean(vals)), sd))
            else:
                cells.append("")
        curves[arm] = curve
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines.append("")
    base_curve = [c for c in curves.get(BASELINE, []) if c[0] in steps]
    if base_curve:
        best = min(base_curve, key=lambda c: c[1])
        if best[0] != base_curve[-1][0]:
            verdict = " (it stopped improving before the last step)."
        elif len(base_curve) > 1 and base_curve[-2][1] - best[1] < 0.05 * best[1]:
            verdict = (f" -- the last step, but within 5 % of step {base_curve[-2][0]}'s "
                       f"{base_curve[-2][1]:.2f}: a plateau.")
        else:
            verdict = " -- the last step: it is still improving, so extend `--steps`."
        lines += [f"Baseline's best mean FID {best[1]:.2f} at step {best[0]}" + verdict, ""]

    # paired differences at equal steps
    lines += ["## Paired differences at equal training steps (FID)", "",
              "| arm | step | differences per seed | mean [95 % CI] | mean ratio | in favour |"
              " goal (ratio <= 0.9, all in favour) |", "|---|---|---|---|---|---|---|"]
    for arm in others:
        for s in steps:
            used, diffs, ratios = paired(res, arm, seeds, s)
            if not used:
                continue
            mean, lo, hi = t_interval(diffs)
            ratio = float(np.mean(ratios))
            favour = sum(d < 0 for d in diffs)
            goal = "yes" if ratio <= 0.9 and favour == len(diffs) else "no"
            per = per_seed(used, diffs)
            lines.append(f"| {arm} | {s} | {per} | {signed(mean)} [{signed(lo)}, {signed(hi)}] "
                         f"| {ratio:.3f} | {favour}/{len(diffs)} | {goal} |")
    lines.append("")

    lines += class_section(out, res, arms, seeds, base_steps, p.n_samples)
    lines += against_default_section(res, arms, seeds, steps)

    # other metrics at the last step
    last = steps[-1]
    lines += [f"## Precision, recall, KID at step {last} (mean +- s.d.; paired difference "
              "mean [95 % CI])", "",
              "KID is computed on the LeNet features standardised with the real set's "
              "statistics (`kernel_inception_distance(..., standardize=True)`); on the raw "
              "features its spread swamps its mean. n/a: results written before it was "
              "recorded.", "",
              "Every cell gives the number of seeds (or pairs) it is computed from in brackets.",
              "",
              "| arm | FID | precision | recall | KID x 1e3 | d precision | d recall "
              "| d KID x 1e3 |",
              "|---|---|---|---|---|---|---|---|"]
    for arm in arms:
        rows = [res[(arm, k, last)] for k in seeds if (arm, k, last) in res]
        if not rows:
            continue
        cells = []
        for m, scale, digits in (("fid", 1, 1), ("precision", 1, 3), ("recall", 1, 3),
                                 ("kid_standardized", 1e3, 2)):
            mean, sd, n = finite_summary([r[m] * scale for r in rows if m in r])
            cells.append(f"{fmt(mean, digits)} +- {fmt(sd, digits)} ({n})" if n else "n/a")
        for m, scale, digits in (("precision", 1, 3), ("recall", 1, 3),
                                 ("kid_standardized", 1e3, 2)):
            if arm == BASELINE:
                cells.append("")
                continue
            _, diffs, _ = paired(res, arm, seeds, last, m)
            mean, lo, hi = t_interval([d * scale for d in diffs])
            cells.append(f"{signed(mean, digits)} [{signed(lo, digits)}, {signed(hi, digits)}]"
                         f" ({len(diffs)})" if diffs else "n/a")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines.append("")

    # equal wall-clock
    lines += ["## Equal wall-clock time (arm at each step against the baseline at the same "
              "cumulative training time, interpolated per seed between its evaluations)", "",
              "| step | arm | metric | train s (mean) | time / baseline's at equal steps | "
              "differences per seed | mean [95 % CI] | in favour |",
              "|---|---|---|---|---|---|---|---|"]
    for arm in others:
        rows = [row for metric in ("fid", "fid_class_balanced")
                for row in equal_time_rows(res, arm, seeds, steps, base_steps, metric)]
        if not rows:
            lines.append(f"| | {arm} | | timing missing | | | | |")
        for row in sorted(rows, key=lambda r: r["step"]):
            mean, lo, hi = t_interval(row["diffs"])
            per = ", ".join(
                [f"{signed(d)} (s{k})" for k, d in zip(row["seeds"], row["diffs"], strict=True)]
                + [f"s{k} left out: {why}" for k, why in row["left_out"].items()])
            label = "FID" if row["metric"] == "fid" else "cbFID"
            lines.append(f"| {row['step']} | {arm} | {label} | {fmt(row['seconds'], 0)} | "
                         f"{fmt(row['time_ratio'], 3)} | {per} | {signed(mean)} [{signed(lo)}, "
                         f"{signed(hi)}] | {sum(d < 0 for d in row['diffs'])}/"
                         f"{len(row['diffs'])} |")
    lines += ["", "Wall time is measured on whatever the machine was doing: the arms run one "
              "after another, so load changes show up here (each result JSON records the load "
              "average, and newer ones the torch threads and device).", ""]
    conditions = []
    for arm in arms:
        rows = [r for (a, _, _), r in res.items() if a == arm and r.get("finished")]
        if rows:
            days = sorted(r["finished"] for r in rows)
            threads = sorted({str(r.get("threads", "?")) for r in rows})
            loads = [r["load_average"] for r in rows if "load_average" in r]
            load = f", load average {min(loads):.1f}-{max(loads):.1f}" if loads else ""
            conditions.append(f"`{arm}`: results written {days[0]} to {days[-1]}, threads "
                              f"{'/'.join(threads)}{load}")
    if conditions:
        lines += ["Timing conditions per arm (from the result files): " + "; ".join(conditions)
                  + ".", ""]

    stem = report_stem(out, p, quick)
    figure = plot(docs / f"{stem}_fid.png", res, arms,
                  seeds, steps, base_steps, curves, quick)
    if figure is not None:
        lines += [f"![FID against steps]({figure.name})", ""]
    path = docs / f"{stem}_results.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    archive_results(docs / f"{stem}_results.json", res, command, p, accuracy, read_floor(out))
    return path


def archive_results(path: Path, res: dict, command: str, p: Protocol,
                    accuracy: float | None, floor: dict | None) -> int:
    """Write every result record (without its protocol copy) to ``path`` as JSON.

    ``--out`` (checkpoints, features) is not kept in git; this file, committed beside the
    report, is what a later analysis of the run needs. Records already in the file that ``res``
    lacks are kept (``res`` wins where both have one), and so are the classifier's accuracy and
    the floor when not given, so a report rewritten from a folder that lost results does not lose
    them here; NaN is written as null. Returns the number of records.
    """
    def key(r: dict) -> tuple[str, int, int]:
        return (r["arm"], r["seed"], r["step"])

    def finite(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [finite(x) for x in v]
        return None if isinstance(v, float) and not math.isfinite(v) else v

    merged: dict[tuple[str, int, int], dict] = {}
    if path.is_file():
        old = json.loads(path.read_text())
        merged = {key(r): r for r in old.get("results", [])}
        accuracy = old.get("classifier_test_accuracy") if accuracy is None else accuracy
        floor = old.get("floor") if floor is None else floor
    for r in res.values():
        merged[key(r)] = {k: v for k, v in r.items() if k != "protocol"}
    atomic_json(path, finite({"command": command, "protocol": asdict(p),
                              "classifier_test_accuracy": accuracy, "floor": floor,
                              "results": [merged[k] for k in sorted(merged)]}))
    return len(merged)


def restore_archive(path: Path, out: Path) -> int:
    """Write the results of an archive (:func:`archive_results`) that ``out`` lacks into ``out``.

    Also writes ``protocol.json``, ``classifier.json`` and ``floor.json`` where missing; refuses
    an ``out`` whose protocol differs from the archive's. Sample features are not archived, so
    restored results cannot be backfilled with new metrics; a run continued from them retrains
    from scratch where the checkpoints are gone (the same seed gives the same run). Returns the
    number of result files written.
    """
    archive = json.loads(Path(path).read_text())
    proto_path = out / "protocol.json"
    if proto_path.is_file() and (saved_protocol(json.loads(proto_path.read_text()))
                                 != saved_protocol(archive["protocol"])):
        raise SystemExit(f"{out} holds results of another protocol than {path}")
    if not proto_path.is_file():
        atomic_json(proto_path, archive["protocol"])
    if not (out / "classifier.json").is_file() and archive.get("classifier_test_accuracy"):
        atomic_json(out / "classifier.json",
                    {"test_accuracy": archive["classifier_test_accuracy"], "cache": None})
    if not (out / "floor.json").is_file() and archive.get("floor"):
        atomic_json(out / "floor.json", archive["floor"])
    n = 0
    for r in archive["results"]:
        target = result_path(out, r["arm"], r["seed"], r["step"])
        if target.is_file():
            continue
        seconds = r.get("train_seconds")
        atomic_json(target, {**r, "protocol": archive["protocol"],
                             "train_seconds": math.nan if seconds is None else seconds})
        n += 1
    return n


def report_stem(out: Path, p: Protocol, quick: bool) -> str:
    """File-name stem of the report: ``ablation_<dataset>`` when ``--out`` is named after the
    data set; else ``ablation_<out folder name>`` when that name holds the data set's
    (``digits-small``), or ``ablation_<dataset>_<out folder name>``."""
    name = out.name if p.dataset in out.name else f"{p.dataset}_{out.name}"
    return f"ablation_{name}{'_quick' if quick else ''}"


def read_floor(out: Path, n_samples: int | None = None, n_real: int | None = None
               ) -> dict | None:
    """``out/floor.json`` when it is of the current format and, where given, was computed for
    ``n_samples`` generated against ``n_real`` real images; else None (to be recomputed)."""
    path = out / "floor.json"
    if not path.is_file():
        return None
    floor = json.loads(path.read_text())
    if floor.get("version") != Evaluator.FLOOR_VERSION:
        return None
    for key, want in (("n_samples", n_samples), ("n_real", n_real)):
        if want is not None and floor.get(key) != want:
            return None
    return floor


def class_section(out: Path, res: dict, arms: list[str], seeds: list[int],
                  base_steps: list[int], n_samples: int) -> list[str]:
    """Report lines: class-balanced FID, class proportions and the ideal models' FIDs."""
    have = [s for s in base_steps
            if any("fid_class_balanced" in res.get((BASELINE, k, s), {}) for k in seeds)]
    floor = read_floor(out, n_samples)
    if not have and floor is None:
        return []
    lines = ["## Class proportions, within-class quality and the noise floor", "",
             "FID in the LeNet's features moves with the class proportions of each draw of "
             "samples. `cbFID` is the FID with the samples reweighted to the real set's class "
             "proportions (`class_balanced_frechet_distance`; both sets' classes predicted by "
             "the LeNet): within-class quality. `TV` is the total variation between the "
             "predicted class proportions of samples and real images (`class_total_variation`)."
             " Computed from each evaluation's saved features, so only at the steps where "
             "they were saved.", ""]
    if floor is not None:
        def pm(key: str, digits: int) -> str:
            value, se = floor.get(key, math.nan), floor.get(key + "_se", math.nan)
            return f"{fmt(value, digits)} +- {fmt(se, digits)}"

        lines += [
            "**An ideal model's FID is not 0.** With "
            f"{floor['n_samples']} samples against the {floor['n_real']} real images, a model "
            "that samples the data distribution itself, independently of the real set, would "
            f"score about **FID {pm('fid', 2)}, cbFID {pm('fid_class_balanced', 2)}**: FIDs "
            f"between disjoint random halves of the real set (sizes {floor['halves']}) are "
            "linear in 1/n1 + 1/n2 and are extrapolated to the protocol's sizes. A model that "
            "copies the real images (it samples them with replacement) scores about "
            f"**FID {pm('copy_fid', 2)}, cbFID {pm('copy_fid_class_balanced', 2)}**, measured "
            "directly on bootstrap draws. The models here are trained on the real images they "
            "are compared with, so they can sit anywhere between the two (the copy level is not "
            "a bound). (+- is the standard error of the procedure over "
            f"{floor['groups']} independent groups of {floor['repeats']} draws, "
            "`Evaluator.floor`, not the spread of one model's FID across sampling draws.)", ""]
    if have:
        lines += ["| step | arm | cbFID mean +- s.d. (n) | TV mean | d cbFID per seed | "
                  "d cbFID mean [95 % CI] | ratio | in favour | d TV mean [95 % CI] |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for s in have:
            for arm in arms:
                rows = [res[(arm, k, s)] for k in seeds
                        if "fid_class_balanced" in res.get((arm, k, s), {})]
                if not rows:
                    continue
                mean, sd, n = finite_summary([r["fid_class_balanced"] for r in rows])
                cells = [f"{fmt(mean, 2)} +- {fmt(sd, 2)} ({n})",
                         fmt(finite_summary([r["class_tv"] for r in rows])[0], 3)]
                if arm == BASELINE:
                    cells += ["", "", "", "", ""]
                else:
                    used, diffs, ratios = paired(res, arm, seeds, s, "fid_class_balanced")
                    if not diffs:
                        continue
                    mean, lo, hi = t_interval(diffs)
                    _, dtv, _ = paired(res, arm, seeds, s, "class_tv")
                    mtv, ltv, htv = t_interval(dtv)
                    per = per_seed(used, diffs, 2)
                    cells += [per, f"{signed(mean, 2)} [{signed(lo, 2)}, {signed(hi, 2)}]",
                              fmt(float(np.mean(ratios)) if ratios else math.nan, 3),
                              f"{sum(d < 0 for d in diffs)}/{len(diffs)}",
                              f"{signed(mtv, 3)} [{signed(ltv, 3)}, {signed(htv, 3)}]"]
                lines.append(f"| {s} | {arm} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def against_default_section(res: dict, arms: list[str], seeds: list[int],
                            steps: list[int]) -> list[str]:
    """Report lines: every variant against the default ConPreDiff arm on the same seeds, for
    FID and cbFID (a variant is judged against the configuration it would replace, not only
    against the baseline)."""
    rows = []
    for arm in arms:
        if arm in (BASELINE, DEFAULT):
            continue
        for s in steps:
            for metric, label in (("fid", "FID"), ("fid_class_balanced", "cbFID")):
                used, diffs, _ = paired(res, arm, seeds, s, metric, reference=DEFAULT)
                if not diffs:
                    continue
                mean, lo, hi = t_interval(diffs)
                per = per_seed(used, diffs)
                rows.append(f"| {arm} | {s} | {label} | {per} | {signed(mean)} [{signed(lo)}, "
                            f"{signed(hi)}] | {sum(d < 0 for d in diffs)}/{len(diffs)} |")
    if not rows:
        return []
    return ["## Each variant against the default arm (same seed)", "",
            f"Differences are variant - `{DEFAULT}` on the same seed (negative favours the "
            "variant); both were trained with the same batches, timesteps and noise.", "",
            "| arm | step | metric | differences per seed | mean [95 % CI] | variant better |",
            "|---|---|---|---|---|---|", *rows, ""]


def plot(path: Path, res: dict, arms: list[str], seeds: list[int], steps: list[int],
         base_steps: list[int], curves: dict, quick: bool) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not any(curves.values()):
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, arm in enumerate(arms):
        c, colour = curves[arm], f"C{i % 10}"
        if not c:
            continue
        x, m, sd = (np.array(v) for v in zip(*c, strict=True))
        ax1.plot(x, m, marker="o", ms=3, label=arm, color=colour,
                 lw=2 if arm in (BASELINE, DEFAULT) else 1)
        ax1.fill_between(x, m - sd, m + sd, alpha=0.15, color=colour)
        if arm == BASELINE:
            continue
        pts = []
        for s in steps:
            _, diffs, _ = paired(res, arm, seeds, s)
            if diffs:
                mean, lo, hi = t_interval(diffs)
                pts.append((s, mean, lo, hi))
        if pts:
            x, m, lo, hi = (np.array(v) for v in zip(*pts, strict=True))
            ax2.plot(x, m, marker="o", ms=3, label=arm, color=colour)
            ok = np.isfinite(lo)
            ax2.fill_between(x[ok], lo[ok], hi[ok], alpha=0.15, color=colour)
    ax1.set(xlabel="training steps", ylabel="FID (LeNet features)",
            title="FID against steps: mean +- s.d. over seeds")
    ax2.axhline(0, color="k", lw=0.8)
    ax2.set(xlabel="training steps", ylabel="FID(ConPreDiff) - FID(baseline)",
            title="paired difference: mean, 95 % CI")
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=7)
    if quick:
        fig.suptitle("SMOKE RUN (--quick): not results", color="red")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def machine() -> str:
    """The machine description shared by all benchmarks, with the core count."""
    return f"{common_machine()} ({os.cpu_count()} cores)"


# ----------------------------------------------------------------------------------- estimate
def estimate(p: Protocol, arms: list[str], catalogue: dict, seeds: list[int], steps: list[int],
             base_steps: list[int], images: torch.Tensor, device: str, n_time: int) -> float:
    """Time a few training steps per arm, one sampling pass and one evaluation; project."""
    print(f"timing on {machine()} (load average {os.getloadavg()[0]:.2f})")
    per_step: dict[str, float] = {}
    model = None
    for arm in tqdm(arms, desc="timing arms"):
        stamps: list[float] = []
        m = make_model(p, arm=catalogue[arm], seed=0, steps=3 + n_time, ckpt_dir=None,
                       every=None, device=device, verbose=0)
        m.set_params(log_every=1)
        m.fit(images, callback=lambda logs, stamps=stamps: stamps.append(time.perf_counter()))
        per_step[arm] = statistics.median(np.diff(stamps[2:]).tolist())  # after 3 warm-up steps
        model = model or m
    batch = min(256, p.n_samples)
    t0 = time.perf_counter()
    model.sample(batch, steps=2, seed=0)
    per_image_step = (time.perf_counter() - t0) / (2 * batch)
    sample_s = per_image_step * p.n_samples * p.sample_steps
    # evaluation: an untrained LeNet costs what the trained one costs
    extractor = FeatureExtractor(LeNetClassifier(in_channels=1)).fit()
    n_real = min(images.shape[0], 5000)
    evaluate = Evaluator(extractor, images[:n_real], p.kid_subset_size)
    fake = images[torch.randint(0, images.shape[0], (p.n_samples,))]
    t0 = time.perf_counter()
    evaluate(evaluate.features(fake))
    eval_s = time.perf_counter() - t0

    total = 0.0
    print(f"\nsampling: {sample_s:.0f} s per evaluation ({p.n_samples} x DDIM-{p.sample_steps}); "
          f"metrics: {eval_s:.1f} s per evaluation")
    print(f"{'arm':<22}{'s/step':>9}{'steps':>8}{'evals':>7}{'per seed (h)':>14}"
          f"{'all seeds (h)':>15}")
    for arm in arms:
        grid = arm_steps(arm, steps, base_steps)
        one = per_step[arm] * grid[-1] + len(grid) * (sample_s + eval_s)
        total += one * len(seeds)
        print(f"{arm:<22}{per_step[arm]:>9.3f}{grid[-1]:>8}{len(grid):>7}{one / 3600:>14.2f}"
              f"{one * len(seeds) / 3600:>15.2f}")
    print(f"\nprojected wall time: {total / 3600:.1f} h for {len(arms)} arms x {len(seeds)} seeds "
          "(+ a one-off feature classifier, under a few minutes; timings on a loaded machine "
          "overstate, treat as +-30 %)")
    return total


# --------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--dataset", choices=["digits", "mnist"], default="digits")
    ap.add_argument("--sweep", nargs="+", default=["main"],
                    choices=["main", "all", *[k for k in SWEEPS if k != "main"]],
                    help="groups of ConPreDiff arms (the baseline is always run)")
    ap.add_argument("--arms", nargs="+", default=None,
                    help="more arms by name (see --list-arms)")
    ap.add_argument("--list-arms", action="store_true", help="print the arms and exit")
    ap.add_argument("--context-base", nargs="+", default=None, metavar="NAME=VALUE",
                    help="ContextPrediction arguments under every arm, recorded in the "
                         "protocol (e.g. point_fraction=0.5 to continue a folder whose arms were "
                         "run before that default changed)")
    ap.add_argument("--seeds", type=int, default=5, help="number of paired seeds")
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--steps", default=None,
                    help="comma-separated evaluation steps (default digits "
                         "1000,2000,4000,6000,8000; mnist 2000,4000,8000,12000,16000)")
    ap.add_argument("--wallclock-factor", type=float, default=1.25,
                    help="the baseline is trained on to this multiple of the last step (one "
                         "extra evaluation) for the equal wall-clock comparison; 1 disables")
    ap.add_argument("--n-samples", type=int, default=5000, help="samples per evaluation")
    ap.add_argument("--sample-steps", type=int, default=50, help="DDIM steps")
    ap.add_argument("--sample-seed", type=int, default=1234, help="the same for every model")
    ap.add_argument("--base-channels", type=int, default=32)
    ap.add_argument("--channel-mults", default="1,2,2")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--lr-warmup-steps", type=int, default=100)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--ema-decay", type=float, default=0.999)
    ap.add_argument("--timesteps", type=int, default=1000)
    ap.add_argument("--classifier-epochs", type=int, default=30)
    ap.add_argument("--out", default=None,
                    help="results and checkpoints (default outputs/ablation/<dataset>)")
    ap.add_argument("--docs", default=None,
                    help="where the table and figure go (default docs/benchmarks; --quick: --out)")
    ap.add_argument("--cache-dir", default=None, help="feature classifier cache")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (with --workers: per worker; default the CPU "
                         "cores shared out)")
    ap.add_argument("--workers", type=int, default=1,
                    help="(arm, seed) runs trained at once, each in its own process: for a GPU, "
                         "which one small model leaves mostly idle. Their training times are "
                         "then measured under each other's load, so the equal wall-clock "
                         "comparison is not reliable; equal steps are unaffected")
    ap.add_argument("--verbose", type=int, default=0, help="1: training/sampling bars too")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 2 seeds, 20 steps, 64 samples, a tiny UNet")
    ap.add_argument("--estimate", action="store_true",
                    help="print the projected wall time of the run from a short timing")
    ap.add_argument("--estimate-steps", type=int, default=10,
                    help="training steps timed per arm by --estimate")
    ap.add_argument("--prepare", action="store_true",
                    help="write the protocol, train (or load) the feature classifier and measure "
                         "the noise floor into --out, then stop: e.g. on a CPU before a timed GPU "
                         "run that carries --out and --cache-dir along")
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite the table and figure from the results on disk")
    ap.add_argument("--restore-archive", type=Path, default=None, metavar="JSON",
                    help="first write the results of a report's archive (docs/benchmarks/"
                         "ablation_<name>_results.json) that --out lacks into --out, e.g. after "
                         "outputs/ was lost; then run or report as usual")
    args = ap.parse_args(argv)
    args.steps_given = args.steps is not None
    if args.quick:
        args.seeds = 2
        args.steps = args.steps or "10,20"
        args.n_samples, args.sample_steps = 64, 10
        args.base_channels, args.channel_mults = 16, "1,2"
        args.classifier_epochs = 2
        args.threads = args.threads or 1  # a smoke run should not crowd the machine
        args.out = args.out or f"outputs/ablation-quick/{args.dataset}"
        args.cache_dir = args.cache_dir or f"{args.out}/cache"
    args.steps = args.steps or {"digits": "1000,2000,4000,6000,8000",
                                "mnist": "2000,4000,8000,12000,16000"}[args.dataset]
    args.out = Path(args.out or f"outputs/ablation/{args.dataset}")
    args.docs = Path(args.docs or (args.out if args.quick else "docs/benchmarks"))
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = 16 if args.dataset == "digits" else 28
    p = Protocol(
        dataset=args.dataset, size=size, base_channels=args.base_channels,
        channel_mults=tuple(int(c) for c in args.channel_mults.split(",")),
        batch_size=args.batch_size, lr=args.lr, lr_warmup_steps=args.lr_warmup_steps,
        grad_clip=args.grad_clip, ema_decay=args.ema_decay, timesteps=args.timesteps,
        n_samples=args.n_samples, sample_steps=args.sample_steps, sample_seed=args.sample_seed,
        classifier_epochs=args.classifier_epochs, kid_subset_size=min(1000, args.n_samples),
        context_base=parse_context_base(args.context_base),
    )
    out: Path = args.out
    proto_path = out / "protocol.json"
    if args.restore_archive is not None:
        n = restore_archive(args.restore_archive, out)
        print(f"restored {n} results from {args.restore_archive} into {out}")
    if (args.report_only or args.list_arms) and proto_path.is_file():
        # the report describes what is on disk, whatever the flags say about the protocol
        p = load_protocol(out)
    catalogue = arm_catalogue(p.timesteps, p.context_base)
    if args.list_arms:
        for name, kw in catalogue.items():
            print(f"{name:<22}{config_key(kw)}")
        return
    arms, aliases = select_arms(args, p.timesteps, p.context_base)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    if args.report_only and not args.steps_given:
        # ... and its steps, unless --steps says otherwise
        on_disk = load_results(out)
        args.steps = ",".join(str(k) for k in sorted(
            {step for (a, _, step) in on_disk if a != BASELINE})) or args.steps
    steps, base_steps, every = eval_grid([int(s) for s in args.steps.split(",")],
                                         args.wallclock_factor)
    if args.report_only and not args.steps_given:
        base_steps = sorted({step for (a, _, step) in load_results(out) if a == BASELINE}
                            | set(steps))
    command = "python benchmarks/ablation.py " + " ".join(sys.argv[1:] if argv is None else argv)
    images, labels = load_data(args.dataset, size)
    print(f"{args.dataset}: {tuple(images.shape)}; arms {arms}"
          + (f" (aliases {aliases})" if aliases else "")
          + f"; seeds {seeds}; steps {steps}; baseline steps {base_steps}; checkpoint every "
          f"{every}; out {args.out}")
    if args.estimate:
        estimate(p, arms, catalogue, seeds, steps, base_steps, images, args.device,
                 args.estimate_steps)
        return

    if args.report_only:
        pass  # write nothing into --out
    elif proto_path.is_file():
        old = saved_protocol(json.loads(proto_path.read_text()))
        if old != json.loads(json.dumps(asdict(p))):
            diff = {k: (old.get(k), v) for k, v in json.loads(json.dumps(asdict(p))).items()
                    if old.get(k) != v}
            hint = ""
            if "context_base" in diff:
                hint = (" or pass --context-base " + context_base_text(old["context_base"], " ")
                        if old["context_base"] else " or leave out --context-base")
            raise SystemExit(f"{out} holds results of another protocol {diff}; use another --out"
                             + hint)
    else:
        atomic_json(proto_path, asdict(p))

    accuracy = None
    if not args.report_only:
        extractor = make_extractor(p, images, labels, args.cache_dir, args.device)
        accuracy = extractor.test_accuracy_
        atomic_json(out / "classifier.json", {"test_accuracy": accuracy,
                                              "cache": str(extractor.cache_path_)})
        evaluate = Evaluator(extractor, images, p.kid_subset_size)
        filled = backfill(out, evaluate)
        if filled:
            print(f"added the class-balanced FID to {filled} earlier results from their features")
        if read_floor(out, p.n_samples, len(images)) is None:
            # a smoke run's floor only needs to exist: 8 splits per size instead of 200
            atomic_json(out / "floor.json", evaluate.floor(
                p.n_samples, **({"repeats": 4, "groups": 2} if args.quick else {})))
        if args.prepare:
            print(f"prepared {out}: protocol, feature classifier (held-out accuracy "
                  f"{accuracy:.4f}, {extractor.cache_path_}) and noise floor")
            return
        jobs = [(arm, seed) for seed in seeds for arm in arms]
        total = sum(len(arm_steps(a, steps, base_steps)) for a, _ in jobs)
        with tqdm(total=total, desc="ablation (arm, seed, step)", dynamic_ncols=True) as bar:
            bar.update(sum(result_path(out, a, s, k).is_file() for a, s in jobs
                           for k in arm_steps(a, steps, base_steps)))
            if args.workers > 1:
                threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
                run_parallel(p, jobs, catalogue, steps, base_steps, every, out, args.cache_dir,
                             args.device, args.workers, threads, bar)
            else:
                for arm, seed in jobs:
                    grid = arm_steps(arm, steps, base_steps)
                    run_one(p, arm, catalogue[arm], seed, grid, every, out, images, evaluate,
                            args.device, args.verbose, bar)
    elif (out / "classifier.json").is_file():
        accuracy = json.loads((out / "classifier.json").read_text())["test_accuracy"]
    path = write_report(out, args.docs, arms, aliases, seeds, steps, base_steps, p, command,
                        accuracy, args.quick, report_only=args.report_only)
    print(f"\nwrote {path}\n")
    print(path.read_text())


if __name__ == "__main__":
    main()
