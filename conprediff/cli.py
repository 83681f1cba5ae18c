"""Command line: ``conprediff demo | fit-autoencoder | train | sample | inpaint``.

Run ``conprediff <command> --help`` for the options of each command.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .diffusion import SAMPLERS
from .precision import PRECISIONS

__all__ = ["main", "build_parser"]


def _context(args: argparse.Namespace):
    from .context import ContextPrediction

    if args.no_context:
        return None
    kwargs = {} if args.context_weight is None else {"weight": args.context_weight}
    return ContextPrediction(strides=tuple(args.strides), **kwargs)


def _add_training_args(p: argparse.ArgumentParser, steps: int) -> None:
    p.add_argument("--steps", type=int, default=steps, help="optimisation steps (%(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size (%(default)s)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (%(default)s)")
    p.add_argument("--base-channels", type=int, default=32, help="UNet width (%(default)s)")
    p.add_argument(
        "--channel-mults",
        type=int,
        nargs="+",
        default=[1, 2, 2],
        help="UNet width multiplier per level; the image size must be divisible by "
        "2**(levels - 1) (%(default)s)",
    )
    p.add_argument(
        "--strides",
        type=int,
        nargs="+",
        default=[1, 2],
        help="context neighbourhood strides (%(default)s)",
    )
    p.add_argument(
        "--context-weight",
        type=float,
        default=None,
        help="constant lambda_t of the context term (the library default, 0.1, when omitted)",
    )
    p.add_argument(
        "--no-context",
        action="store_true",
        help="train the plain baseline, without context prediction",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (%(default)s)")
    p.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda' (%(default)s)")
    _add_precision(p, "fp32")


#: ``--precision`` values: the estimator's (``'auto'``: bf16 only where the device is fast at it)
PRECISION_CHOICES = PRECISIONS


def _add_precision(p: argparse.ArgumentParser, default: str | None) -> None:
    p.add_argument("--precision", choices=PRECISION_CHOICES, default=default,
                   help="autocast precision of the network; 'auto' = bf16 where the device "
                        "computes it fast, else fp32 (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    """The ``conprediff`` argument parser."""
    parser = argparse.ArgumentParser(prog="conprediff", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo", help="train on the embedded digits; write samples, loss plot and inpainting"
    )
    _add_training_args(demo, steps=1500)
    demo.add_argument("--out", default="outputs", help="output folder (%(default)s)")
    demo.add_argument("--n-samples", type=int, default=64, help="images to sample (%(default)s)")

    train = sub.add_parser("train", help="train on a folder of images; save the model")
    train.add_argument("folder", help="folder of PNG/JPEG images (searched recursively)")
    train.add_argument("--out", default="model.safetensors", help="model file (%(default)s)")
    train.add_argument("--size", type=int, default=None, help="resize images to SIZE x SIZE")
    train.add_argument("--rgb", action="store_true", help="3 channels (default: grey)")
    train.add_argument(
        "--conditional",
        action="store_true",
        help="class-conditional: the class of an image is its subfolder of FOLDER",
    )
    train.add_argument("--captions", default=None, metavar="txt|FILE",
                       help="text-to-image: 'txt' (one .txt beside each image) or a JSON-lines "
                            "file of {\"file\": ..., \"text\": ...} in FOLDER; trains the "
                            "built-in text encoder with the model")
    train.add_argument("--text-width", type=int, default=64,
                       help="width of the built-in text encoder, with --captions (%(default)s)")
    train.add_argument("--autoencoder", default=None, metavar="FILE",
                       help="diffuse in the latents of this autoencoder (written by "
                            "fit-autoencoder) instead of the pixels")
    _add_training_args(train, steps=5000)

    _add_fit_autoencoder(sub)

    sample = sub.add_parser(
        "sample", help="sample a saved model into a PNG grid, or into a folder of PNG files")
    sample.add_argument("model", help="a file written by train (or ConPreDiffModel.save)")
    sample.add_argument("--n", type=int, default=64, help="images (%(default)s)")
    sample.add_argument(
        "--out", default="samples.png",
        help="a PNG grid (%(default)s), or a folder (a path ending in '/', or an existing "
             "folder): one PNG per image, sampled in chunks of --batch-size, as FID needs")
    sample.add_argument("--steps", type=int, default=50, help="sampler steps (%(default)s)")
    sample.add_argument("--sampler", default="ddim", choices=tuple(SAMPLERS),
                        help="reverse process (%(default)s)")
    sample.add_argument("--batch-size", type=int, default=256,
                        help="images per forward pass and per chunk (%(default)s)")
    sample.add_argument("--resume", action="store_true",
                        help="into a folder: keep the chunks already written")
    sample.add_argument("--seed", type=int, default=0, help="sampling seed (%(default)s)")
    sample.add_argument("--label", type=int, default=None,
                        help="class of every image (a conditional model; default unconditional)")
    sample.add_argument("--guidance-scale", type=float, default=1.0,
                        help="classifier-free guidance scale with --label or --prompt "
                             "(%(default)s)")
    _add_prompt_args(sample)
    sample.add_argument("--device", default="auto")
    _add_precision(sample, None)

    inpaint = sub.add_parser("inpaint", help="fill the missing pixels of an image (RePaint)")
    inpaint.add_argument("image", help="image file (PNG/JPEG) of the model's size")
    inpaint.add_argument("mask", help="mask image of the same size: white = missing")
    inpaint.add_argument(
        "--model",
        default="outputs/model.safetensors",
        help="model file (%(default)s, written by conprediff demo)",
    )
    inpaint.add_argument("--out", default="inpainted.png", help="result PNG (%(default)s)")
    inpaint.add_argument("--steps", type=int, default=250, help="reverse steps (%(default)s)")
    inpaint.add_argument("--jump-length", type=int, default=10, help="(%(default)s)")
    inpaint.add_argument("--jump-n-sample", type=int, default=10, help="(%(default)s)")
    inpaint.add_argument("--seed", type=int, default=0)
    inpaint.add_argument("--device", default="auto")
    inpaint.add_argument("--guidance-scale", type=float, default=1.0,
                         help="classifier-free guidance scale with --prompt (%(default)s)")
    _add_prompt_args(inpaint)
    _add_precision(inpaint, None)
    return parser


def _add_prompt_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", default=None, help="what to draw (a text model)")
    p.add_argument("--negative-prompt", default=None,
                   help="what guidance steers away from, with --prompt")


def _add_fit_autoencoder(sub: argparse._SubParsersAction) -> None:
    ae = sub.add_parser("fit-autoencoder",
                        help="train a KL autoencoder on a folder of images (for latent models)")
    ae.add_argument("folder", help="folder of PNG/JPEG images (searched recursively)")
    ae.add_argument("--out", default="autoencoder.safetensors", help="file (%(default)s)")
    ae.add_argument("--size", type=int, default=None, help="resize images to SIZE x SIZE")
    ae.add_argument("--rgb", action="store_true", help="3 channels (default: grey)")
    ae.add_argument("--downsampling-factor", type=int, default=4,
                    help="f: SIZE x SIZE images become SIZE/f x SIZE/f latents (%(default)s)")
    ae.add_argument("--latent-channels", type=int, default=4, help="(%(default)s)")
    ae.add_argument("--base-channels", type=int, default=32, help="width (%(default)s)")
    ae.add_argument("--kl-weight", type=float, default=1e-6, help="(%(default)s)")
    ae.add_argument("--steps", type=int, default=2000, help="optimisation steps (%(default)s)")
    ae.add_argument("--batch-size", type=int, default=64, help="(%(default)s)")
    ae.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (%(default)s)")
    ae.add_argument("--seed", type=int, default=0, help="random seed (%(default)s)")
    ae.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda' (%(default)s)")


def _fit_autoencoder(args: argparse.Namespace) -> None:
    import torch

    from .autoencoders import KLAutoencoder
    from .data import ImageFolder

    data = ImageFolder(args.folder, mode="RGB" if args.rgb else "L", size=args.size)
    ae = KLAutoencoder(latent_channels=args.latent_channels,
                       downsampling_factor=args.downsampling_factor,
                       base_channels=args.base_channels, kl_weight=args.kl_weight, lr=args.lr,
                       batch_size=args.batch_size, max_steps=args.steps, seed=args.seed,
                       device=args.device).fit(data)
    check = torch.stack([data[i] for i in range(min(len(data), 512))])
    err = ae.evaluate(check)
    print(f"reconstruction of {len(check)} images: PSNR {err['psnr']:.2f} dB, "
          f"MSE {err['mse']:.4g}; scaling factor {ae.scaling_factor:.4g}")
    print(ae.save(args.out))


def _model(args: argparse.Namespace, num_classes: int | None = None):
    from .backbones import UNet
    from .estimator import ConPreDiffModel
    from .text import TextTransformer

    text = getattr(args, "captions", None) is not None
    return ConPreDiffModel(
        backbone=UNet(base_channels=args.base_channels, channel_mults=tuple(args.channel_mults),
                      num_classes=num_classes, text_channels=args.text_width if text else None),
        text_encoder=TextTransformer(width=args.text_width) if text else None,
        context=_context(args),
        max_steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        precision=args.precision,
        autoencoder=_autoencoder(getattr(args, "autoencoder", None)),
    )


def _autoencoder(path: str | None):
    if path is None:
        return None
    from .autoencoders import KLAutoencoder

    return KLAutoencoder.load(path)


def _demo(args: argparse.Namespace) -> None:
    from .data import load_digits_images
    from .plotting import plot_loss, save_image_grid

    images, _ = load_digits_images(size=16)
    t0 = time.perf_counter()
    model = _model(args).fit(images)
    print(
        f"trained {model.n_steps_} steps on {len(images)} digits in "
        f"{time.perf_counter() - t0:.0f} s ({model.device_})"
    )
    samples = model.sample(args.n_samples, seed=args.seed)
    out = Path(args.out)
    print(save_image_grid(samples, out / "samples.png", data_range=model.data_range_))
    print(plot_loss(model.loss_history_, out / "loss.png"))
    print(model.save(out / "model.safetensors"))
    print(_demo_inpainting(model, images, out / "inpaint.png", args.seed))


def _demo_inpainting(model, images, path: Path, seed: int) -> Path:
    """Inpaint six digits, one per mask family of the paper's Table 2, into one figure."""
    import torch

    from .inpainting import MASK_FAMILIES, make_mask
    from .plotting import plot_inpainting

    families = list(MASK_FAMILIES)
    H, W = images.shape[-2:]
    picks = images[-len(families) :]  # the last digits of the set
    masks = torch.stack([make_mask(f, H, W, seed=seed)[None] for f in families])
    filled = model.inpaint(picks, masks, steps=100, jump_length=10, jump_n_sample=5, seed=seed)
    return plot_inpainting(picks, masks, filled, families, path, data_range=model.data_range_)


def _train(args: argparse.Namespace) -> None:
    from .data import ImageFolder

    data = ImageFolder(args.folder, mode="RGB" if args.rgb else "L", size=args.size,
                       labels=args.conditional, captions=args.captions)
    if args.conditional:
        print("classes: " + ", ".join(f"{i} = {name}" for i, name in enumerate(data.classes)))
    model = _model(args, len(data.classes) if args.conditional else None).fit(data)
    print(model.save(args.out))


def _sample(args: argparse.Namespace) -> None:
    from .estimator import ConPreDiffModel
    from .export import sample_to_folder
    from .plotting import save_image_grid

    to_folder = args.out.endswith(("/", os.sep)) or Path(args.out).is_dir()
    if args.resume and not to_folder:
        raise ValueError(f"--resume needs --out to be a folder (ending in '/'), got {args.out!r}")
    model = ConPreDiffModel.load(args.model, device=args.device)
    kwargs = {"steps": args.steps, "sampler": args.sampler, "labels": args.label,
              "guidance_scale": args.guidance_scale, "batch_size": args.batch_size,
              "precision": args.precision, "prompts": args.prompt,
              "negative_prompts": args.negative_prompt}
    if to_folder:
        print(sample_to_folder(model, args.n, args.out, seed=args.seed, resume=args.resume,
                               **kwargs))
        return
    images = model.sample(args.n, seed=args.seed, **kwargs)
    print(save_image_grid(images, args.out, data_range=model.data_range_))


def _inpaint(args: argparse.Namespace) -> None:
    import numpy as np
    from PIL import Image

    from .data import read_image
    from .estimator import ConPreDiffModel

    model = ConPreDiffModel.load(args.model, device=args.device)
    lo, hi = model.data_range_
    unit = (read_image(args.image, "L" if model.image_shape_[0] == 1 else "RGB") + 1) / 2
    image = unit * (hi - lo) + lo
    with Image.open(args.mask) as m:
        mask = m.convert("L")
        mask = mask.point(lambda v: 255 if v >= 128 else 0)
        result = model.inpaint(
            image,
            mask,
            steps=args.steps,
            jump_length=args.jump_length,
            jump_n_sample=args.jump_n_sample,
            seed=args.seed,
            precision=args.precision,
            prompt=args.prompt,
            negative_prompt=args.negative_prompt,
            guidance_scale=args.guidance_scale,
        )
    arr = ((result - lo) / (hi - lo)).clamp(0, 1).mul(255).round().byte().numpy()
    arr = arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(arr)).save(args.out)
    print(args.out)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``conprediff`` command."""
    args = build_parser().parse_args(argv)
    try:
        commands = {"demo": _demo, "train": _train, "sample": _sample, "inpaint": _inpaint,
                    "fit-autoencoder": _fit_autoencoder}
        commands[args.command](args)
    except _INPUT_ERRORS as err:
        print(f"conprediff {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


#: What a bad input raises (a missing or damaged file, an image PIL cannot read, which is an
#: ``OSError``, a wrong value or type, a diverging run): reported in one line with exit code 2.
_INPUT_ERRORS = (ValueError, TypeError, OSError, FloatingPointError, MemoryError)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
