"""Fit a small diffusion model with context prediction on the embedded digits and sample it.

    python examples/quickstart.py                 # a few minutes on 2 CPU cores
    python examples/quickstart.py --steps 20 --samples 4 --sample-steps 2    # a smoke run

Writes ``samples.png``, ``loss.png`` and ``model.safetensors`` into ``--out``.
"""

from __future__ import annotations

import argparse

from conprediff import ConPreDiffModel, ContextPrediction, UNet
from conprediff.data import load_digits_images
from conprediff.plotting import plot_loss, save_image_grid


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500, help="training steps")
    parser.add_argument("--base-channels", type=int, default=32, help="UNet width")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=64, help="images in the sample grid")
    parser.add_argument("--sample-steps", type=int, default=50, help="DDIM steps")
    parser.add_argument("--out", default="outputs/quickstart")
    args = parser.parse_args(argv)

    images, labels = load_digits_images(size=16)  # (1797, 1, 16, 16) in [-1, 1]
    model = ConPreDiffModel(
        backbone=UNet(base_channels=args.base_channels, channel_mults=(1, 2, 2)),
        context=ContextPrediction(strides=(1, 2)),  # context=None gives the plain baseline
        max_steps=args.steps,
        batch_size=args.batch_size,
        lr=1e-3,
        seed=0,
    )
    model.fit(images)
    samples = model.sample(args.samples, steps=args.sample_steps, seed=0)  # no decoder used
    print(save_image_grid(samples, f"{args.out}/samples.png"))
    print(plot_loss(model.loss_history_, f"{args.out}/loss.png"))
    print(model.save(f"{args.out}/model.safetensors"))


if __name__ == "__main__":
    main()
