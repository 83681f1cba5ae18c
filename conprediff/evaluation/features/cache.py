"""The disk cache of trained feature classifiers: safetensors weights plus a JSON description.

A classifier trained on some data with some training arguments is stored under a directory as
``lenet-<fingerprint[:20]>.safetensors`` (the state dict) and ``lenet-<fingerprint[:20]>.json``
(format, fingerprint, architecture, training arguments, held-out accuracy); the fingerprint is
the SHA-256 of the images, the labels and the training arguments. No pickle is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ...persistence import write_json, write_safetensors
from .network import LeNetClassifier

__all__ = [
    "CACHE_ENV_VAR",
    "CACHE_FORMAT",
    "CACHE_VERSION",
    "ClassifierCache",
    "data_fingerprint",
    "default_cache_dir",
]

CACHE_ENV_VAR = "CONPREDIFF_CACHE"
CACHE_FORMAT = "conprediff.evaluation.lenet"
CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """Directory for cached feature networks.

    Returns
    -------
    pathlib.Path
        ``$CONPREDIFF_CACHE`` when set, else ``~/.cache/conprediff``.
    """
    env = os.environ.get(CACHE_ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "conprediff"


def data_fingerprint(x: torch.Tensor, y: torch.Tensor, training: dict[str, Any]) -> str:
    """SHA-256 (hex) of images ``x`` ``(N, C, H, W)``, labels ``y`` ``(N,)`` and the training
    arguments: the key of a cached classifier."""
    h = hashlib.sha256()
    h.update(json.dumps(list(x.shape)).encode())
    h.update(x.contiguous().numpy().astype("<f4").tobytes())
    h.update(y.numpy().astype("<i8").tobytes())
    h.update(json.dumps(training, sort_keys=True).encode())
    return h.hexdigest()


def _write(
    weights_path: Path, tensors: dict[str, torch.Tensor], meta_path: Path, meta: dict[str, Any]
) -> None:
    """Write the weights and the description, each atomically
    (:func:`conprediff.persistence.atomic_write`): the one place the cache writes files."""
    write_safetensors(weights_path, tensors, {"format": meta["format"],
                                              "fingerprint": meta["fingerprint"]})
    write_json(meta_path, meta)


@dataclass(frozen=True)
class ClassifierCache:
    """One cached classifier: the pair of files for ``fingerprint`` under ``directory``.

    Parameters
    ----------
    directory : pathlib.Path
        The cache directory (e.g. :func:`default_cache_dir`).
    fingerprint : str
        :func:`data_fingerprint` of the training data and arguments.
    """

    directory: Path
    fingerprint: str

    @property
    def weights_path(self) -> Path:
        """``<directory>/lenet-<fingerprint[:20]>.safetensors``."""
        return self.directory / f"lenet-{self.fingerprint[:20]}.safetensors"

    @property
    def meta_path(self) -> Path:
        """``<directory>/lenet-<fingerprint[:20]>.json``."""
        return self.weights_path.with_suffix(".json")

    def load(self) -> tuple[LeNetClassifier, dict[str, Any]] | None:
        """The cached classifier (on the CPU, eval mode) and its description, or ``None`` when
        there is none for this fingerprint; an unreadable one is ignored with a
        ``RuntimeWarning``."""
        if not (self.weights_path.is_file() and self.meta_path.is_file()):
            return None
        try:
            meta = json.loads(self.meta_path.read_text())
            if meta.get("format") != CACHE_FORMAT or meta.get("fingerprint") != self.fingerprint:
                return None
            model = LeNetClassifier(**meta["architecture"])
            model.load_state_dict(load_file(str(self.weights_path)), strict=True)
            float(meta["test_accuracy"])
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as exc:
            warnings.warn(
                f"ignoring unreadable cached classifier {self.weights_path} ({exc}); retraining",
                RuntimeWarning,
                stacklevel=4,
            )
            return None
        return model.eval(), meta

    def save(self, model: LeNetClassifier, **description: Any) -> dict[str, Any]:
        """Write ``model``'s weights and a description (format, version, fingerprint,
        architecture, then ``description``, e.g. the training arguments and the test accuracy);
        returns the description."""
        meta = {
            "format": CACHE_FORMAT,
            "version": CACHE_VERSION,
            "fingerprint": self.fingerprint,
            "architecture": model.get_config(),
            **description,
        }
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        _write(self.weights_path, state, self.meta_path, meta)
        return meta
