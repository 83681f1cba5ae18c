"""Every script in examples/ runs with tiny settings and writes what it says it writes."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from conprediff import ConPreDiffModel

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# the tiny settings of each script (a new script needs an entry: test_every_example_is_run)
TINY = {
    "quickstart.py": ["--steps", "2", "--base-channels", "8", "--batch-size", "8",
                      "--samples", "4", "--sample-steps", "2"],
    "custom_backbone.py": ["--steps", "2", "--width", "8", "--batch-size", "8",
                           "--samples", "4", "--sample-steps", "2"],
    "diffusers_training_loop.py": ["--steps", "3", "--batch-size", "8", "--sample-steps", "2"],
}


def run_example(name: str, out: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Run ``examples/<name>`` as ``python examples/<name> <tiny settings> --out <out>``."""
    monkeypatch.setattr(sys, "argv", [name, *TINY[name], "--out", str(out)])
    return runpy.run_path(str(EXAMPLES / name), run_name="__main__")


def check_model_file(path: Path, steps: int, **load_kwargs) -> ConPreDiffModel:
    """The file loads into a fitted model that samples finite (2, 1, 16, 16) images."""
    model = ConPreDiffModel.load(path, device="cpu", **load_kwargs)
    assert model.image_shape_ == (1, 16, 16)
    assert model.n_steps_ == steps
    assert all(torch.isfinite(torch.tensor(v)).all() for v in model.loss_history_.values())
    samples = model.sample(2, steps=2, seed=0)
    assert samples.shape == (2, 1, 16, 16) and torch.isfinite(samples).all()
    return model


def check_png(path: Path) -> None:
    with Image.open(path) as img:
        assert img.width > 16 and img.height >= 16


def test_every_example_is_run():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(TINY)


def test_quickstart(tmp_path, monkeypatch):
    run_example("quickstart.py", tmp_path, monkeypatch)
    check_png(tmp_path / "samples.png")
    check_png(tmp_path / "loss.png")
    model = check_model_file(tmp_path / "model.safetensors", steps=2)
    assert model.context is not None and model.context_head_ is not None


def test_custom_backbone(tmp_path, monkeypatch):
    ns = run_example("custom_backbone.py", tmp_path, monkeypatch)
    for grid in ("context.png", "baseline.png", "classes.png"):
        check_png(tmp_path / grid)
    # a backbone without get_params: the file holds its weights, load gets the module
    with pytest.raises(ValueError, match="backbone="):
        ConPreDiffModel.load(tmp_path / "context.safetensors")
    model = check_model_file(tmp_path / "context.safetensors", steps=2,
                             backbone=ns["SmallDenoiser"](width=8))
    assert type(model.backbone_) is ns["SmallDenoiser"] and "w2" in model.loss_history_
    # with get_params the file describes the backbone: load gets the class
    cls = ns["ConfigurableDenoiser"]
    model = check_model_file(tmp_path / "classes.safetensors", steps=2, classes=[cls])
    assert model.backbone_.get_params() == {"in_channels": 1, "width": 8, "num_classes": 10}
    digits = model.sample(2, steps=2, seed=0, labels=[3, 7])
    assert digits.shape == (2, 1, 16, 16) and torch.isfinite(digits).all()


@pytest.mark.parametrize("num_classes", [None, 10])
def test_custom_backbone_follows_the_protocol(num_classes):
    ns = runpy.run_path(str(EXAMPLES / "custom_backbone.py"))  # definitions only
    net = ns["SmallDenoiser"](width=8, num_classes=num_classes)
    x, t = torch.randn(3, 1, 16, 16), torch.tensor([0, 500, 999])
    cond = None if num_classes is None else torch.tensor([0, 9, 10])  # 10: the null label
    prediction, features = net(x, t, cond)
    assert prediction.shape == x.shape
    assert features.shape == (3, net.feature_channels, 16, 16)


def test_diffusers_training_loop(tmp_path, monkeypatch):
    """The three added lines train with the context term; diffusers' pipeline then samples."""
    diffusers = pytest.importorskip("diffusers")
    run_example("diffusers_training_loop.py", tmp_path, monkeypatch)
    check_png(tmp_path / "samples.png")
    pipe = diffusers.DDIMPipeline.from_pretrained(tmp_path / "pipeline")
    assert pipe.unet.config.sample_size == 16
