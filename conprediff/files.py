"""Files written whole or not at all, and safetensors files read as untrusted data.

Writing: :func:`atomic_write` (temporary file, ``fsync``, ``os.replace``) under
:func:`write_safetensors` and :func:`write_json`, used by model files, checkpoints, autoencoder
files and the feature cache. Reading: a file's header (:func:`read_header`) is checked before
any tensor is read; the modules it describes are first built on the meta device
(:func:`build_on_meta`), where nothing is allocated, and compared with the header's shapes
(:func:`check_state_shapes`); only then are the tensors read (:func:`read_finite_tensors`) and
loaded (:func:`restore_state`). See ``docs/security.rst``.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .serialization import from_jsonable

__all__ = [
    "MAX_JSON_DEPTH",
    "atomic_write",
    "build_on_meta",
    "check_state_shapes",
    "decode_component",
    "invalid_file",
    "json_depth",
    "read_finite_tensors",
    "read_header",
    "read_safetensors",
    "restore_state",
    "write_json",
    "write_safetensors",
]

#: Deepest nesting of JSON metadata a file may hold.
MAX_JSON_DEPTH = 32


def _umask() -> int:
    """The process's umask, read without changing it where Linux allows."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but brief)
    os.umask(mask)
    return mask


def _remove_stale_temporaries(target: Path) -> None:
    """Delete temporary files of earlier writes of ``target`` whose writer no longer runs."""
    for tmp in target.parent.glob(f".{target.name}.*.tmp"):
        pid = tmp.name[len(target.name) + 2 : -4].split(".")[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # alive under another user: not ours to remove


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Make ``path`` appear whole or not at all: ``write(tmp)``, ``fsync``, ``os.replace``.

    ``write`` writes the complete file at the temporary path it is given. The temporary file
    lies in the target's folder (named ``.<name>.<pid>.<random>.tmp``) and is removed when
    ``write`` fails; ones left by a killed earlier writer are removed by the next write of the
    same file. The file's mode follows the umask, as ``open`` would give. The folder is created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp",
                               dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor],
                      metadata: dict[str, str]) -> Path:
    """Write a safetensors file atomically (see :func:`atomic_write`).

    Parameters
    ----------
    path : str or Path
        Target file; its folder is created.
    tensors : dict of str to torch.Tensor
        Contiguous CPU tensors.
    metadata : dict of str to str
        Stored in the file's header.

    Returns
    -------
    Path
        ``path``.
    """
    from safetensors.torch import save_file

    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON atomically (see :func:`atomic_write`)."""
    text = json.dumps(data, indent=2)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def read_safetensors(path: str | Path, what: str = "file") -> tuple[dict[str, str],
                                                                      dict[str, torch.Tensor]]:
    """``(metadata, tensors)`` of a safetensors file; ``ValueError`` if it cannot be read.

    Raises
    ------
    FileNotFoundError
        If there is no file at ``path``.
    ValueError
        If the file is truncated, corrupted or not a safetensors file (a pickle, say).
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {str(path)!r}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as err:  # safetensors raises several types for damaged files
        raise ValueError(f"{str(path)!r} is not a readable safetensors file: {err}") from err
    return meta, tensors



class _MetaBuild(TorchFunctionMode):
    """Count the tensors created, at most ``budget``, and make in-place random fills (``normal_``,
    ``uniform_``...) no-ops: on the meta device there is nothing to fill, and torch's meta
    ``normal_`` is slow to set up. The budget stops a file describing a module of millions of
    layers while they are built, long before they would be compared with the file."""

    SKIP = frozenset(
        [getattr(torch.Tensor, f"{name}_") for name in ("normal", "uniform", "bernoulli", "random",
                                                         "exponential", "log_normal", "cauchy")]
        + [getattr(nn.init, f"{name}_") for name in ("normal", "uniform", "trunc_normal",
                                                      "kaiming_normal", "kaiming_uniform",
                                                      "xavier_normal", "xavier_uniform",
                                                      "orthogonal", "sparse")]
    )

    FACTORIES = frozenset(getattr(torch, name) for name in (
        "empty", "empty_strided", "zeros", "ones", "full", "rand", "randn", "randint", "tensor",
        "as_tensor", "arange", "linspace", "logspace", "eye", "zeros_like", "ones_like",
        "empty_like", "full_like", "rand_like", "randn_like"))

    def __init__(self, budget: int):
        super().__init__()
        self.budget = budget

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: D105
        if func in self.FACTORIES:  # never raise elsewhere: no_grad's exit is a call too
            self.budget -= 1
            if self.budget < 0:
                raise ValueError("describes a module far larger than the weights the file holds")
        if func in self.SKIP:  # the tensor filled: the first argument, or nn.init's tensor=
            return args[0] if args else (kwargs or {})["tensor"]
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def build_on_meta(n_tensors: int = 0) -> Iterator[None]:
    """Build modules without memory: ``torch.device('meta')``, random fills skipped, at most
    ``1000 + 4 * n_tensors`` tensors created (one per tensor a module holds, and temporaries)."""
    with torch.device("meta"), _MetaBuild(1000 + 4 * n_tensors):
        yield


def invalid_file(path: Path, key: str, why: Any) -> ValueError:
    return ValueError(f"invalid model file {str(path)!r}: {key}: {why}")



def json_depth(data: Any) -> int:
    """Nesting depth of JSON data, counted without recursion (up to ``MAX_JSON_DEPTH + 1``)."""
    stack, deepest = [(data, 1)], 0
    while stack and deepest <= MAX_JSON_DEPTH:
        value, depth = stack.pop()
        deepest = max(deepest, depth)
        items = value.values() if isinstance(value, dict) else value
        if isinstance(value, dict | list):
            stack.extend((v, depth + 1) for v in items)
    return deepest



def decode_component(data: Any, classes: tuple[type, ...], path: Path, key: str) -> Any:
    """``from_jsonable(data)``, every failure (unknown class, bad arguments) a ValueError."""
    try:
        return from_jsonable(data, classes)
    except (ValueError, TypeError, KeyError, AttributeError, ImportError, RecursionError,
            OSError) as err:  # OSError: a component that reads a folder the file names
        raise invalid_file(path, key, f"{type(err).__name__}: {err}") from None



def read_header(path: Path) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """``(metadata, {key: shape})`` of a safetensors file, read without its tensors."""
    from safetensors import safe_open

    if not path.is_file():
        raise FileNotFoundError(f"no model file at {str(path)!r}")
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
            return f.metadata() or {}, shapes
    except Exception as err:  # safetensors raises several types for damaged files
        raise ValueError(f"{str(path)!r} is not a readable safetensors file: {err}") from err


def check_state_shapes(module: nn.Module, shapes: dict[str, tuple[int, ...]], prefix: str,
                  path: Path) -> None:
    """ValueError naming the first key where ``module``'s state and the file's ``prefix.``
    tensors differ (a missing or extra key, or another shape)."""
    want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    have = {k[len(prefix) + 1 :]: s for k, s in shapes.items() if k.startswith(prefix + ".")}
    for key in sorted(set(want) | set(have)):
        if want.get(key) != have.get(key):
            raise ValueError(
                f"the weights in {str(path)!r} do not fit the {prefix} module "
                f"({type(module).__name__}): was it built with other arguments? first differing "
                f"key {prefix}.{key}: the file holds {have.get(key)}, the module {want.get(key)}"
            )


def restore_state(tensors: dict[str, torch.Tensor], prefix: str, module: nn.Module, path: Path,
             device: torch.device) -> nn.Module:
    """Load the ``prefix.`` tensors into ``module`` (strictly); ValueError when they do not fit."""
    state = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"the weights in {str(path)!r} do not fit the {prefix} module "
            f"({type(module).__name__}): was it built with other arguments? "
            f"{str(err).splitlines()[0]}"
        ) from err
    return module.to(device).eval()



def read_finite_tensors(path: Path, allow_nonfinite: bool) -> dict[str, torch.Tensor]:
    """The file's tensors; ValueError naming the first one holding NaN or inf, unless allowed."""
    tensors = read_safetensors(path, "model file")[1]
    for key, value in tensors.items():
        if not allow_nonfinite and value.is_floating_point() and not bool(
            torch.isfinite(value).all()
        ):
            raise ValueError(
                f"tensor {key!r} in {str(path)!r} holds non-finite values (NaN or inf); pass "
                "allow_nonfinite=True to load it anyway"
            )
    return tensors

