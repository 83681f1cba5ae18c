"""How the cost grows as the work grows: training step, sampling and peak memory against image
size, batch size and model width, for the baseline and ConPreDiff.

Three sweeps around one reference point (3-channel images of 32x32, batch 32, UNet base width 32,
levels (1, 2, 2)), one variable at a time: image size 16, 32, 64; batch 8, 16, 32, 64; base
width 16, 32, 64. At each point:

* **training step** (forward, backward, AdamW), the baseline and ConPreDiff (the default
  ``ContextPrediction()``) timed in turn in one process, medians of ``--repeats``;
* **sampling**: ``ConPreDiffModel.sample`` of one batch with DPM-Solver++(2M), ``--sample-steps``
  steps, seconds per image (the baseline's model; the context decoder never runs at sampling,
  so ConPreDiff samples at the same cost);
* **peak memory** of a training step above the model and the batch: on CUDA
  ``torch.cuda.max_memory_allocated``; on the CPU the peak resident set size (sampled every
  millisecond) over the first three training steps above the size before them, each arm in a
  fresh process (activations, the autograd graph and AdamW's state).

    python benchmarks/cost_curves.py [--device cpu] [--repeats 5] [--out docs/benchmarks]
    python benchmarks/cost_curves.py --quick      # a smoke run of the plumbing, not results
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from common import atomic_json, machine_cores, median_ms, time_alternating, train_step

from conprediff import ConPreDiffModel, ContextPrediction, UNet

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = {"size": 32, "batch": 32, "width": 32}
SWEEPS = {"size": (16, 32, 64), "batch": (8, 16, 32, 64), "width": (16, 32, 64)}
LABELS = {"size": "image size (pixels a side)", "batch": "batch size",
          "width": "UNet base width (channels)"}
ARMS = ("baseline", "conprediff")


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5, help="timed training steps per arm")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--sample-steps", type=int, default=25)
    ap.add_argument("--out", default=None, help="folder of the report (default docs/benchmarks)")
    ap.add_argument("--job", default=None, help=argparse.SUPPRESS)  # ARM:SIZE:BATCH:WIDTH
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny, not results")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup, args.sample_steps = 1, 0, 2
        args.sweeps = {"size": (8, 16), "batch": (2, 4), "width": (8, 16)}
        args.reference = {"size": 16, "batch": 4, "width": 8}
        args.out = args.out or "outputs/cost_curves-quick"
    else:
        args.sweeps, args.reference = SWEEPS, REFERENCE
    args.out = Path(args.out or ROOT / "docs" / "benchmarks")
    return args


def points(args: argparse.Namespace) -> list[tuple[str, dict[str, int]]]:
    """(sweep, point) pairs; the reference point appears in every sweep."""
    return [(name, {**args.reference, name: v}) for name, values in args.sweeps.items()
            for v in values]


def backbone(width: int, device: torch.device) -> UNet:
    torch.manual_seed(0)
    return UNet(in_channels=3, base_channels=width, channel_mults=(1, 2, 2)).to(device)


def arm_step(arm: str, pt: dict[str, int], device: torch.device):
    net = backbone(pt["width"], device)
    head = (ContextPrediction().build(net.feature_channels, 3).to(device)
            if arm == "conprediff" else None)
    x0 = torch.rand(pt["batch"], 3, pt["size"], pt["size"], device=device) * 2 - 1
    return train_step(net, head, x0)


def sampling_seconds(pt: dict[str, int], device: torch.device, steps: int) -> float:
    """Seconds per image of ``sample(batch)`` with DPM-Solver++(2M) (the faster of two calls)."""
    x = torch.rand(pt["batch"], 3, pt["size"], pt["size"]) * 2 - 1
    model = ConPreDiffModel(backbone=backbone(pt["width"], device), max_steps=1,
                            batch_size=pt["batch"], verbose=0, device=device, seed=0).fit(x)
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        model.sample(pt["batch"], steps=steps, sampler="dpmpp_2m", seed=0,
                     batch_size=pt["batch"])
        times.append(time.perf_counter() - t0)
    return min(times) / pt["batch"]


def peak_memory_mib(arm: str, pt: dict[str, int], device: torch.device) -> float:
    """Peak memory of three training steps above what was held before them (MiB)."""
    step = arm_step(arm, pt, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(3):
            step()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    before = _rss_mib()  # the first step's allocations (AdamW's state among them) count too
    peak, done = [before], threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.001)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    for _ in range(3):
        step()
    done.set()
    watcher.join()
    return max(peak[0], _rss_mib()) - before


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def memory_in_fresh_process(arm: str, pt: dict[str, int], args: argparse.Namespace) -> float:
    job = f"{arm}:{pt['size']}:{pt['batch']}:{pt['width']}"
    out = subprocess.run([sys.executable, __file__, "--job", job, "--device", args.device],
                         capture_output=True, text=True, check=True, timeout=1800)
    return float(out.stdout.split()[-1])


def measure(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    rows = []
    for sweep, pt in points(args):
        steps = {arm: arm_step(arm, pt, device) for arm in ARMS}
        times = time_alternating(steps, args.repeats, args.warmup)
        row = {"sweep": sweep, **pt, "sample_s_per_image": sampling_seconds(
            pt, device, args.sample_steps)}
        for arm in ARMS:
            row[f"step_ms_{arm}"] = median_ms(times[arm])
            row[f"peak_mib_{arm}"] = (peak_memory_mib(arm, pt, device) if device.type == "cuda"
                                      else memory_in_fresh_process(arm, pt, args))
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def report(args: argparse.Namespace, rows: list[dict], seconds: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stem = f"cost_curves_{args.device.split(':')[0]}"
    cmd = "python benchmarks/cost_curves.py" + (" --quick" if args.quick else "") + (
        f" --device {args.device}" if args.device != "cpu" else "")
    lines = [
        "# Cost curves: training step, sampling and memory against the size of the work", "",
        f"Command: `{cmd}`  ",
        f"Machine: {machine_cores()}; device {args.device}; written "
        f"{time.strftime('%Y-%m-%d')} ({seconds / 60:.0f} min).", "",
        f"UNet levels (1, 2, 2), 3-channel images, float32. Reference point: "
        f"{args.reference['size']}x{args.reference['size']} images, batch "
        f"{args.reference['batch']}, base width {args.reference['width']}; each sweep changes one "
        f"of them. Training step: medians of {args.repeats} steps, the two arms alternating. "
        f"Sampling: DPM-Solver++(2M), {args.sample_steps} steps, one batch, seconds per image "
        f"(the same for both arms: the context decoder never runs at sampling). Peak memory: "
        + ("CUDA's peak allocation during three training steps, above what was allocated "
           "before them." if args.device.startswith("cuda") else
           "peak resident set size over the first three training steps (sampled every "
           "millisecond) above the size before them (activations, autograd graph, AdamW's "
           "state); each arm in a fresh process."), "",
        "| sweep | size | batch | width | step ms baseline | step ms ConPreDiff | ratio | "
        "sampling ms / image | peak MiB baseline | peak MiB ConPreDiff |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['sweep']} | {r['size']} | {r['batch']} | {r['width']} | "
            f"{r['step_ms_baseline']:.0f} | {r['step_ms_conprediff']:.0f} | "
            f"{r['step_ms_conprediff'] / r['step_ms_baseline']:.3f} | "
            f"{r['sample_s_per_image'] * 1e3:.1f} | {r['peak_mib_baseline']:.0f} | "
            f"{r['peak_mib_conprediff']:.0f} |")
    lines += ["", f"![cost curves]({stem}.png)", ""]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.md").write_text("\n".join(lines))
    atomic_json(args.out / f"{stem}.json", {"command": cmd, "rows": rows})

    fig, axes = plt.subplots(3, 3, figsize=(11, 9), constrained_layout=True)
    for j, sweep in enumerate(args.sweeps):
        rs = [r for r in rows if r["sweep"] == sweep]
        xs = [r[sweep] for r in rs]
        for arm, style in zip(ARMS, ("o-", "s--"), strict=True):
            axes[0, j].plot(xs, [r[f"step_ms_{arm}"] for r in rs], style, label=arm)
            axes[2, j].plot(xs, [r[f"peak_mib_{arm}"] for r in rs], style, label=arm)
        axes[1, j].plot(xs, [r["sample_s_per_image"] * 1e3 for r in rs], "o-", color="C2",
                        label="both arms")
        for i, ylabel in enumerate(("training step (ms)", "sampling (ms / image)",
                                    "peak memory (MiB)")):
            ax = axes[i, j]
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(xs, [str(x) for x in xs])
            ax.set_xlabel(LABELS[sweep])
            if j == 0:
                ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=8)
    fig.suptitle(f"Cost against the size of the work ({args.device}, float32)")
    fig.savefig(args.out / f"{stem}.png", dpi=90)
    print(f"wrote {args.out / stem}.md and .png")


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.job:  # one arm's peak memory, in its own process
        arm, *pt = args.job.split(":")
        pt = dict(zip(("size", "batch", "width"), map(int, pt), strict=True))
        print(peak_memory_mib(arm, pt, torch.device(args.device)))
        return
    t0 = time.perf_counter()
    rows = measure(args)
    report(args, rows, time.perf_counter() - t0)


if __name__ == "__main__":
    main()
