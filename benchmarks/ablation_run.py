"""Running the ablation: each (arm, seed) trained in segments and evaluated at each step,
one after another or in worker processes; and the projected wall time of a run.

Used by ``benchmarks/ablation.py`` (see ``docs/benchmarks/ablation.md``).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import statistics
import time
import warnings
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ablation_eval import Evaluator, make_extractor
from ablation_setup import Protocol, arm_steps, config_key, load_data, make_model, slug
from common import atomic_json, machine_cores
from tqdm.auto import tqdm

from conprediff import ConPreDiffModel
from conprediff.evaluation import FeatureExtractor, LeNetClassifier
from conprediff.training.checkpoint import list_checkpoints


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


def load_results(out: Path) -> dict[tuple[str, int, int], dict[str, Any]]:
    found = {}
    for path in sorted((out / "results").glob("*/seed*/step*.json")):
        r = json.loads(path.read_text())
        found[(r["arm"], r["seed"], r["step"])] = r
    return found


# ----------------------------------------------------------------------------------- estimate
def estimate(p: Protocol, arms: list[str], catalogue: dict, seeds: list[int], steps: list[int],
             base_steps: list[int], images: torch.Tensor, device: str, n_time: int) -> float:
    """Time a few training steps per arm, one sampling pass and one evaluation; project."""
    print(f"timing on {machine_cores()} (load average {os.getloadavg()[0]:.2f})")
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
