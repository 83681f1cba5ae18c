"""Training-step time with context prediction divided by without: same backbone, same batch.

A UNet of about 1.4M parameters on 1x28x28 images, batch 64, strides (1, 2) unless a row says
otherwise, ring neighbourhoods; every configuration and the baseline are timed in turn in one
process (medians).

    python benchmarks/context_overhead.py [--repeats 20] [--device cpu] [--out FILE.md]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from common import machine, median_ms, time_alternating, train_step

from conprediff import ContextPrediction, UNet
from conprediff.context import TruncatedWeight
from conprediff.wasserstein import SortedW2

# A row named "default" or "(default)" follows ContextPrediction's defaults; every other row
# spells out the settings it names, so a change of the defaults cannot relabel it.
CONFIGS = {
    "default: sampled, latent 8, point_fraction 0.1, sorted W2": dict(),
    "sampled, latent 8, point_fraction 0.25 (an earlier default)": dict(
        latent_dim=8, point_fraction=0.25
    ),
    "sampled, latent 8, point_fraction 0.5 (an earlier default)": dict(
        latent_dim=8, point_fraction=0.5
    ),
    "sampled, latent 16, every point (deck's decoder, no subsampling)": dict(
        latent_dim=16, point_fraction=1.0
    ),
    "sampled, latent 8, every point": dict(latent_dim=8, point_fraction=1.0),
    "sampled, latent 4, point_fraction 0.5": dict(latent_dim=4, point_fraction=0.5),
    "sampled (default) + SortedW2 sort='network' (an earlier CPU default)": dict(
        metric=SortedW2(sort="network", validate=False)
    ),
    "sampled (default), lambda only for t >= T/2 (TruncatedWeight; zero-weight points skipped)": (
        dict(weight=TruncatedWeight(0.1, t_max=999, t_min=500))
    ),
    "sampled (default), one stride: strides=(1,)": dict(strides=(1,)),
    "sampled (default), three strides: strides=(1, 2, 3)": dict(strides=(1, 2, 3)),
    "sampled, three strides, point_fraction 0.5 (the MNIST pilot's strides=1,2,3 arm)": dict(
        strides=(1, 2, 3), point_fraction=0.5
    ),
    "sampled (default) + SlicedW2, 64 projections": dict(metric="sliced"),
    "sampled (default) + SinkhornW2, eps 1e-2, 100 iterations": dict(metric="sinkhorn"),
    "sampled (default) + GaussianW2 on the samples": dict(metric="gaussian"),
    "gaussian decoder, closed form, every point": dict(decoder="gaussian", point_fraction=1.0),
    "gaussian decoder, closed form, point_fraction 0.5": dict(
        decoder="gaussian", point_fraction=0.5
    ),
    "gaussian decoder, closed form, point_fraction 0.25": dict(
        decoder="gaussian", point_fraction=0.25
    ),
    "gaussian decoder, closed form, point_fraction 0.1 (default fraction)": dict(
        decoder="gaussian"
    ),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", nargs="*", default=None, help="subset of configuration names")
    ap.add_argument("--out", default=None, help="also write the table to this markdown file")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    x0 = torch.rand(args.batch, 1, 28, 28, device=device) * 2 - 1

    def backbone():
        torch.manual_seed(0)
        return UNet(in_channels=1, base_channels=16, channel_mults=(2, 4, 5)).to(device)

    steps = {"baseline (no context)": train_step(backbone(), None, x0)}
    configs = {k: v for k, v in CONFIGS.items() if args.only is None or k in args.only}
    for name, kw in configs.items():
        net = backbone()
        context = ContextPrediction(**({"strides": (1, 2)} | kw))  # (1, 2) unless a row says
        head = context.build(net.feature_channels, 1).to(device)
        steps[name] = train_step(net, head, x0)
    times = time_alternating(steps, args.repeats, args.warmup)
    base = median_ms(times["baseline (no context)"])
    lines = [
        f"Machine: {machine()}; device {device}; batch {args.batch} x 1x28x28; UNet "
        f"(32, 64, 80), 1.34M parameters; {args.repeats} alternating repeats after "
        f"{args.warmup} warm-up; medians.",
        "",
        "| configuration | median ms / step | step time / baseline |",
        "| --- | ---: | ---: |",
    ]
    for name, v in times.items():
        lines.append(f"| {name} | {median_ms(v):.0f} | {median_ms(v) / base:.3f} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
