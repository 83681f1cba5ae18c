"""lambda_t schedules: values at known timesteps, truncation, resolution."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone

from conprediff.context.weights import (
    ConstantWeight,
    DecayingWeight,
    SNRWeight,
    TruncatedWeight,
    resolve_weight,
)
from conprediff.schedules import NoiseSchedule

T = 10
SCHEDULE = NoiseSchedule("linear", T)
t = torch.tensor([0, 5, 9])


def test_constant():
    lam = ConstantWeight(0.3)(t)
    assert lam.dtype == torch.float32 and lam.shape == (3,)
    assert lam.tolist() == pytest.approx([0.3, 0.3, 0.3])
    assert ConstantWeight()(t, SCHEDULE).tolist() == [1.0, 1.0, 1.0]


def test_decaying():
    lam = DecayingWeight(value=2.0, power=1.0)(t, SCHEDULE)
    assert lam.tolist() == pytest.approx([2.0, 1.0, 0.2])  # 2 (1 - t / 10)
    lam = DecayingWeight(value=1.0, power=2.0)(t, SCHEDULE)
    assert lam.tolist() == pytest.approx([1.0, 0.25, 0.01])
    assert DecayingWeight(power=0.0)(t, SCHEDULE).tolist() == pytest.approx([1.0] * 3)


def test_snr():
    ab = SCHEDULE.alpha_bar[t]
    lam = SNRWeight(0.5)(t, SCHEDULE)
    assert lam.dtype == torch.float32
    assert lam.tolist() == pytest.approx((0.5 * ab).tolist(), rel=1e-6)
    snr = SCHEDULE.snr(t)
    assert lam.tolist() == pytest.approx((0.5 * snr / (1 + snr)).tolist(), rel=1e-6)
    # linear schedule rescaled to T = 10: beta_0 = 1e-4 * 1000 / 10, so alpha_bar_0 = 0.99
    assert lam[0].item() == pytest.approx(0.5 * 0.99, rel=1e-6)
    assert bool((lam[1:] < lam[:-1]).all())  # largest at low noise


def test_truncated():
    lam = TruncatedWeight(DecayingWeight(2.0), t_max=5)(t, SCHEDULE)
    assert lam.tolist() == pytest.approx([2.0, 1.0, 0.0])
    lam = TruncatedWeight(0.7, t_max=4)(t)  # float base: constant, no schedule needed
    assert lam.tolist() == pytest.approx([0.7, 0.0, 0.0])
    assert TruncatedWeight(1.0, t_max=9)(t).tolist() == [1.0, 1.0, 1.0]


def test_schedule_required():
    for weight in (DecayingWeight(), SNRWeight(), TruncatedWeight(SNRWeight(), 3)):
        with pytest.raises(ValueError, match="schedule"):
            weight(t)


def test_resolve_weight():
    w = resolve_weight(0.25)
    assert isinstance(w, ConstantWeight) and w.value == 0.25
    d = DecayingWeight()
    assert resolve_weight(d) is d
    with pytest.raises(TypeError, match="weight"):
        resolve_weight("big")
    with pytest.raises(TypeError, match="weight"):
        resolve_weight(True)
    with pytest.raises(ValueError, match="weight"):
        resolve_weight(-1.0)
    with pytest.raises(ValueError, match="weight"):
        resolve_weight(float("inf"))
    assert resolve_weight(np.float32(0.5)).value == 0.5


def test_validation_names_the_parameter():
    with pytest.raises(ValueError, match="value"):
        ConstantWeight(-1.0)(t)
    with pytest.raises(ValueError, match="power"):
        DecayingWeight(power=-1.0)(t, SCHEDULE)
    with pytest.raises(TypeError, match="t_max"):
        TruncatedWeight(1.0, t_max=2.5)(t)
    with pytest.raises(TypeError, match="base"):
        TruncatedWeight("x", t_max=2)(t)
    with pytest.raises(TypeError, match="value"):
        ConstantWeight("1")(t)
    with pytest.raises(TypeError, match="t must be"):
        ConstantWeight(1.0)([0, 1])


def test_params_and_clone():
    w = TruncatedWeight(DecayingWeight(0.5, 2.0), t_max=3)
    params = w.get_params(deep=True)
    assert params["base__value"] == 0.5 and params["base__power"] == 2.0
    c = clone(w).set_params(base__power=1.0)
    assert c.base.power == 1.0 and w.base.power == 2.0
    assert c(t, SCHEDULE).tolist() == pytest.approx([0.5, 0.0, 0.0])


def test_truncated_weight_window():
    t = torch.tensor([0, 3, 4, 7, 8, 9])
    lam = TruncatedWeight(0.5, t_max=8, t_min=4)(t)  # the term at t in [4, 8] only
    assert lam.tolist() == [0.0, 0.0, 0.5, 0.5, 0.5, 0.0]
    with pytest.raises(ValueError, match="t_min must be <= t_max"):
        TruncatedWeight(1.0, t_max=2, t_min=3)(t)
    with pytest.raises(TypeError, match="t_min must be an integer"):
        TruncatedWeight(1.0, t_max=2, t_min=1.5)(t)


def test_truncated_weight_defaults_to_the_last_timestep_and_refuses_an_empty_window():
    t = torch.tensor([0, T // 2, T - 1])
    assert TruncatedWeight(0.5, t_min=T // 2)(t, SCHEDULE).tolist() == [0.0, 0.5, 0.5]
    with pytest.raises(ValueError, match="depends on the noise schedule"):
        TruncatedWeight(0.5)(t)  # t_max=None is T - 1: needs the schedule
    with pytest.raises(ValueError, match=rf"holds none of the schedule's timesteps \[0, {T - 1}\]"):
        TruncatedWeight(0.5, t_max=5 * T, t_min=2 * T)(t, SCHEDULE)


@pytest.mark.parametrize(
    "bound,error",
    [(np.int64(2), None), (np.int32(2), None), (True, TypeError), (2.0, TypeError)],
)
@pytest.mark.parametrize("key", ["t_min", "t_max"])
def test_window_bounds_take_numpy_integers_not_bools_or_floats(key, bound, error):
    weight = TruncatedWeight(0.5, **{"t_min": 0, "t_max": 9, key: bound})
    if error is None:
        assert weight(torch.tensor([0, 2, 3]), SCHEDULE).shape == (3,)
    else:
        with pytest.raises(error, match=key):
            weight(torch.tensor([0, 2, 3]), SCHEDULE)
