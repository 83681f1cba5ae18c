"""Shared pieces of the benchmarks: one training step, alternating timing, machine description,
atomic JSON writes."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from conprediff.context import ContextPrediction
from conprediff.schedules import NoiseSchedule
from conprediff.training.loop import DiffusionObjective


def machine() -> str:
    """CPU model, torch threads and version (and the GPU when there is one)."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    text = f"{cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    if torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name(0)}"
    return text


def machine_cores() -> str:
    """:func:`machine` with the number of CPU cores."""
    return f"{machine()} ({os.cpu_count()} cores)"


def atomic_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` (folders created) through a temporary file and a rename,
    so that a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def describe_context(context: ContextPrediction | None) -> str:
    """``ContextPrediction(...)`` with every parameter spelled out in sorted order (``'None'`` for
    the baseline): a canonical text of a configuration, to key caches and results by."""
    if context is None:
        return "None"
    params = context.get_params(deep=False)
    return "ContextPrediction(" + ", ".join(f"{k}={params[k]!r}" for k in sorted(params)) + ")"


def train_step(
    backbone: torch.nn.Module, head: torch.nn.Module | None, x0: torch.Tensor,
    precision: str = "fp32", seed: int = 0,
) -> Callable[[], None]:
    """A closure doing one full training step (forward, backward, AdamW) on ``x0``."""
    device = x0.device
    obj = DiffusionObjective(backbone, head).to(device)
    if device.type == "cuda":
        obj = obj.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(obj.parameters(), lr=1e-4,
                            **({"fused": True} if device.type == "cuda" else {}))
    gen = torch.Generator(device).manual_seed(seed)
    schedule = NoiseSchedule("cosine", 1000)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)

    def step() -> None:
        t = torch.randint(0, 1000, (x0.shape[0],), device=device, generator=gen)
        noise = torch.randn(x0.shape, device=device, generator=gen)
        with torch.autocast(device.type, dtype=dtype, enabled=precision != "fp32"):
            loss, _ = obj(x0, t, noise, schedule, "eps", None, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def time_alternating(
    steps: dict[str, Callable[[], None]], repeats: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds per call of each closure, calling them in turn so load hits all alike."""
    cuda = torch.cuda.is_available()
    for _ in range(warmup):
        for f in steps.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(repeats):
        for name, f in steps.items():
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            f()
            if cuda:
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
    return times


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1e3


def run_jobs(script: str, argv: list[str], jobs: list[str], workers: int) -> None:
    """Run ``script argv --job JOB`` for every job, ``workers`` processes at a time; the first
    that fails stops the benchmark (finished jobs keep their results: a rerun continues)."""
    import subprocess
    import sys

    running: list[subprocess.Popen] = []
    jobs = list(jobs)
    while jobs or running:
        while jobs and len(running) < workers:
            running.append(subprocess.Popen([sys.executable, script, *argv, "--job",
                                             jobs.pop(0)]))
        time.sleep(2)
        for p in list(running):
            if p.poll() is not None:
                running.remove(p)
                if p.returncode:
                    raise SystemExit(f"a run failed: {' '.join(map(str, p.args))}")
