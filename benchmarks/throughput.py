"""Training throughput (images/s) of the baseline and of ConPreDiff, same backbone, same batch.

    python benchmarks/throughput.py --size 64 --channels 3 --precision bf16 --steps 30

Prints a markdown table: median step time and images/s per configuration, and the ratio of
ConPreDiff's step time to the baseline's, measured alternately in one process.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from conprediff import ContextPrediction, UNet
from conprediff.schedules import NoiseSchedule
from conprediff.training.loop import DiffusionObjective


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="bf16")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--base-channels", type=int, default=64)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    schedule = NoiseSchedule("cosine", 1000)
    C, S, B = args.channels, args.size, args.batch
    contexts = {
        "baseline": None,
        "conprediff (sampled, default)": ContextPrediction(),
        "conprediff (gaussian)": ContextPrediction(decoder="gaussian"),
    }
    steps = {}
    for name, ctx in contexts.items():
        torch.manual_seed(0)
        backbone = UNet(
            in_channels=C,
            base_channels=args.base_channels,
            channel_mults=(1, 2, 2, 2),
            attention_levels=(3,),
        )
        head = ctx.build(backbone.feature_channels, C) if ctx is not None else None
        obj = DiffusionObjective(backbone, head).to(device)
        if device.type == "cuda":
            obj = obj.to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(
            obj.parameters(), lr=1e-4, **({"fused": True} if device.type == "cuda" else {})
        )
        gen = torch.Generator(device).manual_seed(0)
        x0 = torch.rand(B, C, S, S, device=device) * 2 - 1

        def step(obj=obj, opt=opt, gen=gen, x0=x0):
            t = torch.randint(0, 1000, (B,), device=device, generator=gen)
            noise = torch.randn(x0.shape, device=device, generator=gen)
            with torch.autocast(
                device.type, dtype=dtype or torch.float32, enabled=dtype is not None
            ):
                loss, _ = obj(x0, t, noise, schedule, "eps", None, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        steps[name] = step
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(args.warmup):
        for f in steps.values():
            f()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(args.steps):
        for name, f in steps.items():
            sync()
            t0 = time.perf_counter()
            f()
            sync()
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["baseline"])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"{name}, {args.precision}, batch {B} x {C}x{S}x{S}, UNet base {args.base_channels}, "
        f"{args.steps} alternating steps after {args.warmup} warm-up"
    )
    print("| configuration | median ms / step | images / s | step time / baseline |")
    print("| --- | ---: | ---: | ---: |")
    for k, v in times.items():
        m = statistics.median(v)
        print(f"| {k} | {m * 1e3:.1f} | {B / m:.0f} | {m / base:.3f} |")


if __name__ == "__main__":
    main()
