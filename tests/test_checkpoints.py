"""Checkpoints as untrusted input: checksum, required entries, damaged files kept, arguments."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from conprediff.training.checkpoint import (
    CheckpointError,
    list_checkpoints,
    read_checkpoint,
    read_latest_checkpoint,
    write_checkpoint,
)

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from train_tiny import data, make_model  # noqa: E402

STEPS = 8  # checkpoints at steps 4 and 8


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # same kernels in every run: resumed runs match bitwise
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A finished 8-step run: its folder (ckpt-4, ckpt-8) and its fitted model."""
    out = tmp_path_factory.mktemp("template")
    model = make_model(str(out), steps=STEPS).fit(data())
    return out, model


@pytest.fixture
def run(template, tmp_path):
    """A copy of the template's run folder; returns (folder, [ckpt-4, ckpt-8])."""
    shutil.copytree(template[0] / "ckpt", tmp_path / "ckpt")
    return tmp_path, list_checkpoints(tmp_path / "ckpt")


def flip_a_tensor_byte(path):
    raw = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(raw[:8], "little")  # after the header: the tensors' bytes
    raw[(start + len(raw)) // 2] ^= 0x01  # one low bit: a tiny, silent change of one value
    path.write_bytes(bytes(raw))


def assert_same_run(model, reference):
    assert model.n_steps_ == reference.n_steps_
    assert model.loss_history_ == reference.loss_history_
    ref = reference.backbone_.state_dict()
    for key, value in model.backbone_.state_dict().items():
        assert torch.equal(value, ref[key]), key


def test_checksum_of_a_flipped_byte_falls_back_and_keeps_the_file(run, template):
    out, (ckpt4, ckpt8) = run
    flip_a_tensor_byte(ckpt8)
    damaged = ckpt8.read_bytes()
    with pytest.raises(CheckpointError, match=r"ckpt-000000008.*checksum"):
        read_checkpoint(ckpt8)
    with pytest.warns(UserWarning, match=r"ckpt-000000008\.safetensors.*falling back") as caught:
        resumed = make_model(str(out), steps=STEPS).fit(data(), resume="latest")
    aside = ckpt8.with_name(ckpt8.name + ".corrupt")
    assert any(str(aside) in str(w.message) for w in caught)  # names where the file went
    assert aside.read_bytes() == damaged  # kept, untouched by the resumed run
    assert_same_run(resumed, template[1])  # continued from step 4
    assert read_checkpoint(ckpt8)["step"] == STEPS  # rewritten by the resumed run


def test_a_missing_or_malformed_entry_is_a_damaged_checkpoint(run, template):
    out, (ckpt4, ckpt8) = run
    state = read_checkpoint(ckpt8)
    bad_step = {**state, "step": -1}
    del state["optimizer"]
    write_checkpoint(out / "other", STEPS, bad_step)
    with pytest.raises(CheckpointError, match=r"malformed entry 'step'"):
        read_checkpoint(list_checkpoints(out / "other")[0])
    write_checkpoint(ckpt8.parent, STEPS, state, keep=5)  # a valid checksum, no optimizer
    with pytest.raises(CheckpointError, match=r"ckpt-000000008.*lacks the entry 'optimizer'"):
        read_checkpoint(ckpt8)
    with pytest.warns(UserWarning, match=r"ckpt-000000008.*'optimizer'.*falling back"):
        resumed = make_model(str(out), steps=STEPS).fit(data(), resume="latest")
    assert ckpt8.with_name(ckpt8.name + ".corrupt").is_file()
    assert_same_run(resumed, template[1])


def test_resume_refuses_changed_training_arguments(run):
    out, (ckpt4, ckpt8) = run
    train_args = read_checkpoint(ckpt8)["train_args"]
    assert train_args["lr"] == 2e-3 and train_args["batch_size"] == 8
    json.dumps(train_args)  # plain data
    for kw, name in ((dict(lr=1e-3), "lr"), (dict(batch_size=4), "batch_size")):
        with pytest.raises(ValueError, match=rf"{name}=.* in the checkpoint.*started with"):
            make_model(str(out), steps=STEPS, **kw).fit(data(), resume="latest")
    with pytest.raises(ValueError, match=r"lr=0.002 in the checkpoint, 0.001 now; batch_size="):
        make_model(str(out), steps=STEPS, lr=1e-3, batch_size=4).fit(data(), resume=ckpt4)
    # extending the run, and changing what the run does not depend on, is allowed
    longer = make_model(str(out), steps=STEPS + 2, verbose=0, log_every=3, keep_checkpoints=2)
    assert longer.fit(data(), resume="latest").n_steps_ == STEPS + 2
    assert [p.name for p in list_checkpoints(out / "ckpt")] == [
        "ckpt-000000008.safetensors", "ckpt-000000010.safetensors"
    ]


def test_all_checkpoints_corrupt_starts_afresh_and_keeps_them(run, template):
    out, files = run
    for path in files:
        flip_a_tensor_byte(path)
    with pytest.warns(UserWarning) as caught:
        fresh = make_model(str(out), steps=STEPS).fit(data(), resume="latest")
    messages = [str(w.message) for w in caught]
    scratch = [m for m in messages if "starting from scratch" in m]
    assert len(scratch) == 1
    assert_same_run(fresh, template[1])
    for path in files:
        aside = path.with_name(path.name + ".corrupt")
        assert aside.is_file() and str(aside) in scratch[0]
    assert len(list_checkpoints(out / "ckpt")) == 2  # the new run's own, beside the damaged


def test_a_checkpoint_without_checksum_or_train_args_still_reads(run):
    out, (ckpt4, ckpt8) = run
    with safe_open(str(ckpt8), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    state = json.loads(meta["conprediff_checkpoint"])
    state["__dict__"] = [kv for kv in state["__dict__"] if kv[0] != "train_args"]
    save_file(tensors, str(ckpt8), metadata={"conprediff_checkpoint": json.dumps(state)})
    with pytest.warns(UserWarning, match=r"ckpt-000000008.*could not be verified"):
        old = read_checkpoint(ckpt8)
    assert old["step"] == STEPS and "train_args" not in old
    with pytest.warns(UserWarning, match="could not be verified"):  # nothing to compare with
        resumed = make_model(str(out), steps=STEPS + 1, lr=1e-3).fit(data(), resume="latest")
    assert resumed.n_steps_ == STEPS + 1


def test_damaged_files_get_a_free_name(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for step in (4, 8):
        (folder / f"ckpt-{step:09d}.safetensors").write_bytes(b"not a checkpoint")
    (folder / "ckpt-000000008.safetensors.corrupt").write_bytes(b"an earlier one")
    with (
        pytest.warns(UserWarning, match="falling back"),
        pytest.raises(FileNotFoundError, match=r"no readable checkpoint.*corrupt-2"),
    ):
        read_latest_checkpoint(folder)
    assert sorted(p.name for p in folder.iterdir()) == [
        "ckpt-000000004.safetensors.corrupt",
        "ckpt-000000008.safetensors.corrupt",
        "ckpt-000000008.safetensors.corrupt-2",
    ]
    assert (folder / "ckpt-000000008.safetensors.corrupt").read_bytes() == b"an earlier one"
