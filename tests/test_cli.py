"""The command line and the example script, run with tiny settings."""

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from conprediff.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--steps", "3", "--base-channels", "8", "--batch-size", "16"]


def test_demo_writes_samples_loss_and_model(tmp_path, capsys):
    assert main(["demo", *TINY, "--out", str(tmp_path), "--n-samples", "4"]) == 0
    printed = capsys.readouterr().out
    for name in ("samples.png", "loss.png", "model.safetensors"):
        assert (tmp_path / name).is_file() and str(tmp_path / name) in printed
    with Image.open(tmp_path / "samples.png") as img:
        assert img.size[0] > 16


def test_train_and_sample_a_folder(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (10, 10), dtype=np.uint8)).save(folder / f"{i}.png")
    model = tmp_path / "m.safetensors"
    assert main(["train", str(folder), "--size", "8", "--out", str(model), *TINY]) == 0
    assert (
        main(["sample", str(model), "--n", "2", "--steps", "2", "--out", str(tmp_path / "s.png")])
        == 0
    )
    assert (tmp_path / "s.png").is_file()


def test_errors_are_reported_not_raised(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "missing.safetensors")]) == 2
    assert "error" in capsys.readouterr().err


def test_quickstart_example_runs(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "quickstart.py"),
            "--steps",
            "2",
            "--base-channels",
            "8",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "samples.png").is_file() and (tmp_path / "loss.png").is_file()
