"""Atomic safetensors writes: a killed save never breaks the file it replaces."""

import os
import random
import signal
import time

import pytest
import torch

from conprediff.persistence import read_safetensors, write_safetensors


def _tensors(value: float) -> dict[str, torch.Tensor]:
    return {f"w{i}": torch.full((256, 1024), value) for i in range(8)}  # 8 MiB


def _temporaries(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_sigkill_during_save_leaves_the_old_or_the_new_file(tmp_path):
    path = tmp_path / "model.safetensors"
    write_safetensors(path, _tensors(0.0), {"round": "0"})
    rng = random.Random(0)
    seen = set()
    for round_ in range(1, 11):
        tensors = _tensors(float(round_))  # made before the fork: the child only writes
        pid = os.fork()
        if pid == 0:  # the child saves over the file until it is killed
            try:
                while True:
                    write_safetensors(path, tensors, {"round": str(round_)})
            finally:
                os._exit(1)
        time.sleep(rng.uniform(0.0, 0.15))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        meta, tensors = read_safetensors(path)  # loadable whatever the moment of the kill
        value = float(tensors["w7"][-1, -1])
        assert meta["round"] in {"0", *map(str, range(round_ + 1))}
        assert value == float(meta["round"])
        assert all(torch.all(t == value) for t in tensors.values())
        seen.add(meta["round"])
    # the next write removes what killed writers left behind, and leaves nothing itself
    write_safetensors(path, _tensors(-1.0), {"round": "last"})
    assert _temporaries(tmp_path) == []
    assert read_safetensors(path)[0]["round"] == "last"
    assert len(seen) > 1  # the children did replace the file now and then


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "m.safetensors"
    write_safetensors(path, _tensors(1.0), {"a": "1"})
    with pytest.raises(Exception):  # noqa: B017 - safetensors' own error type
        write_safetensors(path, {"x": torch.zeros(2, 2).t()}, {"a": "2"})  # not contiguous
    assert read_safetensors(path)[0] == {"a": "1"}
    assert _temporaries(tmp_path) == []


def test_file_mode_follows_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        path = write_safetensors(tmp_path / "m.safetensors", _tensors(1.0), {})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o640


def test_unreadable_files_are_value_errors(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x80\x04not safetensors at all")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        read_safetensors(bad)
    with pytest.raises(FileNotFoundError):
        read_safetensors(tmp_path / "missing.safetensors")
