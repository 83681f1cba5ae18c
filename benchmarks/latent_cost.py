"""Training-step cost in latents against pixels, and the context overhead on latents.

For one data set, the same backbone width (a UNet with ``--base-channels``, as many levels as
the grid allows, up to three) is trained on pixels and on the latents of autoencoders with
downsampling factors ``--factors``, each without and with context prediction (the library's
default ``ContextPrediction()``). A training step on latents costs no encoder pass (``fit``
encodes the data once), so the step is the backbone's alone; the one-off encoding time per
image is reported beside it. Every configuration is timed in turn in one process (medians).

    python benchmarks/latent_cost.py --dataset mnist [--repeats 20]
    python benchmarks/latent_cost.py --dataset photos --factors 4 8
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch
from common import machine_cores, median_ms, time_alternating, train_step

from conprediff import ContextPrediction, UNet
from conprediff.autoencoders import KLAutoencoder
from conprediff.data import load_mnist_images, load_photo_crops

ROOT = Path(__file__).resolve().parents[1]


def data(name: str) -> torch.Tensor:
    if name == "mnist":  # padded to 32 x 32, as in latent_plateau.py: an 8 x 8 grid with f=4
        return torch.nn.functional.pad(load_mnist_images()[0], (2, 2, 2, 2), value=-1.0)
    return load_photo_crops(size=32)[0]


def unet(channels: int, side: int, base: int) -> UNet:
    levels = 3 if side % 4 == 0 else 2 if side % 2 == 0 else 1
    return UNet(in_channels=channels, base_channels=base, channel_mults=(1, 2, 2)[:levels])


def encode_ms_per_image(ae: KLAutoencoder, x: torch.Tensor) -> float:
    with torch.no_grad():
        ae.encode(x[:64])
        t0 = time.perf_counter()
        ae.encode(x[:256])
    return (time.perf_counter() - t0) * 1e3 / 256


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", choices=("mnist", "photos"), default="mnist")
    ap.add_argument("--factors", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--latent-channels", type=int, default=4)
    ap.add_argument("--base-channels", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", default=None, help="markdown file (default: print only)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    images = data(args.dataset)
    batch = images[: args.batch_size]
    C, H, _ = batch.shape[1:]
    steps, rows = {}, []
    for space in ["pixels", *[f"f={f}" for f in args.factors]]:
        if space == "pixels":
            x0, grid, enc = batch, batch.shape[1:], None
        else:
            f = int(space[2:])
            ae = KLAutoencoder(in_channels=C, latent_channels=args.latent_channels,
                               downsampling_factor=f, base_channels=32)
            with torch.no_grad():
                x0 = ae.posterior(batch)[0]  # untrained weights: the cost does not depend on them
            ae.fitted_scale.fill_(1.0)
            grid, enc = x0.shape[1:], encode_ms_per_image(ae, images)
        for ctx in (None, ContextPrediction()):
            net = unet(grid[0], grid[1], args.base_channels)
            head = None if ctx is None else ctx.build(net.feature_channels, grid[0])
            name = f"{space}, {'ConPreDiff' if ctx else 'baseline'}"
            steps[name] = train_step(net, head, x0)
            rows.append((name, space, ctx is not None, tuple(grid), net.channel_mults, enc))
    times = time_alternating(steps, repeats=args.repeats, warmup=3)
    ms = {name: median_ms(t) for name, t in times.items()}
    pixel = ms["pixels, baseline"]
    lines = [
        "`" + " ".join(shlex.quote(a) for a in ["python", "benchmarks/latent_cost.py",
                                                 *sys.argv[1:]]) + "`",
        "",
        f"Machine: {machine_cores()}. Batch {args.batch_size}, UNet base {args.base_channels}, "
        f"{args.dataset} images {tuple(batch.shape[1:])}; medians of {args.repeats} steps "
        "timed in turn.",
        "",
        "| space | grid (C, H, W) | UNet levels | step, baseline (ms) | step, ConPreDiff (ms) "
        "| context overhead | baseline step / pixel baseline | encode once (ms / image) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, space, ctx, grid, mults, enc in rows:
        if ctx:
            continue
        base, con = ms[name], ms[f"{space}, ConPreDiff"]
        lines.append(f"| {space} | {grid} | {len(mults)} | {base:.1f} | {con:.1f} | "
                     f"{con / base:.3f}x | {base / pixel:.3f}x | "
                     f"{'-' if enc is None else f'{enc:.2f}'} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
