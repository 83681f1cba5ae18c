"""Sample quality against sampling steps: DDIM and DPM-Solver++(2M) on one fitted model.

For one model (a fitted model file given with ``--model``, or a digits model trained here for
``--train-steps`` steps and cached under ``--cache-dir``), it draws ``--n-samples`` images per
(sampler, steps, sampling seed) through ``ConPreDiffModel.sample(n, steps=k, sampler=name,
seed=s)`` and computes their FID against the real images in the features of the library's
LeNet (:class:`~conprediff.evaluation.FeatureExtractor`, trained on the same images and
cached), with the class-balanced FID beside it. Reported per cell: the mean and s.d. over the
sampling seeds; per steps: DPM-Solver++ - DDIM paired by sampling seed (the same initial noise
for both; :func:`~conprediff.evaluation.paired_difference`). Two floors stand beside them:

* the **sampling-noise floor**: the pooled within-cell s.d. of FID over sampling seeds (as in
  ``benchmarks/sampling_noise.py``): differences between cells below it are noise;
* the **ideal-model floor**: the FID of a model that samples the data distribution itself, at
  this number of samples (``Evaluator.floor`` of ``benchmarks/ablation_eval.py``).

The table and a figure go to ``--out`` (default ``docs/benchmarks/sampler_quality.md`` and
``.png`` beside it) with the command and the machine; ``--quick`` is a smoke run of the
plumbing (a tiny model, seconds) that writes under ``outputs/`` instead.

    python benchmarks/sampler_quality.py --train-steps 3000 --n-samples 2000
    python benchmarks/sampler_quality.py --model path/to/model.safetensors
    python benchmarks/sampler_quality.py --quick
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablation_eval import Evaluator  # noqa: E402
from common import atomic_json, machine_cores  # noqa: E402

from conprediff import ConPreDiffModel  # noqa: E402
from conprediff.backbones.unet import UNet  # noqa: E402
from conprediff.data import load_digits_images, load_mnist_images  # noqa: E402
from conprediff.evaluation import (  # noqa: E402
    FeatureExtractor,
    finite_summary,
    frechet_distance_from_features,
    paired_difference,
)

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks" / "sampler_quality_{dataset}.md"
SAMPLERS = ("ddim", "dpmpp_2m")
LABELS = {"ddim": "DDIM (eta = 0)", "dpmpp_2m": "DPM-Solver++(2M)", "ddpm": "DDPM (ancestral)"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None,
                    help="a fitted model file (default: train a digits model, cached)")
    ap.add_argument("--dataset", choices=("digits", "mnist"), default="digits",
                    help="digits (embedded) or mnist (MNIST-5k, 28x28; the [mnist] extra)")
    ap.add_argument("--size", type=int, default=16, help="digits side (a trained model's own)")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                    help="training precision (sampling is float32)")
    ap.add_argument("--train-steps", type=int, default=3000)
    ap.add_argument("--timesteps", type=int, default=1000)
    ap.add_argument("--base-channels", type=int, default=32)
    ap.add_argument("--channel-mults", type=int, nargs="+", default=[1, 2, 2])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=0, help="training seed")
    ap.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=sorted(LABELS))
    ap.add_argument("--steps", type=int, nargs="+", default=[10, 15, 25, 50])
    ap.add_argument("--n-samples", type=int, default=2000, help="samples per FID")
    ap.add_argument("--sample-seeds", type=int, nargs="+", default=[1000, 1001, 1002])
    ap.add_argument("--classifier-epochs", type=int, default=30)
    ap.add_argument("--floor-repeats", type=int, default=40)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cache-dir", default=os.environ.get(
        "CONPREDIFF_CACHE", str(Path.home() / ".cache" / "conprediff")) + "/sampler_quality")
    ap.add_argument("--out", type=Path, default=None,
                    help=f"markdown file, the figure beside it (default {DOC.relative_to(ROOT)})")
    ap.add_argument("--quick", action="store_true", help="smoke run: a tiny model, seconds")
    args = ap.parse_args(argv)
    if args.quick:
        args.size, args.train_steps, args.timesteps, args.base_channels = 8, 20, 50, 8
        args.channel_mults, args.steps, args.n_samples = [1, 2], [5, 10], 64
        args.sample_seeds, args.classifier_epochs, args.floor_repeats = [1, 2], 1, 3
        args.cache_dir = str(Path(args.cache_dir) / "quick")
        args.out = args.out or ROOT / "outputs" / "sampler_quality_quick.md"
    args.out = args.out or Path(str(DOC).format(dataset=args.dataset))
    return args


def get_model(args: argparse.Namespace, images: torch.Tensor) -> tuple[ConPreDiffModel, str]:
    """The model of ``--model``, or a digits model trained (once) and cached; and its name."""
    if args.model is not None:
        return ConPreDiffModel.load(args.model, device=args.device), str(args.model)
    keys = ("dataset", "size", "train_steps", "timesteps", "base_channels", "channel_mults",
            "batch_size", "lr", "seed", "precision")
    cfg = {k: getattr(args, k) for k in keys}
    key = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(args.cache_dir) / f"{args.dataset}-{args.train_steps}steps-{key}.safetensors"
    if path.is_file():
        print(f"loading {path}")
        return ConPreDiffModel.load(path, device=args.device), f"{path.name} (cached)"
    print(f"training {args.train_steps} steps on {len(images)} {args.dataset} images")
    model = ConPreDiffModel(
        backbone=UNet(base_channels=args.base_channels, channel_mults=tuple(args.channel_mults)),
        timesteps=args.timesteps, max_steps=args.train_steps, lr=args.lr,
        batch_size=args.batch_size, device=args.device, seed=args.seed,
        precision=args.precision, verbose=1,
    ).fit(images)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return model, f"{path.name} (trained here)"


def run(args: argparse.Namespace, model: ConPreDiffModel, evaluate: Evaluator) -> dict:
    """``{sampler: {steps: [record per sampling seed]}}`` with FID, cbFID and seconds."""
    res: dict = {}
    for name in args.samplers:
        for k in args.steps:
            for s in args.sample_seeds:
                t0 = time.perf_counter()
                samples = model.sample(args.n_samples, steps=k, sampler=name, seed=s)
                seconds = time.perf_counter() - t0
                f = evaluate.features(samples)
                rec = {"seed": s, "seconds": seconds,
                       "fid": frechet_distance_from_features(evaluate.real, f),
                       **evaluate.class_metrics(f)}
                res.setdefault(name, {}).setdefault(k, []).append(rec)
                print(f"{name:>9} {k:>4} steps seed {s}: FID {rec['fid']:.3f} "
                      f"({seconds:.1f} s)", flush=True)
    return res


def noise_floor(res: dict, metric: str = "fid") -> float:
    """Pooled within-cell s.d. of ``metric`` over the sampling seeds (NaN with one seed)."""
    variances = [finite_summary([r.get(metric, math.nan) for r in recs])[1] ** 2
                 for by_steps in res.values() for recs in by_steps.values()]
    return math.sqrt(np.nanmean(variances)) if variances else math.nan


def cell(recs: list[dict], metric: str) -> str:
    mean, sd, _ = finite_summary([r.get(metric, math.nan) for r in recs])
    return f"{mean:.2f} ± {sd:.2f}" if math.isfinite(sd) else f"{mean:.2f}"


def table(args: argparse.Namespace, res: dict) -> list[str]:
    """Markdown rows: FID and cbFID per sampler and steps, and DPM-Solver++ - DDIM paired."""
    lines = ["| sampler | steps | FID (mean ± s.d. over seeds) | cbFID | seconds per draw |",
             "|---|---|---|---|---|"]
    for name, by_steps in res.items():
        for k, recs in by_steps.items():
            secs = np.mean([r["seconds"] for r in recs])
            lines.append(f"| {LABELS[name]} | {k} | {cell(recs, 'fid')} | "
                         f"{cell(recs, 'fid_class_balanced')} | {secs:.1f} |")
    if "ddim" in res and "dpmpp_2m" in res:
        lines += ["", "DPM-Solver++(2M) - DDIM, paired by sampling seed (negative favours "
                  "DPM-Solver++):", "",
                  "| steps | FID difference [95 % CI] | per seed | in favour |",
                  "|---|---|---|---|"]
        for k in args.steps:
            a = [r["fid"] for r in res["dpmpp_2m"][k]]
            b = [r["fid"] for r in res["ddim"][k]]
            p = paired_difference(a, b)
            lines.append(f"| {k} | {p.mean:+.2f} [{p.low:+.2f}, {p.high:+.2f}] | "
                         f"{', '.join(f'{d:+.2f}' for d in p.differences)} | "
                         f"{p.n_favour}/{p.n} |")
    return lines


def figure(res: dict, floor: dict, noise: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, by_steps in res.items():
        ks = sorted(by_steps)
        stats = [finite_summary([r["fid"] for r in by_steps[k]]) for k in ks]
        ax.errorbar(ks, [s[0] for s in stats], yerr=[s[1] for s in stats], marker="o",
                    capsize=3, label=LABELS[name])
    level = floor.get("fid", math.nan)
    if math.isfinite(level):
        ax.axhline(level, color="grey", ls="--", label="ideal-model floor")
        if math.isfinite(noise):
            ax.axhspan(level, level + noise, color="grey", alpha=0.15,
                       label="floor + sampling-noise s.d.")
    ax.set_xscale("log")
    ks = sorted({k for by_steps in res.values() for k in by_steps})
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    ax.legend(fontsize=8)
    ax.set_xlabel("sampling steps")
    ax.set_ylabel("FID (LeNet features)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_page(args: argparse.Namespace, res: dict, floor: dict, model_name: str,
               n_real: int, command: str) -> None:
    noise = noise_floor(res)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    png = args.out.with_suffix(".png")
    title = f"{model_name.split(' (')[0]}: FID against steps, {args.n_samples} samples"
    figure(res, floor, noise, png, title)
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    doc = [
        "# Sample quality against sampling steps: DDIM and DPM-Solver++(2M)", "",
        "```", command, "```", "",
        f"Run {date} on {machine_cores()}.", "",
        f"* Model: {model_name}; real set: {n_real} {args.dataset} images at "
        f"{args.size}×{args.size}.",
        f"* {args.n_samples} samples per FID, sampling seeds {args.sample_seeds} (the same "
        "initial noise for every sampler at a seed); FID in the features of the library's "
        f"LeNet ({args.classifier_epochs} epochs on the real set), cbFID its class-balanced "
        "version.",
        f"* Ideal-model floor (a model sampling the data itself, {args.n_samples} samples): FID "
        f"{floor.get('fid', math.nan):.2f}, cbFID {floor.get('fid_class_balanced', math.nan):.2f}"
        f"; copy level {floor.get('copy_fid', math.nan):.2f}.",
        f"* Sampling-noise floor (pooled within-cell s.d. over seeds): FID {noise:.2f}, cbFID "
        f"{noise_floor(res, 'fid_class_balanced'):.2f}.", "",
        *table(args, res), "",
        f"![FID against steps]({png.name})", "",
    ]
    args.out.write_text("\n".join(doc))
    atomic_json(args.out.with_suffix(".json"), {"command": command, "floor": floor,
                                                "results": res})
    print("\n".join(doc[8:]))
    print(f"wrote {args.out} and {png}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    command = "python benchmarks/sampler_quality.py " + " ".join(
        map(shlex.quote, sys.argv[1:] if argv is None else argv))
    if args.dataset == "mnist":
        images, labels = load_mnist_images()
        args.size = int(images.shape[-1])
    else:
        images, labels = load_digits_images(size=args.size)
    model, model_name = get_model(args, images)
    model.verbose = 0
    if tuple(model.image_shape_[1:]) != (args.size, args.size):
        raise SystemExit(f"the model's images are {model.image_shape_}: pass --size to match")
    dev = None if args.device == "auto" else args.device
    extractor = FeatureExtractor(cache_dir=args.cache_dir, epochs=args.classifier_epochs,
                                 device=dev, verbose=0).fit(images, labels)
    evaluate = Evaluator(extractor, images, kid_subset_size=min(1000, args.n_samples))
    floor = evaluate.floor(args.n_samples, repeats=args.floor_repeats)
    res = run(args, model, evaluate)
    write_page(args, res, floor, model_name, len(images), command)


if __name__ == "__main__":
    main()
