"""Training that survives: exact resume after SIGKILL, DDP equivalence, safe checkpoints."""

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conprediff import ConPreDiffModel, UNet
from conprediff.training.checkpoint import CheckpointError, list_checkpoints, read_checkpoint
from conprediff.training.loop import lr_factor

SCRIPTS = Path(__file__).parent / "scripts"
sys.path.insert(0, str(SCRIPTS))
from train_tiny import context, data, fit, make_model  # noqa: E402


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the subprocesses use one thread: same kernels, same bits
    yield
    torch.set_num_threads(n)


def state_of(model):
    return {k: v.clone() for k, v in model.backbone_.state_dict().items()}


def assert_same_weights(a, b, atol=0.0):
    for key in a:
        if atol == 0.0:
            assert torch.equal(a[key], b[key]), key
        else:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=key)


SIGKILL_KINDS = ("sampled", "conditional")  # "conditional" has no context head: the plain path


@pytest.fixture(scope="module")
def killed_runs(tmp_path_factory):
    """Both killed runs started at once (two cores): ``kind -> (process, folder)``."""
    runs = {}
    for kind in SIGKILL_KINDS:
        folder = tmp_path_factory.mktemp(f"killed-{kind}")
        cmd = [sys.executable, str(SCRIPTS / "train_tiny.py"), str(folder), "--kill-at", "6",
               "--context", kind]
        runs[kind] = (subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True), folder)
    yield runs
    for proc, _ in runs.values():
        proc.kill()
        proc.communicate()


@pytest.mark.parametrize("kind", SIGKILL_KINDS)
def test_sigkill_then_resume_matches_uninterrupted_run_bitwise(killed_runs, one_thread, kind):
    proc, tmp_path = killed_runs[kind]
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == -9, stderr  # SIGKILL
    assert [p.name for p in list_checkpoints(tmp_path / "ckpt")] == ["ckpt-000000004.safetensors"]

    cond = kind == "conditional"  # the label dropout's draws must resume exactly too
    resumed = fit(kind, make_model(str(tmp_path), context(kind), conditional=cond),
                  resume="latest")
    reference = fit(kind, make_model(str(tmp_path / "ref"), context(kind), conditional=cond))
    assert resumed.n_steps_ == reference.n_steps_ == 12
    assert_same_weights(state_of(resumed), state_of(reference))
    assert_same_weights(resumed.ema_backbone_.state_dict(), reference.ema_backbone_.state_dict())
    if kind not in ("none", "conditional"):
        assert_same_weights(
            resumed.context_head_.state_dict(), reference.context_head_.state_dict()
        )
    assert resumed.loss_history_ == reference.loss_history_


def without_key_biases(state):
    """``state`` without the key third of the text encoder's attention biases. Adding a constant
    to every key's logit changes no softmax, so their gradient is zero but for float noise,
    which Adam turns into lr-sized steps that differ with the summation order (1 process vs 2);
    they do not change the model's output (as the GroupNorm biases of train_tiny.make_model)."""
    out = dict(state)
    for key, value in state.items():
        if key.endswith("self_attn.in_proj_bias"):
            d = value.shape[0] // 3
            out[key] = torch.cat([value[:d], value[2 * d:]])
    return out


#: (kind, precision) runs of the torchrun test, trained in one launch (one start-up for all);
#: "conditional" and "text" have no context head, so they cover the plain model too
DDP_RUNS = [("text", "fp32"), ("gaussian", "fp32"), ("conditional", "fp32"), ("gaussian", "bf16")]


def test_torchrun_two_processes_match_one_process(tmp_path, one_thread):
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node=2",
         str(SCRIPTS / "train_tiny_precision.py"), str(tmp_path / "ddp"), "6",
         *(f"{kind}:{precision}" for kind, precision in DDP_RUNS)],
        capture_output=True, text=True, timeout=240, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for kind, precision in DDP_RUNS:
        out = tmp_path / "ddp" / f"{kind}-{precision}"
        ddp = ConPreDiffModel.load(out / "final.safetensors")
        single = fit(kind, make_model(str(tmp_path / f"single-{out.name}"), context(kind),
                                      steps=6, conditional=kind == "conditional",
                                      text=kind == "text",
                                      precision=precision))
        assert ddp.n_steps_ == single.n_steps_ == 6
        assert ddp.precision_ == single.precision_ == precision
        ddp_loss, single_loss = ddp.loss_history_["loss"], single.loss_history_["loss"]
        if precision == "fp32":
            assert_same_weights(*map(without_key_biases, (state_of(ddp), state_of(single))),
                                atol=1e-5)
            np.testing.assert_allclose(ddp_loss, single_loss, rtol=1e-5)
            continue
        # bf16: the same first forward pass, bit for bit; then each rank's weight gradients
        # are rounded to bf16 before they are averaged (one process rounds their sum once),
        # which Adam's sign-like early steps turn into lr-sized differences in a few weights
        assert ddp_loss[0] == single_loss[0]
        np.testing.assert_allclose(ddp_loss, single_loss, rtol=1e-3)
        diffs = torch.cat([(a - b).abs().flatten() for a, b in zip(
            state_of(ddp).values(), state_of(single).values(), strict=True)])
        assert torch.quantile(diffs, 0.99) < 1e-3


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['CONPREDIFF_MARKER']}",))


def test_checkpoint_crafted_to_run_code_is_refused(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("CONPREDIFF_MARKER", str(marker))
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    evil = ckpt / "ckpt-000000004.safetensors"
    evil.write_bytes(pickle.dumps({"state": _Exploit()}))
    torch_file = ckpt / "torch-save.pt"
    torch.save({"state": _Exploit()}, torch_file)
    for path in (evil, torch_file):
        with pytest.raises(CheckpointError, match="unreadable"):
            make_model(str(tmp_path)).fit(data(), resume=path)
    with (
        pytest.warns(UserWarning, match="falling back"),
        pytest.warns(UserWarning, match="scratch"),
    ):
        make_model(str(tmp_path), steps=2).fit(data(), resume="latest")
    assert not marker.exists()


def test_truncated_checkpoint_clear_error_and_latest_falls_back(tmp_path, one_thread):
    make_model(str(tmp_path), steps=8).fit(data())
    files = list_checkpoints(tmp_path / "ckpt")
    assert [p.name for p in files] == ["ckpt-000000004.safetensors", "ckpt-000000008.safetensors"]
    previous = files[0].read_bytes()
    newest = files[1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated, corrupted"):
        make_model(str(tmp_path)).fit(data(), resume=newest)
    with pytest.warns(UserWarning, match="falling back"):
        resumed = make_model(str(tmp_path)).fit(data(), resume="latest")
    assert files[0].read_bytes() == previous or files[0] not in list_checkpoints(tmp_path / "ckpt")
    reference = make_model(str(tmp_path / "ref")).fit(data())
    assert_same_weights(state_of(resumed), state_of(reference))


def test_checkpoints_are_atomic_and_pruned(tmp_path):
    m = make_model(str(tmp_path), steps=20)
    m.set_params(keep_checkpoints=2).fit(data())
    names = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert names == ["ckpt-000000016.safetensors", "ckpt-000000020.safetensors"]  # no temp files
    state = read_checkpoint(tmp_path / "ckpt" / names[-1])
    assert state["step"] == 20 and state["data"]["epoch"] >= 1


def test_the_last_step_is_checkpointed_too(tmp_path):
    m = make_model(str(tmp_path), steps=10)
    m.set_params(checkpoint_every=4, keep_checkpoints=5).fit(data())
    names = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert names == [f"ckpt-{s:09d}.safetensors" for s in (4, 8, 10)]
    assert read_checkpoint(tmp_path / "ckpt" / names[-1])["step"] == 10
    # resuming a finished run has nothing to redo and writes nothing new
    make_model(str(tmp_path), steps=10).set_params(checkpoint_every=4, keep_checkpoints=5).fit(
        data(), resume="latest"
    )
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == names


class NaNAfter(torch.nn.Module):
    """A backbone whose prediction turns NaN from its `after`-th call on."""

    feature_channels = 4

    def __init__(self, after=3):
        super().__init__()
        self.after = after
        self.calls = 0
        self.body = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.out = torch.nn.Conv2d(4, 1, 1)

    def forward(self, x, t, cond=None):
        self.calls += 1
        h = torch.tanh(self.body(x))
        out = self.out(h)
        return (out * float("nan") if self.calls > self.after else out), h


def test_nonfinite_loss_stops_with_step_and_term_and_keeps_checkpoint(tmp_path):
    m = make_model(str(tmp_path), backbone=NaNAfter(3))
    m.set_params(checkpoint_every=1)
    with pytest.raises(FloatingPointError, match=r"step 3.*point"):
        m.fit(data())
    last = read_checkpoint(list_checkpoints(tmp_path / "ckpt")[-1])
    assert last["step"] == 3
    assert all(torch.isfinite(v).all() for v in last["objective"].values())
    assert all(torch.isfinite(v).all() for v in last["ema"]["module"].values())


def test_nonfinite_loss_skip(tmp_path):
    m = make_model(str(tmp_path), backbone=NaNAfter(3), on_nonfinite="skip", steps=6).fit(data())
    assert m.loss_history_["skipped"] == [4, 5, 6]
    assert all(torch.isfinite(p).all() for p in m.backbone_.parameters())


def test_bf16_autocast_on_cpu_trains_and_loss_falls():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, 1, 8, 8, generator=g) * 2 - 1
    m = ConPreDiffModel(
        backbone=UNet(base_channels=8, channel_mults=(1, 2)),
        timesteps=50,
        precision="bf16",
        max_steps=60,
        batch_size=16,
        lr=3e-3,
        seed=0,
        verbose=0,
        device="cpu",
    ).fit(x)
    loss = np.asarray(m.loss_history_["loss"])
    assert np.isfinite(loss).all()
    assert loss[-10:].mean() < 0.7 * loss[:10].mean()


def test_callback_logging_accumulation_and_lr_schedule(tmp_path):
    logs = []
    m = make_model(
        str(tmp_path),
        steps=6,
        grad_accum_steps=2,
        grad_clip=1.0,
        lr_warmup_steps=2,
        lr_schedule="cosine",
        checkpoint_every=None,
    ).set_params(log_every=3)
    m.fit(data(), callback=logs.append)
    assert [d["step"] for d in logs] == [3, 6]
    assert {"loss", "point", "lr", "images_per_second"} <= set(logs[0])
    assert logs[0]["images_per_second"] > 0
    assert lr_factor(0, 2, "cosine", 6) == 0.5 and lr_factor(1, 2, "cosine", 6) == 1.0
    assert lr_factor(6, 2, "cosine", 6) == pytest.approx(0.0)
    assert lr_factor(4, 2, "linear", 6) == pytest.approx(0.5)
    assert lr_factor(100, 0, "constant", 6) == 1.0


def test_resume_latest_without_checkpoint_dir_is_an_error():
    m = ConPreDiffModel(
        backbone=UNet(base_channels=8, channel_mults=(1, 2)), max_steps=1, verbose=0
    )
    with pytest.raises(ValueError, match="checkpoint_dir"):
        m.fit(data(), resume="latest")


def test_gpu_check_script_is_valid_bash():
    script = Path(__file__).parents[1] / "benchmarks" / "gpu_check.sh"
    assert shutil.which("bash")
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


def test_resume_with_seed_none_continues_the_same_run(tmp_path, one_thread):
    kw = dict(seed=None)
    first = make_model(str(tmp_path), steps=4, **kw).fit(data())
    resumed = make_model(str(tmp_path), steps=8, **kw).fit(data(), resume="latest")
    assert resumed.seed_ == first.seed_
    reference = make_model(str(tmp_path / "ref"), steps=8, seed=first.seed_).fit(data())
    assert_same_weights(state_of(resumed), state_of(reference))


def test_resume_refuses_a_checkpoint_of_another_configuration(tmp_path):
    make_model(str(tmp_path), steps=4).fit(data())
    with pytest.raises(ValueError, match="without context prediction"):
        make_model(str(tmp_path), context("gaussian")).fit(data(), resume="latest")
    with pytest.raises(ValueError, match="seed=5 differs"):
        make_model(str(tmp_path), seed=5).fit(data(), resume="latest")


def test_grad_scaler_falls_back_before_torch_2_3(monkeypatch):
    import warnings

    from conprediff.training.loop import grad_scaler

    cpu = torch.device("cpu")
    assert isinstance(grad_scaler(cpu, enabled=False), torch.amp.GradScaler)
    monkeypatch.delattr(torch.amp, "GradScaler")  # as in torch 2.2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scaler = grad_scaler(cpu, enabled=True)
    assert not scaler.is_enabled()  # the CUDA-only scaler: off on the CPU
    # ... because the helper asks for it off, not because the scaler found no CUDA and warned
    assert not [w for w in caught if "CUDA" in str(w.message) and "not available" in str(w.message)]
