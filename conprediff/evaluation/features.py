"""Feature networks for the evaluation metrics.

Pretrained Inception weights cannot be downloaded here, so every metric takes its feature network
as a component (:class:`FeatureExtractor`):

* a user module: any ``torch.nn.Module`` with a ``features(x) -> (N, D)`` method, or any callable
  returning ``(N, D)`` (or ``(N, D, 1, 1)``, which is flattened);
* a local safetensors weights file plus the module to load it into (e.g. an Inception network the
  user has on disk);
* by default, a small :class:`LeNetClassifier` trained on the data set itself and cached on disk as
  safetensors plus a JSON file with its held-out accuracy and the data fingerprint -- the usual
  practice for MNIST-scale FID. No pickle is used anywhere.

Images are float tensors or arrays of shape ``(N, C, H, W)`` (or ``(N, H, W)`` for grey images)
with values in [-1, 1].
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import train_test_split
from torch import nn
from tqdm.auto import tqdm

from ..data.digits import load_digits_images

__all__ = [
    "FeatureExtractor",
    "LeNetClassifier",
    "default_cache_dir",
    "default_digits_extractor",
    "train_classifier",
]

CACHE_ENV_VAR = "CONPREDIFF_CACHE"
_CACHE_FORMAT = "conprediff.evaluation.lenet"
_CACHE_VERSION = 1


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def _as_images(name: str, images: Any, *, min_size: int = 1) -> torch.Tensor:
    """Return ``images`` as a float32 CPU tensor of shape (N, C, H, W), or raise naming ``name``."""
    if isinstance(images, torch.Tensor):
        x = images.detach().to("cpu", torch.float32)
    else:
        try:
            x = torch.from_numpy(np.asarray(images, dtype=np.float32))
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"{name} must be a tensor or array of shape (N, C, H, W); got {type(images)}"
            ) from exc
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4:
        raise ValueError(
            f"{name} must have shape (N, C, H, W) or (N, H, W); got shape {tuple(x.shape)}"
        )
    if x.shape[0] < 1:
        raise ValueError(f"{name} is empty (N = 0)")
    if min(x.shape[2], x.shape[3]) < min_size:
        raise ValueError(
            f"{name} must be at least {min_size}x{min_size} pixels; got {tuple(x.shape[2:])}"
        )
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def _as_labels(name: str, labels: Any, n: int) -> torch.Tensor:
    """Return ``labels`` as an int64 CPU tensor of shape (n,), or raise naming ``name``."""
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), one label per image; got {y.shape}")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.array_equal(y, np.round(y)):
            raise ValueError(f"{name} must hold integer class indices; got non-integer floats")
    elif y.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integer class indices; got dtype {y.dtype}")
    y = torch.from_numpy(y.astype(np.int64))
    if y.min() < 0:
        raise ValueError(f"{name} must hold class indices >= 0; got a minimum of {int(y.min())}")
    return y


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# --------------------------------------------------------------------------------------------
# The default classifier
# --------------------------------------------------------------------------------------------


class LeNetClassifier(nn.Module):
    """Small LeNet-style convolutional classifier whose penultimate layer gives the features.

    ``conv3x3(C, w) - ReLU - conv3x3(w, 2w, stride 2) - ReLU - AdaptiveAvgPool(4x4) - flatten -
    Linear(32w, D) - ReLU - Linear(D, n_classes)``. It accepts images of any size >= 8x8; about
    0.15M parameters at the defaults.

    Parameters
    ----------
    in_channels : int, default 1
        Channels ``C`` of the input images.
    n_classes : int, default 10
        Number of classes (logits).
    width : int, default 32
        Channels ``w`` of the first convolution (the second has ``2w``).
    feature_dim : int, default 128
        Dimension ``D`` of the feature vectors returned by :meth:`features`.

    Notes
    -----
    Inputs are images in [-1, 1] of shape ``(N, C, H, W)`` with ``H, W >= 8``.
    """

    min_size = 8

    def __init__(
        self, in_channels: int = 1, n_classes: int = 10, width: int = 32, feature_dim: int = 128
    ) -> None:
        super().__init__()
        for name, value in [
            ("in_channels", in_channels),
            ("n_classes", n_classes),
            ("width", width),
            ("feature_dim", feature_dim),
        ]:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value!r}")
        if n_classes < 2:
            raise ValueError(f"n_classes must be at least 2; got {n_classes}")
        self.in_channels = in_channels
        self.n_classes = n_classes
        self.width = width
        self.feature_dim = feature_dim
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(2 * width * 16, feature_dim),
            nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, n_classes)

    def get_config(self) -> dict[str, int]:
        """Constructor arguments, JSON-serialisable: ``LeNetClassifier(**model.get_config())``."""
        return {
            "in_channels": self.in_channels,
            "n_classes": self.n_classes,
            "width": self.width,
            "feature_dim": self.feature_dim,
        }

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"x must have shape (N, {self.in_channels}, H, W); got {tuple(x.shape)}"
            )
        if min(x.shape[2], x.shape[3]) < self.min_size:
            raise ValueError(
                f"x must be at least {self.min_size}x{self.min_size} pixels; "
                f"got {tuple(x.shape[2:])}"
            )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features.

        Parameters
        ----------
        x : torch.Tensor of shape (N, C, H, W)
            Images in [-1, 1], ``H, W >= 8``.

        Returns
        -------
        torch.Tensor of shape (N, feature_dim)
            Non-negative (post-ReLU) feature vectors.
        """
        self._check_input(x)
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits.

        Parameters
        ----------
        x : torch.Tensor of shape (N, C, H, W)
            Images in [-1, 1], ``H, W >= 8``.

        Returns
        -------
        torch.Tensor of shape (N, n_classes)
        """
        return self.head(self.features(x))


def _random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels, filling with the background (-1)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
    rows = (offsets[:, 0, None] + torch.arange(h))[:, :, None]  # (n, h, 1)
    cols = (offsets[:, 1, None] + torch.arange(w))[:, None, :]  # (n, 1, w)
    # Advanced indexing gives (n, h, w, C); move the channels back.
    out = padded.permute(0, 2, 3, 1)[torch.arange(n)[:, None, None], rows, cols]
    return out.permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, x.shape[0], batch_size):
        logits = model(x[start : start + batch_size].to(device))
        correct += int((logits.argmax(1).cpu() == y[start : start + batch_size]).sum())
    return correct / x.shape[0]


def train_classifier(
    images: Any,
    labels: Any,
    *,
    epochs: int = 30,
    seed: int = 0,
    test_fraction: float = 0.2,
    verbose: int = 1,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    augment: bool = True,
    width: int = 32,
    feature_dim: int = 128,
    device: str | torch.device | None = None,
) -> tuple[LeNetClassifier, float]:
    """Train a :class:`LeNetClassifier` on labelled images and measure its held-out accuracy.

    Adam with a cosine learning-rate decay and cross-entropy loss; a stratified split of
    ``test_fraction`` of the images is held out and never trained on. Deterministic for a given
    ``seed`` on CPU; the global torch random state is left untouched.

    Parameters
    ----------
    images : array_like or torch.Tensor of shape (N, C, H, W) or (N, H, W)
        Images in [-1, 1], ``H, W >= 8``.
    labels : array_like of shape (N,)
        Integer class indices in ``[0, n_classes)``; ``n_classes = max(labels) + 1``.
    epochs : int, default 30
        Passes over the training split.
    seed : int, default 0
        Seeds the split, the initialisation, the batches and the augmentation.
    test_fraction : float, default 0.2
        Fraction held out for the test accuracy, in (0, 1).
    verbose : int, default 1
        0: silent; otherwise a tqdm progress bar over epochs with the loss.
    batch_size : int, default 64
        Training batch size.
    lr : float, default 3e-3
        Initial Adam learning rate (decayed to 0 by a cosine schedule).
    weight_decay : float, default 1e-4
        Adam L2 weight decay.
    augment : bool, default True
        Random translations by up to one pixel (background-filled) while training.
    width, feature_dim : int
        Passed to :class:`LeNetClassifier`.
    device : str or torch.device, optional
        Where to train; default CUDA when available, else CPU.

    Returns
    -------
    model : LeNetClassifier
        The trained model in eval mode, on ``device``.
    test_accuracy : float
        Accuracy on the held-out split, in [0, 1].

    Raises
    ------
    ValueError
        If the shapes of ``images`` and ``labels`` disagree, there are fewer than two classes,
        ``epochs`` is not positive or ``test_fraction`` is outside (0, 1).
    """
    x = _as_images("images", images, min_size=LeNetClassifier.min_size)
    y = _as_labels("labels", labels, x.shape[0])
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer; got {epochs!r}")
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1); got {test_fraction!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    n_classes = int(y.max()) + 1
    if n_classes < 2:
        raise ValueError(f"labels must contain at least two classes; got {n_classes}")
    device = _resolve_device(device)

    counts = torch.bincount(y, minlength=n_classes)
    stratify = y.numpy() if int(counts[counts > 0].min()) >= 2 else None
    idx_train, idx_test = train_test_split(
        np.arange(x.shape[0]), test_size=float(test_fraction), random_state=seed, stratify=stratify
    )
    x_train, y_train = x[idx_train], y[idx_train]
    x_test, y_test = x[idx_test], y[idx_test]

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LeNetClassifier(
            in_channels=x.shape[1], n_classes=n_classes, width=width, feature_dim=feature_dim
        )
    model.to(device)
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = -(-x_train.shape[0] // batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, epochs * steps_per_epoch)

    bar = tqdm(range(epochs), desc="training feature classifier", disable=not verbose)
    model.train()
    for _ in bar:
        order = torch.randperm(x_train.shape[0], generator=generator)
        total, seen = 0.0, 0
        for start in range(0, x_train.shape[0], batch_size):
            batch = order[start : start + batch_size]
            xb, yb = x_train[batch], y_train[batch]
            if augment:
                xb = _random_shift(xb, 1, generator)
            loss = F.cross_entropy(model(xb.to(device)), yb.to(device))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            total += loss.item() * batch.shape[0]
            seen += batch.shape[0]
        bar.set_postfix(loss=f"{total / seen:.4f}")
    model.eval()
    test_accuracy = _accuracy(model, x_test, y_test, 512)
    if verbose:
        bar.write(f"feature classifier: test accuracy {test_accuracy:.4f} ({len(idx_test)} images)")
    return model, test_accuracy


# --------------------------------------------------------------------------------------------
# The extractor component
# --------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """Directory for cached feature networks.

    Returns
    -------
    pathlib.Path
        ``$CONPREDIFF_CACHE`` when set, else ``~/.cache/conprediff``.
    """
    env = os.environ.get(CACHE_ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "conprediff"


def _fingerprint(x: torch.Tensor, y: torch.Tensor, training: dict[str, Any]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(list(x.shape)).encode())
    h.update(x.contiguous().numpy().astype("<f4").tobytes())
    h.update(y.numpy().astype("<i8").tobytes())
    h.update(json.dumps(training, sort_keys=True).encode())
    return h.hexdigest()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class FeatureExtractor(BaseEstimator):
    """Feature network for the metrics: a user module, a local weights file, or a trained LeNet.

    Follows scikit-learn's conventions (a ``BaseEstimator``: ``get_params``/``set_params``/
    ``clone`` work): the constructor only stores its arguments, :meth:`fit` prepares the network
    and returns ``self``, fitted state ends in ``_``. Exactly one source is
    used, in this order:

    1. ``model`` given: it is used as is. Its ``features(x)`` method is called when it has one,
       otherwise ``model(x)``; the output must be ``(N, D)`` (trailing singleton/extra dimensions
       are flattened, e.g. Inception's ``(N, 2048, 1, 1)``).
    2. ``weights`` given: a safetensors file loaded (``strict``) into ``architecture``, an
       ``nn.Module`` instance or a zero-argument callable building one.
    3. Otherwise: a :class:`LeNetClassifier` trained by :func:`train_classifier` on the images and
       labels passed to :meth:`fit`, cached under ``cache_dir`` as
       ``lenet-<fingerprint>.safetensors`` plus a ``.json`` with the architecture, the training
       arguments, the held-out accuracy and the fingerprint (SHA-256 of the data and the training
       arguments). A later fit on the same data and arguments loads it instead of retraining.

    Parameters
    ----------
    model : torch.nn.Module or callable, optional
        A user feature network taking ``(N, C, H, W)`` images in [-1, 1].
    weights : str or os.PathLike, optional
        Path to a local ``.safetensors`` state dict for ``architecture``.
    architecture : torch.nn.Module or callable, optional
        The module (or a factory returning it) that ``weights`` are loaded into.
    cache_dir : str or os.PathLike, optional
        Where the default classifier is cached; default ``$CONPREDIFF_CACHE`` or
        ``~/.cache/conprediff``.
    epochs, seed, test_fraction, augment, width, feature_dim :
        Training arguments of the default classifier (see :func:`train_classifier`).
    batch_size : int, default 256
        Batch size of :meth:`extract`.
    device : str or torch.device, optional
        Device for training and extraction of the default/weights network; default CUDA when
        available. A user ``model`` stays where it is.
    verbose : int, default 0
        Progress bars and messages while training/extracting.

    Attributes
    ----------
    model_ : torch.nn.Module or callable
        The network in use.
    test_accuracy_ : float or None
        Held-out accuracy of the default classifier (``None`` for user networks).
    cache_path_ : pathlib.Path or None
        The safetensors file of the default classifier.
    loaded_from_cache_ : bool
        Whether :meth:`fit` loaded the default classifier from the cache instead of training.
    fingerprint_ : str or None
        SHA-256 of the training data and arguments of the default classifier.

    Examples
    --------
    >>> extractor = FeatureExtractor(cache_dir="/tmp/cache").fit(images, labels)  # doctest: +SKIP
    >>> features = extractor.extract(samples)  # (N, 128) numpy array  # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module | Callable[[torch.Tensor], torch.Tensor] | None = None,
        *,
        weights: str | os.PathLike | None = None,
        architecture: nn.Module | Callable[[], nn.Module] | None = None,
        cache_dir: str | os.PathLike | None = None,
        epochs: int = 30,
        seed: int = 0,
        test_fraction: float = 0.2,
        augment: bool = True,
        width: int = 32,
        feature_dim: int = 128,
        batch_size: int = 256,
        device: str | torch.device | None = None,
        verbose: int = 0,
    ) -> None:
        self.model = model
        self.weights = weights
        self.architecture = architecture
        self.cache_dir = cache_dir
        self.epochs = epochs
        self.seed = seed
        self.test_fraction = test_fraction
        self.augment = augment
        self.width = width
        self.feature_dim = feature_dim
        self.batch_size = batch_size
        self.device = device
        self.verbose = verbose

    # -- fitting ---------------------------------------------------------------------------

    def _training_args(self) -> dict[str, Any]:
        return {
            "epochs": self.epochs,
            "seed": self.seed,
            "test_fraction": self.test_fraction,
            "augment": bool(self.augment),
            "width": self.width,
            "feature_dim": self.feature_dim,
        }

    def fit(self, images: Any = None, labels: Any = None) -> FeatureExtractor:
        """Prepare the feature network.

        Parameters
        ----------
        images : array_like of shape (N, C, H, W) or (N, H, W), optional
            Labelled images in [-1, 1] to train the default classifier on; ignored (and not
            needed) when ``model`` or ``weights`` is given.
        labels : array_like of shape (N,), optional
            Their integer class labels.

        Returns
        -------
        FeatureExtractor
            ``self``.

        Raises
        ------
        ValueError
            If both ``model`` and ``weights`` are given, ``weights`` lacks ``architecture``, the
            weights file does not exist or does not fit, or the default classifier is requested
            without ``images`` and ``labels``.
        """
        self.test_accuracy_: float | None = None
        self.cache_path_: Path | None = None
        self.loaded_from_cache_ = False
        self.fingerprint_: str | None = None
        self.image_shape_: tuple[int, ...] | None = None
        self.data_range_: tuple[float, float] | None = None
        if self.model is not None and self.weights is not None:
            raise ValueError("give either model or weights, not both")
        if self.model is not None:
            if not callable(self.model):
                raise TypeError(f"model must be an nn.Module or a callable; got {type(self.model)}")
            self.model_ = self.model
        elif self.weights is not None:
            self.model_ = self._load_weights()
        else:
            self.model_ = self._fit_default(images, labels)
        return self

    def _load_weights(self) -> nn.Module:
        path = Path(self.weights).expanduser()
        if self.architecture is None:
            raise ValueError("architecture is required with weights: the module to load them into")
        if not path.is_file():
            raise ValueError(f"weights file not found: {str(path)!r}")
        module = self.architecture
        if not isinstance(module, nn.Module):
            if not callable(module):
                raise TypeError(
                    f"architecture must be an nn.Module or a factory; got {type(module)}"
                )
            module = module()
            if not isinstance(module, nn.Module):
                raise TypeError(f"architecture() must return an nn.Module; got {type(module)}")
        state = load_file(str(path))
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"weights in {str(path)!r} do not fit architecture: {exc}") from exc
        return module.to(_resolve_device(self.device)).eval()

    def _fit_default(self, images: Any, labels: Any) -> LeNetClassifier:
        if images is None or labels is None:
            raise ValueError(
                "the default feature network is trained on the data: pass images and labels to "
                "fit(), or give a model or weights"
            )
        x = _as_images("images", images, min_size=LeNetClassifier.min_size)
        y = _as_labels("labels", labels, x.shape[0])
        self.image_shape_ = tuple(x.shape[1:])
        self.data_range_ = (float(x.min()), float(x.max()))
        training = self._training_args()
        fingerprint = _fingerprint(x, y, training)
        cache_dir = Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()
        stem = f"lenet-{fingerprint[:20]}"
        weights_path = cache_dir / f"{stem}.safetensors"
        meta_path = cache_dir / f"{stem}.json"
        self.fingerprint_ = fingerprint
        self.cache_path_ = weights_path
        device = _resolve_device(self.device)

        if weights_path.is_file() and meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text())
                if meta.get("format") == _CACHE_FORMAT and meta.get("fingerprint") == fingerprint:
                    model = LeNetClassifier(**meta["architecture"])
                    model.load_state_dict(load_file(str(weights_path)), strict=True)
                    self.test_accuracy_ = float(meta["test_accuracy"])
                    self.loaded_from_cache_ = True
                    if self.verbose:
                        print(f"loaded feature classifier from {weights_path}")
                    return model.to(device).eval()
            except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as exc:
                warnings.warn(
                    f"ignoring unreadable cached classifier {weights_path} ({exc}); retraining",
                    RuntimeWarning,
                    stacklevel=3,
                )

        started = time.perf_counter()
        model, accuracy = train_classifier(x, y, **training, verbose=self.verbose, device=device)
        seconds = time.perf_counter() - started
        self.test_accuracy_ = accuracy
        meta = {
            "format": _CACHE_FORMAT,
            "version": _CACHE_VERSION,
            "fingerprint": fingerprint,
            "architecture": model.get_config(),
            "training": training,
            "image_shape": list(x.shape[1:]),
            "n_images": int(x.shape[0]),
            "test_accuracy": accuracy,
            "train_seconds": round(seconds, 3),
            "torch_version": torch.__version__,
        }
        cache_dir.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        tmp = weights_path.with_name(f".{weights_path.name}.{os.getpid()}.tmp")
        save_file(state, str(tmp), metadata={"format": _CACHE_FORMAT, "fingerprint": fingerprint})
        os.replace(tmp, weights_path)
        _atomic_write_bytes(meta_path, json.dumps(meta, indent=2).encode())
        return model

    # -- extraction ------------------------------------------------------------------------

    def _check_like_training_data(self, x: torch.Tensor) -> None:
        """For the default classifier: ``x`` must have the size and range it was trained on.

        The LeNet pools adaptively, so it accepts any size, and any range, without complaint:
        features of images of another size or range are meaningless (an FID in the thousands).
        """
        shape = getattr(self, "image_shape_", None)
        if shape is None:
            return
        if tuple(x.shape[1:]) != shape:
            raise ValueError(
                f"images must have the (C, H, W) = {shape} the feature classifier was trained "
                f"on, got {tuple(x.shape[1:])}"
            )
        lo, hi = self.data_range_
        width = max(hi - lo, 1e-12)
        x_lo, x_hi = float(x.min()), float(x.max())
        if x_lo < lo - 0.05 * width or x_hi > hi + 0.05 * width:
            raise ValueError(
                f"images lie in [{x_lo:.3g}, {x_hi:.3g}] but the feature classifier was trained "
                f"on images in [{lo:.3g}, {hi:.3g}]: map them to that range first"
            )
        if x_hi - x_lo < 0.6 * width and x_lo > lo + 0.3 * width:
            warnings.warn(
                f"images lie in [{x_lo:.3g}, {x_hi:.3g}], a narrow part of the range "
                f"[{lo:.3g}, {hi:.3g}] the feature classifier was trained on: are they in "
                "another range (e.g. [0, 1] against [-1, 1])?",
                stacklevel=3,
            )

    def _inputs(
        self, images: Any, batch_size: int | None
    ) -> tuple[torch.Tensor, int, torch.device, torch.dtype]:
        """``images`` checked as ``(N, C, H, W)`` float32 (and against the training data, see
        :meth:`_check_like_training_data`), the batch size, and the network's device and dtype."""
        batch_size = self.batch_size if batch_size is None else batch_size
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
        x = _as_images("images", images)
        self._check_like_training_data(x)
        model = self.model_
        params = list(model.parameters()) if isinstance(model, nn.Module) else []
        device = params[0].device if params else torch.device("cpu")
        dtype = params[0].dtype if params and params[0].is_floating_point() else torch.float32
        return x, batch_size, device, dtype

    def extract(self, images: Any, batch_size: int | None = None) -> np.ndarray:
        """Feature vectors of images.

        Parameters
        ----------
        images : array_like or torch.Tensor of shape (N, C, H, W) or (N, H, W)
            Images in [-1, 1], the same size and channels the network expects.
        batch_size : int, optional
            Images per forward pass; default the constructor's ``batch_size``.

        Returns
        -------
        numpy.ndarray of shape (N, D)
            float64 features, computed without gradients with the network in eval mode (its
            previous mode is restored).

        Raises
        ------
        sklearn.exceptions.NotFittedError
            If the default classifier has not been fitted (a ``model`` or ``weights`` extractor
            fits itself on first use).
        ValueError
            If ``images`` has the wrong shape or the network does not return ``(N, D)``; for
            the default classifier also if they are not of the size it was trained on or lie
            outside the range of its training images (a warning if they fill only a narrow,
            high part of it, as images in ``[0, 1]`` against training images in ``[-1, 1]``).
        """
        if not hasattr(self, "model_"):
            if self.model is None and self.weights is None:
                raise NotFittedError(
                    "this FeatureExtractor trains its default network on data: call "
                    "fit(images, labels) before extract()"
                )
            self.fit()
        model = self.model_
        x, batch_size, device, dtype = self._inputs(images, batch_size)
        fn = model.features if hasattr(model, "features") and callable(model.features) else model
        was_training = model.training if isinstance(model, nn.Module) else False
        if isinstance(model, nn.Module):
            model.eval()
        chunks = []
        try:
            with torch.no_grad():
                for start in tqdm(
                    range(0, x.shape[0], batch_size), desc="features", disable=not self.verbose
                ):
                    out = fn(x[start : start + batch_size].to(device, dtype))
                    if not isinstance(out, torch.Tensor):
                        out = torch.as_tensor(np.asarray(out))
                    if out.ndim < 2 or out.shape[0] != min(batch_size, x.shape[0] - start):
                        raise ValueError(
                            "the feature network must return an (N, D) tensor; got shape "
                            f"{tuple(out.shape)} for a batch of "
                            f"{min(batch_size, x.shape[0] - start)} images"
                        )
                    chunks.append(out.reshape(out.shape[0], -1).to("cpu", torch.float64))
        finally:
            if isinstance(model, nn.Module):
                model.train(was_training)
        return torch.cat(chunks).numpy()

    def classify(self, images: Any, batch_size: int | None = None) -> np.ndarray:
        """Predicted classes of images, from a feature network that is a classifier.

        The network must have a ``features`` method (used by :meth:`extract`) and return class
        logits from its forward pass, as :class:`LeNetClassifier` does.

        Parameters
        ----------
        images : array_like or torch.Tensor of shape (N, C, H, W) or (N, H, W)
            Images in [-1, 1].
        batch_size : int, optional
            Images per forward pass; default the constructor's ``batch_size``.

        Returns
        -------
        numpy.ndarray of shape (N,)
            int64 argmax of the logits.

        Raises
        ------
        NotFittedError
            If the extractor holds no network yet and trains its default one on data: call
            :meth:`fit` with images and labels first.
        ValueError
            If the network has no ``features`` method (then its output is taken to be features,
            not logits), or its output is not of shape ``(batch, n_classes)``.
        """
        model = getattr(self, "model_", None)
        if model is None:
            if self.model is None and self.weights is None:
                raise NotFittedError(
                    "this FeatureExtractor trains its default network on data: call "
                    "fit(images, labels) before classify()"
                )
            self.fit()
            model = self.model_
        if not (hasattr(model, "features") and callable(model.features)):
            raise ValueError(
                "classify needs a classifier: a network with a features() method whose forward "
                "returns class logits (e.g. LeNetClassifier)"
            )
        x, batch_size, device, dtype = self._inputs(images, batch_size)
        was_training = model.training if isinstance(model, nn.Module) else False
        if isinstance(model, nn.Module):
            model.eval()
        out = []
        try:
            with torch.no_grad():
                for start in range(0, x.shape[0], batch_size):
                    batch = x[start : start + batch_size]
                    logits = model(batch.to(device, dtype))
                    if logits.ndim != 2 or logits.shape[0] != batch.shape[0]:
                        raise ValueError(
                            "classify needs logits of shape (batch, n_classes) from the "
                            f"network's forward pass; got {tuple(logits.shape)}"
                        )
                    out.append(logits.argmax(1).to("cpu", torch.int64))
        finally:
            if isinstance(model, nn.Module):
                model.train(was_training)
        return torch.cat(out).numpy()

    def __call__(self, images: Any) -> np.ndarray:
        """Alias of :meth:`extract`."""
        return self.extract(images)


# --------------------------------------------------------------------------------------------
# Digits convenience
# --------------------------------------------------------------------------------------------


def default_digits_extractor(
    size: int = 16,
    *,
    cache_dir: str | os.PathLike | None = None,
    epochs: int = 30,
    seed: int = 0,
    device: str | torch.device | None = None,
    verbose: int = 0,
) -> FeatureExtractor:
    """A fitted :class:`FeatureExtractor` whose LeNet is trained on the digits (cached).

    Parameters
    ----------
    size : int, default 16
        Image side the classifier is trained at (see
        :func:`conprediff.data.digits.load_digits_images`); features must then be extracted from
        images of this size.
    cache_dir : str or os.PathLike, optional
        Cache directory; default ``$CONPREDIFF_CACHE`` or ``~/.cache/conprediff``.
    epochs, seed : int
        Training arguments (see :func:`train_classifier`).
    device : str or torch.device, optional
        Default CUDA when available, else CPU.
    verbose : int, default 0
        Progress bar while training.

    Returns
    -------
    FeatureExtractor
        Fitted; ``test_accuracy_`` holds the held-out accuracy (20% stratified split) and
        ``extract`` returns ``(N, 128)`` features.
    """
    images, labels = load_digits_images(size)
    extractor = FeatureExtractor(
        cache_dir=cache_dir, epochs=epochs, seed=seed, device=device, verbose=verbose
    )
    return extractor.fit(images, labels)
