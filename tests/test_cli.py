"""The command line and the example script, run with tiny settings."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conprediff.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--steps", "3", "--base-channels", "8", "--batch-size", "16"]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", *TINY, "--out", str(out), "--n-samples", "4"]) == 0
    return out


def test_demo_writes_samples_loss_inpainting_and_model(demo_dir):
    for name in ("samples.png", "loss.png", "inpaint.png", "model.safetensors"):
        assert (demo_dir / name).is_file()
    with Image.open(demo_dir / "samples.png") as img:
        assert img.size[0] > 16


def image_folder(root: Path, n: int, size: int) -> Path:
    """``n`` random grey PNG images of ``size`` x ``size`` in ``root / 'imgs'``."""
    rng = np.random.default_rng(0)
    folder = root / "imgs"
    folder.mkdir()
    for i in range(n):
        pixels = rng.integers(0, 256, (size, size), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
    return folder


def test_train_and_sample_a_folder(tmp_path):
    folder = image_folder(tmp_path, 8, 10)
    model = tmp_path / "m.safetensors"
    assert main(["train", str(folder), "--size", "8", "--out", str(model), *TINY]) == 0
    assert (
        main(["sample", str(model), "--n", "2", "--steps", "2", "--out", str(tmp_path / "s.png")])
        == 0
    )
    assert (tmp_path / "s.png").is_file()


def test_channel_mults_set_the_levels(tmp_path):
    folder = image_folder(tmp_path, 4, 6)
    model = tmp_path / "m.safetensors"
    # 6 x 6 is not divisible by 4, so the default three levels fail; two levels train
    assert main(["train", str(folder), "--out", str(model), *TINY]) == 2
    args = ["train", str(folder), "--out", str(model), "--channel-mults", "1", "2", *TINY]
    assert main(args) == 0
    from conprediff import ConPreDiffModel

    assert ConPreDiffModel.load(model).backbone_.channel_mults == (1, 2)


def test_errors_are_reported_not_raised(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "missing.safetensors")]) == 2
    assert "error" in capsys.readouterr().err


def test_inpaint_command_keeps_known_pixels(demo_dir, tmp_path):
    digit = np.zeros((16, 16), dtype=np.uint8)
    digit[4:12, 6:10] = 255
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[:, 8:] = 255  # right half missing
    Image.fromarray(digit).save(tmp_path / "digit.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "filled.png"
    assert (
        main(
            [
                "inpaint",
                str(tmp_path / "digit.png"),
                str(tmp_path / "mask.png"),
                "--model",
                str(demo_dir / "model.safetensors"),
                "--steps",
                "5",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    filled = np.asarray(Image.open(out))
    assert filled.shape == (16, 16)
    np.testing.assert_array_equal(filled[:, :8], digit[:, :8])  # known half kept


def test_context_flags_build_the_context_term():
    from conprediff.cli import _context, build_parser
    from conprediff.context import ContextPrediction

    def parse(*flags):
        return build_parser().parse_args(["demo", *flags])

    assert _context(parse("--no-context")) is None
    default = _context(parse())
    assert default.weight == ContextPrediction().weight and default.strides == (1, 2)
    custom = _context(parse("--context-weight", "0.5", "--strides", "1", "2", "3"))
    assert custom.weight == 0.5 and custom.strides == (1, 2, 3)


def test_train_conditional_on_class_subfolders_and_sample_one_class(tmp_path, capsys):
    root = tmp_path / "classes"
    for name in ("b", "a"):  # classes are numbered in sorted order: a = 0, b = 1
        (root / name).mkdir(parents=True)
        image_folder(root / name, 4, 8)  # root/name/imgs/*.png
    model = tmp_path / "c.safetensors"
    assert main(["train", str(root), "--conditional", "--out", str(model),
                 "--channel-mults", "1", "2", *TINY]) == 0
    assert "classes: 0 = a, 1 = b" in capsys.readouterr().out
    from conprediff import ConPreDiffModel

    assert ConPreDiffModel.load(model).backbone_.num_classes == 2
    out = tmp_path / "s.png"
    args = ["sample", str(model), "--n", "2", "--steps", "2", "--out", str(out)]
    assert main([*args, "--label", "1", "--guidance-scale", "2"]) == 0 and out.is_file()
    assert main([*args, "--label", "2"]) == 2  # out of range: reported
    assert "must lie in [0, 2)" in capsys.readouterr().err


def test_latent_model_from_the_command_line(tmp_path, capsys):
    folder = image_folder(tmp_path, 8, 8)
    ae, model = tmp_path / "ae.safetensors", tmp_path / "m.safetensors"
    assert main(["fit-autoencoder", str(folder), "--out", str(ae), "--downsampling-factor", "2",
                 "--latent-channels", "2", "--base-channels", "8", "--steps", "3",
                 "--batch-size", "4", "--device", "cpu"]) == 0
    assert "PSNR" in capsys.readouterr().out
    assert main(["train", str(folder), "--autoencoder", str(ae), "--out", str(model),
                 "--channel-mults", "1", "2", *TINY]) == 0
    from conprediff import ConPreDiffModel

    loaded = ConPreDiffModel.load(model)
    assert loaded.autoencoder_.latent_channels == 2 and loaded.backbone_.in_channels == 2
    assert main(["sample", str(model), "--n", "2", "--steps", "2", "--sampler", "dpmpp_2m",
                 "--out", str(tmp_path / "s.png")]) == 0
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[:, 4:] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "filled.png"
    assert main(["inpaint", str(folder / "0.png"), str(tmp_path / "mask.png"), "--model",
                 str(model), "--steps", "4", "--jump-n-sample", "1", "--out", str(out)]) == 0
    filled, given = np.asarray(Image.open(out)), np.asarray(Image.open(folder / "0.png"))
    assert np.array_equal(filled[:, :4], given[:, :4])
    # an image size the autoencoder cannot take: one line, exit code 2
    odd = tmp_path / "odd"
    odd.mkdir()
    Image.fromarray(np.zeros((7, 7), dtype=np.uint8)).save(odd / "a.png")
    assert main(["train", str(odd), "--autoencoder", str(ae), *TINY]) == 2
    assert "downsampling_factor=2" in capsys.readouterr().err
