"""Each precision and memory-format path on this machine: training step and sampling speed.

For our UNet and diffusers' ``UNet2DModel`` of the same shape (1.34M parameters, 1x28x28, batch
64; ``train_speed.py``'s "mid attention only" pair), one DDPM training step (forward, backward,
AdamW) and one inference forward, under each path: float32 or bf16 autocast (fp16 too on CUDA),
contiguous or channels-last. All timings alternate over every (model, path) in one process, so
machine noise hits all alike; medians. Also printed: the path ``precision='auto'`` picks here.

    pip install diffusers     # needed only here
    python benchmarks/fast_path.py [--device cpu] [--repeats 12] [--out outputs/benchmarks]

Sampling images/s are derived from the forward time: ``batch / (forward * steps)`` for DDIM at
50 steps and DPM-Solver++(2M) at 25 (level quality on a converged model, see
docs/benchmarks/sampler_quality.md); a sampler's own arithmetic is negligible beside the network.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import time
from pathlib import Path

import torch
from train_speed import models

from conprediff.precision import autocast, resolve_precision
from conprediff.schedules import NoiseSchedule


def paths(device: torch.device) -> list[tuple[str, bool]]:
    """(precision, channels_last) pairs worth timing on ``device``."""
    precisions = ["fp32", "bf16"] + (["fp16"] if device.type == "cuda" else [])
    return [(p, cl) for p in precisions for cl in (False, True)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_runs(model, call, precision: str, channels_last: bool, device: torch.device,
              batch: torch.Tensor, schedule: NoiseSchedule):
    """Two closures, a timed training step and a timed inference forward (seconds)."""
    model = model.to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    x0 = batch.to(device).contiguous(memory_format=fmt)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def inputs():
        t = torch.randint(0, schedule.timesteps, (x0.shape[0],), generator=g).to(device)
        noise = torch.randn(x0.shape, generator=g).to(device).contiguous(memory_format=fmt)
        return schedule.q_sample(x0, t, noise), t, noise

    def train() -> float:
        xt, t, noise = inputs()
        _sync(device)
        t0 = time.perf_counter()
        with autocast(precision, device):
            out = call(model, xt, t)
        loss = (out.float() - noise).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        _sync(device)
        return time.perf_counter() - t0

    def forward() -> float:
        xt, t, _ = inputs()
        _sync(device)
        t0 = time.perf_counter()
        with torch.inference_mode(), autocast(precision, device):
            call(model, xt, t)
        _sync(device)
        return time.perf_counter() - t0

    return train, forward


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def table(med: dict[tuple[str, str, bool], tuple[float, float]], batch: int) -> list[str]:
    """Markdown rows: each (model, path) with ms/step, ms/forward, images/s and ratios."""
    base = med[("ours", "fp32", False)]
    rows = ["| model | precision | memory format | train ms / step | vs ours fp32 | ours / "
            "diffusers | forward ms | DDIM-50 img/s | DPM++-25 img/s |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for (name, prec, cl), (train, fwd) in med.items():
        other = med[("diffusers", prec, cl)][0]
        rows.append(
            f"| {name} | {prec} | {'channels-last' if cl else 'contiguous'} | {train * 1e3:.0f} "
            f"| {train / base[0]:.2f} | {train / other:.2f} | {fwd * 1e3:.1f} "
            f"| {batch / (fwd * 50):.1f} | {batch / (fwd * 25):.1f} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="outputs/benchmarks")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    schedule = NoiseSchedule("linear", 1000)
    batch = torch.rand(args.batch_size, 1, 28, 28) * 2 - 1
    calls = {"ours": lambda m, x, t: m(x, t)[0], "diffusers": lambda m, x, t: m(x, t).sample}
    runs = {}
    for prec, cl in paths(device):
        label, ours, theirs = models()[0]
        for name, model in (("ours", ours), ("diffusers", theirs)):
            runs[(name, prec, cl)] = make_runs(model, calls[name], prec, cl, device, batch,
                                               schedule)
    times = {k: ([], []) for k in runs}
    for i in range(args.warmup + args.repeats):
        for key, (train, forward) in runs.items():
            tr, fw = train(), forward()
            if i >= args.warmup:
                times[key][0].append(tr)
                times[key][1].append(fw)
    med = {k: (statistics.median(a), statistics.median(b)) for k, (a, b) in times.items()}
    lines = [
        f"Machine: {machine(device)} ({device.type}), {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}; batch {args.batch_size} of 1x28x28; medians of "
        f"{args.repeats} alternating repeats after {args.warmup} warm-up.",
        f"precision='auto' picks {resolve_precision('auto', device)} here.",
        "",
        *table(med, args.batch_size),
    ]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"fast_path_{device.type}.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
