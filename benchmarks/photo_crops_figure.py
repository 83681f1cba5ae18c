"""The figure of the colour data set: crops of each photograph in :data:`~conprediff.data.PHOTOS`.

    python benchmarks/photo_crops_figure.py [--size 32] [--n 8] [--out docs/images/photo_crops.png]

One row per photograph (label order), ``--n`` random ``size x size`` crops of it from
:func:`~conprediff.data.load_photo_crops`, written with
:func:`~conprediff.plotting.save_image_grid` (the figure of ``docs/latent.rst``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from conprediff.data import PHOTOS, load_photo_crops
from conprediff.plotting import save_image_grid

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=32, help="side of the crops (%(default)s)")
    ap.add_argument("--n", type=int, default=8, help="crops per photograph (%(default)s)")
    ap.add_argument("--scale", type=int, default=2, help="pixels per image pixel (%(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "photo_crops.png")
    args = ap.parse_args()
    images, labels = load_photo_crops(size=args.size, n_per_photo=args.n, seed=args.seed)
    # load_photo_crops groups the crops by photograph: row k is photograph k
    assert labels.tolist() == [k for k in range(len(PHOTOS)) for _ in range(args.n)]
    path = save_image_grid(images, args.out, nrow=args.n, scale=args.scale)
    print(f"{path}: {len(PHOTOS)} photographs ({', '.join(PHOTOS)}) x {args.n} crops")


if __name__ == "__main__":
    main()
