"""The feature network of the metrics as a component: :class:`FeatureExtractor`."""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError
from torch import nn
from tqdm.auto import tqdm

from ..._validation import check_device, check_int
from ...data.digits import load_digits_images
from .._checks import check_image_batch
from .cache import ClassifierCache, data_fingerprint, default_cache_dir
from .network import LeNetClassifier
from .training import check_training_data, train_classifier

__all__ = ["FeatureExtractor", "default_digits_extractor"]


def _device(device: str | torch.device | None) -> torch.device:
    return check_device("auto" if device is None else device)


def _build(architecture: Any) -> nn.Module:
    """``architecture`` if it is a module, else the module its factory returns."""
    if isinstance(architecture, nn.Module):
        return architecture
    if not callable(architecture):
        raise TypeError(f"architecture must be an nn.Module or a factory; got {type(architecture)}")
    module = architecture()
    if not isinstance(module, nn.Module):
        raise TypeError(f"architecture() must return an nn.Module; got {type(module)}")
    return module


def _features_out(out: Any, n: int) -> torch.Tensor:
    """A feature network's output for ``n`` images as float64 ``(n, D)`` on the CPU."""
    if not isinstance(out, torch.Tensor):
        out = torch.as_tensor(np.asarray(out))
    if out.ndim < 2 or out.shape[0] != n:
        raise ValueError(
            f"the feature network must return an (N, D) tensor; got shape {tuple(out.shape)} "
            f"for a batch of {n} images"
        )
    return out.reshape(n, -1).to("cpu", torch.float64)


def _classes_out(logits: torch.Tensor, n: int) -> torch.Tensor:
    """The argmax of a classifier's logits ``(n, n_classes)`` as int64 on the CPU."""
    if logits.ndim != 2 or logits.shape[0] != n:
        raise ValueError(
            "classify needs logits of shape (batch, n_classes) from the network's forward pass; "
            f"got {tuple(logits.shape)}"
        )
    return logits.argmax(1).to("cpu", torch.int64)


class FeatureExtractor(BaseEstimator):
    """Feature network for the metrics: a user module, a local weights file, or a trained LeNet.

    Follows scikit-learn's conventions (a ``BaseEstimator``: ``get_params``/``set_params``/
    ``clone`` work): the constructor only stores its arguments, :meth:`fit` prepares the network
    and returns ``self``, fitted state ends in ``_``. Exactly one source is used, in this order:

    1. ``model`` given: it is used as is. Its ``features(x)`` method is called when it has one,
       otherwise ``model(x)``; the output must be ``(N, D)`` (trailing singleton/extra dimensions
       are flattened, e.g. Inception's ``(N, 2048, 1, 1)``).
    2. ``weights`` given: a safetensors file loaded (``strict``) into ``architecture``, an
       ``nn.Module`` instance or a zero-argument callable building one.
    3. Otherwise: a :class:`~conprediff.evaluation.features.network.LeNetClassifier` trained by
       :func:`~conprediff.evaluation.features.training.train_classifier` on the images and labels
       passed to :meth:`fit`, cached under ``cache_dir`` by
       :class:`~conprediff.evaluation.features.cache.ClassifierCache` (safetensors plus JSON,
       keyed by the SHA-256 of the data and the training arguments). A later fit on the same
       data and arguments loads it instead of retraining.

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
        Training arguments of the default classifier (see ``train_classifier``); defaults 30, 0,
        0.2, True, 32, 128.
    batch_size : int, default 256
        Batch size of :meth:`extract` and :meth:`classify`.
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
    image_shape_, data_range_ : tuple or None
        ``(C, H, W)`` and ``(min, max)`` of the default classifier's training images: images to
        extract features from must match them.

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
        module = _build(self.architecture)
        try:
            module.load_state_dict(load_file(str(path)), strict=True)
        except RuntimeError as exc:
            raise ValueError(f"weights in {str(path)!r} do not fit architecture: {exc}") from exc
        return module.to(_device(self.device)).eval()

    def _fit_default(self, images: Any, labels: Any) -> LeNetClassifier:
        if images is None or labels is None:
            raise ValueError(
                "the default feature network is trained on the data: pass images and labels to "
                "fit(), or give a model or weights"
            )
        x, y = check_training_data(images, labels)
        self.image_shape_ = tuple(x.shape[1:])
        self.data_range_ = (float(x.min()), float(x.max()))
        training = self._training_args()
        directory = Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()
        cache = ClassifierCache(directory, data_fingerprint(x, y, training))
        self.fingerprint_ = cache.fingerprint
        self.cache_path_ = cache.weights_path
        device = _device(self.device)
        cached = cache.load()
        if cached is not None:
            model, meta = cached
            self.test_accuracy_ = float(meta["test_accuracy"])
            self.loaded_from_cache_ = True
            if self.verbose:
                print(f"loaded feature classifier from {cache.weights_path}")
            return model.to(device)
        started = time.perf_counter()
        model, accuracy = train_classifier(x, y, **training, verbose=self.verbose, device=device)
        self.test_accuracy_ = accuracy
        cache.save(
            model, training=training, image_shape=list(x.shape[1:]), n_images=int(x.shape[0]),
            test_accuracy=accuracy, train_seconds=round(time.perf_counter() - started, 3),
            torch_version=torch.__version__,
        )
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
                stacklevel=4,
            )

    def _fitted_model(self, method: str) -> Any:
        """The network, fitting a ``model`` or ``weights`` extractor on first use."""
        if not hasattr(self, "model_"):
            if self.model is None and self.weights is None:
                raise NotFittedError(
                    "this FeatureExtractor trains its default network on data: call "
                    f"fit(images, labels) before {method}()"
                )
            self.fit()
        return self.model_

    def _map_batches(
        self,
        images: Any,
        batch_size: int | None,
        forward: Callable[[torch.Tensor], Any],
        finish: Callable[[Any, int], torch.Tensor],
        desc: str | None = None,
    ) -> np.ndarray:
        """``finish(forward(batch), len(batch))`` over batches of the checked ``images``, without
        gradients and with the network in eval mode (its previous mode restored), concatenated.
        """
        batch_size = check_int(self.batch_size if batch_size is None else batch_size,
                               "batch_size", 1)
        x = check_image_batch(images, "images")
        self._check_like_training_data(x)
        model = self.model_
        params = list(model.parameters()) if isinstance(model, nn.Module) else []
        device = params[0].device if params else torch.device("cpu")
        dtype = params[0].dtype if params and params[0].is_floating_point() else torch.float32
        was_training = model.training if isinstance(model, nn.Module) else False
        if isinstance(model, nn.Module):
            model.eval()
        out = []
        starts = range(0, x.shape[0], batch_size)
        try:
            with torch.no_grad():
                for start in tqdm(starts, desc=desc, disable=desc is None or not self.verbose):
                    batch = x[start : start + batch_size]
                    out.append(finish(forward(batch.to(device, dtype)), batch.shape[0]))
        finally:
            if isinstance(model, nn.Module):
                model.train(was_training)
        return torch.cat(out).numpy()

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
        model = self._fitted_model("extract")
        fn = model.features if callable(getattr(model, "features", None)) else model
        return self._map_batches(images, batch_size, fn, _features_out, desc="features")

    def classify(self, images: Any, batch_size: int | None = None) -> np.ndarray:
        """Predicted classes of images, from a feature network that is a classifier.

        The network must have a ``features`` method (used by :meth:`extract`) and return class
        logits from its forward pass, as ``LeNetClassifier`` does.

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
        model = self._fitted_model("classify")
        if not callable(getattr(model, "features", None)):
            raise ValueError(
                "classify needs a classifier: a network with a features() method whose forward "
                "returns class logits (e.g. LeNetClassifier)"
            )
        return self._map_batches(images, batch_size, model, _classes_out)

    def __call__(self, images: Any) -> np.ndarray:
        """Alias of :meth:`extract`."""
        return self.extract(images)


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
        Training arguments (see ``train_classifier``); defaults 30 and 0.
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
