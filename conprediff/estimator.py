"""``ConPreDiffModel``: a diffusion model as a scikit-learn style estimator.

The estimator stores its arguments, checks them and delegates: training to
:func:`conprediff.training.setup.fit_model`, sampling and inpainting to the samplers of
:mod:`conprediff.diffusion` and :mod:`conprediff.inpainting`, files to
:mod:`conprediff.persistence`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted
from torch import nn

from ._resources import check_output_size
from ._validation import check_device, check_image_or_batch, check_int, check_seed
from .diffusion import Denoiser, generate, guided
from .diffusion.guidance import sampling_condition
from .diffusion.samplers import check_sampler
from .parameters import check_params
from .persistence import FittedState, load_model, save_model
from .precision import resolve_precision
from .schedules import NoiseSchedule
from .spaces import LatentSpace, PixelSpace
from .training.setup import fit_model

__all__ = ["ConPreDiffModel", "resolve_device"]

#: Kept for compatibility: :func:`conprediff._validation.check_device`.
resolve_device = check_device


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
    precision : {'fp32', 'auto', 'bf16', 'fp16'}
        Autocast precision of the forward pass (a gradient scaler with ``'fp16'``); the losses,
        the W2 metric, the EMA and the optimizer state stay float32. ``'auto'`` is ``'bf16'``
        where the device computes it fast (CUDA with native bf16, a CPU with AVX512-BF16 or AMX)
        and ``'fp32'`` elsewhere (:mod:`conprediff.precision`); what ran is ``precision_``. The
        default stays ``'fp32'`` until bf16's sample quality is measured level with it (see
        ``docs/benchmarks/fast_path.md``).
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
    autoencoder : Autoencoder, optional
        Diffuse in this autoencoder's latents (LDM) instead of the pixels: a
        :class:`~conprediff.autoencoders.KLAutoencoder` or any object following
        :mod:`conprediff.autoencoders.protocol`. ``fit`` encodes the data once and trains the
        backbone (and the context term, whose points are then latent vectors) on the scaled
        latents; ``sample`` and ``inpaint`` decode. An unfitted one is fitted on the data first
        (with a warning). See ``docs/latent.rst``.
    text_encoder : TextEncoder, optional
        Condition on prompts (:doc:`/text`): a :class:`~conprediff.text.TextTransformer` or a
        frozen :class:`~conprediff.text.PretrainedTextEncoder`, with a backbone that takes text
        of its width (``UNet(text_channels=D)``). ``fit`` needs captions, ``label_dropout`` is
        the caption dropout, ``sample``/``inpaint`` take prompts.

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
    precision_ : str
        The precision training ran in (``'auto'`` resolved); ``'fp32'`` for older files.
    autoencoder_ : Autoencoder or None
        A latent model's autoencoder (a frozen copy of ``autoencoder``, fitted), else None.
    latent_bound_ : float or None
        A latent model's largest absolute scaled latent in its training data: the range its
        samplers clamp the clean-latent estimate to (:class:`~conprediff.spaces.LatentSpace`).

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
        autoencoder: Any = None,
        text_encoder: nn.Module | None = None,
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
        self.autoencoder = autoencoder
        self.text_encoder = text_encoder

    # ------------------------------------------------------------------ checks
    def _check_params(self) -> dict[str, Any]:
        """Every parameter checked, by name (numbers as plain ``int``/``float``)."""
        return check_params(self.get_params(deep=False))

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
            an unconditional backbone ignores labels. With a ``text_encoder``: ``(N,)`` prompts
            (strings), or a Dataset yielding ``(image, caption)``.
        resume : {'latest'} or path, optional
            Continue a run from a checkpoint: ``'latest'`` takes the newest readable checkpoint
            in ``checkpoint_dir``; a path takes that file. A checkpoint is damaged when its
            checksum does not match or an entry is missing or malformed: ``'latest'`` then
            warns, naming it, renames it to ``<name>.corrupt`` (kept for inspection, never
            overwritten) and falls back to the previous one, and starts afresh with a warning
            when none is readable; a damaged path raises ``CheckpointError``. The model must be
            constructed with the same parameters and given the same data: a changed training
            argument (``lr``, ``batch_size``, ``grad_accum_steps``, ``weight_decay``,
            ``ema_decay``, ``precision``, ``prediction``, ``timesteps``, ``schedule``,
            ``min_snr_gamma``, ``label_dropout``, ``lr_schedule``, ``lr_warmup_steps``,
            ``grad_clip``, ``on_nonfinite``, ``seed``) raises a ``ValueError`` naming each;
            ``max_steps`` or ``epochs`` may grow to extend the run. The run then continues
            exactly as if it had not stopped.
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
            On images that are not 4-dimensional, channels-last (``(N, H, W, C)`` with C in 1,
            3, 4), empty, non-finite, of varying size or outside the data range (every batch is
            checked; the message names the step), on labels that are not integers, on invalid
            parameters (the message names the parameter), and on a damaged checkpoint given as
            ``resume`` (:class:`~conprediff.training.checkpoint.CheckpointError`).
        TypeError
            On data that is not images (e.g. a Dataset yielding PIL images) and on parameters
            of the wrong type.
        FloatingPointError
            On a non-finite loss with ``on_nonfinite='raise'`` (naming the step and the terms).
        """
        fit_model(self._check_params(), data, y, resume=resume, callback=callback).apply(self)
        return self

    # ------------------------------------------------------------------ sampling
    def _network(self, use_ema: bool) -> nn.Module:
        check_is_fitted(self, "backbone_")
        if use_ema and self.ema_backbone_ is not None:
            return self.ema_backbone_
        return self.backbone_

    def _space(self) -> PixelSpace | LatentSpace:
        """Where the fitted model diffuses (see :mod:`conprediff.spaces`)."""
        ae = getattr(self, "autoencoder_", None)
        if ae is None:
            return PixelSpace(self.data_range_)
        return LatentSpace(ae, self.data_range_, getattr(self, "latent_bound_", None))

    def _check_steps(self, steps: int | None, default: int) -> int:
        """``steps``, or ``min(default, timesteps_)`` when None; must lie in [1, timesteps_]."""
        if steps is None:
            return min(default, self.timesteps_)
        return check_int(steps, "steps", 1, self.timesteps_)

    def _precision(self, precision: str | None) -> str:
        """``precision`` of ``sample``/``inpaint`` resolved on the model's device (None: fp32)."""
        return "fp32" if precision is None else resolve_precision(precision, self.device_)

    def _generator(self, seed: Any) -> torch.Generator:
        """A generator on the model's device, seeded with ``seed`` (a random seed when None)."""
        seed = check_seed(seed)
        gen = torch.Generator(self.device_)
        gen.manual_seed(seed if seed is not None else int(torch.randint(2**62, ()).item()))
        return gen

    def _condition(self, net: nn.Module, labels: Any, n: int, guidance_scale: Any,
                   prompts: Any = None, negative_prompts: Any = None) -> tuple[Any, ...]:
        """:func:`~conprediff.diffusion.guidance.sampling_condition` for the fitted model."""
        return sampling_condition(net, labels, n, guidance_scale, prompts, negative_prompts,
                                  getattr(self, "label_dropout_", None))

    @torch.no_grad()
    def sample(
        self,
        n: int, steps: int | None = None, sampler: str = "ddim", eta: float = 0.0,
        seed: int | None = None, batch_size: int = 256, use_ema: bool = True,
        labels: Any = None, guidance_scale: float = 1.0, precision: str | None = None,
        prompts: Any = None, negative_prompts: Any = None,
    ) -> torch.Tensor:
        r"""Generate images. The context decoder is not used.

        Parameters
        ----------
        n : int
            Number of images; over half the free memory (``n*C*H*W*4`` bytes) is a ValueError.
        steps : int, optional
            Reverse steps (at most ``timesteps``), respaced evenly; default 50, or ``timesteps``
            if that is smaller.
        sampler : {'ddim', 'ddpm', 'dpmpp_2m'}
            DDIM (Song et al. 2021; deterministic with ``eta=0``), ancestral DDPM (Ho et al.
            2020), or DPM-Solver++(2M) (Lu et al. 2022; good samples in 15-25 steps, see
            ``docs/benchmarks/sampler_quality.md``). See :mod:`conprediff.diffusion.samplers`.
        eta : float
            DDIM noise scale (0 = deterministic); with the other samplers it must stay 0.
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
        precision : {'auto', 'fp32', 'bf16', 'fp16'}, optional
            Autocast precision of the network's forward passes; the sampler's arithmetic stays
            float32. None (default) is ``'fp32'``; ``'auto'`` as the ``precision`` parameter.
        prompts, negative_prompts : str or list of str, optional
            Text models only: one prompt for all images or ``n`` (None: the null condition);
            guidance pushes away from ``negative_prompts`` instead of the null condition.

        Returns
        -------
        torch.Tensor
            ``(n, C, H, W)`` float32 on the CPU, in the data's range.
        """
        net = self._network(use_ema)
        n = check_output_size(check_int(n, "n", 1), self.image_shape_)  # fails before step 1
        cond, scale, null, uncond = self._condition(net, labels, n, guidance_scale, prompts,
                                                    negative_prompts)
        steps = self._check_steps(steps, default=50)
        batch_size = check_int(batch_size, "batch_size", 1)
        gen = self._generator(seed)
        precision = self._precision(precision)
        sampler = check_sampler(sampler, eta)
        space, out = self._space(), []
        for start in range(0, n, batch_size):
            b = min(batch_size, n - start)
            part = None if cond is None else cond[start : start + b]
            negative = None if uncond is None else uncond[start : start + b]
            denoiser = Denoiser(guided(net, part, null, scale, negative), self._fitted_schedule(),
                                self.prediction_, clip=space.clip, precision=precision)
            x = generate(denoiser, (b, *space.point_shape(self.image_shape_)), steps, sampler,
                         eta=eta, generator=gen, device=self.device_, progress=self.verbose > 0)
            out.append(space.decode(x).cpu())
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
        precision: str | None = None,
        prompt: Any = None,
        negative_prompt: Any = None,
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
        sampler : {'ddpm', 'ddim', 'dpmpp_2m'}
            The reverse step between jumps: ancestral (RePaint), deterministic DDIM (the fast
            variant) or DPM-Solver++(2M), whose history restarts after each jump.
        use_ema : bool
            Use the EMA weights when the model has them.
        labels : int or array-like of int, optional
            Class-conditional models only: the class of every image or of each (``(B,)``).
        guidance_scale : float
            Classifier-free guidance scale, as in :meth:`sample`.
        precision : {'auto', 'fp32', 'bf16', 'fp16'}, optional
            As in :meth:`sample`; None (default) is ``'fp32'``.
        prompt, negative_prompt : str or list of str, optional
            Text models only: as ``prompts`` and ``negative_prompts`` in :meth:`sample`.

        Returns
        -------
        torch.Tensor
            Same shape as ``img``, float32 on the CPU. Known pixels are exactly the input's. An
            all-known mask returns the input; an all-missing mask is plain (RePaint) sampling.
        """
        from .inpainting import as_mask, repaint

        net = self._network(use_ema)
        images, single = check_image_or_batch(img, self.image_shape_, self.data_range_, "img")
        gen = self._generator(seed)  # repaint checks the sampler and the jump schedule
        missing = as_mask(mask, tuple(images.shape)).expand_as(images)
        cond, scale, null, uncond = self._condition(net, labels, images.shape[0], guidance_scale,
                                                    prompt, negative_prompt)
        steps = self._check_steps(steps, default=250)
        precision, space = self._precision(precision), self._space()
        dev = self.device_
        filled = repaint(guided(net, cond, null, scale, uncond),
                         space.encode_known(images.to(dev), missing.to(dev)),
                         space.point_mask(missing.to(dev)), self._fitted_schedule(),
                         self.prediction_, steps, jump_length, jump_n_sample, gen, dev,
                         progress=self.verbose > 0, sampler=sampler, clip=space.clip,
                         precision=precision)
        out = torch.where(missing, space.decode(filled.float()).cpu(), images)
        return out[0] if single else out

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path, include_decoder: bool = True) -> Path:
        """Write the fitted model to one safetensors file (weights; arguments as JSON metadata).

        The file is written atomically (see :mod:`conprediff.persistence`); no pickle is
        involved.

        Parameters
        ----------
        path : str or Path
            Target file (conventionally ``*.safetensors``); its folder is created.
        include_decoder : bool
            Also store the context decoder; ``False`` writes an inference-only file.

        Returns
        -------
        Path
            The written path.
        """
        check_is_fitted(self, "backbone_")
        return save_model(self, path, include_decoder)

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str = "auto",
        backbone: nn.Module | None = None,
        classes: Iterable[type] = (),
        allow_nonfinite: bool = False,
    ) -> ConPreDiffModel:
        """Read a model written by :meth:`save`; the file is checked, no code in it runs.

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
        allow_nonfinite : bool
            Load weights holding NaN or inf (by default a ValueError, as any damaged file).

        Returns
        -------
        ConPreDiffModel
            A fitted model.
        """
        return load_model(cls, path, device, backbone, classes, allow_nonfinite)

    def to_diffusers(self, folder: str | Path, use_ema: bool = True) -> Path:
        """Write a diffusers folder (``DDPMPipeline.from_pretrained(folder)`` loads an
        unconditional one): see :func:`conprediff.interop.to_diffusers`."""
        from .interop import to_diffusers

        return to_diffusers(self, folder, use_ema)

    @classmethod
    def from_diffusers(cls, unet: Any, **params: Any) -> ConPreDiffModel:
        """A model that fine-tunes a diffusers UNet (a module, or a local folder whose
        ``scheduler/`` then sets ``timesteps``, ``schedule`` and ``prediction`` unless given);
        ``params`` are the constructor's: see :func:`conprediff.interop.import_params`."""
        from .interop import import_params

        return cls(**import_params(unet, params))

    @property
    def fitted_state_(self) -> FittedState:
        """The fitted attributes as one :class:`~conprediff.persistence.FittedState`."""
        check_is_fitted(self, "backbone_")
        return FittedState.of(self)
