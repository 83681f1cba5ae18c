"""Text-to-image on captioned digits: does the model draw what the prompt asks for?

Trains text models on :func:`conprediff.data.load_captioned_digits` (training templates) and
samples them from prompts in the **held-out** templates, asking for the digit, thickness, slant,
size and position of randomly chosen data images. The prompt-following score
(:func:`conprediff.evaluation.prompt_following`) counts how many samples show what was asked:
the digit by the library's LeNet classifier trained on the captioned images, the attributes by
the same measures that wrote the captions. Arms, each with the same seeds (same initialisation,
batches, noise and sampling seed, paired):

* ``baseline``: a text UNet and the built-in encoder, no context prediction;
* ``conprediff``: the same with ``ContextPrediction()``;

with ``--encoder minilm`` the pretrained MiniLM (frozen, from the ``[text]`` extra) replaces the
built-in encoder. Each (arm, seed) is a process (``--workers`` at a time, sharing the cores).
A prompt grid (prompts down the side, seeds across) of the first ConPreDiff run, and the table,
go to ``--docs`` (default ``docs/benchmarks/text_digits[_minilm].md``).

    python benchmarks/text_digits.py --dataset digits --seeds 5 --steps 3000
    python benchmarks/text_digits.py --encoder minilm --seeds 5 --steps 3000
    python benchmarks/text_digits.py --quick     # a smoke run of the plumbing, not results
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
from common import atomic_json, machine_cores, run_jobs  # noqa: E402

from conprediff import ConPreDiffModel, ContextPrediction, UNet  # noqa: E402
from conprediff.data import load_captioned_digits  # noqa: E402
from conprediff.data.captioned import ATTRIBUTES, prompts_for  # noqa: E402
from conprediff.evaluation import FeatureExtractor, paired_difference, prompt_following  # noqa: E402
from conprediff.plotting import plot_prompt_grid  # noqa: E402
from conprediff.text import PretrainedTextEncoder, TextTransformer, minilm_folder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("baseline", "conprediff")
GRID = ["a thick, upright seven, large, in the middle",
        "a thin, slanted two, small, in the top left",
        "a thick, slanted four, small, in the bottom right",
        "a thin, upright zero, small, in the top right",
        "a thick, upright one, small, in the bottom left"]


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", choices=("digits", "mnist"), default="digits")
    ap.add_argument("--size", type=int, default=16, help="canvas side (%(default)s)")
    ap.add_argument("--encoder", choices=("builtin", "minilm"), default="builtin")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--base-channels", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--text-width", type=int, default=64, help="built-in encoder width")
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--n-samples", type=int, default=500)
    ap.add_argument("--sample-steps", type=int, default=25)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--classifier-epochs", type=int, default=15)
    ap.add_argument("--out", default=None, help="work folder (default outputs/text/...)")
    ap.add_argument("--docs", default=None, help="report folder (default docs/benchmarks)")
    ap.add_argument("--job", default=None, help=argparse.SUPPRESS)  # ARM:SEED
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny, not results")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.n_samples, args.sample_steps = 1, 4, 20, 3
        args.base_channels, args.text_width, args.size = 8, 16, 16
        args.classifier_epochs = 1
    name = f"text_{args.dataset}" + ("_minilm" if args.encoder == "minilm" else "")
    args.out = Path(args.out or f"outputs/text{'-quick' if args.quick else ''}/{name}")
    args.docs = Path(args.docs or (args.out if args.quick else ROOT / "docs" / "benchmarks"))
    args.name = name
    return args


def encoder(args: argparse.Namespace) -> torch.nn.Module:
    if args.encoder == "minilm":
        return PretrainedTextEncoder(minilm_folder(), max_length=24)
    return TextTransformer(width=args.text_width, max_length=24)


def model(args: argparse.Namespace, arm: str, seed: int) -> ConPreDiffModel:
    enc = encoder(args)
    return ConPreDiffModel(
        backbone=UNet(base_channels=args.base_channels, channel_mults=(1, 2, 2),
                      attention_levels=(1,), text_channels=enc.token_channels),
        text_encoder=enc, context=ContextPrediction() if arm == "conprediff" else None,
        max_steps=args.steps, batch_size=args.batch_size, lr=args.lr, lr_warmup_steps=100,
        label_dropout=0.1, seed=seed, verbose=0, device="cpu")


def targets(args: argparse.Namespace, data) -> tuple[np.ndarray, dict, list[str]]:
    """The data rows whose digit and attributes the evaluation prompts ask for."""
    rows = np.random.default_rng(1234).choice(len(data.images), args.n_samples, replace=False)
    want = {k: [data.attributes[k][i] for i in rows] for k in ATTRIBUTES}
    digits = data.digits.numpy()[rows]
    return digits, want, prompts_for(digits, want, templates="test", seed=1234)


def classifier(args: argparse.Namespace, data) -> FeatureExtractor:
    return FeatureExtractor(cache_dir=args.out / "cache", epochs=args.classifier_epochs,
                            device="cpu").fit(data.images, data.digits)


def run_job(args: argparse.Namespace, arm: str, seed: int) -> None:
    torch.set_num_threads(max(1, (torch.get_num_threads() or 1) // args.workers))
    path = args.out / "results" / arm / f"seed{seed}.json"
    if path.is_file():
        return
    data = load_captioned_digits(args.dataset, args.size, seed=0)
    clf = classifier(args, data)
    digits, want, prompts = targets(args, data)
    m = model(args, arm, seed)
    t0 = time.perf_counter()
    m.fit(data.images, data.captions)
    seconds = time.perf_counter() - t0
    result = {"arm": arm, "seed": seed, "train_seconds": seconds, "steps": args.steps}
    for w in (1.0, args.guidance):
        samples = m.sample(args.n_samples, prompts=prompts, guidance_scale=w,
                           steps=args.sample_steps, sampler="dpmpp_2m", seed=99)
        score = prompt_following(samples, digits, want, data.thresholds, clf.classify)
        result[f"guidance_{w:g}"] = score
    if arm == "conprediff" and seed == 0:
        grid = torch.stack([m.sample(6, prompts=p, guidance_scale=args.guidance,
                                     steps=args.sample_steps, sampler="dpmpp_2m", seed=7)
                            for p in GRID])
        plot_prompt_grid(grid, GRID, args.docs / f"{args.name}_grid.png")
    result["classifier_accuracy"] = clf.test_accuracy_
    atomic_json(path, result)
    print(f"{arm} seed {seed}: {json.dumps(result[f'guidance_{args.guidance:g}'])}", flush=True)


def run_all(args: argparse.Namespace, argv: list[str]) -> None:
    classifier(args, load_captioned_digits(args.dataset, args.size, seed=0))  # into the cache
    jobs = [f"{arm}:{seed}" for seed in range(args.seeds) for arm in ARMS]
    run_jobs(__file__, argv, jobs, args.workers)


def report(args: argparse.Namespace, argv: list[str]) -> Path:
    res = {(r["arm"], r["seed"]): r for r in (json.loads(p.read_text()) for p in
                                              sorted((args.out / "results").glob("*/*.json")))}
    seeds = sorted({s for _, s in res})
    key = f"guidance_{args.guidance:g}"
    cmd = "python benchmarks/text_digits.py " + " ".join(shlex.quote(a) for a in argv)
    lines = [f"# Text-to-image on captioned {args.dataset}: prompt following", "",
             f"Command: `{cmd}`  ", f"Machine: {machine_cores()}; written "
             f"{time.strftime('%Y-%m-%d')}.", "",
             f"Encoder: {args.encoder}; UNet base {args.base_channels}, levels (1,2,2), "
             f"attention at level 1; {args.steps} steps, batch {args.batch_size}; "
             f"{args.n_samples} samples from held-out templates, DPM-Solver++(2M) "
             f"{args.sample_steps} steps; guidance {args.guidance:g}.", "",
             "| arm | seeds | train min | digit | thickness | slant | size | position | all |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for arm in ARMS:
        rs = [res[(arm, s)] for s in seeds if (arm, s) in res]
        if not rs:
            continue
        cells = [f"{np.mean([r[key][k] for r in rs]):.3f} ± {np.std([r[key][k] for r in rs]):.3f}"
                 for k in ("digit", *ATTRIBUTES, "all")]
        minutes = np.mean([r["train_seconds"] for r in rs]) / 60
        lines.append(f"| {arm} | {len(rs)} | {minutes:.1f} | " + " | ".join(cells) + " |")
    pairs = [s for s in seeds if all((a, s) in res for a in ARMS)]
    if len(pairs) >= 2:
        d = paired_difference([res[("conprediff", s)][key]["all"] for s in pairs],
                              [res[("baseline", s)][key]["all"] for s in pairs], better="higher")
        lines += ["", f"ConPreDiff minus baseline, share of samples with everything right, "
                  f"{len(pairs)} paired seeds: {d.mean:+.3f} (95 % CI {d.low:+.3f} to "
                  f"{d.high:+.3f}); ConPreDiff better in {d.n_favour} of {len(pairs)}."]
    lines += ["", f"![prompt grid]({args.name}_grid.png)", ""]
    path = args.docs / f"{args.name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    if args.job:
        arm, seed = args.job.split(":")
        run_job(args, arm, int(seed))
        return
    run_all(args, argv)
    print(report(args, argv))


if __name__ == "__main__":
    main()
