"""Keep your own diffusers training loop and add context prediction to it: three lines.

The loop is diffusers' usual one (``UNet2DModel``, ``DDPMScheduler.add_noise``, an MSE on the
noise). The lines marked ``# + context`` add ConPreDiff's context term: a :class:`FeatureTap`
keeps the UNet's last hidden map, and the head of :class:`ContextPrediction` turns it into a
loss. At the end the trained UNet samples through diffusers' own ``DDIMPipeline``.

    python examples/diffusers_training_loop.py               # a few minutes on 2 CPU cores
    python examples/diffusers_training_loop.py --steps 3 --sample-steps 2   # a smoke run

Needs the extra ``[diffusers]``. Writes ``samples.png`` and the pipeline folder ``pipeline/``
into ``--out``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDIMPipeline, DDPMScheduler, UNet2DModel

from conprediff import ContextPrediction
from conprediff.data import load_digits_images
from conprediff.interop import FeatureTap
from conprediff.plotting import save_image_grid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--sample-steps", type=int, default=50)
    ap.add_argument("--out", default="outputs/diffusers_loop")
    args = ap.parse_args()
    out = Path(args.out)
    torch.manual_seed(0)

    images, _ = load_digits_images(size=16)  # (N, 1, 16, 16) in [-1, 1]
    unet = UNet2DModel(sample_size=16, in_channels=1, out_channels=1, layers_per_block=1,
                       block_out_channels=(32, 64), norm_num_groups=8,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    tap = FeatureTap(unet)  # + context: keep the input of unet.conv_out
    head = ContextPrediction().build(unet.config.block_out_channels[0], 1)  # + context
    opt = torch.optim.AdamW([*unet.parameters(), *head.parameters()], lr=1e-3)

    for step in range(args.steps):
        clean = images[torch.randint(len(images), (args.batch_size,))]
        noise = torch.randn_like(clean)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(clean),))
        pred = unet(scheduler.add_noise(clean, noise, t), t).sample
        loss = F.mse_loss(pred, noise) + head(tap.features, t, clean).loss  # + context
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step}: loss {loss.item():.4f}", flush=True)

    tap.remove()  # sampling never needs the context head
    pipe = DDIMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(out / "pipeline")
    samples = pipe(batch_size=16, num_inference_steps=args.sample_steps, output_type="np",
                   generator=torch.Generator().manual_seed(0)).images
    save_image_grid(torch.from_numpy(samples).permute(0, 3, 1, 2), out / "samples.png", nrow=4,
                    data_range=(0.0, 1.0))
    print(f"wrote {out / 'samples.png'} and {out / 'pipeline'}")


if __name__ == "__main__":
    main()
