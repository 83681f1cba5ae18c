"""Do the samples copy training images? Nearest-neighbour distances in pixel space.

A model can score an FID below that of an ideal independent model by reproducing its training
images. This script takes the newest checkpoint of one (arm, seed) run of an ablation output
folder, draws samples with the ablation's protocol (number of samples, DDIM steps, sampling seed),
and compares the L2 distance from each sample to its nearest training image with the
leave-one-out nearest-neighbour distances among the training images themselves. It prints

* the median nearest-training-image distance of the samples, and the median leave-one-out
  distance of the training images (a model that copies has the first far below the second);
* the share of samples closer to a training image than the closest 1 % of training images are
  to another one (about 1 % for a model that does not copy; near 100 % for one that does).

Distances are taken between images in [-1, 1] at the protocol's size, flattened. The result is
appended to ``<out>/memorisation.json``.

    python benchmarks/memorisation.py --out outputs/ablation/digits --arm baseline --seed 0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ablation_run import restore  # noqa: E402
from ablation_setup import arm_catalogue, load_data, load_protocol, slug  # noqa: E402
from common import atomic_json, machine_cores  # noqa: E402


def nearest_distances(queries: torch.Tensor, reference: torch.Tensor,
                      exclude_self: bool = False, chunk: int = 512) -> np.ndarray:
    """L2 distance from each query to its nearest reference row.

    Parameters
    ----------
    queries : torch.Tensor of shape (N, D)
    reference : torch.Tensor of shape (M, D)
    exclude_self : bool, default False
        ``queries`` is ``reference`` (same shape, row ``i`` the same point) and row ``i``'s
        distance to itself is left out: leave-one-out nearest neighbours.
    chunk : int, default 512
        Queries per distance matrix (memory ``chunk * M`` float64).

    Returns
    -------
    numpy.ndarray of shape (N,)
    """
    if queries.ndim != 2 or reference.ndim != 2 or queries.shape[1] != reference.shape[1]:
        raise ValueError(f"queries (N, D) and reference (M, D) needed; got "
                         f"{tuple(queries.shape)} and {tuple(reference.shape)}")
    if queries.shape[0] == 0 or reference.shape[0] < (2 if exclude_self else 1):
        raise ValueError("no queries, or no reference point to compare them with")
    if exclude_self and queries.shape != reference.shape:
        raise ValueError("exclude_self needs the queries to be the reference set itself")
    ref = reference.double()
    out = []
    for start in range(0, queries.shape[0], chunk):
        d = torch.cdist(queries[start : start + chunk].double(), ref)
        if exclude_self:
            rows = torch.arange(d.shape[0])
            d[rows, rows + start] = float("inf")
        out.append(d.min(dim=1).values)
    return torch.cat(out).numpy()


def memorisation(samples: torch.Tensor, train: torch.Tensor, quantile: float = 0.01
                 ) -> dict[str, float]:
    """Nearest-neighbour statistics of samples against the training set.

    Parameters
    ----------
    samples : torch.Tensor of shape (N, ...)
        Generated images (flattened to rows).
    train : torch.Tensor of shape (M, ...)
        Training images, of the same shape per image.
    quantile : float, default 0.01
        Level of the training leave-one-out distance a sample is compared with.

    Returns
    -------
    dict
        ``sample_nn_median``: median distance from a sample to its nearest training image;
        ``train_nn_median``: median leave-one-out nearest-neighbour distance among training
        images; ``quantile`` and ``train_nn_quantile``, the ``quantile`` of the latter;
        ``share_below_quantile``: the share of samples nearer a training image than that;
        ``train_duplicates``: the share of training images with an exact duplicate (when it
        reaches ``quantile`` the quantile is 0 and the share says nothing).
    """
    x = samples.flatten(1).cpu()
    y = train.flatten(1).cpu()
    d_sample = nearest_distances(x, y)
    d_train = nearest_distances(y, y, exclude_self=True)
    q = float(np.quantile(d_train, quantile))
    return {"sample_nn_median": float(np.median(d_sample)),
            "train_nn_median": float(np.median(d_train)),
            "quantile": quantile, "train_nn_quantile": q,
            "share_below_quantile": float(np.mean(d_sample < q)),
            "train_duplicates": float(np.mean(d_train == 0.0))}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="outputs/ablation/digits", help="an ablation output folder")
    ap.add_argument("--arm", default="baseline")
    ap.add_argument("--seed", type=int, default=0, help="training seed of the run")
    ap.add_argument("--n-samples", type=int, default=None, help="default: the protocol's")
    ap.add_argument("--sample-seed", type=int, default=None, help="default: the protocol's")
    ap.add_argument("--quantile", type=float, default=0.01)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    if not 0.0 < args.quantile < 1.0:
        ap.error("--quantile must lie in (0, 1)")

    out = Path(args.out)
    p = load_protocol(out)
    catalogue = arm_catalogue(p.timesteps, p.context_base)
    if args.arm not in catalogue:
        ap.error(f"unknown arm {args.arm!r}; see ablation.py --list-arms")
    n = p.n_samples if args.n_samples is None else args.n_samples
    if n < 1:
        ap.error("--n-samples must be positive")
    sample_seed = p.sample_seed if args.sample_seed is None else args.sample_seed

    images, _ = load_data(p.dataset, p.size)
    ckpt = out / "checkpoints" / slug(args.arm) / f"seed{args.seed}"
    model, step = restore(p, catalogue[args.arm], args.seed, ckpt, images, args.device)
    if model is None:
        raise SystemExit(f"no checkpoint under {ckpt}")
    t0 = time.perf_counter()
    samples = model.sample(n, steps=p.sample_steps, seed=sample_seed)
    result = {"arm": args.arm, "seed": args.seed, "step": step, "n_samples": n,
              "sample_steps": p.sample_steps, "sample_seed": sample_seed,
              **memorisation(samples, images, args.quantile),
              "seconds": time.perf_counter() - t0, "machine": machine_cores(),
              "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    store = out / "memorisation.json"
    records = json.loads(store.read_text()) if store.is_file() else []
    atomic_json(store, [*records, result])
    print(f"{args.arm} seed {args.seed} step {step}, {n} DDIM-{p.sample_steps} samples "
          f"(sampling seed {sample_seed}) against {images.shape[0]} training images:")
    print(f"  median distance sample -> nearest training image: {result['sample_nn_median']:.3f}")
    print(f"  median leave-one-out distance between training images: "
          f"{result['train_nn_median']:.3f}")
    print(f"  samples nearer a training image than the closest {args.quantile:.0%} of training "
          f"images are to another ({result['train_nn_quantile']:.3f}): "
          f"{result['share_below_quantile']:.1%}")
    if result["train_duplicates"] >= args.quantile:
        print(f"  warning: {result['train_duplicates']:.1%} of the training images have an exact "
              "duplicate, so that quantile is 0 and the share above says nothing")


if __name__ == "__main__":
    main()
