"""A tiny training run used by tests/test_training.py (run in a subprocess or under torchrun).

python train_tiny.py OUT_DIR [--kill-at STEP] [--context KIND] [--steps N]

KIND: none, sampled or gaussian (context prediction), conditional (no context prediction; a
class-conditional backbone trained on labels with label dropout), or text (no context prediction;
a text backbone and the built-in encoder, trained on captions with caption dropout).
"""

import argparse
import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from conprediff import ConPreDiffModel, ContextPrediction, UNet  # noqa: E402
from conprediff.text import TextTransformer  # noqa: E402


def make_model(out_dir, context=None, steps=12, batch_size=8, conditional=False, text=False,
               **kw):
    params = dict(
        # groups=4: two channels per GroupNorm group. With one channel per group, the biases just
        # before a GroupNorm have an identically zero gradient, and Adam turns the float noise
        # of that zero into updates of size lr: runs that differ only in summation order (one
        # process vs two) would then drift apart in those (output-irrelevant) biases.
        backbone=UNet(base_channels=8, channel_mults=(1, 2), groups=4,
                      num_classes=3 if conditional else None, text_channels=8 if text else None),
        text_encoder=TextTransformer(width=8, heads=2, max_length=6) if text else None,
        context=context,
        label_dropout=0.5,
        timesteps=50,
        max_steps=steps,
        batch_size=batch_size,
        lr=2e-3,
        seed=0,
        verbose=0,
        checkpoint_dir=os.path.join(out_dir, "ckpt"),
        checkpoint_every=4,
        keep_checkpoints=5,
        log_every=1,
        device="cpu",
    )
    params.update(kw)
    return ConPreDiffModel(**params)


def data():
    g = torch.Generator().manual_seed(123)
    return torch.rand(24, 1, 8, 8, generator=g) * 2 - 1


def labels():
    return torch.arange(24) % 3


def captions():
    return [f"a {('small', 'big')[i % 2]} {('one', 'two', 'three')[i % 3]}" for i in range(24)]


def fit(kind, model, **kw):
    """``model.fit`` on the tiny data, with labels for the conditional kind and captions for
    the text kind."""
    y = {"conditional": labels(), "text": captions()}.get(kind)
    return model.fit(data(), y, **kw)


def context(kind):
    if kind == "sampled":
        return ContextPrediction(strides=(1, 2), point_fraction=0.5)
    if kind == "gaussian":
        # every point and no sampling: the context term is then a deterministic function of the
        # batch, so one process and two must agree (a random point subset is drawn per rank)
        return ContextPrediction(strides=(1,), decoder="gaussian", point_fraction=1.0)
    return None


if __name__ == "__main__":
    torch.set_num_threads(1)
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--kill-at", type=int, default=None)
    ap.add_argument("--context", default="none")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()

    def kill(logs):
        if args.kill_at is not None and logs["step"] == args.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    model = make_model(args.out, context(args.context), args.steps, args.batch_size,
                       conditional=args.context == "conditional")
    fit(args.context, model, callback=kill)
    if int(os.environ.get("RANK", "0")) == 0:
        model.save(os.path.join(args.out, "final.safetensors"))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
