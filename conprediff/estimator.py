"""``ConPreDiffModel``: a diffusion model as a scikit-learn style estimator."""

from __future__ import annotations

import copy
import json
import math
import numbers
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, clone
from sklearn.utils.validation import check_is_fitted
from torch import nn

from .backbones.unet import UNet
from .diffusion.gaussian import check_prediction, sample_loop
from .schedules import NoiseSchedule, make_betas
from .serialization import from_jsonable, to_jsonable
from .training import distributed
from .training.checkpoint import read_checkpoint, read_latest_checkpoint
from .training.data import (
    BatchStream,
    as_loader,
    check_images,
    check_in_range,
    check_labels,
    from_unit,
    infer_data_range,
    split_batch,
    to_unit,
)
from .training.loop import DiffusionObjective, TrainConfig, Trainer

__all__ = ["ConPreDiffModel", "resolve_device"]

_FORMAT_VERSION = 1
_MAX_SEED = 2**63 - 16  # fit seeds its generators with seed + 0..4 (torch takes < 2**64)


def resolve_device(device: str | torch.device) -> torch.device:
    """``'auto'`` -> CUDA when available, else CPU; anything else -> ``torch.device(device)``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}"
        ) from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available")
    return dev


def _random_seed(dist_info: distributed.DistInfo) -> int:
    """A fresh seed, the same on every rank (rank 0's, broadcast)."""
    seed = int(np.random.SeedSequence().entropy % 2**31)
    if dist_info.enabled:
        import torch.distributed as dist

        box = [seed]
        dist.broadcast_object_list(box, src=0)
        seed = int(box[0])
    return seed


def _int_arg(value: Any, name: str, minimum: int, maximum: int | None = None) -> int:
    """``value`` as an ``int`` (any integral type, not bool) in ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be an integer {bounds}, got {value!r}")
    return int(value)


def _seed_arg(seed: Any) -> int | None:
    """A sampling seed: None or an integer torch accepts (``[-2**63, 2**64)``)."""
    return None if seed is None else _int_arg(seed, "seed", -(2**63), 2**64 - 1)


def _copy_config(obj: Any) -> Any:
    """An independent copy of a component's configuration (sklearn ``clone`` where it applies)."""
    if obj is None:
        return None
    return clone(obj) if hasattr(obj, "get_params") else copy.deepcopy(obj)


def _num_classes(backbone: Any) -> int | None:
    """The backbone's ``num_classes`` (class-conditional when set), checked; None otherwise."""
    k = getattr(backbone, "num_classes", None)
    if k is None:
        return None
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"backbone num_classes must be None or an integer >= 1, got {k!r}")
    return int(k)


def _guided(net: nn.Module, cond: torch.Tensor | None, null: int | None, scale: float):
    r"""``denoise(x, t) -> out`` with classifier-free guidance (Ho & Salimans 2022).

    ``cond`` ``(B,)`` labels, or None: the null label ``null`` for a class-conditional backbone,
    no condition at all for an unconditional one (``null`` None). With a scale
    :math:`w`, the output is :math:`\hat\epsilon_\varnothing + w (\hat\epsilon_c -
    \hat\epsilon_\varnothing)`, the null label being ``null`` (= ``num_classes``): one
    forward pass of a doubled batch; ``w = 1`` is the plain conditional model (one pass of the
    batch), ``w = 0`` the unconditional one.
    """
    if cond is None:
        if null is None:  # an unconditional backbone
            return lambda x, t: net(x, t)[0]
        return lambda x, t: net(x, t, torch.full_like(t, null))[0]  # the null label
    if scale == 1.0:
        return lambda x, t: net(x, t, cond.to(x.device))[0]
    uncond = torch.full_like(cond, null)
    if scale == 0.0:
        return lambda x, t: net(x, t, uncond.to(x.device))[0]
    both = torch.cat([cond, uncond])

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = net(torch.cat([x, x]), torch.cat([t, t]), both.to(x.device))[0]
        c, u = out.chunk(2)
        return u + scale * (c - u)

    return denoise


def _default_backbone(channels: int, height: int, width: int) -> UNet:
    levels = 3 if height % 4 == 0 and width % 4 == 0 else 2 if height % 2 == 0 == width % 2 else 1
    return UNet(in_channels=channels, base_channels=32, channel_mults=(1, 2, 2)[:levels])


class ConPreDiffModel(BaseEstimator):
    r"""A Gaussian diffusion model, optionally trained with neighbourhood context prediction.

    The training objective is

    .. math::

        \mathcal{L} = \mathcal{L}_{\mathrm{point}}(t) + \lambda_t \cdot \frac{1}{N}
        \sum_i W_2^2\big(\psi_n(h_i, t),\ P_{N_i^s}\big)

    where the second term is present only when ``context`` is given. Sampling never uses the
    context decoder, so a model with ``context=None`` is the plain baseline of the same backbone:
    every comparison is one parameter apart.

    The constructor only stores its arguments (scikit-learn convention); they are checked in
    :meth:`fit`. Fitted state lives in attributes ending in ``_``.

    Parameters
    ----------
    backbone : nn.Module, optional
        A denoiser following :mod:`conprediff.backbones.protocol`. ``None`` builds a
        :class:`~conprediff.backbones.unet.UNet` sized for the data. A backbone with ``get_params``
        (every conprediff backbone) is rebuilt from its parameters at ``fit`` with ``seed``, as
        :func:`sklearn.base.clone` would; ``in_channels=None`` is filled in from the data. Any
        other module is deep-copied, weights included. ``fit`` never modifies the object passed.
    context : ContextPrediction, optional
        Context prediction (:class:`~conprediff.context.loss.ContextPrediction`); ``None``
        trains the plain baseline.
    schedule : {'cosine', 'linear', 'sigmoid'}
        Noise schedule.
    timesteps : int
        Number of diffusion steps ``T``.
    prediction : {'eps', 'v', 'x0'}
        What the backbone predicts.
    min_snr_gamma : float, optional
        Min-SNR-γ loss weighting (Hang et al. 2023); ``None`` for the plain MSE.
    lr : float
        AdamW learning rate.
    weight_decay : float
        AdamW weight decay.
    batch_size : int
        Batch size when ``fit`` is given a tensor, array or Dataset (a DataLoader brings its own).
    max_steps : int
        Optimisation steps; ignored when ``epochs`` is set.
    epochs : int, optional
        Passes over the data (needs a sized DataLoader, tensor, array or Dataset).
    ema_decay : float, optional
        Decay of the exponential moving average of the backbone's weights (with warm-up);
        ``sample`` uses the average by default. ``None`` disables it.
    precision : {'fp32', 'bf16', 'fp16'}
        Autocast precision of the forward pass (a gradient scaler with ``'fp16'``); losses and
        the W2 metric are computed in float32.
    compile : bool
        ``torch.compile`` the backbone for training.
    grad_accum_steps : int
        Micro-batches per optimisation step (the effective batch is ``batch_size`` times this).
    grad_clip : float, optional
        Clip the global gradient norm (backbone and decoder together) to this value.
    lr_warmup_steps : int
        Linear learning-rate warm-up.
    lr_schedule : {'constant', 'cosine', 'linear'}
        Learning-rate decay after warm-up (to 0 at the last step for cosine and linear).
    on_nonfinite : {'raise', 'skip'}
        A non-finite loss stops training with a ``FloatingPointError`` naming the step and the
        loss terms, before any weight, EMA or checkpoint is touched; ``'skip'`` drops that step
        instead (recorded in ``loss_history_['skipped']``).
    log_every : int
        Steps between calls of ``fit``'s ``callback``.
    checkpoint_dir : str or Path, optional
        Folder for training checkpoints (safetensors, written atomically by rank 0).
    checkpoint_every : int, optional
        Steps between checkpoints, and one more at the last step when it is not a multiple;
        ``None`` writes none.
    keep_checkpoints : int
        How many of the newest checkpoints to keep.
    data_range : 'auto' or tuple of float
        Range ``(lo, hi)`` of the data, mapped onto ``[-1, 1]`` for training; samples come back in
        it. ``'auto'`` takes the smallest of ``[0, 1]``, ``[-1, 1]``, ``[0, 255]`` holding the data
        (the whole tensor, or a DataLoader's first batch), else the data's own min and max. A
        given range must hold that data (up to 2 % of its width), else ``fit`` raises.
    device : str
        ``'auto'`` (CUDA when available, else CPU), ``'cpu'``, ``'cuda'``, ``'cuda:N'``.
    seed : int, optional
        Seeds initialisation, data order, timesteps and noise (each from its own generator); an
        integer in ``[0, 2**63 - 16]`` (numpy integers too). ``None`` draws one (``seed_``).
    verbose : int
        ``0`` silent; ``1`` progress bars.
    label_dropout : float
        With a class-conditional backbone (one with ``num_classes``, e.g.
        ``UNet(num_classes=10)``): the probability that a training image's label is replaced by
        the null label, so that one network learns the conditional and the unconditional model
        and :meth:`sample` can use classifier-free guidance (Ho & Salimans 2022); in ``[0, 1)``.
        Ignored by an unconditional backbone.

    Attributes
    ----------
    backbone_ : nn.Module
        The trained backbone.
    ema_backbone_ : nn.Module or None
        Its exponential moving average.
    context_head_ : nn.Module or None
        The trained context decoder (dropped at inference; ``None`` after loading an
        inference-only file).
    image_shape_ : tuple of int
        ``(C, H, W)`` of the data.
    data_range_ : tuple of float
        ``(lo, hi)`` used.
    n_steps_ : int
        Optimisation steps taken.
    loss_history_ : dict of list of float
        Per step: ``'loss'`` (total), ``'point'``, and with context prediction ``'context'``
        (the λ_t-weighted term) and ``'w2'`` (mean W2² before weighting).
    device_ : torch.device
    seed_ : int
        The seed used (drawn at random when ``seed=None``; stored in checkpoints).
    context_ : ContextPrediction or None
        A copy of ``context`` as it was at ``fit`` (what :meth:`save` writes, so a file stays
        loadable after ``set_params(context__...)``).
    timesteps_, schedule_, prediction_, label_dropout_
        What the model was trained with; ``sample`` and ``inpaint`` use these, not parameters
        changed after ``fit``.
    n_items_seen_ : int or None
        Number of images in the data, when it has a length.
    world_size_ : int
        Number of processes that trained the model (1 without DDP).

    Examples
    --------
    >>> from conprediff import ConPreDiffModel, ContextPrediction, UNet
    >>> from conprediff.data import load_digits_images
    >>> images, _ = load_digits_images(size=16)
    >>> model = ConPreDiffModel(backbone=UNet(base_channels=32, channel_mults=(1, 2)),
    ...                         context=ContextPrediction(strides=(1, 2)), max_steps=2000)
    >>> model.fit(images)  # doctest: +SKIP
    >>> samples = model.sample(64)  # doctest: +SKIP
    """

    def __init__(
        self,
        backbone: nn.Module | None = None,
        context: Any = None,
        schedule: str = "cosine",
        timesteps: int = 1000,
        prediction: str = "eps",
        min_snr_gamma: float | None = None,
        lr: float = 2e-4,
        weight_decay: float = 0.0,
        batch_size: int = 64,
        max_steps: int = 1000,
        epochs: int | None = None,
        ema_decay: float | None = 0.999,
        precision: str = "fp32",
        compile: bool = False,
        grad_accum_steps: int = 1,
        grad_clip: float | None = None,
        lr_warmup_steps: int = 0,
        lr_schedule: str = "constant",
        on_nonfinite: str = "raise",
        log_every: int = 50,
        checkpoint_dir: str | Path | None = None,
        checkpoint_every: int | None = None,
        keep_checkpoints: int = 3,
        data_range: str | tuple[float, float] = "auto",
        device: str = "auto",
        seed: int | None = None,
        verbose: int = 1,
        label_dropout: float = 0.1,
    ):
        self.backbone = backbone
        self.context = context
        self.schedule = schedule
        self.timesteps = timesteps
        self.prediction = prediction
        self.min_snr_gamma = min_snr_gamma
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_steps = max_steps
        self.epochs = epochs
        self.ema_decay = ema_decay
        self.precision = precision
        self.compile = compile
        self.grad_accum_steps = grad_accum_steps
        self.grad_clip = grad_clip
        self.lr_warmup_steps = lr_warmup_steps
        self.lr_schedule = lr_schedule
        self.on_nonfinite = on_nonfinite
        self.log_every = log_every
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every
        self.keep_checkpoints = keep_checkpoints
        self.data_range = data_range
        self.device = device
        self.seed = seed
        self.verbose = verbose
        self.label_dropout = label_dropout

    # ------------------------------------------------------------------ validation
    def _check_params(self) -> dict[str, Any]:
        """Validate the parameters; return the numeric ones as plain ``int``/``float``."""
        make_betas(self.schedule, self.timesteps)  # validates schedule and timesteps
        check_prediction(self.prediction)
        out: dict[str, Any] = {}

        def integer(name: str, minimum: int, optional: bool = False) -> None:
            value = getattr(self, name)
            if value is None and optional:
                out[name] = None
                return
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"{name} must be an integer, got {value!r}")
            if value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
            out[name] = int(value)

        def real(
            name: str,
            low: float,
            high: float | None = None,
            *,
            open_low: bool = False,
            open_high: bool = True,
            optional: bool = False,
        ) -> None:
            value = getattr(self, name)
            if value is None and optional:
                out[name] = None
                return
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"{name} must be a number, got {value!r}")
            bad_low = value <= low if open_low else value < low
            bad_high = high is not None and (value >= high if open_high else value > high)
            if bad_low or bad_high or not math.isfinite(value):
                lo_b = "(" if open_low else "["
                hi_b = ")" if open_high or high is None else "]"
                raise ValueError(
                    f"{name} must be in {lo_b}{low}, {'inf' if high is None else high}{hi_b}, "
                    f"got {value!r}"
                )
            out[name] = float(value)

        integer("batch_size", 1)
        integer("max_steps", 1)
        integer("epochs", 1, optional=True)
        integer("grad_accum_steps", 1)
        integer("log_every", 1)
        integer("keep_checkpoints", 1)
        integer("lr_warmup_steps", 0)
        integer("checkpoint_every", 1, optional=True)
        integer("verbose", 0)
        integer("seed", 0, optional=True)
        if out["seed"] is not None and out["seed"] > _MAX_SEED:
            raise ValueError(f"seed must be an integer in [0, {_MAX_SEED}], got {self.seed!r}")
        real("lr", 0.0, open_low=True)
        real("weight_decay", 0.0)
        real("min_snr_gamma", 0.0, open_low=True, optional=True)
        real("label_dropout", 0.0, 1.0)
        real("ema_decay", 0.0, 1.0, optional=True)
        real("grad_clip", 0.0, open_low=True, optional=True)
        if not isinstance(self.compile, bool):
            raise TypeError(f"compile must be True or False, got {self.compile!r}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be 'fp32', 'bf16' or 'fp16', got {self.precision!r}")
        if self.lr_schedule not in ("constant", "cosine", "linear"):
            raise ValueError(
                f"lr_schedule must be 'constant', 'cosine' or 'linear', got {self.lr_schedule!r}"
            )
        if self.on_nonfinite not in ("raise", "skip"):
            raise ValueError(f"on_nonfinite must be 'raise' or 'skip', got {self.on_nonfinite!r}")
        if self.checkpoint_every is not None and self.checkpoint_dir is None:
            raise ValueError("checkpoint_every needs checkpoint_dir to be set")
        if self.data_range != "auto":
            lo_hi = self.data_range
            if not (isinstance(lo_hi, tuple | list) and len(lo_hi) == 2 and lo_hi[0] < lo_hi[1]):
                raise ValueError(
                    f"data_range must be 'auto' or (lo, hi) with lo < hi, got {lo_hi!r}"
                )
        if self.backbone is not None and not isinstance(self.backbone, nn.Module):
            raise TypeError(
                f"backbone must be a torch.nn.Module or None, got {type(self.backbone).__name__}"
            )
        if self.context is not None and not hasattr(self.context, "build"):
            raise TypeError(
                "context must be a ContextPrediction (an object with build()) or None, got "
                f"{type(self.context).__name__}"
            )
        return out

    # ------------------------------------------------------------------ building
    def _build_backbone(self, shape: tuple[int, int, int]) -> nn.Module:
        C, H, W = shape
        template = self.backbone
        if template is None:
            return _default_backbone(C, H, W)
        if hasattr(template, "get_params"):
            params = dict(template.get_params(deep=False))
            if params.get("in_channels", C) is None:
                params["in_channels"] = C
            net = type(template)(**params)
        else:
            net = copy.deepcopy(template)
        if getattr(net, "in_channels", C) != C:
            raise ValueError(
                f"backbone in_channels={net.in_channels} does not match the data's {C} channels"
            )
        if not hasattr(net, "feature_channels"):
            raise TypeError(
                "backbone must expose feature_channels (see conprediff.backbones.protocol)"
            )
        return net

    def _schedule(self) -> NoiseSchedule:
        return NoiseSchedule(self.schedule, self.timesteps)

    def _fitted_schedule(self) -> NoiseSchedule:
        """The schedule the model was trained with (parameters changed after fit do not count)."""
        return NoiseSchedule(self.schedule_, self.timesteps_)

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        data: Any,
        y: Any = None,
        *,
        resume: str | Path | None = None,
        callback: Callable[[dict[str, float]], None] | None = None,
    ) -> ConPreDiffModel:
        """Train the model.

        Parameters
        ----------
        data : DataLoader, Dataset, torch.Tensor or numpy.ndarray
            Images ``(N, C, H, W)``; a DataLoader or Dataset may yield image tensors or
            ``(images, labels)`` tuples.
        y : array-like, optional
            ``(N,)`` integer class labels in ``[0, num_classes)`` beside a tensor or array (a
            DataLoader or Dataset yields ``(images, labels)`` instead). Required when the
            backbone is class-conditional (has ``num_classes``, e.g. ``UNet(num_classes=10)``);
            an unconditional backbone ignores labels.
        resume : {'latest'} or path, optional
            Continue a run from a checkpoint: ``'latest'`` takes the newest readable checkpoint
            in ``checkpoint_dir`` (falling back to an older one if the newest is damaged, and
            starting afresh with a warning if there is none); a path takes that file. The model
            must be constructed with the same parameters and given the same data; the run then
            continues exactly as if it had not stopped.
        callback : callable, optional
            Called on rank 0 every ``log_every`` steps with a dict: ``step``, each loss term,
            ``lr`` and ``images_per_second``.

        Returns
        -------
        ConPreDiffModel
            ``self``, fitted.

        Raises
        ------
        ValueError
            On images that are not 4-dimensional, channels-last (square ``(N, H, W, C)`` with
            C in 1, 3, 4), empty, non-finite, of varying size or outside a given ``data_range``,
            and on invalid parameters (the message names the parameter).
        TypeError
            On data that is not images (e.g. a Dataset yielding PIL images) and on parameters
            of the wrong type.
        FloatingPointError
            On a non-finite loss with ``on_nonfinite='raise'`` (naming the step and the terms).
        """
        p = self._check_params()
        # the configuration the decoder is built with, kept for save (set_params may change
        # self.context after fit)
        context_config = _copy_config(self.context)
        device = resolve_device(self.device)
        dist_info, device = distributed.setup(device)
        resume_state = self._read_resume_state(resume) if resume is not None else None
        if resume_state is not None and "seed" in resume_state:
            seed = int(resume_state["seed"])  # a seed=None run resumes with the seed it drew
            if p["seed"] is not None and p["seed"] != seed:
                raise ValueError(
                    f"seed={p['seed']} differs from the checkpoint's seed {seed}: resume with "
                    "the parameters the run was started with"
                )
        else:
            seed = p["seed"] if p["seed"] is not None else _random_seed(dist_info)
        num_classes = _num_classes(self.backbone)
        if num_classes is not None and isinstance(data, torch.Tensor | np.ndarray):
            check_labels(y, num_classes, len(data), "labels y")
        loader, n_items = as_loader(
            data, y, p["batch_size"], seed, dist_info.world_size, dist_info.rank
        )
        stream = BatchStream(loader)
        if isinstance(data, torch.Tensor | np.ndarray):
            first = check_images(data, "data")
        else:
            try:
                # creating an iterator draws the loader's base seed (and a user sampler may
                # shuffle) from the global generator: peek without touching it. A loader with
                # its own generator= still advances that generator here, and persistent workers
                # started by the peek keep the seeds it gave them.
                with torch.random.fork_rng(devices=[]):
                    first, labels = split_batch(next(iter(loader)))
                first = check_images(first, "data")
                if num_classes is not None:
                    check_labels(labels, num_classes, len(first), "data's labels")
            except StopIteration:
                raise ValueError("data is empty: it yielded no batch") from None
            except RuntimeError as err:  # default_collate on images of different sizes
                if "stack expects each tensor to be equal size" in str(err):
                    raise ValueError(f"data holds images of varying size: {err}") from err
                raise
        shape = tuple(first.shape[1:])
        if self.data_range == "auto":
            data_range = infer_data_range(first)
        else:
            data_range = tuple(map(float, self.data_range))
            check_in_range(first, data_range, "data")

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            backbone = self._build_backbone(shape).to(device)
            head = None
            if self.context is not None:
                torch.manual_seed(seed + 1)  # separate stream: the backbone init is unchanged
                head = context_config.build(backbone.feature_channels, shape[0]).to(device)

        n_steps = p["max_steps"]
        if p["epochs"] is not None:
            try:
                n_steps = max(1, -(-p["epochs"] * len(loader) // p["grad_accum_steps"]))
            except TypeError:
                raise ValueError("epochs needs data of known length; use max_steps") from None
        config = TrainConfig(
            schedule=self._schedule(),
            prediction=self.prediction,
            data_range=data_range,
            image_shape=shape,
            device=device,
            lr=p["lr"],
            max_steps=n_steps,
            min_snr_gamma=p["min_snr_gamma"],
            precision=self.precision,
            grad_accum_steps=p["grad_accum_steps"],
            grad_clip=p["grad_clip"],
            lr_warmup_steps=p["lr_warmup_steps"],
            lr_schedule=self.lr_schedule,
            on_nonfinite=self.on_nonfinite,
            log_every=p["log_every"],
            checkpoint_dir=None if self.checkpoint_dir is None else str(self.checkpoint_dir),
            checkpoint_every=p["checkpoint_every"],
            keep_checkpoints=p["keep_checkpoints"],
            channels_last=device.type == "cuda",
            num_classes=num_classes,
            label_dropout=p["label_dropout"],
        )
        trainer = Trainer(
            DiffusionObjective(backbone, head),
            stream,
            config,
            dist_info,
            seed,
            ema_decay=p["ema_decay"],
            weight_decay=p["weight_decay"],
            compile=self.compile,
        )
        if resume_state is not None:
            self._check_resume(resume_state, shape, data_range)
        rng_devices = [device] if device.type == "cuda" else []
        try:
            # Training draws from the global generators too (dropout, a user DataLoader's
            # shuffle): seed them, and leave the caller's random state as it was.
            with torch.random.fork_rng(devices=rng_devices):
                torch.manual_seed(seed + 4)
                if resume_state is not None:
                    trainer.load_state_dict(resume_state)
                trainer.run(callback=callback, progress=self.verbose > 0)
        except RuntimeError as err:
            if "stack expects each tensor to be equal size" in str(err):
                raise ValueError(f"data holds images of varying size: {err}") from err
            raise

        to_plain = {"memory_format": torch.contiguous_format}
        self.backbone_ = backbone.to(**to_plain).eval()
        self.ema_backbone_ = trainer.ema.module.to(**to_plain) if trainer.ema else None
        self.context_head_ = head
        self.context_ = context_config
        self.image_shape_ = shape
        self.data_range_ = data_range
        self.n_steps_ = trainer.state.step
        self.loss_history_ = trainer.state.history
        self.device_ = device
        self.seed_ = seed
        self.n_items_seen_ = n_items
        self.world_size_ = dist_info.world_size
        self.timesteps_ = int(self.timesteps)
        self.schedule_ = self.schedule
        self.prediction_ = self.prediction
        self.label_dropout_ = p["label_dropout"]
        return self

    def _read_resume_state(self, resume: str | Path) -> dict[str, Any] | None:
        if resume == "latest":
            if self.checkpoint_dir is None:
                raise ValueError("resume='latest' needs checkpoint_dir to be set")
            try:
                return read_latest_checkpoint(self.checkpoint_dir)[1]
            except FileNotFoundError:
                warnings.warn(
                    f"resume='latest': no checkpoint in {str(self.checkpoint_dir)!r}; "
                    "starting from scratch",
                    stacklevel=3,
                )
                return None
        return read_checkpoint(resume)

    def _check_resume(self, state: dict[str, Any], shape: tuple, data_range: tuple) -> None:
        run = state.get("run", {})
        for name, now in (("image_shape", list(shape)), ("data_range", list(data_range))):
            if name in run and list(run[name]) != now:
                raise ValueError(
                    f"the checkpoint was written for {name} {run[name]}, this data gives {now}"
                )
        has_ctx = any(k.startswith("context_head.") for k in state["objective"])
        if has_ctx != (self.context is not None):
            raise ValueError(
                "the checkpoint was written "
                + ("with" if has_ctx else "without")
                + " context prediction, but context is "
                + ("None" if self.context is None else "set")
                + ": resume with the parameters the run was started with"
            )

    # ------------------------------------------------------------------ sampling
    def _denoiser(self, use_ema: bool) -> nn.Module:
        check_is_fitted(self, "backbone_")
        if use_ema and self.ema_backbone_ is not None:
            return self.ema_backbone_
        return self.backbone_

    def _check_steps(self, steps: int | None, default: int) -> int:
        """``steps``, or ``min(default, timesteps_)`` when None; must lie in [1, timesteps_]."""
        if steps is None:
            return min(default, self.timesteps_)
        return _int_arg(steps, "steps", 1, self.timesteps_)

    def _generator(self, seed: int | None) -> torch.Generator:
        """A generator on the model's device, seeded with ``seed`` (a random seed when None)."""
        gen = torch.Generator(self.device_)
        gen.manual_seed(seed if seed is not None else int(torch.randint(2**62, ()).item()))
        return gen

    def _condition(
        self, net: nn.Module, labels: Any, n: int, guidance_scale: Any
    ) -> tuple[torch.Tensor | None, float, int | None]:
        """``(labels (n,) or None, guidance scale, null label)``, checked against the model."""
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, numbers.Real):
            raise TypeError(f"guidance_scale must be a number, got {guidance_scale!r}")
        scale = float(guidance_scale)
        if not math.isfinite(scale):
            raise ValueError(f"guidance_scale must be finite, got {guidance_scale!r}")
        num_classes = _num_classes(net)
        if num_classes is not None and (labels is None or scale != 1.0) and not getattr(
            self, "label_dropout_", None
        ):
            warnings.warn(
                "the model was trained with label_dropout=0, so its null label (the "
                "unconditional model, used without labels and by guidance) was never trained",
                stacklevel=3,
            )
        if labels is None:
            if scale != 1.0:
                raise ValueError("guidance_scale needs labels: pass labels=...")
            return None, scale, num_classes
        if num_classes is None:
            raise ValueError(
                "labels were given but the model is unconditional: train a class-conditional "
                "backbone (e.g. UNet(num_classes=10)) with fit(images, y)"
            )
        return check_labels(labels, num_classes, n, "labels"), scale, num_classes

    @torch.no_grad()
    def sample(
        self,
        n: int,
        steps: int | None = None,
        sampler: str = "ddim",
        eta: float = 0.0,
        seed: int | None = None,
        batch_size: int = 256,
        use_ema: bool = True,
        labels: Any = None,
        guidance_scale: float = 1.0,
    ) -> torch.Tensor:
        r"""Generate images. The context decoder is not used.

        Parameters
        ----------
        n : int
            Number of images.
        steps : int, optional
            Reverse steps (at most ``timesteps``), respaced evenly; default 50, or ``timesteps``
            if that is smaller.
        sampler : {'ddim', 'ddpm'}
            Deterministic DDIM (with ``eta``) or ancestral DDPM.
        eta : float
            DDIM noise scale (0 = deterministic); with ``sampler='ddpm'`` it must stay 0.
        seed : int, optional
            Seeds all sampling noise: the same seed and ``batch_size`` give the same images (the
            noise is drawn batch after batch, so another ``batch_size`` gives other images).
        batch_size : int
            Images generated per forward pass (twice as many go through the backbone with a
            ``guidance_scale`` other than 0 and 1).
        use_ema : bool
            Use the EMA weights when the model has them.
        labels : int or array-like of int, optional
            Class-conditional models only: the class of every image (one integer) or of each
            (``(n,)``), in ``[0, num_classes)``. None samples the unconditional model (the null
            label).
        guidance_scale : float
            Classifier-free guidance scale :math:`w` with ``labels``: the denoiser's output is
            :math:`\hat\epsilon_\varnothing + w (\hat\epsilon_c - \hat\epsilon_\varnothing)`.
            1 is the conditional model (one forward pass per step), 0 the unconditional one;
            values above 1 trade diversity for class fidelity and cost two passes per step.

        Returns
        -------
        torch.Tensor
            ``(n, C, H, W)`` float32 on the CPU, in the data's range.
        """
        net = self._denoiser(use_ema)
        n = _int_arg(n, "n", 1)
        cond, scale, null = self._condition(net, labels, n, guidance_scale)
        steps = self._check_steps(steps, default=50)
        batch_size = _int_arg(batch_size, "batch_size", 1)
        seed = _seed_arg(seed)
        if sampler not in ("ddim", "ddpm"):
            raise ValueError(f"sampler must be 'ddim' or 'ddpm', got {sampler!r}")
        if isinstance(eta, bool) or not isinstance(eta, numbers.Real):
            raise TypeError(f"eta must be a number, got {eta!r}")
        if not (eta >= 0 and math.isfinite(eta)):
            raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
        if sampler == "ddpm" and eta != 0:
            raise ValueError(
                f"eta applies to sampler='ddim' only (DDPM steps are ancestral), got eta={eta!r}"
            )
        eta = float(eta)
        device = self.device_
        gen = self._generator(seed)
        schedule = self._fitted_schedule()
        out = []
        for start in range(0, n, batch_size):
            b = min(batch_size, n - start)
            x = sample_loop(
                _guided(net, None if cond is None else cond[start : start + b], null, scale),
                (b, *self.image_shape_),
                schedule,
                self.prediction_,
                steps,
                sampler,
                eta,
                gen,
                device,
                progress=self.verbose > 0,
            )
            out.append(from_unit(x, self.data_range_).cpu())
        return torch.cat(out)

    @torch.no_grad()
    def inpaint(
        self,
        img: Any,
        mask: Any,
        steps: int | None = None,
        jump_length: int = 10,
        jump_n_sample: int = 10,
        seed: int | None = None,
        sampler: str = "ddpm",
        use_ema: bool = True,
        labels: Any = None,
        guidance_scale: float = 1.0,
    ) -> torch.Tensor:
        """Fill the missing pixels of images with RePaint resampling (Lugmayr et al. 2022).

        At each reverse step the known region is replaced by a forward-noised copy of the input;
        every ``jump_length`` steps the chain jumps back and is resampled ``jump_n_sample`` times.
        The context decoder is not used.

        Parameters
        ----------
        img : torch.Tensor or numpy.ndarray
            One image ``(C, H, W)`` or a batch ``(B, C, H, W)``, in the data's range, with the
            fitted model's channels and size.
        mask : torch.Tensor, numpy.ndarray or PIL.Image.Image
            True/1 (white in a PIL image) where pixels are **missing** and must be generated,
            False/0 where they are kept; ``(H, W)``, ``(1, H, W)``, ``(C, H, W)``,
            ``(B, 1, H, W)`` or ``(B, C, H, W)`` (``B = 1`` for one image). A 3-dimensional mask
            is always per channel: give one mask per image as ``(B, 1, H, W)``
            (``masks[:, None]``), not ``(B, H, W)``.
        steps : int, optional
            Reverse steps on a respaced grid; default 250 (RePaint's), or ``timesteps`` if that
            is smaller.
        jump_length, jump_n_sample : int
            RePaint's jump schedule; ``jump_n_sample=1`` is plain replacement, no resampling.
        seed : int, optional
            Seeds all noise.
        sampler : {'ddpm', 'ddim'}
            Ancestral steps (RePaint), or deterministic DDIM steps (the fast variant).
        use_ema : bool
            Use the EMA weights when the model has them.
        labels : int or array-like of int, optional
            Class-conditional models only: the class of every image or of each (``(B,)``).
        guidance_scale : float
            Classifier-free guidance scale, as in :meth:`sample`.

        Returns
        -------
        torch.Tensor
            Same shape as ``img``, float32 on the CPU. Known pixels are exactly the input's. An
            all-known mask returns the input; an all-missing mask is plain (RePaint) sampling.
        """
        from .inpainting import as_mask, repaint

        net = self._denoiser(use_ema)
        single = getattr(img, "ndim", None) == 3
        if isinstance(img, torch.Tensor | np.ndarray) and img.ndim not in (3, 4):
            hint = " (add a channel axis: img[None])" if img.ndim == 2 else ""
            raise ValueError(
                "img must be one image (C, H, W) or a batch (B, C, H, W), got shape "
                f"{tuple(img.shape)}{hint}"
            )
        images = check_images(img[None] if single else img, "img")
        C, H, W = self.image_shape_
        if tuple(images.shape[1:]) != (C, H, W):
            raise ValueError(
                f"img must have the fitted model's (C, H, W) = {(C, H, W)}, got "
                f"{tuple(images.shape[1:])}"
            )
        check_in_range(images, self.data_range_, "img")
        seed = _seed_arg(seed)  # repaint checks the sampler and the jump schedule
        missing = as_mask(mask, tuple(images.shape))  # one image: as a batch of one
        missing = missing.to(images.device).expand_as(images)
        cond, scale, null = self._condition(net, labels, images.shape[0], guidance_scale)
        steps = self._check_steps(steps, default=250)
        device = self.device_
        gen = self._generator(seed)
        unit = to_unit(images, self.data_range_).to(device)
        filled = repaint(
            _guided(net, cond, null, scale),
            unit,
            missing.to(device),
            self._fitted_schedule(),
            self.prediction_,
            steps,
            jump_length,
            jump_n_sample,
            gen,
            device,
            progress=self.verbose > 0,
            sampler=sampler,
        )
        out = torch.where(missing, from_unit(filled.float().cpu(), self.data_range_), images)
        return out[0] if single else out

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path, include_decoder: bool = True) -> Path:
        """Write the fitted model to one safetensors file (weights; arguments as JSON metadata).

        Parameters
        ----------
        path : str or Path
            Target file (conventionally ``*.safetensors``).
        include_decoder : bool
            Also store the context decoder; ``False`` writes an inference-only file.

        Returns
        -------
        Path
            The written path. No pickle is involved.
        """
        from safetensors.torch import save_file

        check_is_fitted(self, "backbone_")
        tensors: dict[str, torch.Tensor] = {}
        modules = {"backbone": self.backbone_, "ema": self.ema_backbone_}
        if include_decoder:
            modules["context"] = self.context_head_
        for prefix, module in modules.items():
            if module is None:
                continue
            for key, value in module.state_dict().items():
                tensors[f"{prefix}.{key}"] = value.detach().cpu().clone().contiguous()
        meta = {
            "format_version": _FORMAT_VERSION,
            "params": to_jsonable(
                {
                    **{k: v for k, v in self.get_params(deep=False).items() if k != "backbone"},
                    # what the weights were trained with, even if set_params changed it since
                    "context": self.context_,
                    "schedule": self.schedule_,
                    "timesteps": self.timesteps_,
                    "prediction": self.prediction_,
                },
                "params",
            ),
            "backbone": to_jsonable(self.backbone_, "backbone")
            if hasattr(self.backbone_, "get_params")
            else None,
            "image_shape": list(self.image_shape_),
            "data_range": list(self.data_range_),
            "n_steps": self.n_steps_,
            "seed": self.seed_,
            "loss_history": self.loss_history_,
            "has_decoder": bool(include_decoder and self.context_head_ is not None),
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata={"conprediff": json.dumps(meta)})
        return path

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str = "auto",
        backbone: nn.Module | None = None,
        classes: Iterable[type] = (),
    ) -> ConPreDiffModel:
        """Read a model written by :meth:`save`.

        Parameters
        ----------
        path : str or Path
        device : str
            Where to put the weights (``'auto'``, ``'cpu'``, ``'cuda'``...).
        backbone : nn.Module, optional
            The backbone architecture, needed only for a custom backbone without
            ``get_params``; its weights are replaced by the file's.
        classes : iterable of type
            Extra (non-conprediff) component classes allowed to be rebuilt from the file.

        Returns
        -------
        ConPreDiffModel
            A fitted model.
        """
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no model file at {str(path)!r}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta_text = (f.metadata() or {}).get("conprediff")
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        except Exception as err:
            raise ValueError(f"{str(path)!r} is not a readable safetensors file: {err}") from err
        if meta_text is None:
            raise ValueError(f"{str(path)!r} was not written by ConPreDiffModel.save")
        meta = json.loads(meta_text)
        classes = tuple(classes)
        params = from_jsonable(meta["params"], classes)
        if meta["backbone"] is not None:
            net = from_jsonable(meta["backbone"], classes)
            if backbone is not None:
                warnings.warn(
                    f"backbone= is ignored: {str(path)!r} describes its backbone "
                    f"({type(net).__name__}) itself; it is needed only for a custom backbone "
                    "without get_params",
                    stacklevel=2,
                )
        elif backbone is not None:
            net = copy.deepcopy(backbone)
        else:
            raise ValueError("this file holds a custom backbone: pass backbone=<module> to load()")
        model = cls(backbone=copy.deepcopy(net), **params)
        dev = resolve_device(device)

        def restore(prefix: str, module: nn.Module) -> nn.Module:
            state = {
                k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")
            }
            try:
                module.load_state_dict(state, strict=True)
            except RuntimeError as err:
                raise ValueError(
                    f"the weights in {str(path)!r} do not fit the {prefix} module "
                    f"({type(module).__name__}): was it built with other arguments? "
                    f"{str(err).splitlines()[0]}"
                ) from err
            return module.to(dev).eval()

        model.backbone_ = restore("backbone", net)
        has_ema = any(k.startswith("ema.") for k in tensors)
        model.ema_backbone_ = (
            restore("ema", copy.deepcopy(net)).requires_grad_(False) if has_ema else None
        )
        model.context_head_ = None
        if meta["has_decoder"] and model.context is not None:
            head = model.context.build(net.feature_channels, meta["image_shape"][0])
            try:
                model.context_head_ = restore("context", head)
            except ValueError as err:  # written before save stored the fitted context
                warnings.warn(
                    f"the context decoder in {str(path)!r} does not match the file's context "
                    f"settings (changed by set_params before save?); loaded without the decoder, "
                    f"which sampling and inpainting do not use: {str(err).splitlines()[0]}",
                    stacklevel=2,
                )
        model.image_shape_ = tuple(meta["image_shape"])
        model.data_range_ = tuple(meta["data_range"])
        model.n_steps_ = meta["n_steps"]
        model.seed_ = meta["seed"]
        model.loss_history_ = meta["loss_history"]
        model.device_ = dev
        model.device = device
        model.n_items_seen_ = None
        model.world_size_ = 1
        model.context_ = _copy_config(model.context)
        model.timesteps_ = model.timesteps
        model.schedule_ = model.schedule
        model.prediction_ = model.prediction
        model.label_dropout_ = model.label_dropout
        return model
