"""Helpers of the hand-run benchmarks (``benchmarks/``) whose numbers go into the docs."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from ablation import Evaluator, equal_time_rows, finite_summary, read_floor  # noqa: E402
from memorisation import memorisation, nearest_distances  # noqa: E402


def test_nearest_distances_match_brute_force():
    g = torch.Generator().manual_seed(0)
    q, r = torch.randn(37, 5, generator=g), torch.randn(23, 5, generator=g)
    full = torch.cdist(q.double(), r.double())
    np.testing.assert_allclose(nearest_distances(q, r, chunk=8), full.min(1).values.numpy())
    self_d = torch.cdist(r.double(), r.double()) + torch.diag(torch.full((23,), math.inf))
    np.testing.assert_allclose(
        nearest_distances(r, r, exclude_self=True, chunk=5), self_d.min(1).values.numpy()
    )
    with pytest.raises(ValueError, match="exclude_self"):
        nearest_distances(r[:10], r, exclude_self=True)
    with pytest.raises(ValueError, match="no queries"):
        nearest_distances(r[:0], r)


def test_memorisation_tells_copies_from_new_samples():
    g = torch.Generator().manual_seed(1)
    train = torch.rand(200, 1, 4, 4, generator=g) * 2 - 1
    copies = memorisation(train[torch.randint(0, 200, (100,), generator=g)], train)
    assert copies["sample_nn_median"] < 1e-6
    assert copies["train_duplicates"] == 0.0
    assert copies["share_below_quantile"] == 1.0
    fresh = memorisation(torch.rand(100, 1, 4, 4, generator=g) * 2 - 1, train)
    assert fresh["share_below_quantile"] < 0.2
    assert fresh["sample_nn_median"] == pytest.approx(fresh["train_nn_median"], rel=0.3)


def test_finite_summary_ignores_missing_values():
    assert finite_summary([1.0, math.nan, 3.0]) == (2.0, pytest.approx(math.sqrt(2)), 2)
    mean, sd, n = finite_summary([math.nan, None])
    assert math.isnan(mean) and math.isnan(sd) and n == 0
    mean, sd, n = finite_summary([4.0])
    assert mean == 4.0 and math.isnan(sd) and n == 1


def test_read_floor_rejects_other_versions_and_sizes(tmp_path):
    assert read_floor(tmp_path) is None
    floor = {"version": Evaluator.FLOOR_VERSION, "n_samples": 2000, "n_real": 1797}
    (tmp_path / "floor.json").write_text(json.dumps(floor))
    assert read_floor(tmp_path) == floor
    assert read_floor(tmp_path, 2000, 1797) == floor
    assert read_floor(tmp_path, 5000) is None
    assert read_floor(tmp_path, 2000, 5000) is None
    (tmp_path / "floor.json").write_text(json.dumps({**floor, "version": 0}))
    assert read_floor(tmp_path, 2000, 1797) is None


def test_equal_time_rows_interpolate_the_baseline_at_the_arms_time():
    def result(seconds, fid, cb=None):
        r = {"train_seconds": seconds, "fid": fid}
        if cb is not None:
            r["fid_class_balanced"] = cb
        return r

    res = {
        ("baseline", 0, 1000): result(100.0, 50.0, 20.0),
        ("baseline", 0, 2000): result(200.0, 30.0, 10.0),
        ("baseline", 1, 1000): result(100.0, 60.0),
        ("baseline", 1, 2000): result(200.0, 40.0),
        ("conprediff", 0, 1000): result(150.0, 35.0, 12.0),
        ("conprediff", 1, 1000): result(250.0, 20.0),  # past the baseline's last time
    }
    (fid,) = equal_time_rows(res, "conprediff", [0, 1], [1000], [1000, 2000], "fid")
    assert fid["seeds"] == [0] and fid["diffs"] == [pytest.approx(35.0 - 40.0)]
    assert fid["time_ratio"] == pytest.approx((150 / 100 + 250 / 100) / 2)
    assert fid["seconds"] == pytest.approx(200.0)
    (cb,) = equal_time_rows(res, "conprediff", [0, 1], [1000], [1000, 2000],
                            "fid_class_balanced")
    assert cb["seeds"] == [0] and cb["diffs"] == [pytest.approx(12.0 - 15.0)]
    # a step the arm has no result for adds no row
    assert equal_time_rows(res, "conprediff", [0, 1], [2000], [1000, 2000], "fid") == []
