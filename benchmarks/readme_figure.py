"""The README's picture: samples and inpainting from one fitted model file.

    python benchmarks/readme_figure.py MODEL.safetensors [--dataset mnist] [--out ...]

Top: 16 samples (DPM-Solver++(2M), 25 steps). Below: one held-in digit of each class 0-7 (the
embedded digits or MNIST-5k, the model's training set) with the right half or every other row
missing (grey), and RePaint's fill (ancestral steps, 250 on the respaced grid).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from conprediff import ConPreDiffModel  # noqa: E402
from conprediff.data import load_digits_images, load_mnist_images  # noqa: E402
from conprediff.inpainting import masks  # noqa: E402
from conprediff.plotting import image_grid  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "readme.png")
    ap.add_argument("--dataset", choices=("digits", "mnist"), default="digits",
                    help="the digits shown for inpainting (the model's own data)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    model = ConPreDiffModel.load(args.model, device="cpu")
    model.verbose = 0
    lo, hi = model.data_range_
    size = model.image_shape_[-1]
    samples = model.sample(16, steps=25, sampler="dpmpp_2m", seed=args.seed)
    images, labels = (load_mnist_images() if args.dataset == "mnist"
                      else load_digits_images(size=size))
    images = images * (hi - lo) / 2 + (hi + lo) / 2  # [-1, 1] -> the model's range
    img = images[[int((labels == c).nonzero()[1]) for c in range(8)]]  # one of each class
    missing = torch.stack([masks.half(size, size) if i % 2 == 0 else
                           masks.alternating_lines(size, size) for i in range(8)])[:, None]
    filled = model.inpaint(img, missing, seed=args.seed)
    shown = torch.where(missing, torch.full_like(img, (lo + hi) / 2), img)
    fig, axes = plt.subplots(3, 1, figsize=(6.4, 5.6),
                             gridspec_kw={"height_ratios": [2, 1, 1]})
    panels = ((samples, 8, "samples: DPM-Solver++(2M), 25 steps"),
              (shown, 8, "input (grey = missing)"),
              (filled, 8, "inpainted: RePaint"))
    for ax, (x, nrow, title) in zip(axes, panels, strict=True):
        ax.imshow(image_grid(x, nrow, (lo, hi), scale=4)[..., 0], cmap="gray", vmin=0, vmax=255)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
