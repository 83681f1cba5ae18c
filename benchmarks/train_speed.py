"""Median time of one DDPM training step: our UNet against diffusers' UNet2DModel.

Both models have about 1.4M parameters and do the same step (ε-prediction MSE on 1x28x28
images, batch 64, AdamW) in the same process, alternating, so machine noise hits both alike.
diffusers is needed only here: ``pip install diffusers``.

    python benchmarks/train_speed.py [--repeats 30] [--threads N] [--out outputs/benchmarks]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from conprediff import UNet
from conprediff.schedules import NoiseSchedule


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def make_step(model, call, schedule, batch):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)

    def step() -> float:
        x0 = batch
        t = torch.randint(0, schedule.timesteps, (x0.shape[0],), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        xt = schedule.q_sample(x0, t, noise)
        t0 = time.perf_counter()
        loss = (call(model, xt, t) - noise).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    return step


def models() -> list[tuple[str, torch.nn.Module, torch.nn.Module]]:
    """Pairs (label, ours, diffusers') of UNets of the same shape."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    # The same widths (32, 64, 80), one residual block per level (two on the way up), GroupNorm
    # with 8 groups, attention in the middle block; then both with attention at 7x7 as well.
    ours = UNet(in_channels=1, base_channels=16, channel_mults=(2, 4, 5))
    ours_attn = UNet(
        in_channels=1, base_channels=16, channel_mults=(2, 4, 5), attention_levels=(2,)
    )
    common = dict(
        sample_size=28,
        in_channels=1,
        out_channels=1,
        block_out_channels=(32, 64, 80),
        layers_per_block=1,
        norm_num_groups=8,
    )
    theirs = UNet2DModel(
        **common, down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3
    )
    theirs_attn = UNet2DModel(
        **common,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    )
    return [("mid attention only", ours, theirs), ("+ attention at 7x7", ours_attn, theirs_attn)]


def table(med: dict[str, float], args: argparse.Namespace) -> str:
    """Markdown: the machine, then each pair's median milliseconds per step and their ratio."""
    names = list(med)
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in open("/proc/cpuinfo")
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    lines = [
        f"Machine: {cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"{args.repeats} alternating repeats after {args.warmup} warm-up.",
        "",
        "| model | median ms / step | ours / diffusers |",
        "| --- | ---: | ---: |",
    ]
    for i in range(0, len(names), 2):
        a, b = names[i], names[i + 1]
        lines.append(f"| {a} | {med[a]:.0f} | **{med[a] / med[b]:.2f}** |")
        lines.append(f"| {b} | {med[b]:.0f} | 1.00 |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="outputs/benchmarks")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    schedule = NoiseSchedule("linear", 1000)
    batch = torch.rand(64, 1, 28, 28) * 2 - 1

    def ours_call(m, x, t):
        return m(x, t)[0]

    def theirs_call(m, x, t):
        return m(x, t).sample

    runs = {}
    for label, a, b in models():
        runs[f"ours, {label} ({n_params(a) / 1e6:.2f}M)"] = make_step(a, ours_call, schedule, batch)
        runs[f"diffusers, {label} ({n_params(b) / 1e6:.2f}M)"] = make_step(
            b, theirs_call, schedule, batch
        )
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.warmup):
        for step in runs.values():
            step()
    for _ in range(args.repeats):
        for name, step in runs.items():
            times[name].append(step())
    text = table({k: statistics.median(v) * 1e3 for k, v in times.items()}, args)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_speed_table.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
