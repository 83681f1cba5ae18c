"""The context term: training signal, point subsampling, targets, weighting, parameters."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone
from torch import nn

from conprediff.context import (
    ConstantWeight,
    ContextHead,
    ContextOutput,
    ContextPrediction,
    DecayingWeight,
    GaussianDecoder,
    SampledDecoder,
    SNRWeight,
    TruncatedWeight,
)
from conprediff.schedules import NoiseSchedule
from conprediff.wasserstein import SlicedW2, SortedW2

SCHEDULE = NoiseSchedule("linear", 100)


class Recorder(nn.Module):
    """A custom decoder: Q = 4 copies of a linear map; records how many points it saw."""

    def __init__(self, in_features: int, out_channels: int, zero: bool = False):
        super().__init__()
        self.lin = nn.Linear(in_features, out_channels)
        self.zero = zero
        self.seen: list[int] = []

    def forward(self, h, t):
        self.seen.append(h.shape[0])
        out = self.lin(h)[:, None, :].expand(-1, 4, -1)
        return out * 0 if self.zero else out


def toy(batch=2, channels=1, features=3, size=(5, 6), seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(batch, features, *size, generator=g)
    x0 = torch.randn(batch, channels, *size, generator=g)
    t = torch.randint(0, 100, (batch,), generator=g)
    return feats, t, x0


@pytest.fixture
def one_thread():
    """Tiny tensors: threads only add synchronisation overhead on busy machines."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("decoder", ["sampled", "gaussian"])
def test_w2_term_falls(decoder, one_thread):
    """Neighbours of point i ~ m_i + 0.05 noise, with m_i given in the features: the decoder
    must learn it; the W2 term falls by a large factor."""
    torch.manual_seed(0)
    ii, jj = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    m = torch.stack([torch.sin(0.25 * ii + 0.2 * jj), 1.0 + 0.5 * torch.cos(0.3 * jj)])  # (2,8,8)
    x0 = (m + 0.05 * torch.randn(2, 8, 8))[:, None]  # (B=2, C=1, 8, 8)
    feats = torch.cat([m[:, None], torch.ones(2, 1, 8, 8)], 1)  # (B, F=2, 8, 8)
    t = torch.tensor([3, 60])
    head = ContextPrediction(strides=(1,), decoder=decoder, hidden=32, latent_dim=4).build(2, 1)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)

    def evaluate():
        g = torch.Generator().manual_seed(123)
        with torch.no_grad():
            return sum(head(feats, t, x0, generator=g).w2.item() for _ in range(4)) / 4

    before = evaluate()
    for _ in range(300):
        opt.zero_grad()
        head(feats, t, x0).loss.backward()
        opt.step()
    after = evaluate()
    assert before > 0.3
    assert after < before / 20, (before, after)


def test_point_fraction_counts():
    feats, t, x0 = toy()  # B H W = 60 points
    cp = ContextPrediction(decoder=Recorder, point_fraction=0.3)
    head = cp.build(3, 1)
    head(feats, t, x0)
    assert head.decoder.seen == [18]
    head = cp.set_params(point_fraction=1e-9).build(3, 1)
    head(feats, t, x0)
    assert head.decoder.seen == [1]  # at least one point
    head = cp.set_params(point_fraction=1.0).build(3, 1)
    head(feats, t, x0)
    assert head.decoder.seen == [60]
    assert head.n_points(60) == 60


def test_point_subset_is_reproducible_and_random():
    feats, t, x0 = toy()
    head = ContextPrediction(point_fraction=0.5).build(3, 1)
    runs = [
        head(feats, t, x0, generator=torch.Generator().manual_seed(s)).w2.item() for s in (1, 1, 2)
    ]
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_lambda_is_applied_per_image():
    """Point-mass decoder at 0 and constant images 1 and 2: W2^2 = y^2 at every point."""
    feats, _, _ = toy()
    x0 = torch.cat([torch.ones(1, 1, 5, 6), 2 * torch.ones(1, 1, 5, 6)])
    t = torch.tensor([0, 10])
    factory = lambda f, c: Recorder(f, c, zero=True)  # noqa: E731
    full = {"point_fraction": 1.0}  # every point, so the means are exact
    out = ContextPrediction(decoder=factory, weight=TruncatedWeight(3.0, t_max=5), **full).build(
        3, 1
    )(feats, t, x0)
    assert isinstance(out, ContextOutput)
    assert out.w2.item() == pytest.approx(1.0)  # only image 0 (lambda > 0) is computed
    assert out.loss.item() == pytest.approx(1.5)  # (3 * 1 + 0 * 4) / 2
    out = ContextPrediction(decoder=factory, weight=0.5, **full).build(3, 1)(feats, t, x0)
    assert out.loss.item() == pytest.approx(1.25)
    out = ContextPrediction(decoder=factory, weight=DecayingWeight(1.0), **full).build(3, 1)(
        feats, t, x0, schedule=SCHEDULE
    )
    assert out.loss.item() == pytest.approx((1 * 1 + 0.9 * 4) / 2)


def test_points_with_zero_weight_are_not_computed():
    """Outside a TruncatedWeight window an image adds nothing, so its points are skipped; the
    loss is still the mean of lambda_t W2^2 over all points (exactly, for constant images)."""
    feats, _, _ = toy()  # B = 2, 30 points per image
    x0 = torch.cat([torch.ones(1, 1, 5, 6), 2 * torch.ones(1, 1, 5, 6)])
    factory = lambda f, c: Recorder(f, c, zero=True)  # noqa: E731
    cp = ContextPrediction(decoder=factory, weight=TruncatedWeight(3.0, t_max=5),
                           point_fraction=0.5)
    head = cp.build(3, 1)
    out = head(feats, torch.tensor([0, 10]), x0)
    assert head.decoder.seen == [15]  # half of image 0's points, none of image 1's
    assert out.loss.item() == pytest.approx(1.5)  # (3 * 1 * 30 + 0 * 4 * 30) / 60
    assert out.w2.item() == pytest.approx(1.0)

    # no image active: one point with weight 0 keeps the decoder in the graph (DDP)
    head = cp.build(3, 1)
    out = head(feats, torch.tensor([7, 10]), x0)
    assert head.decoder.seen == [1] and out.loss.item() == 0.0
    out.loss.backward()
    assert head.decoder.lin.weight.grad is not None

    # every image active: the usual uniform draw of point_fraction * B * H * W points
    head = cp.build(3, 1)
    head(feats, torch.tensor([0, 5]), x0)
    assert head.decoder.seen == [30]


def test_subsampling_active_images_is_unbiased():
    """Images 1, 2, 3 (W2^2 = 1, 4, 9 at every point for a decoder at 0), image 1 outside the
    window: the mean of the subsampled loss over draws is the mean over all points."""
    feats = torch.randn(3, 3, 5, 6, generator=torch.Generator().manual_seed(0))
    x0 = torch.cat([k * torch.ones(1, 1, 5, 6) for k in (1.0, 2.0, 3.0)])
    t = torch.tensor([0, 10, 3])
    factory = lambda f, c: Recorder(f, c, zero=True)  # noqa: E731
    head = ContextPrediction(decoder=factory, weight=TruncatedWeight(1.0, t_max=5),
                             point_fraction=0.5).build(3, 1)
    losses = [head(feats, t, x0, generator=torch.Generator().manual_seed(s)).loss.item()
              for s in range(300)]
    assert set(head.decoder.seen) == {30}  # 45 points of 90, scaled to the 60 active ones
    assert sum(losses) / len(losses) == pytest.approx((1 * 30 + 9 * 30) / 90, rel=0.03)
    assert len(set(losses)) > 1  # the draws differ


def test_schedule_dependent_weight_needs_schedule():
    feats, t, x0 = toy()
    head = ContextPrediction(weight=SNRWeight()).build(3, 1)
    with pytest.raises(ValueError, match="schedule"):
        head(feats, t, x0)
    assert torch.isfinite(head(feats, t, x0, schedule=SCHEDULE).loss)


class SpySchedule(NoiseSchedule):
    calls = 0

    def posterior(self, x0, xt, t):
        type(self).calls += 1
        return super().posterior(x0, xt, t)


def test_posterior_target_uses_schedule_posterior():
    feats, t, x0 = toy()
    xt = torch.randn_like(x0)
    schedule = SpySchedule("linear", 100)
    post = ContextPrediction(target="posterior").build(3, 1)
    plain = ContextPrediction(target="x0").build(3, 1)
    plain.load_state_dict(post.state_dict())
    out = post(feats, t, x0, xt=xt, schedule=schedule, generator=torch.Generator().manual_seed(0))
    assert SpySchedule.calls == 1
    mean, _ = schedule.posterior(x0, xt, t)
    ref = plain(feats, t, mean, generator=torch.Generator().manual_seed(0))
    assert out.w2.item() == pytest.approx(ref.w2.item(), rel=1e-6)
    other = plain(feats, t, x0, generator=torch.Generator().manual_seed(0))
    assert out.w2.item() != pytest.approx(other.w2.item(), rel=1e-3)
    with pytest.raises(ValueError, match="schedule"):
        post(feats, t, x0, xt=xt)
    with pytest.raises(ValueError, match="xt"):
        post(feats, t, x0, schedule=schedule)


@pytest.mark.parametrize("target", ["x0", "posterior"])
def test_no_gradient_reaches_targets(target):
    feats, t, x0 = toy()
    feats.requires_grad_(True)
    x0.requires_grad_(True)
    xt = torch.randn_like(x0).requires_grad_(True)
    head = ContextPrediction(target=target).build(3, 1)
    head(feats, t, x0, xt=xt, schedule=SCHEDULE).loss.backward()
    assert x0.grad is None and xt.grad is None
    assert feats.grad is not None and feats.grad.abs().sum() > 0
    assert all(p.grad is not None for p in head.parameters())


@pytest.mark.parametrize("decoder", ["sampled", "gaussian"])
@pytest.mark.parametrize("channels", [1, 2])
def test_paths_run_finite_nonnegative(decoder, channels):
    feats, t, x0 = toy(channels=channels)
    head = ContextPrediction(strides=(1, 2), decoder=decoder, weight=2.0).build(3, channels)
    assert isinstance(head, ContextHead) and isinstance(head, nn.Module)
    expected = SampledDecoder if decoder == "sampled" else GaussianDecoder
    assert isinstance(head.decoder, expected)
    assert all(k.startswith("decoder.") for k in head.state_dict())
    out = head(feats, t, x0)
    assert out.loss.ndim == 0 and out.w2.ndim == 0 and not out.w2.requires_grad
    assert torch.isfinite(out.loss) and out.w2 >= 0
    assert out.loss.item() == pytest.approx(2 * out.w2.item(), rel=1e-5)


@pytest.mark.parametrize("decoder", ["sampled", "gaussian"])
@pytest.mark.parametrize("channels", [1, 2])
def test_bf16_autocast_is_close_to_float32_and_trains_the_decoder(decoder, channels):
    """Under bf16 autocast the term is float32, within bf16's precision of the float32 term on
    the same points and noise, and every decoder parameter gets a finite, non-zero gradient."""
    feats, t, x0 = toy(channels=channels)
    head = ContextPrediction(strides=(1, 2), decoder=decoder, weight=2.0).build(3, channels)
    torch.manual_seed(0)  # SlicedW2 (two channels) draws its directions from the global stream
    ref = head(feats, t, x0, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(feats, t, x0, generator=torch.Generator().manual_seed(0))
    assert out.loss.dtype == torch.float32 and out.w2.dtype == torch.float32
    assert out.loss.item() == pytest.approx(ref.loss.item(), rel=0.01)
    assert out.w2.item() == pytest.approx(ref.w2.item(), rel=0.01)
    out.loss.backward()
    for name, param in head.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, name


def test_default_samples_equal_largest_neighbourhood():
    head = ContextPrediction(strides=(1, 2), shape="square").build(3, 1)
    assert head.decoder.n_samples == 24
    assert ContextPrediction(n_samples=5).build(3, 1).decoder.n_samples == 5
    assert isinstance(ContextPrediction().build(3, 1).metric, SortedW2)


def test_grid_mismatch_is_an_error():
    feats, t, x0 = toy()
    head = ContextPrediction().build(3, 1)
    with pytest.raises(ValueError, match="features"):
        head(feats[..., :-1], t, x0)
    with pytest.raises(ValueError, match="features"):
        head(feats[:, :2], t, x0)
    with pytest.raises(ValueError, match="x0"):
        head(feats, t, x0[:1])
    with pytest.raises(ValueError, match="t"):
        head(feats, t[:1], x0)


def test_params_nested_and_clone():
    cp = ContextPrediction(weight=DecayingWeight(0.5, 2.0), metric=SlicedW2(n_projections=8))
    params = cp.get_params(deep=True)
    assert params["weight__value"] == 0.5 and params["weight__power"] == 2.0
    assert params["metric__n_projections"] == 8
    assert params["point_fraction"] == 0.1 and params["strides"] == (1, 2)
    c = clone(cp)
    assert c.weight is not cp.weight and c.metric is not cp.metric
    assert c.get_params(deep=True).keys() == params.keys()
    assert {k: v for k, v in c.get_params(deep=True).items() if k not in ("weight", "metric")} == {
        k: v for k, v in params.items() if k not in ("weight", "metric")
    }
    c.set_params(weight__value=3.0, point_fraction=0.5)
    assert c.weight.value == 3.0 and cp.weight.value == 0.5 and c.point_fraction == 0.5
    assert clone(ContextPrediction(weight=ConstantWeight(2.0))).get_params()["weight__value"] == 2.0


@pytest.mark.parametrize(
    "kwargs,name,error",
    [
        ({"strides": ()}, "strides", ValueError),
        ({"strides": (1, -2)}, "strides", ValueError),
        ({"strides": (1, 2.0)}, "strides", TypeError),
        ({"shape": "disc"}, "shape", ValueError),
        ({"border": "zero"}, "border", ValueError),
        ({"decoder": "mlp"}, "decoder", ValueError),
        ({"decoder": 3}, "decoder", TypeError),
        ({"decoder": lambda f, c: "not a module"}, "decoder", TypeError),
        ({"latent_dim": 0}, "latent_dim", ValueError),
        ({"hidden": 2.5}, "hidden", TypeError),
        ({"n_samples": 0}, "n_samples", ValueError),
        ({"metric": "emd"}, "metric", ValueError),
        ({"metric": 3}, "metric", TypeError),
        ({"decoder": "gaussian", "metric": "sorted"}, "metric", ValueError),
        ({"decoder": "gaussian", "metric": 3}, "metric", TypeError),
        ({"weight": "high"}, "weight", TypeError),
        ({"weight": -1.0}, "weight", ValueError),
        ({"target": "eps"}, "target", ValueError),
        ({"target": None}, "target", TypeError),
        ({"point_fraction": 0.0}, "point_fraction", ValueError),
        ({"point_fraction": 1.5}, "point_fraction", ValueError),
        ({"point_fraction": "all"}, "point_fraction", TypeError),
    ],
)
def test_build_validation_names_the_parameter(kwargs, name, error):
    cp = ContextPrediction(**kwargs)  # the constructor only stores
    with pytest.raises(error, match=name):
        cp.build(3, 1)


@pytest.mark.parametrize("key", ["latent_dim", "hidden", "n_samples"])
@pytest.mark.parametrize(
    "value,error",
    [(np.int64(4), None), (np.int32(4), None), (True, TypeError), (4.0, TypeError)],
)
def test_integer_parameters_take_numpy_integers_not_bools_or_floats(key, value, error):
    cp = ContextPrediction(**{key: value})
    if error is None:
        assert isinstance(cp.build(np.int64(3), np.int32(1)), ContextHead)
    else:
        with pytest.raises(error, match=key):
            cp.build(3, 1)


def test_sorted_metric_rejected_for_several_channels():
    with pytest.raises(ValueError, match="metric"):
        ContextPrediction(metric="sorted").build(3, 2)
