"""Ablation: ConPreDiff against the same backbone without context prediction, with paired seeds.

Every arm (the baseline, ``context=None``, and each ConPreDiff variant) is trained with the same
seeds: with the same seed the estimator gives both arms the same backbone initialisation, the same
batches, timesteps and noise (separate generators), so the only difference within a pair is the
context term. Every model samples with the same noise (``sample(seed=--sample-seed)``, DDIM) from
its EMA weights (decay 0.999 with warm-up). FID, precision/recall and KID are computed in the
features of a LeNet trained on the data set (cached) at several checkpoints of training: each
(arm, seed) run is trained in segments, ``max_steps`` increasing and ``resume='latest'`` from its
own checkpoint folder (constant learning rate, so the segments are exactly one long run), and
sampled at the end of each segment.

The report gives, per ConPreDiff arm and step, each paired difference (ConPreDiff - baseline FID,
same seed), their mean with a 95 % t-interval and the fraction of pairs in ConPreDiff's favour; the
same at equal wall-clock time (the baseline's FID and class-balanced FID interpolated at the
arm's cumulative training time, the baseline being trained on past the last step for that
purpose); precision, recall and
KID; a markdown table and a figure (FID against steps, mean +- s.d. over seeds).

Resumable: one JSON per (arm, seed, step) under ``--out``; a rerun skips the finished ones and
resumes training from the checkpoints. ``--report-only`` rewrites the report from what is there.

    python benchmarks/ablation.py --quick                       # smoke run (numbers mean nothing)
    python benchmarks/ablation.py --estimate                    # projected wall time of the run
    python benchmarks/ablation.py --dataset digits --seeds 5    # the main comparison
    python benchmarks/ablation.py --sweep strides lambda metric target point-fraction
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablation_archive import archive_results, restore_archive  # noqa: E402
from ablation_eval import Evaluator, backfill, make_extractor, read_floor  # noqa: E402
from ablation_report import (  # noqa: E402
    against_default_section,
    equal_time_rows,
    paired,
    signed,
    write_report,
)
from ablation_run import (  # noqa: E402
    estimate,
    latest_step,
    load_results,
    restore,
    result_path,
    run_one,
    run_parallel,
)
from ablation_setup import (  # noqa: E402
    BASELINE,
    DEFAULT,
    SWEEPS,
    Protocol,
    arm_catalogue,
    arm_steps,
    config_key,
    context_base_text,
    eval_grid,
    load_data,
    load_protocol,
    make_model,
    parse_context_base,
    saved_protocol,
    select_arms,
    slug,
)
from common import atomic_json, machine_cores  # noqa: E402

from conprediff.evaluation import finite_summary, t_interval  # noqa: E402

# the names other scripts and the tests import from here
__all__ = [
    "BASELINE", "DEFAULT", "Evaluator", "Protocol", "against_default_section", "archive_results",
    "arm_catalogue", "atomic_json", "config_key", "context_base_text", "equal_time_rows",
    "finite_summary", "latest_step", "load_data", "load_protocol", "load_results", "machine",
    "main", "make_extractor", "make_model", "paired", "parse_context_base", "read_floor",
    "restore", "restore_archive", "select_arms", "signed", "slug", "t_interval",
]

machine = machine_cores


def _arm_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--dataset", choices=["digits", "mnist"], default="digits")
    ap.add_argument("--sweep", nargs="+", default=["main"],
                    choices=["main", "all", *[k for k in SWEEPS if k != "main"]],
                    help="groups of ConPreDiff arms (the baseline is always run)")
    ap.add_argument("--arms", nargs="+", default=None,
                    help="more arms by name (see --list-arms)")
    ap.add_argument("--list-arms", action="store_true", help="print the arms and exit")
    ap.add_argument("--context-base", nargs="+", default=None, metavar="NAME=VALUE",
                    help="ContextPrediction arguments under every arm, recorded in the "
                         "protocol (e.g. point_fraction=0.5 to continue a folder whose arms were "
                         "run before that default changed)")
    ap.add_argument("--seeds", type=int, default=None,
                    help="number of paired seeds (default 5; --quick: 2)")
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--steps", default=None,
                    help="comma-separated evaluation steps (default digits "
                         "1000,2000,4000,6000,8000; mnist 2000,4000,8000,12000,16000)")
    ap.add_argument("--wallclock-factor", type=float, default=1.25,
                    help="the baseline is trained on to this multiple of the last step (one "
                         "extra evaluation) for the equal wall-clock comparison; 1 disables")


def _protocol_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--n-samples", type=int, default=5000, help="samples per evaluation")
    ap.add_argument("--sample-steps", type=int, default=50, help="DDIM steps")
    ap.add_argument("--sample-seed", type=int, default=1234, help="the same for every model")
    ap.add_argument("--base-channels", type=int, default=32)
    ap.add_argument("--channel-mults", default="1,2,2")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--lr-warmup-steps", type=int, default=100)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--ema-decay", type=float, default=0.999)
    ap.add_argument("--timesteps", type=int, default=1000)
    ap.add_argument("--classifier-epochs", type=int, default=30)


def _run_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--out", default=None,
                    help="results and checkpoints (default outputs/ablation/<dataset>)")
    ap.add_argument("--docs", default=None,
                    help="where the table and figure go (default docs/benchmarks; --quick: --out)")
    ap.add_argument("--cache-dir", default=None, help="feature classifier cache")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (with --workers: per worker; default the CPU "
                         "cores shared out)")
    ap.add_argument("--workers", type=int, default=1,
                    help="(arm, seed) runs trained at once, each in its own process: for a GPU, "
                         "which one small model leaves mostly idle. Their training times are "
                         "then measured under each other's load, so the equal wall-clock "
                         "comparison is not reliable; equal steps are unaffected")
    ap.add_argument("--verbose", type=int, default=0, help="1: training/sampling bars too")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 2 seeds, 20 steps, 64 samples, a tiny UNet")
    ap.add_argument("--estimate", action="store_true",
                    help="print the projected wall time of the run from a short timing")
    ap.add_argument("--estimate-steps", type=int, default=10,
                    help="training steps timed per arm by --estimate")
    ap.add_argument("--prepare", action="store_true",
                    help="write the protocol, train (or load) the feature classifier and measure "
                         "the noise floor into --out, then stop: e.g. on a CPU before a timed GPU "
                         "run that carries --out and --cache-dir along")
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite the table and figure from the results on disk")
    ap.add_argument("--restore-archive", type=Path, default=None, metavar="JSON",
                    help="first write the results of a report's archive (docs/benchmarks/"
                         "ablation_<name>_results.json) that --out lacks into --out, e.g. after "
                         "outputs/ was lost; then run or report as usual")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _arm_args(ap)
    _protocol_args(ap)
    _run_args(ap)
    args = ap.parse_args(argv)
    args.steps_given = args.steps is not None
    if args.quick:
        args.seeds = args.seeds or 2
        args.steps = args.steps or "10,20"
        args.n_samples, args.sample_steps = 64, 10
        args.base_channels, args.channel_mults = 16, "1,2"
        args.classifier_epochs = 2
        args.threads = args.threads or 1  # a smoke run should not crowd the machine
        args.out = args.out or f"outputs/ablation-quick/{args.dataset}"
        args.cache_dir = args.cache_dir or f"{args.out}/cache"
    args.seeds = args.seeds or 5
    args.steps = args.steps or {"digits": "1000,2000,4000,6000,8000",
                                "mnist": "2000,4000,8000,12000,16000"}[args.dataset]
    args.out = Path(args.out or f"outputs/ablation/{args.dataset}")
    args.docs = Path(args.docs or (args.out if args.quick else "docs/benchmarks"))
    return args




def protocol_from_args(args: argparse.Namespace) -> Protocol:
    """The protocol the flags ask for."""
    return Protocol(
        dataset=args.dataset, size=16 if args.dataset == "digits" else 28,
        base_channels=args.base_channels,
        channel_mults=tuple(int(c) for c in args.channel_mults.split(",")),
        batch_size=args.batch_size, lr=args.lr, lr_warmup_steps=args.lr_warmup_steps,
        grad_clip=args.grad_clip, ema_decay=args.ema_decay, timesteps=args.timesteps,
        n_samples=args.n_samples, sample_steps=args.sample_steps, sample_seed=args.sample_seed,
        classifier_epochs=args.classifier_epochs, kid_subset_size=min(1000, args.n_samples),
        context_base=parse_context_base(args.context_base),
    )


def step_grids(args: argparse.Namespace, out: Path) -> tuple[list[int], list[int], int]:
    """The arms' evaluation steps, the baseline's and the checkpoint interval; a report of what
    is on disk takes its steps from there unless ``--steps`` says otherwise."""
    given = args.steps
    if args.report_only and not args.steps_given:
        on_disk = load_results(out)
        given = ",".join(str(k) for k in sorted(
            {step for (a, _, step) in on_disk if a != BASELINE})) or given
    steps, base_steps, every = eval_grid([int(s) for s in given.split(",")],
                                         args.wallclock_factor)
    if args.report_only and not args.steps_given:
        base_steps = sorted({step for (a, _, step) in load_results(out) if a == BASELINE}
                            | set(steps))
    return steps, base_steps, every


def check_protocol(out: Path, p: Protocol) -> None:
    """Write ``out/protocol.json``, or refuse an ``out`` whose results had another protocol."""
    proto_path = out / "protocol.json"
    if not proto_path.is_file():
        atomic_json(proto_path, asdict(p))
        return
    old = saved_protocol(json.loads(proto_path.read_text()))
    new = json.loads(json.dumps(asdict(p)))
    if old != new:
        diff = {k: (old.get(k), v) for k, v in new.items() if old.get(k) != v}
        hint = ""
        if "context_base" in diff:
            hint = (" or pass --context-base " + context_base_text(old["context_base"], " ")
                    if old["context_base"] else " or leave out --context-base")
        raise SystemExit(f"{out} holds results of another protocol {diff}; use another --out"
                         + hint)


def prepare(args: argparse.Namespace, p: Protocol, out: Path, images: torch.Tensor,
            labels: torch.Tensor) -> tuple[Evaluator, float]:
    """The feature classifier (trained or loaded) and the evaluator; the class metrics of earlier
    results and the noise floor where missing; returns the evaluator and the held-out
    accuracy."""
    extractor = make_extractor(p, images, labels, args.cache_dir, args.device)
    accuracy = extractor.test_accuracy_
    atomic_json(out / "classifier.json", {"test_accuracy": accuracy,
                                          "cache": str(extractor.cache_path_)})
    evaluate = Evaluator(extractor, images, p.kid_subset_size)
    filled = backfill(out, evaluate)
    if filled:
        print(f"added the class-balanced FID to {filled} earlier results from their features")
    if read_floor(out, p.n_samples, len(images)) is None:
        # a smoke run's floor only needs to exist: 8 splits per size instead of 200
        atomic_json(out / "floor.json", evaluate.floor(
            p.n_samples, **({"repeats": 4, "groups": 2} if args.quick else {})))
    if args.prepare:
        print(f"prepared {out}: protocol, feature classifier (held-out accuracy "
              f"{accuracy:.4f}, {extractor.cache_path_}) and noise floor")
    return evaluate, accuracy


def run_all(args: argparse.Namespace, p: Protocol, out: Path, arms: list[str], catalogue: dict,
            seeds: list[int], grids: tuple[list[int], list[int], int], images: torch.Tensor,
            evaluate: Evaluator) -> None:
    """Every (arm, seed) run to every evaluation step not yet on disk."""
    steps, base_steps, every = grids
    jobs = [(arm, seed) for seed in seeds for arm in arms]
    total = sum(len(arm_steps(a, steps, base_steps)) for a, _ in jobs)
    with tqdm(total=total, desc="ablation (arm, seed, step)", dynamic_ncols=True) as bar:
        bar.update(sum(result_path(out, a, s, k).is_file() for a, s in jobs
                       for k in arm_steps(a, steps, base_steps)))
        if args.workers > 1:
            threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
            run_parallel(p, jobs, catalogue, steps, base_steps, every, out, args.cache_dir,
                         args.device, args.workers, threads, bar)
            return
        for arm, seed in jobs:
            run_one(p, arm, catalogue[arm], seed, arm_steps(arm, steps, base_steps), every, out,
                    images, evaluate, args.device, args.verbose, bar)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    p = protocol_from_args(args)
    out: Path = args.out
    if args.restore_archive is not None:
        n = restore_archive(args.restore_archive, out)
        print(f"restored {n} results from {args.restore_archive} into {out}")
    if (args.report_only or args.list_arms) and (out / "protocol.json").is_file():
        # the report describes what is on disk, whatever the flags say about the protocol
        p = load_protocol(out)
    catalogue = arm_catalogue(p.timesteps, p.context_base)
    if args.list_arms:
        for name, kw in catalogue.items():
            print(f"{name:<22}{config_key(kw)}")
        return
    arms, aliases = select_arms(args, p.timesteps, p.context_base)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    steps, base_steps, every = step_grids(args, out)
    command = "python benchmarks/ablation.py " + " ".join(sys.argv[1:] if argv is None else argv)
    images, labels = load_data(args.dataset, p.size)
    print(f"{args.dataset}: {tuple(images.shape)}; arms {arms}"
          + (f" (aliases {aliases})" if aliases else "")
          + f"; seeds {seeds}; steps {steps}; baseline steps {base_steps}; checkpoint every "
          f"{every}; out {args.out}")
    if args.estimate:
        estimate(p, arms, catalogue, seeds, steps, base_steps, images, args.device,
                 args.estimate_steps)
        return
    accuracy = None
    if not args.report_only:
        check_protocol(out, p)
        evaluate, accuracy = prepare(args, p, out, images, labels)
        if args.prepare:
            return
        run_all(args, p, out, arms, catalogue, seeds, (steps, base_steps, every), images,
                evaluate)
    elif (out / "classifier.json").is_file():
        accuracy = json.loads((out / "classifier.json").read_text())["test_accuracy"]
    path = write_report(out, args.docs, arms, aliases, seeds, steps, base_steps, p, command,
                        accuracy, args.quick, report_only=args.report_only)
    print(f"\nwrote {path}\n")
    print(path.read_text())


if __name__ == "__main__":
    main()
