"""Speed and accuracy of the W2 metrics on the context loss's real workload.

Workload: B = 64 images of 28 x 28 points -> P = 50,176 problems; C = 1 and 4 channels;
neighbourhoods of K = 8 (ring, stride 1) and K = 24 (square, stride 2) with the out-of-grid
neighbours dropped (zero weight, the others renormalised) as in the loss; Q = K predicted samples
with uniform weights. For every metric: median time of the forward pass and of forward + backward
(float32, torch's default threads), its largest absolute and relative error against ``ExactW2`` on
a random sample of problems, and the speed-up over a Python loop of ``ot.emd2`` over all P problems
(timed side by side with the metric: 7 rounds of one block of 300 loop problems, extrapolated
linearly, then the metric; the median of the per-round ratios).

Run by hand (not a test)::

    python benchmarks/w2_speed.py            # full run: prints the table, writes the figure
                                             # docs/benchmarks/w2_speed.png
    python benchmarks/w2_speed.py --quick    # smoke run (B = 4, fewer repeats), prints only
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import ot
import torch

from conprediff.wasserstein import ExactW2, GaussianW2, SinkhornW2, SlicedW2, SortedW2

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "docs" / "benchmarks"


def neighbourhoods(B: int, C: int, K: int, H: int = 28, W: int = 28, seed: int = 0):
    """Targets ``(B*H*W, K, C)`` and border weights ``(B*H*W, K)`` of a random smooth batch."""
    if K == 8:  # ring of stride 1
        offs = [(i, j) for i in (-1, 0, 1) for j in (-1, 0, 1) if (i, j) != (0, 0)]
    elif K == 24:  # square of stride 2
        offs = [(i, j) for i in range(-2, 3) for j in range(-2, 3) if (i, j) != (0, 0)]
    else:
        raise ValueError(f"K must be 8 or 24, got {K}")
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(B, C, H // 4, W // 4, generator=g)
    img = torch.nn.functional.interpolate(img, size=(H, W), mode="bilinear", align_corners=False)
    img = img + 0.1 * torch.randn(B, C, H, W, generator=g)
    ii, jj = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    di = torch.tensor([o[0] for o in offs])
    dj = torch.tensor([o[1] for o in offs])
    ni = ii.reshape(-1, 1) + di  # (H*W, K)
    nj = jj.reshape(-1, 1) + dj
    valid = (ni >= 0) & (ni < H) & (nj >= 0) & (nj < W)
    flat = (ni.clamp(0, H - 1) * W + nj.clamp(0, W - 1))  # clamped index; weight 0 if invalid
    vals = img.reshape(B, C, H * W)[:, :, flat]  # (B, C, H*W, K)
    y = vals.permute(0, 2, 3, 1).reshape(B * H * W, K, C).contiguous()
    w = valid.float()
    w = (w / w.sum(1, keepdim=True)).repeat(B, 1)
    return y, w


def median_time(fn, repeats: int, warm_up: bool = True) -> float:
    if warm_up:
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def emd2_loop(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor):
    """``block(start, size) -> seconds per problem`` of a Python loop of ot.emd2 (numpy float64,
    cost by ot.dist) over ``size`` problems from ``start``; warmed up on 10 problems."""
    xs, ys, ws = x.double().numpy(), y.double().numpy(), w.double().numpy()
    a = np.full(x.shape[1], 1.0 / x.shape[1])

    def block(start: int, size: int) -> float:
        t0 = time.perf_counter()
        for p in range(start, start + size):
            ot.emd2(a, ws[p], ot.dist(xs[p], ys[p]))
        return (time.perf_counter() - t0) / size

    block(0, 10)
    return block


def paired_speedup(fwd, block, P: int, rounds: int, size: int) -> tuple[float, float, float]:
    """Speed-up of ``fwd`` over the emd2 loop, measured side by side.

    Each round times one block of ``size`` loop problems (a different block each round, spread
    over the batch) and then ``fwd`` three times (median), so both see the same state of the
    machine; the speed-up is the median over rounds of (loop time per problem x P) / (forward
    time). Timed one after the other, the loop moved by 2x between runs on the shared machine.
    Returns (median speed-up, median forward seconds, median loop seconds for all P problems).
    """
    fwd()
    starts = np.linspace(0, P - size, rounds).astype(int)
    ratios, fwds, loops = [], [], []
    for start in starts:
        loop_s = block(int(start), size) * P
        t_f = median_time(fwd, 3, warm_up=False)
        ratios.append(loop_s / t_f)
        fwds.append(t_f)
        loops.append(loop_s)
    return statistics.median(ratios), statistics.median(fwds), statistics.median(loops)


def metrics_for(C: int):
    """(label, metric, fraction of P to time on) for C channels."""
    rows = []
    if C == 1:
        rows.append(("SortedW2 (default, C=1; sort='auto': network for K <= 8, else numpy)",
                     SortedW2(validate=False), 1.0))
        rows.append(("SortedW2 sort=numpy", SortedW2(sort="numpy", validate=False), 1.0))
        rows.append(("SortedW2 sort=network", SortedW2(sort="network", validate=False), 1.0))
        rows.append(("SortedW2 sort=torch", SortedW2(sort="torch", validate=False), 1.0))
        rows.append(("SortedW2 split=False (quantile path)",
                     SortedW2(split=False, validate=False), 1.0))
    rows += [
        ("SlicedW2 L=16" + (" (default, C>1)" if C > 1 else ""),
         SlicedW2(16, seed=0, validate=False), 1.0),
        ("SlicedW2 L=64", SlicedW2(64, seed=0, validate=False), 1.0),
        ("SinkhornW2 eps=1e-2 it=100", SinkhornW2(1e-2, 100, validate=False), 1 / 64),
        ("SinkhornW2 eps=1e-2 it=100 debiased", SinkhornW2(1e-2, 100, True, validate=False),
         1 / 64),
        ("GaussianW2 diag", GaussianW2("diag", validate=False), 1.0),
        ("GaussianW2 full", GaussianW2("full", validate=False), 1.0),
    ]
    return rows


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    nproc = os.cpu_count()
    try:
        nproc = int(subprocess.check_output(["nproc"], text=True).strip())
    except (OSError, subprocess.CalledProcessError, ValueError):
        pass
    return (f"{nproc} CPU cores available (`nproc`), {cpu}, {platform.system()} "
            f"{platform.machine()}, Python {platform.python_version()}, torch {torch.__version__} "
            f"(CPU, {torch.get_num_threads()} threads), POT {ot.__version__}")


def run(quick: bool):
    B = 4 if quick else 64
    repeats = 2 if quick else 9
    rounds, size = (3, 30) if quick else (7, 300)
    n_err = 50 if quick else 200
    results = []
    for C in (1, 4):
        for K in (8, 24):
            y, w = neighbourhoods(B, C, K)
            P = y.shape[0]
            g = torch.Generator().manual_seed(1)
            x0 = y.mean(1, keepdim=True) + 0.5 * torch.randn(P, K, C, generator=g)
            block = emd2_loop(x0, y, w)
            idx = torch.randperm(P, generator=g)[:n_err]
            exact = ExactW2()(x0[idx].double(), y[idx].double(), None, w[idx].double())
            frac_border = (w == 0).any(1).float().mean().item()
            print(f"\nC={C} K={K}: P={P}, {100 * frac_border:.1f}% problems with dropped "
                  "neighbours")
            for label, metric, frac in metrics_for(C):
                n = max(1, int(P * frac))
                xs, ys, ws = x0[:n].contiguous(), y[:n].contiguous(), w[:n].contiguous()

                def fwd(m=metric, xs=xs, ys=ys, ws=ws):
                    with torch.no_grad():
                        m(xs, ys, None, ws)

                def fwd_bwd(m=metric, xs=xs, ys=ys, ws=ws):
                    xr = xs.clone().requires_grad_()
                    m(xr, ys, None, ws).sum().backward()

                full = frac == 1.0
                if full:
                    speedup, t_f, loop_s = paired_speedup(fwd, block, P, rounds, size)
                    t_fb = median_time(fwd_bwd, repeats)
                else:
                    # the slow metrics are timed once, without warm-up, on a fraction of the
                    # problems, against one loop block timed just before
                    loop_s = block(0, size) * P
                    t_f = median_time(fwd, 1, warm_up=False) / frac
                    t_fb = median_time(fwd_bwd, 1, warm_up=False) / frac
                    speedup = loop_s / t_f
                with torch.no_grad():
                    got = metric(x0[idx], y[idx], None, w[idx]).double()
                abs_err = (got - exact).abs()
                rel_err = abs_err / exact.clamp_min(1e-12)
                row = dict(C=C, K=K, metric=label, fwd_ms=1e3 * t_f, fwd_bwd_ms=1e3 * t_fb,
                           max_abs=abs_err.max().item(), max_rel=rel_err.max().item(),
                           speedup=speedup, loop_s=loop_s,
                           extrapolated=frac != 1.0)
                results.append(row)
                print(format_row(row) + f"  (emd2 loop ~{loop_s:.2f} s)")
    return results


HEADER = ("| C | K | metric | forward (ms) | fwd+bwd (ms) | max abs err | max rel err "
          "| speed-up vs emd2 loop |\n|---|---|---|---:|---:|---:|---:|---:|")


def format_row(r) -> str:
    star = "*" if r["extrapolated"] else ""
    return (f"| {r['C']} | {r['K']} | {r['metric']} | {r['fwd_ms']:.1f}{star} "
            f"| {r['fwd_bwd_ms']:.1f}{star} | {r['max_abs']:.1e} | {r['max_rel']:.1e} "
            f"| {r['speedup']:,.0f}× |")


def table(results) -> str:
    return "\n".join([HEADER] + [format_row(r) for r in results])


def figure(results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 4.5), sharey=False)
    for ax, (C, K) in zip(axes, [(1, 8), (1, 24), (4, 8), (4, 24)], strict=True):
        rows = [r for r in results if r["C"] == C and r["K"] == K]
        for r in rows:
            ax.scatter(r["fwd_bwd_ms"], max(r["max_rel"], 1e-17), s=40)
            ax.annotate(r["metric"], (r["fwd_bwd_ms"], max(r["max_rel"], 1e-17)), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        loop_ms = 1e3 * rows[0]["loop_s"]
        ax.axvline(loop_ms, color="grey", ls="--", lw=1)
        ax.text(loop_ms, 1e-15, " emd2 loop", color="grey", fontsize=8, rotation=90)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"C={C}, K={K}, P={50176 if len(rows) else 0:,}")
        ax.set_xlabel("forward + backward (ms)")
    axes[0].set_ylabel("max relative error vs ExactW2")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: B=4, fewer repeats, "
                        "prints the table only")
    args = parser.parse_args()
    print(f"load average at the start (1, 5, 15 min): {os.getloadavg()}")
    results = run(args.quick)
    tab = table(results)
    print("\n" + tab)
    if args.quick:
        return
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    figure(results, OUT_DIR / "w2_speed.png")
    print(f"\nwrote {OUT_DIR / 'w2_speed.png'}; copy the table into docs/benchmarks/w2_speed.md")
    print(f"{datetime.date.today()}: {machine()}")
    print(f"load average at the end (1, 5, 15 min): {os.getloadavg()}")


if __name__ == "__main__":
    main()
