"""A model file is data: a crafted or damaged file is one ValueError, fast, with little memory.

Every crafted file is built here from the small fitted model in ``tests/fixtures`` by rewriting
its JSON metadata or its tensors.
"""

import json
import os
import pickle
import time
from pathlib import Path

import pytest
import torch
from conftest import Background
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conprediff import ConPreDiffModel
from conprediff.cli import main
from conprediff.persistence import MAX_TIMESTEPS

GOOD = Path(__file__).parent / "fixtures" / "v1_context.safetensors"
with safe_open(str(GOOD), framework="pt") as _f:
    META = json.loads(_f.metadata()["conprediff"])
NESTED = "[" * 100_000 + "]" * 100_000


def _set(path: str, value):
    """An edit of the metadata: the value at a dotted ``path`` (``...`` deletes the key)."""
    def edit(meta):
        *parents, last = path.split(".")
        node = meta
        for key in parents:
            node = node[key]
        if value is ...:
            del node[last]
        else:
            node[last] = value
        return meta
    return edit


BAD_META = {
    "oversized_base_channels": _set("backbone.params.base_channels", 768),
    "float_in_channels": _set("backbone.params.in_channels", 3e6),
    "huge_in_channels": _set("backbone.params.in_channels", 3_000_000),
    "million_res_blocks": _set("backbone.params.num_res_blocks", 10**6),
    "negative_base_channels": _set("backbone.params.base_channels", -8),
    "negative_image_shape": _set("image_shape", [-1, 8, 8]),
    "huge_image_shape": _set("image_shape", [1, 10**9, 8]),
    "image_shape_of_two": _set("image_shape", [8, 8]),
    "channels_unlike_backbone": _set("image_shape", [3, 8, 8]),
    "timesteps_3e8": _set("params.timesteps", 300_000_000),
    "timesteps_float": _set("params.timesteps", 3e8),
    "timesteps_over_bound": _set("params.timesteps", MAX_TIMESTEPS + 1),
    "inverted_data_range": _set("data_range", [1.0, -1.0]),
    "infinite_data_range": _set("data_range", [0.0, 1e400]),
    "unknown_prediction": _set("params.prediction", "banana"),
    "unknown_schedule": _set("params.schedule", "banana"),
    "negative_lr": _set("params.lr", -1.0),
    "unknown_parameter": _set("params.evil", 1),
    "module_as_lr": _set("params.lr", {"__class__": "conprediff.backbones.UNet",
                                       "params": {"base_channels": 4096}}),
    "format_version_2": _set("format_version", 2),
    "format_version_str": _set("format_version", "1"),
    "format_version_bool": _set("format_version", True),
    "params_null": _set("params", None),
    "params_list": _set("params", []),
    "backbone_list": _set("backbone", []),
    "backbone_not_a_module": _set("backbone", {"__class__": "conprediff.context.loss."
                                                            "ContextPrediction", "params": {}}),
    "backbone_without_params": _set("backbone.params", ...),
    "n_steps_negative": _set("n_steps", -1),
    "n_steps_null": _set("n_steps", None),
    "seed_string": _set("seed", "0"),
    "loss_history_strings": _set("loss_history.loss", ["a"]),
    "has_decoder_string": _set("has_decoder", "yes"),
    "unknown_class_in_conprediff": _set("backbone.__class__", "conprediff.backbones.NoSuch"),
    "unknown_module_in_conprediff": _set("backbone.__class__", "conprediff.nosuch.UNet"),
    "class_outside_conprediff": _set("backbone.__class__", "os.system"),
    "class_name_not_a_string": _set("backbone.__class__", 3),
    "deep_json_40": _set("params.context", json.loads("[" * 40 + "]" * 40)),
    "whole_meta_list": lambda meta: [],
    "whole_meta_null": lambda meta: None,
    **{f"missing_{key}": _set(key, ...) for key in META},
}


def _write(path: Path, meta_text: str, tensors=None) -> Path:
    save_file(load_file(str(GOOD)) if tensors is None else tensors, str(path),
              metadata={"conprediff": meta_text})
    return path


def _crafted(tmp_path: Path, name: str) -> Path:
    """The file of case ``name`` (a metadata edit, or one of the special cases below)."""
    path = tmp_path / f"{name}.safetensors"
    if name == "deep_json_100000":  # json.dumps itself cannot write this
        return _write(path, json.dumps(META)[:-1] + f', "x": {NESTED}}}')
    if name == "not_json":
        return _write(path, "{not json")
    if name == "nan_weights":
        tensors = load_file(str(GOOD))
        tensors["backbone.conv_in.weight"][0, 0, 0, 0] = float("nan")
        return _write(path, json.dumps(META), tensors)
    if name == "stray_tensor":
        return _write(path, json.dumps(META), {**load_file(str(GOOD)), "x.y": torch.zeros(2)})
    if name == "missing_tensor":
        tensors = load_file(str(GOOD))
        del tensors["ema.conv_in.weight"]
        return _write(path, json.dumps(META), tensors)
    if name == "truncated":
        path.write_bytes(GOOD.read_bytes()[: GOOD.stat().st_size // 2])
        return path
    if name == "random_bytes":
        path.write_bytes(os.urandom(4096))
        return path
    if name == "no_metadata":
        save_file(load_file(str(GOOD)), str(path))
        return path
    meta = BAD_META[name](json.loads(json.dumps(META)))
    return _write(path, json.dumps(meta))


SPECIAL = ["deep_json_100000", "not_json", "nan_weights", "stray_tensor", "missing_tensor",
           "truncated", "random_bytes", "no_metadata"]
CASES = [*BAD_META, *SPECIAL]


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("name", CASES)
def test_a_crafted_file_is_one_value_error_in_under_a_second(tmp_path, name):
    path = _crafted(tmp_path, name)
    t0 = time.perf_counter()
    with pytest.raises(ValueError) as info:
        ConPreDiffModel.load(path, device="cpu")
    assert time.perf_counter() - t0 < 1.0
    assert str(path) in str(info.value) or "this release reads" in str(info.value)


def test_the_error_names_the_key(tmp_path):
    with pytest.raises(ValueError, match="timesteps"):
        ConPreDiffModel.load(_crafted(tmp_path, "timesteps_3e8"), device="cpu")
    with pytest.raises(ValueError, match="first differing key backbone.conv_in"):
        ConPreDiffModel.load(_crafted(tmp_path, "oversized_base_channels"), device="cpu")
    with pytest.raises(ValueError, match="'backbone.conv_in.weight'.*non-finite"):
        ConPreDiffModel.load(_crafted(tmp_path, "nan_weights"), device="cpu")
    with pytest.raises(ValueError, match="data_range"):
        ConPreDiffModel.load(_crafted(tmp_path, "inverted_data_range"), device="cpu")


def test_nan_weights_load_when_allowed(tmp_path):
    model = ConPreDiffModel.load(_crafted(tmp_path, "nan_weights"), device="cpu",
                                 allow_nonfinite=True)
    assert torch.isnan(model.backbone_.conv_in.weight).any()


def test_another_valid_prediction_is_accepted(tmp_path):
    # a file cannot prove what it was trained with; a valid choice is all that can be checked
    path = _write(tmp_path / "x0.safetensors",
                  json.dumps(_set("params.prediction", "x0")(json.loads(json.dumps(META)))))
    assert ConPreDiffModel.load(path, device="cpu").prediction_ == "x0"


def test_a_pickle_runs_no_code(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        ConPreDiffModel.load(path, device="cpu")
    assert not marker.exists()


_MEASURE = """
import resource, sys
from conprediff import ConPreDiffModel
ConPreDiffModel.load(sys.argv[1], device="cpu")
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for path in sys.argv[2:]:
    try:
        ConPreDiffModel.load(path, device="cpu")
    except ValueError:
        pass
    else:
        raise SystemExit(f"{path} loaded")
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)
"""


@pytest.fixture(scope="module", autouse=True)
def memory_probe(tmp_path_factory):
    """The peak-memory subprocess, started with the module so that it runs beside its tests."""
    folder = tmp_path_factory.mktemp("crafted")
    names = ["oversized_base_channels", "huge_in_channels", "million_res_blocks", "timesteps_3e8",
             "huge_image_shape", "module_as_lr", "deep_json_100000", "nan_weights"]
    paths = [str(_crafted(folder, name)) for name in names]
    probe = Background(_MEASURE, str(GOOD), *paths)
    yield probe
    probe.stop()


def test_crafted_files_allocate_nothing_large(memory_probe):
    assert int(memory_probe.result()) < 50_000  # KiB of peak memory above a good load


def test_cli_reports_a_bad_file_in_one_line(tmp_path, capsys):
    for name in ["random_bytes", "timesteps_3e8", "nan_weights"]:
        assert main(["sample", str(_crafted(tmp_path, name)), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("conprediff sample: error: ") and "Traceback" not in err


def test_cli_reports_an_unreadable_image(tmp_path, capsys):
    (tmp_path / "img.png").write_bytes(b"not an image")
    args = ["inpaint", str(tmp_path / "img.png"), str(tmp_path / "img.png"),
            "--model", str(GOOD), "--device", "cpu"]
    assert main(args) == 2
    assert capsys.readouterr().err.startswith("conprediff inpaint: error: ")


def test_sample_fails_fast_when_the_output_cannot_fit(monkeypatch):
    import conprediff._resources as resources

    model = ConPreDiffModel.load(GOOD, device="cpu")
    monkeypatch.setattr(resources, "available_memory", lambda: 2 * 4 * 64 * 10)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"n=11 images .* chunks"):
        model.sample(11, steps=2)
    assert time.perf_counter() - t0 < 0.5
    assert model.sample(10, steps=2, seed=0).shape == (10, 1, 8, 8)  # 2560 bytes: fits
    monkeypatch.setattr(resources, "available_memory", lambda: None)
    assert resources.output_limit() == resources.FALLBACK_LIMIT


def test_every_training_batch_is_checked_against_the_range():
    images = torch.rand(16, 1, 8, 8)
    images[8:] *= 255  # the second batch leaves the [0, 1] inferred from the first
    loader = torch.utils.data.DataLoader(images, batch_size=8)
    from conprediff import UNet

    model = ConPreDiffModel(backbone=UNet(base_channels=8, channel_mults=(1,)), max_steps=4,
                            device="cpu", verbose=0, seed=0, ema_decay=None)
    with pytest.raises(ValueError, match=r"the batch of step 1: data values must lie in the "
                                         r"data range \[0, 1\]"):
        model.fit(loader)
