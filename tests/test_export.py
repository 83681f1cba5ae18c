"""Sampling many images to a folder in chunks: files, determinism, resume, the CLI."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conprediff import ConPreDiffModel
from conprediff.cli import main
from conprediff.export import sample_to_folder, save_images

GOOD = Path(__file__).parent / "fixtures" / "v1_context.safetensors"


@pytest.fixture(scope="module")
def model():
    return ConPreDiffModel.load(GOOD, device="cpu")


def _pngs(folder):
    return sorted(p.name for p in Path(folder).iterdir())


def test_save_images_maps_the_range_to_8_bits(tmp_path):
    images = torch.tensor([-1.0, 0.0, 1.0, 2.0]).reshape(1, 1, 2, 2)
    (path,) = save_images(images, tmp_path, start=7)
    assert path.name == "000007.png"
    assert np.asarray(Image.open(path)).tolist() == [[0, 128], [255, 255]]
    with pytest.raises(ValueError, match="1 or 3 channels"):
        save_images(torch.zeros(1, 2, 2, 2), tmp_path)


def test_sample_to_folder_writes_every_image_once(tmp_path, model):
    sample_to_folder(model, 5, tmp_path / "out", batch_size=2, steps=2, progress=False)
    assert _pngs(tmp_path / "out") == [f"{i:06d}.png" for i in range(5)]
    shape = model.image_shape_
    assert np.asarray(Image.open(tmp_path / "out" / "000004.png")).shape == shape[1:]


def test_a_resumed_run_writes_the_same_files(tmp_path, model):
    whole = tmp_path / "whole"
    sample_to_folder(model, 5, whole, batch_size=2, steps=2, seed=3, progress=False)
    part = tmp_path / "part"
    sample_to_folder(model, 5, part, batch_size=2, steps=2, seed=3, progress=False)
    (part / "000003.png").unlink()  # chunk 1 (images 2, 3) is incomplete
    (part / ".000004.png.123.tmp").write_bytes(b"left by a killed run")
    before = (part / "000000.png").stat().st_mtime_ns
    sample_to_folder(model, 5, part, batch_size=2, steps=2, seed=3, resume=True, progress=False)
    assert (part / "000000.png").stat().st_mtime_ns == before  # complete chunks are kept
    assert _pngs(part) == _pngs(whole)
    for name in _pngs(whole):
        assert (part / name).read_bytes() == (whole / name).read_bytes(), name
    other = tmp_path / "other"
    sample_to_folder(model, 2, other, batch_size=2, steps=2, seed=4, progress=False)
    assert (other / "000000.png").read_bytes() != (whole / "000000.png").read_bytes()


def test_labels_are_checked_against_n(tmp_path, model):
    with pytest.raises(ValueError, match="n=3 labels"):
        sample_to_folder(model, 3, tmp_path, labels=[0, 1], steps=2, progress=False)


def test_cli_samples_into_a_folder(tmp_path, capsys):
    out = tmp_path / "fid"
    argv = ["sample", str(GOOD), "--n", "3", "--steps", "2", "--batch-size", "2",
            "--sampler", "dpmpp_2m", "--device", "cpu", "--out", f"{out}/"]
    assert main(argv) == 0
    assert _pngs(out) == ["000000.png", "000001.png", "000002.png"]
    assert main(argv[:-2] + ["--out", str(tmp_path / "grid.png")]) == 0
    assert (tmp_path / "grid.png").is_file()
    capsys.readouterr()
    assert main(argv[:-2] + ["--out", str(tmp_path / "grid.png"), "--resume"]) == 2
    assert "--resume needs --out to be a folder" in capsys.readouterr().err


def test_cli_precision_choices_are_the_estimators_and_reach_sample(tmp_path, capsys,
                                                                   monkeypatch):
    from conprediff.cli import PRECISION_CHOICES
    from conprediff.precision import PRECISIONS

    assert PRECISION_CHOICES == PRECISIONS
    seen = []
    original = ConPreDiffModel.sample

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("precision"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ConPreDiffModel, "sample", spy)
    argv = ["sample", str(GOOD), "--n", "2", "--steps", "2", "--device", "cpu",
            "--out", str(tmp_path / "g.png")]
    assert main([*argv, "--precision", "bf16"]) == 0 and main(argv) == 0
    assert seen == ["bf16", None]
    with pytest.raises(SystemExit):
        main([*argv, "--precision", "fp8"])
    capsys.readouterr()


def test_the_fail_fast_message_points_to_the_folder_route(monkeypatch, model):
    import conprediff._resources as resources

    monkeypatch.setattr(resources, "available_memory", lambda: 1000)
    with pytest.raises(ValueError, match=r"sample_to_folder\(model, 1000000, folder\)"):
        model.sample(10**6)
