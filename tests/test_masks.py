"""Inpainting masks: exact geometry of each family, seeding, and mask parsing."""

import numpy as np
import pytest
import torch
from PIL import Image

from conprediff.inpainting import (
    MASK_FAMILIES,
    NARROW_BAND,
    WIDE_BAND,
    alternating_lines,
    as_mask,
    expand,
    half,
    make_mask,
    narrow,
    super_resolve,
    wide,
)

SIZES = [(8, 8), (16, 16), (28, 28), (32, 32), (256, 256), (24, 40), (7, 13)]
SEEDS = [0, 1, 12345]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # small tensors: a second intra-op thread only adds contention on busy shared cores
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("seed", SEEDS)
def test_alternating_lines_misses_exactly_the_odd_rows(size, seed):
    H, W = size
    m = alternating_lines(H, W, seed)
    assert m.shape == (H, W) and m.dtype == torch.bool
    for i in range(H):
        assert bool(m[i].all()) if i % 2 == 1 else not bool(m[i].any()), i
    assert int(m.sum()) == (H // 2) * W


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("seed", SEEDS)
def test_super_resolve_keeps_exactly_the_even_even_pixels(size, seed):
    H, W = size
    m = super_resolve(H, W, seed)
    assert m.shape == (H, W) and m.dtype == torch.bool
    known = (~m).nonzero().tolist()
    assert known == [[i, j] for i in range(0, H, 2) for j in range(0, W, 2)]
    if H % 2 == 0 and W % 2 == 0:
        assert int((~m).sum()) * 4 == H * W  # a quarter kept, three quarters missing


@pytest.mark.parametrize(
    "size, rows, cols",
    [
        ((256, 256), (96, 160), (96, 160)),  # RePaint's 64 of 256
        ((32, 32), (12, 20), (12, 20)),
        ((28, 28), (10, 17), (10, 17)),  # 7 kept; margins 10 and 11
        ((16, 16), (6, 10), (6, 10)),
        ((8, 8), (3, 5), (3, 5)),
        ((24, 40), (9, 15), (15, 25)),
        ((7, 13), (2, 4), (5, 8)),  # round(7/4) = 2 rows from 2; round(13/4) = 3 cols from 5
        ((3, 2), (1, 2), (0, 1)),  # at least one pixel kept
    ],
)
def test_expand_keeps_exactly_the_centred_square(size, rows, cols):
    H, W = size
    m = expand(H, W, seed=3)
    keep = torch.zeros(H, W, dtype=torch.bool)
    keep[rows[0] : rows[1], cols[0] : cols[1]] = True
    assert torch.equal(m, ~keep)
    if H % 4 == 0 and W % 4 == 0:
        assert int(keep.sum()) == (H // 4) * (W // 4)
    # centred: the far margin equals the near one or exceeds it by one pixel
    assert 0 <= (H - rows[1]) - rows[0] <= 1 and 0 <= (W - cols[1]) - cols[0] <= 1


@pytest.mark.parametrize("size", SIZES)
def test_half_misses_exactly_the_chosen_half(size):
    H, W = size
    rows, cols = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    expected = {
        "left": cols < W // 2,
        "right": cols >= W - W // 2,
        "top": rows < H // 2,
        "bottom": rows >= H - H // 2,
    }
    for side, want in expected.items():
        assert torch.equal(half(H, W, side=side), want), side
    assert torch.equal(half(H, W), expected["right"])  # the documented default
    if W % 2 == 0:
        assert int(half(H, W).sum()) * 2 == H * W


def test_half_random_side_is_seeded():
    sides = {"left", "right", "top", "bottom"}
    drawn = set()
    for seed in range(40):
        m = half(16, 16, seed, side="random")
        assert torch.equal(m, half(16, 16, seed, side="random"))
        match = [s for s in sides if torch.equal(m, half(16, 16, side=s))]
        assert len(match) == 1
        drawn.add(match[0])
    assert drawn == sides
    with pytest.raises(ValueError, match="side"):
        half(8, 8, side="middle")


@pytest.mark.parametrize("fn, band", [(wide, WIDE_BAND), (narrow, NARROW_BAND)])
@pytest.mark.parametrize("size", [(8, 8), (16, 16), (28, 28), (32, 32), (24, 40), (4, 5)])
def test_brush_masks_seeded_and_in_band(fn, band, size):
    H, W = size
    masks = [fn(H, W, seed) for seed in range(8)]
    for seed, m in enumerate(masks):
        assert m.shape == (H, W) and m.dtype == torch.bool
        assert torch.equal(m, fn(H, W, seed))
        frac = m.double().mean().item()
        assert band[0] <= frac <= band[1], (seed, frac)
        assert 0 < int(m.sum()) < H * W
    assert len({m.numpy().tobytes() for m in masks}) == len(masks)  # seeds differ


@pytest.mark.parametrize("seed", SEEDS)
def test_brush_masks_at_256(seed):
    w, n = wide(256, 256, seed), narrow(256, 256, seed)
    assert torch.equal(w, wide(256, 256, seed))
    assert WIDE_BAND[0] <= w.double().mean() <= WIDE_BAND[1]
    assert NARROW_BAND[0] <= n.double().mean() <= NARROW_BAND[1]


def test_wide_covers_more_than_narrow_on_average():
    w = np.mean([wide(32, 32, s).double().mean().item() for s in range(20)])
    n = np.mean([narrow(32, 32, s).double().mean().item() for s in range(20)])
    assert w > n + 0.1, (w, n)


def test_generator_seed_advances_and_is_reproducible():
    g = torch.Generator().manual_seed(7)
    a, b = wide(16, 16, g), wide(16, 16, g)
    assert not torch.equal(a, b)
    g.manual_seed(7)
    assert torch.equal(wide(16, 16, g), a)
    assert wide(16, 16).shape == (16, 16)  # seed=None draws fresh entropy


def test_brush_masks_reject_tiny_images_and_bad_seeds():
    with pytest.raises(ValueError, match="height"):
        wide(3, 16, 0)
    with pytest.raises(TypeError, match="seed"):
        narrow(16, 16, "abc")


def test_registry_and_make_mask():
    assert set(MASK_FAMILIES) == {
        "wide",
        "narrow",
        "super_resolve",
        "alternating_lines",
        "half",
        "expand",
    }
    for family, fn in MASK_FAMILIES.items():
        assert torch.equal(make_mask(family, 20, 12, seed=5), fn(20, 12, 5))
    assert torch.equal(make_mask("half", 8, 8, side="top"), half(8, 8, side="top"))
    with pytest.raises(ValueError, match="family.*'blob'"):
        make_mask("blob", 8, 8)


# ----------------------------------------------------------------------------------- as_mask


def _ref():
    return alternating_lines(6, 4)


@pytest.mark.parametrize(
    "make",
    [
        lambda m: m,
        lambda m: m.numpy(),
        lambda m: m.int(),
        lambda m: m.to(torch.uint8),
        lambda m: m.float(),
        lambda m: m.double().numpy(),
        lambda m: m.int().tolist(),
        lambda m: Image.fromarray(m.numpy().astype(np.uint8) * 255, mode="L"),
        lambda m: Image.fromarray(m.numpy().astype(np.uint8) * 255, mode="L").convert("1"),
    ],
)
def test_as_mask_accepts_each_type(make):
    out = as_mask(make(_ref()), (2, 3, 6, 4))
    assert out.dtype == torch.bool and out.shape == (1, 1, 6, 4)
    assert torch.equal(out[0, 0], _ref())


@pytest.mark.parametrize(
    "shape, image_shape, expected",
    [
        ((6, 4), (3, 6, 4), (1, 6, 4)),
        ((1, 6, 4), (3, 6, 4), (1, 6, 4)),
        ((3, 6, 4), (3, 6, 4), (3, 6, 4)),
        ((6, 4), (2, 3, 6, 4), (1, 1, 6, 4)),
        ((1, 6, 4), (2, 3, 6, 4), (1, 1, 6, 4)),
        ((3, 6, 4), (2, 3, 6, 4), (1, 3, 6, 4)),
        ((2, 1, 6, 4), (2, 3, 6, 4), (2, 1, 6, 4)),
        ((2, 3, 6, 4), (2, 3, 6, 4), (2, 3, 6, 4)),
    ],
)
def test_as_mask_shapes(shape, image_shape, expected):
    m = torch.rand(shape) > 0.5
    out = as_mask(m, image_shape)
    assert out.shape == expected
    assert torch.broadcast_shapes(out.shape, image_shape) == image_shape
    assert torch.equal(out.reshape(shape), m)


@pytest.mark.parametrize(
    "bad",
    [
        torch.full((6, 4), 0.5),
        torch.full((6, 4), 2),
        np.full((6, 4), -1.0),
        torch.full((6, 4), float("nan")),
    ],
)
def test_as_mask_rejects_values(bad):
    with pytest.raises(ValueError, match="mask"):
        as_mask(bad, (3, 6, 4))


def test_as_mask_rejects_grey_pil_image():
    img = Image.fromarray(np.full((6, 4), 128, dtype=np.uint8), mode="L")
    with pytest.raises(ValueError, match="mask.*255"):
        as_mask(img, (3, 6, 4))


@pytest.mark.parametrize(
    "shape, image_shape",
    [
        ((6, 5), (3, 6, 4)),
        ((2, 6, 4), (3, 6, 4)),
        ((3, 1, 6, 4), (2, 3, 6, 4)),
        ((2, 2, 6, 4), (2, 3, 6, 4)),
        ((1, 1, 6, 4), (3, 6, 4)),
        ((4,), (3, 6, 4)),
        ((1, 1, 1, 6, 4), (2, 3, 6, 4)),
    ],
)
def test_as_mask_rejects_shapes_naming_both(shape, image_shape):
    with pytest.raises(ValueError, match="mask") as err:
        as_mask(torch.zeros(shape, dtype=torch.bool), image_shape)
    assert str(shape) in str(err.value) and str(image_shape) in str(err.value)


@pytest.mark.parametrize(
    "bad", [None, 1, "mask.png", {"a": 1}, torch.zeros(6, 4, dtype=torch.cfloat)]
)
def test_as_mask_rejects_types(bad):
    with pytest.raises(TypeError, match="mask"):
        as_mask(bad, (3, 6, 4))
