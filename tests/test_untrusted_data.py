"""Data is checked as a whole stream: high-depth images, non-images, string labels, layouts."""

import numpy as np
import pytest
import torch
from PIL import Image

from conprediff import ConPreDiffModel, UNet
from conprediff.data import ImageFolder, read_image


def _tiny(num_classes=None, steps=2):
    return ConPreDiffModel(backbone=UNet(base_channels=8, channel_mults=(1,),
                                         num_classes=num_classes),
                           max_steps=steps, batch_size=4, timesteps=10, device="cpu", verbose=0,
                           seed=0, ema_decay=None)


def _gradient16(path, h=16, w=16):
    values = np.linspace(0, 65535, h * w).round().astype(np.uint16).reshape(h, w)
    Image.fromarray(values).save(path)  # mode I;16
    return values


def test_a_16_bit_png_is_read_at_its_full_range(tmp_path):
    values = _gradient16(tmp_path / "g.png")
    assert Image.open(tmp_path / "g.png").mode in ("I", "I;16")
    x = read_image(tmp_path / "g.png")
    assert x.shape == (1, 16, 16) and x.dtype == torch.float32
    expected = torch.from_numpy(values.astype(np.float32) / 65535 * 2 - 1)[None]
    torch.testing.assert_close(x, expected, atol=1e-6, rtol=0)
    # converting to 8 bits first (Pillow's convert('L')) would clip everything above 255 to white
    assert (x > 0.99).float().mean() < 0.02
    assert len(torch.unique(x)) == 256  # every level kept, not 8-bit steps


def test_a_16_bit_png_resized_and_as_rgb(tmp_path):
    (tmp_path / "a").mkdir()
    _gradient16(tmp_path / "a" / "g.png")
    grey = ImageFolder(tmp_path / "a", size=8)[0]
    rgb = ImageFolder(tmp_path / "a", mode="RGB", size=(8, 4))[0]
    assert grey.shape == (1, 8, 8) and rgb.shape == (3, 8, 4)
    assert -1 <= grey.min() < -0.8 and 0.8 < grey.max() <= 1
    assert torch.equal(rgb[0], rgb[1]) and torch.equal(rgb[1], rgb[2])
    rows = grey[0, :, 0]
    assert bool((rows[1:] > rows[:-1]).all())  # the gradient survives resizing


def test_an_8_bit_png_reads_as_before(tmp_path):
    arr = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    Image.fromarray(arr).save(tmp_path / "e.png")
    expected = torch.from_numpy(arr.astype(np.float32))[None] / 127.5 - 1.0
    assert torch.equal(read_image(tmp_path / "e.png"), expected)


def test_a_file_that_is_not_an_image_is_named(tmp_path):
    (tmp_path / "ok.png").write_bytes(b"")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"this is text")
    folder = ImageFolder(tmp_path)
    with pytest.raises(ValueError, match=r"cannot read '.*b\.png' as an image"):
        folder[1]


@pytest.mark.parametrize("num_classes", [None, 3])
@pytest.mark.parametrize("as_list", [False, True])
def test_string_labels_are_refused_clearly(num_classes, as_list):
    y = np.array(list("abcabcab"))
    with pytest.raises(ValueError, match=r"labels y must be integers, got strings such as 'a'"):
        _tiny(num_classes).fit(torch.rand(8, 1, 8, 8), list(y) if as_list else y)


def test_string_labels_from_a_loader_are_refused_clearly():
    data = list(zip(torch.rand(8, 1, 8, 8), "abcabcab", strict=True))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    with pytest.raises(ValueError, match=r"data's labels must be integers, got strings"):
        _tiny(3).fit(loader)


@pytest.mark.parametrize("shape", [(4, 12, 12, 1), (4, 28, 20, 1), (4, 20, 28, 3)])
def test_channels_last_arrays_are_refused(shape):
    with pytest.raises(ValueError, match="looks channels-last"):
        _tiny().fit(np.random.default_rng(0).random(shape, dtype=np.float32))


def test_channels_first_images_with_few_channels_pass():
    _tiny(steps=1).fit(torch.rand(4, 3, 8, 8))  # (N, 3, 8, 8): no false alarm


def test_a_later_batch_of_another_size_is_named():
    loader = torch.utils.data.DataLoader([torch.rand(1, 8, 8)] * 4 + [torch.rand(1, 8, 12)] * 4,
                                         batch_size=4)
    with pytest.raises(ValueError, match=r"expected \(C, H, W\) = \(1, 8, 8\), got a batch of "
                                         r"\(1, 8, 12\)"):
        _tiny(steps=3).fit(loader)
