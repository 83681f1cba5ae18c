"""The report of ``benchmarks/latent_plateau.py``: table, paired comparison and FID curves."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import numpy as np

ARMS = ("baseline", "conprediff")
METRICS = ("fid", "fid_class_balanced", "precision", "recall")


def load_results(out: Path) -> dict[tuple[str, int, int], dict[str, Any]]:
    res = {}
    for p in sorted((out / "results").glob("*/seed*/step*.json")):
        r = json.loads(p.read_text())
        res[(r["arm"], r["seed"], r["step"])] = r
    return res


def _values(res: dict, arm: str, seeds: list[int], step: int, key: str) -> list[float]:
    return [res[(arm, s, step)][key] if (arm, s, step) in res else np.nan for s in seeds]


def _ms(values: list[float]) -> str:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return "-"
    return f"{v.mean():.2f} ± {v.std(ddof=1):.2f}" if len(v) > 1 else f"{v[0]:.2f}"


def plateau_step(res: dict, seeds: list[int], steps: list[int], noise: float) -> int | None:
    """The first step after which the baseline's mean FID improves by less than ``noise``; None
    when it still improves by more at the last interval (the plateau was not reached)."""
    means = [np.nanmean(_values(res, "baseline", seeds, s, "fid")) for s in steps]
    for i in range(len(steps) - 1):
        if means[i] - min(means[i + 1 :]) < noise:
            return steps[i]
    return None


def plot(path: Path, res: dict, seeds: list[int], steps: list[int], floors: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, key in zip(axes, ("fid", "fid_class_balanced"), strict=True):
        for arm, colour in zip(ARMS, ("tab:gray", "tab:blue"), strict=True):
            vals = np.array([_values(res, arm, seeds, s, key) for s in steps])
            for j in range(vals.shape[1]):
                ax.plot(steps, vals[:, j], color=colour, alpha=0.25, lw=0.8)
            ax.plot(steps, np.nanmean(vals, axis=1), color=colour, lw=2,
                    label="latent ConPreDiff" if arm == "conprediff" else "latent baseline")
        if key in floors:
            ax.axhline(floors[key], color="tab:red", ls=":", lw=1, label="autoencoder floor")
        ax.set_xlabel("training steps")
        ax.set_ylabel("FID" if key == "fid" else "class-balanced FID")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _overhead(res: dict, seeds: list[int], steps: list[int]) -> str:
    """The context term's training-time overhead: ConPreDiff's seconds over the baseline's for
    the same steps, per seed (the two arms of a seed train at the same time, one per core)."""
    ratios = []
    for s in seeds:
        t = {a: sum(res[(a, s, q)]["train_seconds"] for q in steps if (a, s, q) in res)
             for a in ARMS}
        if t["baseline"] > 0 and all((a, s, q) in res for a in ARMS for q in steps):
            ratios.append(t["conprediff"] / t["baseline"])
    if not ratios:
        return ""
    return ("Training time, ConPreDiff over baseline, per seed (the two arms of a seed ran side "
            "by side, one core each; data encoding included): "
            + ", ".join(f"{r:.3f}" for r in ratios) + f"; mean {np.mean(ratios):.3f}x.")


def write_report(args: Any, info: dict, command: str, machine: str, paired: Any) -> Path:
    res = load_results(args.out)
    seeds = list(range(args.seeds))
    steps = [s for s in args.steps if any((a, q, s) in res for a in ARMS for q in seeds)]
    recon = info["reconstruction_metrics"]
    floors = {"fid": recon["fid"], "fid_class_balanced": recon.get("fid_class_balanced")}
    noise = float(np.nanmean([np.nanstd(_values(res, a, seeds, s, "fid"), ddof=1)
                              for a in ARMS for s in steps])) if steps else 0.0
    plateau = plateau_step(res, seeds, steps, noise) if steps else None
    lines = [f"# Latent ConPreDiff against the latent baseline: {args.dataset}", ""]
    if args.quick:
        lines += ["**SMOKE RUN (`--quick`): tiny models; the numbers mean nothing.**", ""]
    lines += [
        f"Command: `{command}`  ",
        f"Machine: {machine}; written {datetime.date.today().isoformat()}.", "",
        f"Autoencoder: KL, f = {args.factor}, {args.latent_channels} latent channels, base "
        f"{args.ae_base_channels}, batch {args.ae_batch_size}, {args.ae_steps} steps; "
        f"latent grid {tuple(info.get('latent_shape', ()))}; reconstruction PSNR "
        f"{info['reconstruction']['psnr']:.2f} dB, "
        f"FID of the reconstructions {recon['fid']:.3f} (class-balanced "
        f"{recon.get('fid_class_balanced', float('nan')):.3f}): the floor under any latent "
        f"model here. Ideal-model floor at {args.n_samples} samples: FID "
        f"{info['floor']['fid']:.3f}. Feature classifier's held-out accuracy "
        f"{info['classifier_accuracy']:.4f}.", "",
        f"Diffusion: UNet base {args.base_channels}, levels ({args.channel_mults}), batch "
        f"{args.batch_size}, lr {args.lr}; "
        f"{args.n_samples} samples per evaluation, DPM-Solver++(2M) {args.sample_steps} steps, "
        f"one sampling seed shared by both arms; {len(seeds)} training seeds, paired.", "",
        "| steps | FID baseline | FID ConPreDiff | ratio (per pair) | pairs ConPreDiff better "
        "| class-bal. FID baseline | class-bal. FID ConPreDiff | precision b / c | recall b / c |",
        "| ---: | --- | --- | --- | ---: | --- | --- | --- | --- |",
    ]
    for s in steps:
        fb, fc = (_values(res, a, seeds, s, "fid") for a in ARMS)
        pair = paired(fc, fb)
        ratios = np.asarray(fc) / np.asarray(fb)
        cb = [_values(res, a, seeds, s, "fid_class_balanced") for a in ARMS]
        pr = [_ms(_values(res, a, seeds, s, "precision")) for a in ARMS]
        rc = [_ms(_values(res, a, seeds, s, "recall")) for a in ARMS]
        lines.append(
            f"| {s} | {_ms(fb)} | {_ms(fc)} | {np.nanmean(ratios):.3f} "
            f"({np.nanmin(ratios):.2f}-{np.nanmax(ratios):.2f}) | {pair.n_favour}/{pair.n} | "
            f"{_ms(cb[0])} | {_ms(cb[1])} | {pr[0]} / {pr[1]} | {rc[0]} / {rc[1]} |")
    if steps:
        fb, fc = (np.asarray(_values(res, a, seeds, steps[-1], "fid")) for a in ARMS)
        met = bool(np.all(fc <= 0.9 * fb))
        means = [np.nanmean(_values(res, "baseline", seeds, s, "fid")) for s in steps]
        where = (f"the baseline's mean FID improves by less than the seed-to-seed noise (s.d. "
                 f"{noise:.2f}) after {plateau} steps" if plateau is not None else
                 f"**not reached**: the baseline's mean FID still fell from {means[-2]:.2f} to "
                 f"{means[-1]:.2f} over the last interval" if len(steps) > 1 else "not measured")
        lines += [
            "", f"Plateau: {where}. Goal (ConPreDiff's FID at most 0.9x the baseline's in every "
            f"pair{' at the plateau' if plateau is not None else ''}; here at the last step, "
            f"{steps[-1]}): **{'met' if met else 'not met'}** (ratios "
            + ", ".join(f"{r:.2f}" for r in fc / fb) + ").",
        ]
    if steps:
        lines += ["", _overhead(res, seeds, steps)]
    args.docs.parent.mkdir(parents=True, exist_ok=True)
    fig = plot(args.docs.with_suffix(".png"), res, seeds, steps, floors) if steps else None
    if fig is not None:
        lines += ["", f"![FID against training steps]({fig.name})"]
    args.docs.parent.mkdir(parents=True, exist_ok=True)
    args.docs.write_text("\n".join(lines) + "\n")
    return args.docs
