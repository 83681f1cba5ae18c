"""Neighbourhood gathering on small maps with hand-computed expected sets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conprediff.context.neighborhoods import Neighborhood, NeighborhoodSampler, reflect_index

H, W = 5, 6  # H != W catches transposed coordinates


def grid(batch: int = 1, channels: int = 1) -> torch.Tensor:
    """``y[b, c, i, j] = 6 i + j + 100 b + 1000 c``."""
    ii, jj = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    base = (6 * ii + jj).double()
    b = torch.arange(batch).double()[:, None, None, None] * 100
    c = torch.arange(channels).double()[None, :, None, None] * 1000
    return base[None, None] + b + c


def point(sampler: NeighborhoodSampler, i: int, j: int, stride_pos: int = 0):
    """Valid values (sorted, with multiplicity) and their weights at pixel (i, j) of grid()."""
    nb = sampler.gather(grid(), torch.tensor([i * W + j]))[stride_pos]
    values, weights = nb.values[0, :, 0], nb.weights[0]
    assert torch.isfinite(values).all()
    assert torch.allclose(weights.sum(), torch.tensor(1.0))
    kept = weights > 0
    return sorted(values[kept].tolist()), weights[kept].tolist()


# (shape, stride, border, (i, j)) -> expected sorted neighbour values (uniform weights)
CASES = [
    # ring, drop
    ("ring", 1, "drop", (0, 0), [1, 6, 7]),
    ("ring", 2, "drop", (0, 0), [2, 12, 14]),
    ("ring", 3, "drop", (0, 0), [3, 18, 21]),
    ("ring", 1, "drop", (0, 3), [2, 4, 8, 9, 10]),
    ("ring", 1, "drop", (4, 5), [22, 23, 28]),
    ("ring", 1, "drop", (2, 3), [8, 9, 10, 14, 16, 20, 21, 22]),
    ("ring", 2, "drop", (2, 3), [1, 3, 5, 13, 17, 25, 27, 29]),
    ("ring", 3, "drop", (2, 3), [12]),
    ("ring", 2, "drop", (4, 0), [12, 14, 26]),
    # square, drop
    ("square", 1, "drop", (0, 0), [1, 6, 7]),
    ("square", 2, "drop", (0, 0), [1, 2, 6, 7, 8, 12, 13, 14]),
    (
        "square",
        2,
        "drop",
        (2, 3),
        [6 * i + j for i in range(5) for j in range(1, 6) if (i, j) != (2, 3)],
    ),
    ("square", 3, "drop", (4, 5), [6 * i + j for i in range(1, 5) for j in range(2, 6)][:-1]),
    # ring, reflect (numpy 'reflect': -1 -> 1, n -> n - 2)
    ("ring", 1, "reflect", (0, 0), [1, 1, 6, 6, 7, 7, 7, 7]),
    ("ring", 2, "reflect", (0, 0), [2, 2, 12, 12, 14, 14, 14, 14]),
    ("ring", 1, "reflect", (4, 5), [22, 22, 22, 22, 23, 23, 28, 28]),
    ("ring", 3, "reflect", (2, 3), [6, 9, 10, 12, 16, 18, 21, 22]),
    ("ring", 1, "reflect", (2, 3), [8, 9, 10, 14, 16, 20, 21, 22]),
    # stride larger than both sides: reflected repeatedly (rows -6, 6 -> 2; cols -6, 6 -> 4)
    ("ring", 6, "reflect", (0, 0), [4, 4, 12, 12, 16, 16, 16, 16]),
    # square, reflect: rows {-1->1, 0, 1}, cols {-1->1, 0, 1} around (0, 0)
    ("square", 1, "reflect", (0, 0), [1, 1, 6, 6, 7, 7, 7, 7]),
]


@pytest.mark.parametrize("shape,stride,border,ij,expected", CASES)
def test_hand_computed_sets(shape, stride, border, ij, expected):
    sampler = NeighborhoodSampler(strides=(stride,), shape=shape, border=border)
    values, weights = point(sampler, *ij)
    assert values == sorted(expected)
    assert weights == pytest.approx([1.0 / len(expected)] * len(expected))
    if border == "reflect":  # no entry is dropped
        assert len(values) == sampler.size(stride)


def test_square_reflect_stride2_interior_has_all_24():
    sampler = NeighborhoodSampler(strides=(2,), shape="square", border="reflect")
    values, _ = point(sampler, 2, 3)
    assert values == sorted(6 * i + j for i in range(5) for j in range(1, 6) if (i, j) != (2, 3))


def test_drop_border_weights_map():
    """Number of in-grid ring neighbours per pixel at stride 1 on the 5 x 6 grid."""
    (nb,) = NeighborhoodSampler(strides=(1,)).gather(grid())
    counts = (nb.weights > 0).sum(1).reshape(H, W)
    expected = torch.tensor(
        [
            [3, 5, 5, 5, 5, 3],
            [5, 8, 8, 8, 8, 5],
            [5, 8, 8, 8, 8, 5],
            [5, 8, 8, 8, 8, 5],
            [3, 5, 5, 5, 5, 3],
        ]
    )
    assert torch.equal(counts, expected)
    assert torch.allclose(nb.weights.sum(1), torch.ones(H * W))
    # kept neighbours carry exactly 1 / count, dropped ones exactly 0
    w = nb.weights.reshape(H, W, 8)
    assert torch.allclose(w.max(-1).values, 1.0 / expected.float())
    # dropped entries hold the centre's value (finite, never used)
    centre = grid().reshape(-1)
    dropped = nb.weights == 0
    assert torch.equal(nb.values[..., 0][dropped], centre[:, None].expand(-1, 8)[dropped])


def test_batch_and_channels():
    y = grid(batch=2, channels=2)
    sampler = NeighborhoodSampler(strides=(1, 2))
    p = 1 * H * W + 0  # image 1, pixel (0, 0)
    s1, s2 = sampler.gather(y, torch.tensor([p]))
    rows = sorted(map(tuple, s1.values[0][s1.weights[0] > 0].tolist()))
    assert rows == [(101.0, 1101.0), (106.0, 1106.0), (107.0, 1107.0)]
    rows = sorted(map(tuple, s2.values[0][s2.weights[0] > 0].tolist()))
    assert rows == [(102.0, 1102.0), (112.0, 1112.0), (114.0, 1114.0)]
    full = sampler.gather(y)
    assert full[0].values.shape == (2 * H * W, 8, 2)
    assert full[0].weights.shape == (2 * H * W, 8)
    assert full[0].weights.dtype == torch.float32
    assert full[0].values.dtype == y.dtype


@pytest.mark.parametrize("shape,border", [("ring", "drop"), ("square", "reflect")])
def test_index_subset_matches_full(shape, border):
    y = grid(batch=2, channels=2)
    sampler = NeighborhoodSampler(strides=(1, 2, 3), shape=shape, border=border)
    index = torch.tensor([59, 0, 17, 30, 31, 5, 17])
    for full, sub in zip(sampler.gather(y), sampler.gather(y, index), strict=True):
        assert isinstance(sub, Neighborhood)
        assert torch.equal(sub.values, full.values[index])
        assert torch.equal(sub.weights, full.weights[index])


def test_offsets_and_sizes():
    ring = NeighborhoodSampler(shape="ring")
    square = NeighborhoodSampler(shape="square")
    for s in (1, 2, 3):
        off = ring.offsets(s)
        assert off.dtype == torch.long and off.shape == (8, 2)
        assert {tuple(o) for o in off.tolist()} == {
            (s * a, s * b) for a in (-1, 0, 1) for b in (-1, 0, 1) if (a, b) != (0, 0)
        }
        assert ring.size(s) == 8
        assert square.offsets(s).shape == ((2 * s + 1) ** 2 - 1, 2)
        assert square.size(s) == (2 * s + 1) ** 2 - 1
        assert (0, 0) not in {tuple(o) for o in square.offsets(s).tolist()}
    assert square.size(2) == 24 and square.size(3) == 48


def test_reflect_index_matches_numpy():
    for n in (1, 2, 3, 5):
        idx = torch.arange(-13, n + 13)
        padded = np.pad(np.arange(n), 13, mode="reflect")  # padded[k] is index k - 13
        assert reflect_index(idx, n).tolist() == padded.tolist()


def test_values_taken_as_given():
    y = grid().float().requires_grad_(True)
    (nb,) = NeighborhoodSampler(strides=(1,)).gather(y)
    assert nb.values.requires_grad
    (nb,) = NeighborhoodSampler(strides=(1,)).gather(y.detach())
    assert not nb.values.requires_grad


def test_drop_without_any_neighbour_is_an_error():
    # on a 4 x 5 map, pixel (2, 2) has no ring neighbour at stride 3 inside the grid
    y = torch.zeros(1, 1, 4, 5)
    with pytest.raises(ValueError, match="strides"):
        NeighborhoodSampler(strides=(1, 3)).gather(y)
    # reflect and square handle it
    NeighborhoodSampler(strides=(3,), border="reflect").gather(y)
    NeighborhoodSampler(strides=(3,), shape="square").gather(y)


@pytest.mark.parametrize(
    "kwargs,name,error",
    [
        ({"strides": ()}, "strides", ValueError),
        ({"strides": (0,)}, "strides", ValueError),
        ({"strides": -1}, "strides", ValueError),
        ({"strides": (1.5,)}, "strides", TypeError),
        ({"strides": (True,)}, "strides", TypeError),
        ({"strides": "12"}, "strides", TypeError),
        ({"strides": None}, "strides", TypeError),
        ({"shape": "hex"}, "shape", ValueError),
        ({"shape": None}, "shape", TypeError),
        ({"border": "wrap"}, "border", ValueError),
    ],
)
def test_validation_names_the_argument(kwargs, name, error):
    sampler = NeighborhoodSampler(**kwargs)  # the constructor only stores
    with pytest.raises(error, match=name):
        sampler.gather(torch.zeros(1, 1, 4, 4))


@pytest.mark.parametrize(
    "stride,error",
    [(np.int64(2), None), (np.int32(2), None), (True, TypeError), (2.0, TypeError)],
)
def test_strides_take_numpy_integers_not_bools_or_floats(stride, error):
    for sampler in (NeighborhoodSampler(strides=stride), NeighborhoodSampler(strides=(1, stride))):
        if error is None:
            assert sampler.validate()[-1] == 2 and type(sampler.validate()[-1]) is int
            assert sampler.gather(torch.zeros(1, 1, 4, 4))[-1].values.shape == (16, 8, 1)
        else:
            with pytest.raises(error, match="strides"):
                sampler.gather(torch.zeros(1, 1, 4, 4))
    if error is None:
        assert NeighborhoodSampler(shape="square").size(stride) == 24
    else:
        with pytest.raises(error, match="stride"):
            NeighborhoodSampler().offsets(stride)


def test_bad_inputs():
    sampler = NeighborhoodSampler()
    with pytest.raises(ValueError, match="y"):
        sampler.gather(torch.zeros(4, 4))
    with pytest.raises(TypeError, match="y"):
        sampler.gather(np.zeros((1, 1, 4, 4)))
    with pytest.raises(ValueError, match="index"):
        sampler.gather(torch.zeros(1, 1, 4, 4), torch.tensor([16]))
    with pytest.raises(ValueError, match="index"):
        sampler.gather(torch.zeros(1, 1, 4, 4), torch.tensor([[0]]))
    with pytest.raises(TypeError, match="index"):
        sampler.gather(torch.zeros(1, 1, 4, 4), torch.tensor([0.0]))
    with pytest.raises(TypeError, match="index"):
        sampler.gather(torch.zeros(1, 1, 4, 4), [0])
    assert NeighborhoodSampler(strides=2).gather(torch.zeros(1, 1, 4, 4))[0].values.shape == (
        16,
        8,
        1,
    )
