"""How much of the ablation's FID spread is sampling noise? Resample trained checkpoints.

The ablation (``benchmarks/ablation.py``) samples every model with the same noise
(``--sample-seed``), so its paired differences contain no sampling noise between the arms of a
pair, but each FID still depends on the one noise draw. This script takes the newest checkpoint of
each (arm, seed) run in an ablation output folder, samples it with ``--n-seeds`` different sampling
seeds (same number of samples and DDIM steps as the ablation's protocol) and reports, per run, the
mean and s.d. of FID over the sampling seeds. Comparing that s.d. with the seed-to-seed s.d. of the
ablation's table separates the variance due to sampling from the variance between training runs.

    python benchmarks/sampling_noise.py --out outputs/ablation/digits --n-seeds 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablation import (  # noqa: E402
    Evaluator,
    arm_catalogue,
    latest_step,
    load_data,
    load_protocol,
    machine,
    make_extractor,
    make_model,
    slug,
)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="outputs/ablation/digits", help="an ablation output folder")
    ap.add_argument("--arms", nargs="+", default=None,
                    help="arms to resample (default: every arm with checkpoints)")
    ap.add_argument("--seeds", nargs="+", type=int, default=None,
                    help="training seeds to resample (default: all with checkpoints)")
    ap.add_argument("--n-seeds", type=int, default=5, help="sampling seeds per checkpoint")
    ap.add_argument("--first-sample-seed", type=int, default=10_000)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cache-dir", default=None, help="feature classifier cache")
    args = ap.parse_args(argv)

    out = Path(args.out)
    p = load_protocol(out)
    catalogue = arm_catalogue(p.timesteps)
    slugs = {slug(name): name for name in catalogue}
    images, labels = load_data(p.dataset, p.size)
    evaluate = Evaluator(make_extractor(p, images, labels, args.cache_dir, args.device), images,
                         p.kid_subset_size)
    sample_seeds = list(range(args.first_sample_seed, args.first_sample_seed + args.n_seeds))

    rows = []
    for arm_dir in sorted((out / "checkpoints").iterdir()):
        arm = slugs.get(arm_dir.name)
        if arm is None or (args.arms and arm not in args.arms):
            continue
        for seed_dir in sorted(arm_dir.glob("seed*")):
            seed = int(seed_dir.name[4:])
            step = latest_step(seed_dir)
            if step == 0 or (args.seeds is not None and seed not in args.seeds):
                continue
            model = make_model(p, catalogue[arm], seed, step, seed_dir, step, args.device, 0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.fit(images, resume="latest")  # restores the checkpoint, trains 0 steps
            t0 = time.perf_counter()
            fids = [evaluate.features(model.sample(p.n_samples, steps=p.sample_steps, seed=s))
                    for s in sample_seeds]
            fids = [evaluate(f)["fid"] for f in fids]
            rows.append((arm, seed, step, fids))
            print(f"{arm:<14} seed {seed} step {step}: FID {np.mean(fids):.2f} +- "
                  f"{statistics.stdev(fids):.2f} over sampling seeds {sample_seeds}: "
                  f"{', '.join(f'{f:.2f}' for f in fids)} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)

    if not rows:
        raise SystemExit(f"no checkpoints under {out / 'checkpoints'}")
    pooled = float(np.sqrt(np.mean([statistics.variance(f) for *_, f in rows])))
    print(f"\n{machine()}; {p.n_samples} DDIM-{p.sample_steps} samples per FID, sampling seeds "
          f"{sample_seeds}")
    print(f"pooled within-checkpoint s.d. of FID (sampling noise alone): {pooled:.2f}")
    print("| arm | seed | step | FID per sampling seed | mean | s.d. |")
    print("|---|---|---|---|---|---|")
    for arm, seed, step, fids in rows:
        print(f"| {arm} | {seed} | {step} | {', '.join(f'{f:.2f}' for f in fids)} | "
              f"{np.mean(fids):.2f} | {statistics.stdev(fids):.2f} |")


if __name__ == "__main__":
    main()
