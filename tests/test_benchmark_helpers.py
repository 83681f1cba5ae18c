"""Plumbing of the hand-run benchmarks (``benchmarks/``) whose numbers go into the docs.

The paired-seed statistics they report are library code, tested in ``tests/test_paired.py``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from ablation import (  # noqa: E402
    DEFAULT,
    Evaluator,
    Protocol,
    against_default_section,
    archive_results,
    arm_catalogue,
    config_key,
    context_base_text,
    equal_time_rows,
    load_protocol,
    load_results,
    main,
    make_model,
    parse_context_base,
    read_floor,
    restore_archive,
    select_arms,
)
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

    nan = float("nan")
    res = {
        ("baseline", 0, 1000): result(100.0, 50.0, 20.0),
        ("baseline", 0, 2000): result(200.0, 30.0, 10.0),
        ("baseline", 1, 1000): result(100.0, 60.0, 30.0),
        ("baseline", 1, 2000): result(200.0, 40.0, 20.0),
        ("baseline", 2, 1000): result(100.0, 60.0),  # written before cbFID existed
        ("baseline", 2, 2000): result(200.0, 40.0),
        ("baseline", 3, 1000): result(nan, 60.0),  # timing lost
        ("conprediff", 0, 1000): result(150.0, 35.0, 12.0),
        ("conprediff", 1, 1000): result(250.0, 20.0, 5.0),  # past the baseline's last time
        ("conprediff", 2, 1000): result(120.0, 50.0, 25.0),
        ("conprediff", 3, 1000): result(130.0, 55.0),
        ("conprediff", 4, 1000): result(nan, 55.0),
    }
    seeds = [0, 1, 2, 3, 4]
    (fid,) = equal_time_rows(res, "conprediff", seeds, [1000], [1000, 2000], "fid")
    # seed 0: baseline at 150 s is halfway between 50 and 30; seed 2: 60 - 0.2 * 20 = 56
    assert fid["seeds"] == [0, 2]
    assert fid["diffs"] == [pytest.approx(35.0 - 40.0), pytest.approx(50.0 - 56.0)]
    assert set(fid["left_out"]) == {1, 3, 4}
    assert "outside" in fid["left_out"][1] and "timing" in fid["left_out"][4]
    # the time ratio and mean time skip what is not timed (seed 3's baseline, seed 4)
    assert fid["time_ratio"] == pytest.approx((1.5 + 2.5 + 1.2) / 3)
    assert fid["seconds"] == pytest.approx((150 + 250 + 120 + 130) / 4)

    (cb,) = equal_time_rows(res, "conprediff", seeds, [1000], [1000, 2000],
                            "fid_class_balanced")
    # only seeds with the metric count: 0 and 1 have it on both sides, 2 only in the arm
    assert cb["seeds"] == [0] and cb["diffs"] == [pytest.approx(12.0 - 15.0)]
    assert set(cb["left_out"]) == {1, 2}
    assert "no timed baseline" in cb["left_out"][2]
    assert cb["seconds"] == pytest.approx((150 + 250 + 120) / 3)
    assert cb["time_ratio"] == pytest.approx((1.5 + 2.5 + 1.2) / 3)
    # a step the arm has no result for adds no row
    assert equal_time_rows(res, "conprediff", seeds, [2000], [1000, 2000], "fid") == []


def test_against_default_section_pairs_each_variant_with_the_default():
    def result(fid, cb):
        return {"fid": fid, "fid_class_balanced": cb}

    res = {
        ("baseline", 0, 2000): result(100.0, 80.0),
        ("conprediff", 0, 2000): result(90.0, 70.0),
        ("conprediff", 1, 2000): result(95.0, 75.0),
        ("lambda=0.3", 0, 2000): result(85.0, 72.0),
        ("lambda=0.3", 1, 2000): result(99.0, 71.0),
        ("lambda=0.3", 2, 2000): result(10.0, 10.0),  # no default on seed 2: left out
    }
    lines = against_default_section(res, ["baseline", "conprediff", "lambda=0.3"],
                                    [0, 1, 2], [2000])
    rows = [line for line in lines if line.startswith("| lambda=0.3")]
    assert len(rows) == 2
    fid, cb = rows
    # variant - default per seed: FID -5 and +4, cbFID +2 and -4
    assert "| FID | -5.0 (s0), +4.0 (s1) | -0.5 [" in fid and fid.endswith("| 1/2 |")
    assert "| cbFID | +2.0 (s0), -4.0 (s1) | -1.0 [" in cb
    assert "s2" not in fid + cb
    # nothing to compare: no section
    assert against_default_section(res, ["baseline", "conprediff"], [0, 1], [2000]) == []


def tiny_protocol(**changes) -> Protocol:
    kwargs = dict(dataset="digits", size=16, base_channels=8, channel_mults=(1, 2),
                  batch_size=8, lr=1e-3, lr_warmup_steps=0, grad_clip=1.0, ema_decay=0.9,
                  timesteps=10, n_samples=16, sample_steps=2, sample_seed=0,
                  classifier_epochs=1, kid_subset_size=16)
    return Protocol(**{**kwargs, **changes})


def test_context_base_pins_every_arm_of_a_folder(tmp_path):
    # the folder's arms were run when point_fraction defaulted to 0.5
    base = parse_context_base(["point_fraction=0.5", "strides=(1, 2)", "decoder=sampled"])
    assert base == {"point_fraction": 0.5, "strides": [1, 2], "decoder": "sampled"}
    assert context_base_text(base) == "point_fraction=0.5, strides=(1, 2), decoder='sampled'"
    assert parse_context_base(context_base_text(base, " ").split(" ")) == base
    with pytest.raises(SystemExit, match="NAME=VALUE"):
        parse_context_base(["pointfraction=0.5"])
    with pytest.raises(SystemExit, match="point_fraction"):  # checked before anything is written
        parse_context_base(["point_fraction=5"])
    pinned = arm_catalogue(1000, json.loads(json.dumps(base)))  # as read back from JSON
    assert pinned[DEFAULT] == {"point_fraction": 0.5, "strides": (1, 2), "decoder": "sampled"}
    assert pinned["lambda=0.3"] == {**pinned[DEFAULT], "weight": 0.3}
    assert "point_fraction=0.5" in config_key(pinned["lambda=0.3"])
    assert pinned["baseline"] is None
    # the arm that equals the pinned reference runs under its name; today's default does not
    args = type("Args", (), {"sweep": [], "arms": ["point_fraction=0.5", "point_fraction=0.25"]})
    arms, aliases = select_arms(args, 1000, base)
    assert aliases == {"point_fraction=0.5": DEFAULT}
    assert arms == ["baseline", DEFAULT, "point_fraction=0.25"]
    args.arms = ["point_fraction=0.5", "point_fraction=0.1"]
    arms, aliases = select_arms(args, 1000)  # library defaults: 0.1 is the reference
    assert aliases == {"point_fraction=0.1": DEFAULT} and "point_fraction=0.5" in arms
    # a protocol.json written before context_base existed ran on the defaults of that time
    saved = {k: v for k, v in vars(tiny_protocol()).items() if k != "context_base"}
    (tmp_path / "protocol.json").write_text(json.dumps(saved))
    assert load_protocol(tmp_path) == tiny_protocol(context_base={"point_fraction": 0.5})
    # arms that set the decoder set the metric too, so a base cannot make them clash or merge
    gauss = arm_catalogue(1000, {"decoder": "gaussian"})
    assert gauss["metric=auto"]["decoder"] == "sampled"
    sliced = arm_catalogue(1000, {"metric": "sliced"})
    assert sliced["metric=gaussian"] == {"decoder": "gaussian", "metric": "auto"}


def test_an_arm_can_set_backbone_arguments():
    mid = arm_catalogue(1000, {"point_fraction": 0.5})["features=mid"]
    assert config_key(mid) == config_key({"point_fraction": 0.5}) + " + UNet(features='mid')"
    model = make_model(tiny_protocol(), mid, seed=0, steps=1, ckpt_dir=None, every=None,
                       device="cpu", verbose=0)
    assert model.backbone.features == "mid" and model.context.point_fraction == 0.5
    assert make_model(tiny_protocol(), None, seed=0, steps=1, ckpt_dir=None, every=None,
                      device="cpu", verbose=0).backbone.features == "output"


def test_workers_run_every_arm_in_parallel_and_resume(tmp_path, capsys):
    # --prepare does the one-off work (classifier, noise floor) before any run is trained
    out = tmp_path / "run"
    flags = ["--quick", "--seeds", "1", "--first-seed", "1", "--steps", "4",
             "--wallclock-factor", "1.0", "--out", str(out), "--cache-dir",
             str(tmp_path / "cache"), "--docs", str(tmp_path / "docs")]
    main([*flags, "--prepare"])
    assert {p.name for p in out.iterdir()} == {"protocol.json", "classifier.json", "floor.json"}
    assert "prepared" in capsys.readouterr().out
    # two (arm, seed) runs at a time, each in its own process
    main([*flags, "--workers", "2"])
    res = load_results(out)
    assert set(res) == {(arm, 1, 4) for arm in ("baseline", DEFAULT)}
    assert all(r["workers"] == 2 and r["threads"] >= 1 and math.isfinite(r["fid"])
               for r in res.values())
    assert res[(DEFAULT, 1, 4)]["config"] != res[("baseline", 1, 4)]["config"] == "None"
    assert (tmp_path / "docs" / "ablation_digits_run_quick_results.md").is_file()
    # a rerun finds everything done: it trains nothing and rewrites nothing
    files = sorted((out / "results").glob("*/seed*/step*.json"))
    stamps = [p.stat().st_mtime_ns for p in files]
    main([*flags, "--workers", "2"])
    assert [p.stat().st_mtime_ns for p in files] == stamps


def test_archive_results_keeps_what_a_later_report_lacks(tmp_path):
    p = tiny_protocol()

    def result(arm, seed, fid, seconds=1.0):
        return {"arm": arm, "seed": seed, "step": 10, "fid": fid, "train_seconds": seconds,
                "protocol": {"dropped": True}}

    path = tmp_path / "ablation_x_results.json"
    first = {("baseline", 0, 10): result("baseline", 0, 5.0, float("nan")),
             ("conprediff", 0, 10): result("conprediff", 0, 4.0)}
    assert archive_results(path, first, "run 1", p, 0.99, {"fid": float("inf")}) == 2
    # a later report from a folder that lost the baseline's result, with a new conprediff value
    later = {("conprediff", 0, 10): result("conprediff", 0, 3.0)}
    assert archive_results(path, later, "run 2", p, None, None) == 2

    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")

    saved = json.loads(path.read_text(), parse_constant=refuse)
    assert saved["command"] == "run 2" and saved["protocol"]["dataset"] == "digits"
    assert saved["classifier_test_accuracy"] == 0.99 and saved["floor"] == {"fid": None}
    by_arm = {r["arm"]: r for r in saved["results"]}
    assert by_arm["baseline"]["fid"] == 5.0 and by_arm["baseline"]["train_seconds"] is None
    assert by_arm["conprediff"]["fid"] == 3.0
    assert all("protocol" not in r for r in saved["results"])


def test_restore_archive_brings_back_the_results_a_report_needs(tmp_path):
    p = tiny_protocol()
    res = {(arm, seed, 10): {"arm": arm, "seed": seed, "step": 10, "config": arm, "fid": 1.0 + seed,
                             "train_seconds": float("nan") if seed else 3.0}
           for arm in ("baseline", "conprediff") for seed in (0, 1)}
    archive = tmp_path / "ablation_x_results.json"
    archive_results(archive, res, "run", p, 0.98, {"version": 2, "fid": 1.5})
    out = tmp_path / "out"
    assert restore_archive(archive, out) == 4
    restored = load_results(out)
    assert set(restored) == set(res)
    assert restored[("conprediff", 1, 10)]["fid"] == 2.0
    assert restored[("baseline", 0, 10)]["train_seconds"] == 3.0
    assert math.isnan(restored[("baseline", 1, 10)]["train_seconds"])  # null back to NaN
    assert json.loads((out / "classifier.json").read_text())["test_accuracy"] == 0.98
    assert json.loads((out / "floor.json").read_text())["fid"] == 1.5
    assert restore_archive(archive, out) == 0  # what is there is kept
    # another protocol in --out is refused
    other = tmp_path / "other"
    other.mkdir()
    (other / "protocol.json").write_text(json.dumps({"dataset": "mnist"}))
    with pytest.raises(SystemExit, match="another protocol"):
        restore_archive(archive, other)


def test_inpaint_cache_key_follows_the_context_configuration(monkeypatch):
    # the first inpainting runs were cached under a key without the context's settings, so a
    # change of the default lambda_t would have loaded the old model; now the key holds them
    import argparse

    import inpaint_eval

    args = argparse.Namespace(
        dataset="digits", base_channels=8, channel_mults=[1, 2], lr=1e-3, train_steps=10,
        batch_size=4, seed=0, split_seed=0, n_test=5,
    )
    base = inpaint_eval.model_config(args, "baseline")
    ours = inpaint_eval.model_config(args, "ConPreDiff")
    assert "context" not in base  # the baseline's cached models stay valid
    assert "weight=0.1" in ours["context"] and "strides=(1, 2)" in ours["context"]
    monkeypatch.setattr(
        inpaint_eval, "make_context", lambda arm: inpaint_eval.ContextPrediction(weight=1.0)
    )
    assert inpaint_eval.model_config(args, "ConPreDiff") != ours
