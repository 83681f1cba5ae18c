"""Fit a small diffusion model with context prediction on the embedded digits and sample it.

    python examples/quickstart.py                 # about 5 minutes on 2 CPU cores
    python examples/quickstart.py --steps 20      # a smoke run
"""

import argparse

from conprediff import ConPreDiffModel, ContextPrediction, UNet
from conprediff.data import load_digits_images
from conprediff.plotting import plot_loss, save_image_grid

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=1500)
parser.add_argument("--base-channels", type=int, default=32)
parser.add_argument("--out", default="outputs/quickstart")
args = parser.parse_args()

images, labels = load_digits_images(size=16)  # (1797, 1, 16, 16) in [-1, 1]
model = ConPreDiffModel(
    backbone=UNet(base_channels=args.base_channels, channel_mults=(1, 2, 2)),
    context=ContextPrediction(strides=(1, 2)),  # context=None gives the plain baseline
    max_steps=args.steps,
    lr=1e-3,
    seed=0,
)
model.fit(images)
samples = model.sample(64, steps=50, seed=0)  # (64, 1, 16, 16), the decoder is not used
print(save_image_grid(samples, f"{args.out}/samples.png"))
print(plot_loss(model.loss_history_, f"{args.out}/loss.png"))
print(model.save(f"{args.out}/model.safetensors"))
