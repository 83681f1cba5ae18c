"""Latent baseline against latent ConPreDiff, trained towards the baseline's plateau.

One :class:`~conprediff.autoencoders.KLAutoencoder` is fitted once (seed 0) and shared by
every run. For each seed, the latent baseline (``context=None``) and latent ConPreDiff (the
library's default ``ContextPrediction()``) train with the same seed, hence the same backbone
initialisation, batches, timesteps and noise, and are evaluated at each of ``--steps`` (a run is
extended by resuming its checkpoint: with a constant learning rate the extended run is the run
that would have gone on). At each step ``--n-samples`` images are drawn with DPM-Solver++(2M),
``--sample-steps`` steps, one sampling seed shared by both arms, and scored against the data in
the features of the library's LeNet trained on the data (FID, class-balanced FID, precision,
recall). Two floors stand beside them: the autoencoder's (the FID of its reconstructions of the
data: no latent model can do better) and the ideal-model floor at this number of samples.

Runs are independent processes (``--workers``, one thread each); results are written per
(arm, seed, step) and reused, so an interrupted benchmark continues. The report (table, plot)
goes to ``--docs`` (default ``docs/benchmarks/latent_{dataset}.md``).

    python benchmarks/latent_plateau.py --dataset mnist --seeds 5 --workers 2
    python benchmarks/latent_plateau.py --dataset photos --seeds 5 --workers 2
    python benchmarks/latent_plateau.py --quick   # a smoke run of the plumbing, seconds
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablation_eval import Evaluator  # noqa: E402
from common import atomic_json, machine_cores, run_jobs  # noqa: E402

from conprediff import ConPreDiffModel, ContextPrediction, UNet  # noqa: E402
from conprediff.autoencoders import KLAutoencoder  # noqa: E402
from conprediff.data import load_mnist_images, load_photo_crops  # noqa: E402
from conprediff.evaluation import FeatureExtractor, paired_difference  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("baseline", "conprediff")


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", choices=("mnist", "photos"), default="mnist")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--steps", default="500,1000,2000")
    ap.add_argument("--factor", type=int, default=4, help="autoencoder downsampling factor")
    ap.add_argument("--latent-channels", type=int, default=4)
    ap.add_argument("--ae-steps", type=int, default=1500)
    ap.add_argument("--ae-base-channels", type=int, default=16)
    ap.add_argument("--ae-batch-size", type=int, default=32)
    ap.add_argument("--channel-mults", default="1,2", help="UNet levels on the latent grid")
    ap.add_argument("--base-channels", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--n-samples", type=int, default=1000)
    ap.add_argument("--sample-steps", type=int, default=25)
    ap.add_argument("--classifier-epochs", type=int, default=15)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=None, help="work folder (default outputs/latent/DATASET)")
    ap.add_argument("--docs", default=None, help="report (default docs/benchmarks/latent_*.md)")
    ap.add_argument("--job", default=None, help=argparse.SUPPRESS)  # ARM:SEED, one worker's run
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny, seconds, not results")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.ae_steps, args.n_samples = 2, "4,8", 10, 64
        args.base_channels, args.classifier_epochs, args.sample_steps = 8, 1, 4
        args.ae_base_channels = 8
    args.steps = [int(s) for s in args.steps.split(",")]
    args.out = Path(args.out or f"outputs/latent{'-quick' if args.quick else ''}/{args.dataset}")
    default_docs = args.out if args.quick else ROOT / "docs" / "benchmarks"
    args.docs = Path(args.docs or default_docs) / f"latent_{args.dataset}.md"
    return args


def load(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    if args.dataset == "mnist":
        x, y = load_mnist_images()
        x = torch.nn.functional.pad(x, (2, 2, 2, 2), value=-1.0)  # 32 x 32: an 8 x 8 grid, f=4
    else:
        x, y = load_photo_crops(size=32)
    return (x[::20], y[::20]) if args.quick else (x, y)


def autoencoder(args: argparse.Namespace, x: torch.Tensor) -> KLAutoencoder:
    path = args.out / "autoencoder.safetensors"
    if path.is_file():
        return KLAutoencoder.load(path)
    ae = KLAutoencoder(latent_channels=args.latent_channels, downsampling_factor=args.factor,
                       base_channels=args.ae_base_channels, batch_size=args.ae_batch_size,
                       max_steps=args.ae_steps, seed=0, device="cpu",
                       verbose=1).fit(x)
    ae.save(path)
    return ae


def extractor(args: argparse.Namespace, x: torch.Tensor, y: torch.Tensor) -> FeatureExtractor:
    return FeatureExtractor(cache_dir=args.out / "cache", epochs=args.classifier_epochs,
                            device="cpu").fit(x, y)


def model(args: argparse.Namespace, arm: str, seed: int, ae: KLAutoencoder) -> ConPreDiffModel:
    levels = tuple(int(c) for c in args.channel_mults.split(","))
    return ConPreDiffModel(
        backbone=UNet(base_channels=args.base_channels, channel_mults=levels),
        context=ContextPrediction() if arm == "conprediff" else None, autoencoder=ae,
        lr=args.lr, lr_warmup_steps=100, batch_size=args.batch_size, seed=seed, verbose=0,
        device="cpu", checkpoint_dir=args.out / "runs" / arm / f"seed{seed}",
        checkpoint_every=min(args.steps), keep_checkpoints=1)


def result_path(args: argparse.Namespace, arm: str, seed: int, step: int) -> Path:
    return args.out / "results" / arm / f"seed{seed}" / f"step{step}.json"


def run_job(args: argparse.Namespace, arm: str, seed: int) -> None:
    """Train one (arm, seed) through every step of ``--steps``, evaluating at each."""
    torch.set_num_threads(1)
    x, y = load(args)
    ae = autoencoder(args, x)
    evaluator = Evaluator(extractor(args, x, y), x, kid_subset_size=min(1000, args.n_samples))
    m = model(args, arm, seed, ae)
    for step in args.steps:
        out = result_path(args, arm, seed, step)
        if out.is_file():
            continue
        t0 = time.perf_counter()
        m.set_params(max_steps=step)
        m.fit(x, resume="latest")
        seconds = time.perf_counter() - t0
        samples = m.sample(args.n_samples, steps=args.sample_steps, sampler="dpmpp_2m",
                           seed=12345)
        metrics = evaluator(evaluator.features(samples))
        atomic_json(out, {"arm": arm, "seed": seed, "step": step, "train_seconds": seconds,
                          **metrics})
        print(f"{arm} seed {seed} step {step}: FID {metrics['fid']:.3f}", flush=True)


def prepare(args: argparse.Namespace) -> dict:
    """The shared work before any run: autoencoder, feature classifier, floors."""
    path = args.out / "prepared.json"
    if path.is_file():
        return json.loads(path.read_text())
    x, y = load(args)
    ae = autoencoder(args, x)
    ext = extractor(args, x, y)
    evaluator = Evaluator(ext, x, kid_subset_size=min(1000, args.n_samples))
    recon = ae.reconstruct(x)
    floor = evaluator.floor(args.n_samples, repeats=10, groups=3)
    with torch.no_grad():
        shape = list(ae.encode(x[:1]).shape[1:])
    info = {"reconstruction": ae.evaluate(x), "scaling_factor": ae.scaling_factor,
            "latent_shape": shape,
            "reconstruction_metrics": evaluator(evaluator.features(recon)),
            "floor": floor, "classifier_accuracy": ext.test_accuracy_,
            "ae_loss_last": float(np.mean(ae.loss_history_.get("rec", [np.nan])[-50:]))}
    atomic_json(path, info)
    return info


def run_all(args: argparse.Namespace, argv: list[str]) -> None:
    run_jobs(__file__, argv, [f"{arm}:{seed}" for seed in range(args.seeds) for arm in ARMS],
             args.workers)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    if args.job:
        arm, seed = args.job.split(":")
        run_job(args, arm, int(seed))
        return
    info = prepare(args)
    if not args.report_only:
        run_all(args, argv)
    from latent_report import write_report

    command = "python benchmarks/latent_plateau.py " + " ".join(shlex.quote(a) for a in argv)
    print(write_report(args, info, command, machine_cores(), paired_difference))


if __name__ == "__main__":
    main()
