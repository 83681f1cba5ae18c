"""How much of the ablation's FID spread is sampling noise? Resample trained checkpoints.

The ablation (``benchmarks/ablation.py``) samples every model with the same noise
(``--sample-seed``), so its paired differences contain no sampling noise *between the arms'
inputs*, but each FID still depends on the one noise draw, and two models map the same noise to
different images. This script takes the newest checkpoint of each (arm, seed) run in an ablation
output folder and samples it with several sampling seeds (same number of samples and DDIM steps as
the ablation's protocol). It reports, per run, FID per draw, its mean and s.d., and the mean term
``|mu_fake - mu_real|^2`` of each FID (the part a shift in class proportions moves). With the
baseline and other arms present it also reports, per arm, the paired differences (arm - baseline,
same training seed) per sampling seed and on the FIDs averaged over the draws, with 95 %
t-intervals. Results are written to ``<out>/sampling_noise.json`` and each draw's features to
``<out>/sampling_noise/<arm>/seed<s>/draw<sample seed>.npy`` (float32), so other metrics can be
computed later; a rerun skips the (arm, seed, sampling seed) triples already there.

    python benchmarks/sampling_noise.py --out outputs/ablation/digits \\
        --arms baseline conprediff --sample-seeds 1234 10000 10001 10002 10003
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablation_eval import Evaluator, make_extractor  # noqa: E402
from ablation_run import latest_step, restore  # noqa: E402
from ablation_setup import (  # noqa: E402
    BASELINE,
    Protocol,
    arm_catalogue,
    load_data,
    load_protocol,
    slug,
)
from common import atomic_json, machine_cores  # noqa: E402

from conprediff.evaluation import finite_summary, paired_difference  # noqa: E402


def _key(arm: str, seed: int, sample_seed: int) -> str:
    return f"{arm}|{seed}|{sample_seed}"


def _ci(mean: float, low: float, high: float) -> str:
    return f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]"


def paired_report(records: dict[str, dict], sample_seeds: list[int], metric: str = "fid"
                  ) -> list[str]:
    """Markdown lines: per arm, paired differences of ``metric`` against the baseline."""
    runs: dict[str, dict[int, dict[int, float]]] = {}
    steps: dict[tuple[str, int], int] = {}
    for r in records.values():
        if r["sample_seed"] in sample_seeds and metric in r:
            runs.setdefault(r["arm"], {}).setdefault(r["seed"], {})[r["sample_seed"]] = r[metric]
            steps[r["arm"], r["seed"]] = r["step"]
    if BASELINE not in runs:
        return []
    base = runs[BASELINE]
    lines = ["", f"Paired differences of {metric}, arm - baseline (same training seed; negative "
             "favours the arm):", "",
             "| arm | over | pairs | mean diff [95 % CI] | in favour | ratio of means |",
             "|---|---|---|---|---|---|"]
    for arm, by_seed in runs.items():
        if arm == BASELINE:
            continue
        seeds = sorted(s for s in by_seed if s in base)
        for ss in sample_seeds:
            ok = [s for s in seeds if ss in by_seed[s] and ss in base[s]]
            if ok:
                r = paired_difference([by_seed[s][ss] for s in ok], [base[s][ss] for s in ok])
                lines.append(f"| {arm} | draw {ss} | {r.n} | {_ci(r.mean, r.low, r.high)} | "
                             f"{r.n_favour}/{r.n} | {r.ratio_of_means:.3f} |")
        full = [s for s in seeds if all(ss in by_seed[s] and ss in base[s] for ss in sample_seeds)]
        if full:
            r = paired_difference([np.mean([by_seed[s][ss] for ss in sample_seeds]) for s in full],
                                  [np.mean([base[s][ss] for ss in sample_seeds]) for s in full])
            lines.append(f"| {arm} | **mean of {len(sample_seeds)} draws** | {r.n} | "
                         f"**{_ci(r.mean, r.low, r.high)}** | {r.n_favour}/{r.n} | "
                         f"{r.ratio_of_means:.3f} |")
        mism = {(steps[arm, s], steps[BASELINE, s]) for s in seeds}
        if any(x != y for x, y in mism):
            lines.append(f"| {arm} | (steps arm/baseline: "
                         f"{', '.join(f'{x}/{y}' for x, y in sorted(mism))}) | | | | |")
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="outputs/ablation/digits", help="an ablation output folder")
    ap.add_argument("--arms", nargs="+", default=None,
                    help="arms to resample (default: every arm with checkpoints)")
    ap.add_argument("--seeds", nargs="+", type=int, default=None,
                    help="training seeds to resample (default: all with checkpoints)")
    ap.add_argument("--sample-seeds", nargs="+", type=int, default=None,
                    help="sampling seeds (default: --n-seeds from --first-sample-seed)")
    ap.add_argument("--n-seeds", type=int, default=5, help="sampling seeds per checkpoint")
    ap.add_argument("--first-sample-seed", type=int, default=10_000)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cache-dir", default=None, help="feature classifier cache")
    return ap.parse_args(argv)


def draw_path(out: Path, arm: str, seed: int, sample_seed: int) -> Path:
    """Where the features of one draw are kept (float32 ``.npy``)."""
    return out / "sampling_noise" / slug(arm) / f"seed{seed}" / f"draw{sample_seed}.npy"


def resample(out: Path, p: Protocol, arm: str, seed: int, step: int, todo: list[int],
             images: Any, evaluate: Evaluator, records: dict[str, dict], device: str) -> None:
    """Sample the run's newest checkpoint with each sampling seed in ``todo`` and record the
    metrics of each draw (``records`` is saved to disk after each)."""
    model, _ = restore(p, arm_catalogue(p.timesteps, p.context_base)[arm], seed,
                       out / "checkpoints" / slug(arm) / f"seed{seed}", images, device)
    mu_real = evaluate.real.mean(0)
    for s in todo:
        t0 = time.perf_counter()
        f = evaluate.features(model.sample(p.n_samples, steps=p.sample_steps, seed=s))
        feat_path = draw_path(out, arm, seed, s)
        feat_path.parent.mkdir(parents=True, exist_ok=True)
        np.save(feat_path, f.astype(np.float32))
        m = evaluate(f)
        records[_key(arm, seed, s)] = {
            "arm": arm, "seed": seed, "step": step, "sample_seed": s,
            "fid": m["fid"],
            **{k: m[k] for k in ("fid_class_balanced", "class_tv") if k in m},
            "mean_term": float(((f.mean(0) - mu_real) ** 2).sum()),
            "seconds": time.perf_counter() - t0,
        }
        atomic_json(out / "sampling_noise.json", records)


def print_tables(records: dict[str, dict], done_runs: list[tuple[str, int, int]],
                 sample_seeds: list[int], p: Protocol) -> None:
    """The pooled sampling noise, the table of runs and the paired differences."""
    print(f"\n{machine_cores()}; {p.n_samples} DDIM-{p.sample_steps} samples per FID, sampling "
          f"seeds {sample_seeds}")
    if len(sample_seeds) > 1:
        for metric in ("fid", "fid_class_balanced"):
            variances = [finite_summary(v)[1] ** 2 for v in (
                [records[_key(a, s, ss)].get(metric, math.nan) for ss in sample_seeds]
                for a, s, _ in done_runs)]
            print(f"pooled within-checkpoint s.d. of {metric} (sampling noise alone): "
                  f"{math.sqrt(np.nanmean(variances)):.2f}")
    print("\n| arm | seed | step | FID per sampling seed (mean term) | mean | s.d. "
          "| cbFID per sampling seed | mean | s.d. | TV mean |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for arm, seed, step in done_runs:
        rs = [records[_key(arm, seed, s)] for s in sample_seeds]
        cells = []
        for metric, extra in (("fid", "mean_term"), ("fid_class_balanced", None)):
            mean, sd, _ = finite_summary([r.get(metric, math.nan) for r in rs])
            cells += [", ".join(f"{r.get(metric, math.nan):.2f}"
                                + (f" ({r[extra]:.2f})" if extra else "") for r in rs),
                      f"{mean:.2f}", f"{sd:.2f}"]
        cells.append(f"{finite_summary([r.get('class_tv', math.nan) for r in rs])[0]:.3f}")
        print(f"| {arm} | {seed} | {step} | " + " | ".join(cells) + " |")
    wanted = {(a, s) for a, s, _ in done_runs}
    mine = {k: r for k, r in records.items() if (r["arm"], r["seed"]) in wanted}
    for metric in ("fid", "fid_class_balanced", "class_tv"):
        print("\n".join(paired_report(mine, sample_seeds, metric)))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    p = load_protocol(out)
    slugs = {slug(name): name for name in arm_catalogue(p.timesteps, p.context_base)}
    images, labels = load_data(p.dataset, p.size)
    evaluate = Evaluator(make_extractor(p, images, labels, args.cache_dir, args.device), images,
                         p.kid_subset_size)
    sample_seeds = args.sample_seeds or list(
        range(args.first_sample_seed, args.first_sample_seed + args.n_seeds))
    store = out / "sampling_noise.json"
    records: dict[str, dict] = json.loads(store.read_text()) if store.exists() else {}
    # class metrics for draws recorded before they were computed, from the saved features
    for r in records.values():
        feat_path = draw_path(out, r["arm"], r["seed"], r["sample_seed"])
        if "fid_class_balanced" not in r and feat_path.is_file():
            r.update(evaluate.class_metrics(np.load(feat_path).astype(np.float64)))
    atomic_json(store, records)

    done_runs = []
    for arm_dir in sorted((out / "checkpoints").iterdir()):
        arm = slugs.get(arm_dir.name)
        if arm is None or (args.arms and arm not in args.arms):
            continue
        for seed_dir in sorted(arm_dir.glob("seed*")):
            seed = int(seed_dir.name[4:])
            step = latest_step(seed_dir)
            if step == 0 or (args.seeds is not None and seed not in args.seeds):
                continue
            todo = [s for s in sample_seeds
                    if records.get(_key(arm, seed, s), {}).get("step") != step]
            if todo:
                resample(out, p, arm, seed, step, todo, images, evaluate, records, args.device)
            fids = [records[_key(arm, seed, s)]["fid"] for s in sample_seeds]
            done_runs.append((arm, seed, step))
            print(f"{arm:<14} seed {seed} step {step}: FID {np.mean(fids):.2f} +- "
                  f"{finite_summary(fids)[1]:.2f} over sampling seeds {sample_seeds}: "
                  f"{', '.join(f'{x:.2f}' for x in fids)}", flush=True)
    if not done_runs:
        raise SystemExit(f"no checkpoints under {out / 'checkpoints'}")
    print_tables(records, done_runs, sample_seeds, p)


if __name__ == "__main__":
    main()
