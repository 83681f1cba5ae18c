"""Precision: 'auto' by device, bf16 training that resumes and saves exactly, sampling under
autocast with the sampler's arithmetic in float32."""

import contextlib
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conprediff import ConPreDiffModel
from conprediff import precision as prec
from conprediff.diffusion import Denoiser
from conprediff.persistence import FittedState
from conprediff.precision import (
    autocast,
    channels_last_for,
    fast_bf16,
    fused_adamw_for,
    resolve_precision,
)
from conprediff.schedules import NoiseSchedule
from conprediff.training.checkpoint import list_checkpoints, read_checkpoint

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from train_tiny import context, data, make_model  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # same kernels in every run: resumed runs match bitwise
    yield
    torch.set_num_threads(n)


def fixture_model(name="v1_context"):
    model = ConPreDiffModel.load(FIXTURES / f"{name}.safetensors", device="cpu")
    model.verbose = 0
    return model


def tiny(out, steps, precision, **kw):
    """The tiny run of tests/scripts/train_tiny.py (8x8 images, checkpoints every 4 steps)."""
    return make_model(str(out), steps=steps, precision=precision, **kw)


# ------------------------------------------------------------------------ the device table
def as_cpu(monkeypatch, bf16=False, amx=False, capability="AVX2"):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)


def as_cuda(monkeypatch, native_bf16):
    """A visible GPU; without native bf16 it is a pre-Ampere one (bf16 only emulated)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: native_bf16 or including_emulation)


@pytest.mark.parametrize("cpu, expected", [
    (dict(bf16=True, capability="AVX512"), "bf16"),  # AVX512-BF16
    (dict(amx=True, capability="AVX512"), "bf16"),  # AMX tiles
    (dict(capability="AVX512"), "fp32"),  # AVX512 without bf16
    (dict(capability="AVX2"), "fp32"),  # AVX2 only: bf16 autocast is slow there
])
def test_auto_on_the_cpu(monkeypatch, cpu, expected):
    as_cpu(monkeypatch, **cpu)
    assert fast_bf16("cpu") is (expected == "bf16")
    assert resolve_precision("auto", torch.device("cpu")) == expected
    for given in ("fp32", "bf16", "fp16"):
        assert resolve_precision(given, "cpu") == given


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_on_cuda(monkeypatch, native, expected):
    as_cuda(monkeypatch, native)
    assert resolve_precision("auto", "cuda") == expected
    assert resolve_precision("auto", torch.device("cuda", 1)) == expected


def test_auto_elsewhere_and_on_older_torch(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_precision("auto", "cuda") == "fp32"
    assert resolve_precision("auto", "mps") == "fp32"
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert resolve_precision("auto", "cpu") == "fp32"  # no probe: no claim of speed
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)  # torch < 2.3
    assert resolve_precision("auto", "cuda") == "bf16"


def test_memory_format_and_optimizer_by_device(monkeypatch):
    as_cpu(monkeypatch, capability="AVX512")
    assert channels_last_for("cpu", "fp32")
    assert not channels_last_for("cpu", "bf16")
    as_cpu(monkeypatch, capability="AVX2")
    assert not channels_last_for("cpu", "fp32")
    assert channels_last_for("cuda", "fp32") and channels_last_for("cuda", "bf16")
    assert not channels_last_for("mps", "fp32")
    assert fused_adamw_for("cuda") and fused_adamw_for(torch.device("cuda", 0))
    assert not fused_adamw_for("cpu")


def test_autocast_and_bad_values():
    assert isinstance(autocast("fp32", "cpu"), contextlib.nullcontext)
    with autocast("bf16", "cpu"):
        y = torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3))
    assert y.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp64", "cpu")
    with pytest.raises(TypeError, match="precision"):
        resolve_precision(16, "cpu")
    with pytest.raises(ValueError, match="precision"):
        Denoiser(lambda x, t: x, NoiseSchedule("linear", 10), precision="half")
    model = fixture_model()
    with pytest.raises(ValueError, match="precision"):
        model.sample(2, steps=2, precision="half")
    with pytest.raises(ValueError, match="precision"):
        ConPreDiffModel(precision="fp64").fit(data())


def test_denoiser_runs_the_network_under_autocast_and_converts_in_float32():
    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    seen = []

    def model(x, t):
        out = net(x)
        seen.append(out.dtype)
        return out

    schedule = NoiseSchedule("cosine", 50)
    x, t = torch.randn(2, 1, 8, 8), torch.full((2,), 30)
    ref = Denoiser(model, schedule, "v")(x, t)
    low = Denoiser(model, schedule, "v", precision="bf16")(x, t)
    assert seen == [torch.float32, torch.bfloat16]
    for a, b in zip(ref, low, strict=True):
        assert b.dtype == torch.float32
        torch.testing.assert_close(b, a, rtol=0, atol=0.05)
    assert "precision='bf16'" in repr(Denoiser(model, schedule, precision="bf16"))


# ------------------------------------------------------------------------ training in bf16
def test_auto_records_auto_runs_bf16_and_resumes_exactly(tmp_path, monkeypatch, one_thread):
    monkeypatch.setattr(prec, "fast_bf16", lambda device: True)  # as on a bf16 machine
    ctx = context("sampled")  # the context head's float32 metric under autocast, too
    tiny(tmp_path, 4, "auto", context=ctx).fit(data())
    state = read_checkpoint(list_checkpoints(tmp_path / "ckpt")[-1])
    assert state["train_args"]["precision"] == "auto"  # resumes as 'auto'
    assert state["run"]["precision"] == "bf16"  # what ran
    resumed = tiny(tmp_path, 8, "auto", context=ctx).fit(data(), resume="latest")
    reference = tiny(tmp_path / "ref", 8, "bf16", context=ctx).fit(data())
    assert resumed.precision_ == reference.precision_ == "bf16"
    assert resumed.loss_history_ == reference.loss_history_
    for name in ("backbone_", "ema_backbone_", "context_head_"):
        a, b = getattr(resumed, name).state_dict(), getattr(reference, name).state_dict()
        for key in a:
            assert a[key].dtype == torch.float32, key  # weights and EMA stay float32
            assert torch.equal(a[key], b[key]), f"{name}{key}"
    optimizer = read_checkpoint(list_checkpoints(tmp_path / "ckpt")[-1])["optimizer"]
    assert optimizer["state"] and all(v.dtype == torch.float32 for s in optimizer["state"].values()
               for k, v in s.items() if k != "step")
    monkeypatch.setattr(prec, "fast_bf16", lambda device: False)  # resumed on another machine
    with pytest.warns(UserWarning, match="computed in bf16, this device in fp32"):
        moved = tiny(tmp_path, 9, "auto", context=ctx).fit(data(), resume="latest")
    assert moved.precision_ == "fp32"


def test_auto_is_float32_where_bf16_is_slow(tmp_path, monkeypatch):
    monkeypatch.setattr(prec, "fast_bf16", lambda device: False)
    model = tiny(tmp_path, 2, "auto", checkpoint_dir=None, checkpoint_every=None).fit(data())
    assert model.precision_ == "fp32"
    assert model.get_params()["precision"] == "auto"


def test_a_bf16_model_saves_loads_and_samples_the_same(tmp_path, one_thread):
    model = tiny(tmp_path, 4, "bf16", checkpoint_dir=None, checkpoint_every=None).fit(data())
    loaded = ConPreDiffModel.load(model.save(tmp_path / "m.safetensors"), device="cpu")
    assert loaded.precision_ == "bf16" and loaded.precision == "bf16"
    for precision in (None, "bf16"):
        a = model.sample(4, steps=5, seed=1, precision=precision)
        b = loaded.sample(4, steps=5, seed=1, precision=precision)
        assert torch.equal(a, b), precision


def test_files_without_precision_read_as_fp32_and_a_bad_one_is_refused(tmp_path):
    model = fixture_model()  # written before precision_ was recorded
    assert model.precision_ == "fp32"
    del model.precision_  # an estimator fitted before the attribute existed
    assert FittedState.of(model).precision == "fp32"
    path = model.save(tmp_path / "m.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["conprediff"])
    assert meta["precision"] == "fp32"
    meta["precision"] = "fp64"
    save_file(load_file(str(path)), str(path), metadata={"conprediff": json.dumps(meta)})
    with pytest.raises(ValueError, match="precision"):
        ConPreDiffModel.load(path)


# ------------------------------------------------------------------------ sampling
def test_sample_precision_none_is_todays_and_bf16_stays_close(one_thread, monkeypatch):
    model = fixture_model()
    today = load_file(str(FIXTURES / "v1_samples.safetensors"))["v1_context.ddim"]
    for precision in (None, "fp32"):
        assert torch.equal(model.sample(4, steps=10, sampler="ddim", seed=1,
                                        precision=precision), today)
    low = model.sample(4, steps=10, sampler="ddim", seed=1, precision="bf16")
    lo, hi = model.data_range_
    assert low.dtype == torch.float32
    assert low.min() >= lo and low.max() <= hi
    assert 0 < (low - today).abs().mean() < 0.01 * (hi - lo)  # autocast ran, and stays close
    monkeypatch.setattr(prec, "fast_bf16", lambda device: True)
    assert torch.equal(model.sample(4, steps=10, seed=1, precision="auto"), low)
    monkeypatch.setattr(prec, "fast_bf16", lambda device: False)
    assert torch.equal(model.sample(4, steps=10, seed=1, precision="auto"), today)


def test_inpaint_and_guidance_in_bf16(one_thread):
    model = fixture_model("v1_conditional")
    images = data()[:2] * 0.5 + 0.5
    images = images * (model.data_range_[1] - model.data_range_[0]) + model.data_range_[0]
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[:, :, 4:] = True
    kw = dict(steps=10, jump_length=5, jump_n_sample=2, seed=3, labels=[1, 2])
    ref = model.inpaint(images, mask, **kw)
    low = model.inpaint(images, mask, precision="bf16", **kw)
    assert low.dtype == torch.float32
    assert torch.equal(low[..., :4], images[..., :4])  # known pixels are the input's
    assert 0 < (low - ref).abs().mean() < 0.005 * (model.data_range_[1] - model.data_range_[0])
    guided = model.sample(2, steps=5, seed=2, labels=[1, 2], guidance_scale=2.0,
                          precision="bf16")
    assert guided.dtype == torch.float32 and torch.isfinite(guided).all()
