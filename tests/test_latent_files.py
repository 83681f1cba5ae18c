"""Autoencoder files and latent model files are data: a crafted file is one ValueError, fast,
naming the file and the key, with little memory.

Every crafted file is built here from a real tiny autoencoder file and a real tiny latent model
file by rewriting their JSON metadata or their tensors with safetensors' ``save_file``.
"""

import json
import time
from pathlib import Path

import pytest
import torch
from conftest import Background
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conprediff import ConPreDiffModel, UNet
from conprediff.autoencoders import KLAutoencoder
from conprediff.data import load_digits_images

AE_KEY, MODEL_KEY = "conprediff_autoencoder", "conprediff"
PIXEL = Path(__file__).parent / "fixtures" / "v1_context.safetensors"
WEIGHT = "autoencoder.encoder.conv_in.weight"


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """``{'ae': path, 'latent': path}``: a fitted autoencoder's file and a latent model's."""
    x = load_digits_images(size=8)[0][:32]
    ae = KLAutoencoder(base_channels=8, latent_channels=2, downsampling_factor=2, max_steps=3,
                       batch_size=8, seed=0, verbose=0, device="cpu").fit(x)
    model = ConPreDiffModel(backbone=UNet(base_channels=8, channel_mults=(1, 2)), autoencoder=ae,
                            timesteps=20, max_steps=2, batch_size=8, seed=0, verbose=0,
                            device="cpu").fit(x)
    folder = tmp_path_factory.mktemp("good")
    return {"ae": ae.save(folder / "ae.safetensors"),
            "latent": model.save(folder / "latent.safetensors")}


def _read(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata()
    return raw, load_file(str(path))


# Both kinds of file describe their autoencoder under the metadata's "autoencoder" key.
def _set_param(name, value):
    def edit(meta, tensors):
        meta["autoencoder"]["params"][name] = value
    return edit


def _set_class(value):
    def edit(meta, tensors):
        meta["autoencoder"]["__class__"] = value
    return edit


def _set(key, value):
    def edit(meta, tensors):
        meta[key] = value
    return edit


def _nan_weight(meta, tensors):
    tensors[WEIGHT][0, 0, 0, 0] = float("nan")


def _never_fitted(meta, tensors):
    tensors["autoencoder.fitted_scale"] = torch.zeros(())


def _wrong_shape(meta, tensors):
    tensors[WEIGHT] = torch.zeros(3, *tensors[WEIGHT].shape[1:])


def _missing_weight(meta, tensors):
    del tensors[WEIGHT]


def _no_network(meta, tensors):
    meta["autoencoder"]["params"]["in_channels"] = None
    for key in [k for k in tensors if k.startswith("autoencoder.") and "fitted" not in k]:
        del tensors[key]


def _inverted_range(meta, tensors):
    tensors["autoencoder.fitted_range"] = torch.tensor([1.0, 0.0], dtype=torch.float64)


#: Edits that either kind of file refuses: ``(edit, the key the message names)``.
COMMON = {
    "class_os_system": (_set_class("os.system"), "refusing to build 'os.system'"),
    "class_outside_conprediff": (_set_class("torch.nn.Linear"), "only conprediff classes"),
    "class_no_such": (_set_class("conprediff.autoencoders.NoSuch"), "autoencoder"),
    "class_not_an_autoencoder": (_set("autoencoder", {"__class__": "conprediff.backbones.UNet",
                                                     "params": {"base_channels": 8}}),
                                 "autoencoder: .*UNet lacks encode"),
    "huge_base_channels": (_set_param("base_channels", 10**6),
                           "first differing key autoencoder."),
    "huge_latent_channels": (_set_param("latent_channels", 10**6),
                             "first differing key autoencoder."),
    "huge_factor": (_set_param("downsampling_factor", 2**20), "first differing key autoencoder."),
    "bad_factor": (_set_param("downsampling_factor", 3), "power of 2"),
    "unknown_param": (_set_param("evil", 1), "evil"),
    "nan_weight": (_nan_weight, f"{WEIGHT!r}.*non-finite"),
    "never_fitted": (_never_fitted, "autoencoder: holds an autoencoder that was never fitted"),
    "wrong_shape": (_wrong_shape, f"first differing key {WEIGHT}"),
    "missing_weight": (_missing_weight, f"first differing key {WEIGHT}"),
    "no_network": (_no_network, "autoencoder: describes an autoencoder without weights"),
    "autoencoder_list": (_set("autoencoder", []), "autoencoder"),
}
#: Edits only an autoencoder file (read by ``KLAutoencoder.load``) meets.
AE_ONLY = {
    "format_version_2": (_set("format_version", 2), "format_version"),
    "format_version_str": (_set("format_version", "1"), "format_version"),
    "format_version_bool": (_set("format_version", True), "format_version"),
    "format_version_missing": (lambda m, t: m.pop("format_version"), "format_version"),
    "autoencoder_missing": (lambda m, t: m.pop("autoencoder"), "autoencoder"),
    "loss_history_strings": (_set("loss_history", {"loss": ["a"]}), "loss_history"),
    "loss_history_bools": (_set("loss_history", {"loss": [True]}), "loss_history"),
    "stray_tensor": (lambda m, t: t.update({"backbone.x": torch.zeros(2)}), "backbone.x"),
    "inverted_range": (_inverted_range, "data_range"),
}
#: Edits only a latent model file (read by ``ConPreDiffModel.load``) meets.
LATENT_ONLY = {
    "image_shape_not_divisible": (_set("image_shape", [1, 9, 8]), "image_shape: not divisible"),
    "autoencoder_null": (_set("autoencoder", None),
                         r"autoencoder\.\S+: autoencoder weights in a pixel model's file"),
    "latent_bound_negative": (_set("latent_bound", -1.0), "latent_bound"),
    "latent_bound_string": (_set("latent_bound", "big"), "latent_bound"),
    "latent_bound_infinite": (_set("latent_bound", 1e400), "latent_bound"),
}


def _write(path: Path, key: str, meta_text: str, tensors: dict[str, torch.Tensor]) -> Path:
    save_file(tensors, str(path), metadata={key: meta_text})
    return path


def _crafted(source: Path, key: str, edit, path: Path) -> Path:
    raw, tensors = _read(source)
    meta = json.loads(raw[key])
    edit(meta, tensors)
    return _write(path, key, json.dumps(meta), tensors)


def _refused(load, path: Path, match: str) -> ValueError:
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=match) as info:
        load(path)
    assert time.perf_counter() - t0 < 1.0
    assert str(path) in str(info.value)
    return info.value


def _load_ae(path):
    return KLAutoencoder.load(path)


def _load_model(path):
    return ConPreDiffModel.load(path, device="cpu")


@pytest.mark.parametrize("name", [*COMMON, *AE_ONLY])
def test_a_crafted_autoencoder_file_is_one_value_error(good, tmp_path, name):
    edit, match = {**COMMON, **AE_ONLY}[name]
    path = _crafted(good["ae"], AE_KEY, edit, tmp_path / f"{name}.safetensors")
    _refused(_load_ae, path, match)


@pytest.mark.parametrize("name", [*COMMON, *LATENT_ONLY])
def test_a_crafted_latent_model_file_is_one_value_error(good, tmp_path, name):
    edit, match = {**COMMON, **LATENT_ONLY}[name]
    path = _crafted(good["latent"], MODEL_KEY, edit, tmp_path / f"{name}.safetensors")
    _refused(_load_model, path, match)


def test_the_good_files_load(good):
    ae = KLAutoencoder.load(good["ae"])
    model = ConPreDiffModel.load(good["latent"], device="cpu")
    assert ae.is_fitted and model.autoencoder_.is_fitted
    assert model.sample(2, steps=2, seed=0).shape == (2, 1, 8, 8)


def test_autoencoder_weights_in_a_pixel_models_file_are_refused(good, tmp_path):
    tensors = {**load_file(str(PIXEL)), **load_file(str(good["ae"]))}
    with safe_open(str(PIXEL), framework="pt") as f:
        meta_text = f.metadata()[MODEL_KEY]
    path = _write(tmp_path / "pixel.safetensors", MODEL_KEY, meta_text, tensors)
    _refused(_load_model, path, "autoencoder.*: autoencoder weights in a pixel model's file")


def test_each_loader_says_what_the_other_file_is_not(good):
    _refused(_load_ae, good["latent"],
             "is not an autoencoder file.*a model file: read it with ConPreDiffModel.load")
    _refused(_load_model, good["ae"],
             "is not a model file.*an autoencoder file: read it with KLAutoencoder.load")


@pytest.mark.parametrize("kind", ["ae", "latent"])
def test_a_truncated_file_is_refused(good, tmp_path, kind):
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(good[kind].read_bytes()[: good[kind].stat().st_size // 2])
    _refused(_load_ae if kind == "ae" else _load_model, path, "not a readable safetensors file")


def test_bad_json_in_an_autoencoder_file_is_refused(good, tmp_path):
    tensors = load_file(str(good["ae"]))
    for name, text, match in [("not_json", "{not json", f"{AE_KEY}: not valid JSON"),
                              ("list", "[]", f"{AE_KEY}: expected an object"),
                              ("deep", "[" * 100_000 + "]" * 100_000, AE_KEY)]:
        path = _write(tmp_path / f"{name}.safetensors", AE_KEY, text, tensors)
        _refused(_load_ae, path, match)


_MEASURE = """
import resource, sys
from conprediff import ConPreDiffModel
from conprediff.autoencoders import KLAutoencoder
KLAutoencoder.load(sys.argv[1])
ConPreDiffModel.load(sys.argv[2], device="cpu")
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for path in sys.argv[3:]:
    try:
        (KLAutoencoder.load if path.endswith(".ae") else ConPreDiffModel.load)(path)
    except ValueError:
        pass
    else:
        raise SystemExit(f"{path} loaded")
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)
"""


@pytest.fixture(scope="module", autouse=True)
def memory_probe(good, tmp_path_factory):
    """The peak-memory subprocess, started with the module so that it runs beside its tests."""
    folder = tmp_path_factory.mktemp("crafted")
    names = ["huge_base_channels", "huge_latent_channels", "huge_factor"]
    paths = [str(_crafted(good[kind], key, COMMON[name][0], folder / f"{name}.{kind}"))
             for kind, key in [("ae", AE_KEY), ("latent", MODEL_KEY)] for name in names]
    probe = Background(_MEASURE, str(good["ae"]), str(good["latent"]), *paths)
    yield probe
    probe.stop()


def test_crafted_files_allocate_nothing_large(memory_probe):
    assert int(memory_probe.result()) < 50_000  # KiB of peak memory above a good load
