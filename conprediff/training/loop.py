"""The training loop behind :meth:`~conprediff.estimator.ConPreDiffModel.fit`.

One optimisation step: for each of ``grad_accum_steps`` micro-batches, draw ``t`` and ``ε``, form
``x_t``, run the backbone, take the point-wise diffusion loss, add the λ_t-weighted context term
when there is a context head, and backpropagate; then clip, step the optimiser and the EMA.

Randomness is split into independent generators (data order, timesteps and noise, context
decoder), so that a run with context prediction and one without draw the *same* batches,
timesteps and noise: paired comparisons. Under DDP every rank draws the timesteps and noise of the
whole global batch and keeps its own slice, so N processes compute exactly the step one process
would compute on the global batch.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .._validation import check_images, check_in_range, check_labels
from ..backbones.protocol import check_backbone_output
from ..diffusion.gaussian import diffusion_loss
from ..precision import autocast, fused_adamw_for
from ..schedules import NoiseSchedule
from ..spaces import PixelSpace
from ..text.embedding import check_prompts
from .checkpoint import write_checkpoint
from .data import BatchStream, split_batch
from .distributed import DistInfo, all_min
from .ema import EMA

__all__ = ["DiffusionObjective", "TrainConfig", "Trainer", "lr_factor"]


def grad_scaler(device: torch.device, enabled: bool) -> Any:
    """``torch.amp.GradScaler`` for ``device`` (torch >= 2.3), or the CUDA-only one before it."""
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler(device.type, enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled and device.type == "cuda")


class DiffusionObjective(nn.Module):
    """Backbone and optional context head as one module computing the training loss.

    Wrapping this one module in ``DistributedDataParallel`` synchronises the gradients of both.
    """

    def __init__(self, backbone: nn.Module, context_head: nn.Module | None):
        super().__init__()
        self.backbone = backbone
        self.context_head = context_head
        self._compiled: Any = None  # not a registered module: the state dict stays the same

    def compile_backbone(self) -> None:
        """Run the backbone through ``torch.compile`` in :meth:`forward` (weights shared)."""
        self._compiled = torch.compile(self.backbone)

    def forward(
        self,
        x0: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        schedule: NoiseSchedule,
        prediction: str,
        min_snr_gamma: float | None,
        generator: torch.Generator | None,
        cond: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of one (micro-)batch and its detached terms (``point``, ``context``, ``w2``).

        ``cond``: ``(B,)`` class labels for a class-conditional backbone (None: the backbone is
        called as ``net(xt, t)``, so backbones without a ``cond`` argument work unconditionally).
        """
        xt = schedule.q_sample(x0, t, noise)
        net = self._compiled if self._compiled is not None else self.backbone
        out = net(xt, t) if cond is None else net(xt, t, cond)
        out, features = check_backbone_output(out, xt)
        point = diffusion_loss(out, x0, noise, t, schedule, prediction, min_snr_gamma).mean()
        logs = {"point": point.detach()}
        loss = point
        if self.context_head is not None:
            ctx = self.context_head(features, t, x0, xt, schedule, generator=generator)
            loss = loss + ctx.loss
            logs["context"] = ctx.loss.detach()
            logs["w2"] = ctx.w2.detach()
        return loss, logs


@dataclass
class TrainConfig:
    """Settings of a run (the estimator's parameters, resolved)."""

    schedule: NoiseSchedule
    prediction: str
    data_range: tuple[float, float] | None  # None: points already encoded (a latent data set)
    image_shape: tuple[int, int, int]  # of the points trained on
    device: torch.device
    lr: float
    max_steps: int
    min_snr_gamma: float | None = None
    precision: str = "fp32"  # of the forward pass: 'fp32', 'bf16' or 'fp16' (conprediff.precision)
    grad_accum_steps: int = 1
    grad_clip: float | None = None
    lr_warmup_steps: int = 0
    lr_schedule: str = "constant"
    on_nonfinite: str = "raise"
    log_every: int = 50
    checkpoint_dir: str | None = None
    checkpoint_every: int | None = None
    keep_checkpoints: int = 3
    channels_last: bool = False
    num_classes: int | None = None  # class-conditional training when set
    tokenize: Any = None  # text-conditional training when set: prompts -> (ids, mask)
    label_dropout: float = 0.0
    space: Any = None  # what the images are encoded into; PixelSpace(data_range) when None
    autoencoder: str | None = None  # a latent run's autoencoder digest, checked on resume

    def __post_init__(self) -> None:
        if self.space is None and self.data_range is not None:
            self.space = PixelSpace(self.data_range)


def lr_factor(step: int, warmup: int, schedule: str, total: int) -> float:
    r"""Learning-rate multiplier at ``step``: linear warm-up over ``warmup`` steps, then
    ``'constant'`` (1), ``'linear'`` (to 0 at ``total``) or ``'cosine'``
    (:math:`\tfrac12(1 + \cos(\pi p))` with ``p`` the progress after warm-up)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class TrainState:
    """The mutable part of a run that a checkpoint must restore."""

    step: int = 0
    history: dict[str, list[float]] = field(default_factory=dict)

    def log(self, **values: float) -> None:
        for key, value in values.items():
            self.history.setdefault(key, []).append(value)


class Trainer:
    """Runs the optimisation and owns everything a checkpoint holds.

    Parameters
    ----------
    objective : DiffusionObjective
        Backbone and context head.
    stream : BatchStream
        Batches, with a position that can be saved and restored.
    config : TrainConfig
    dist_info : DistInfo
    seed : int
        Seeds the noise (``seed + 2``) and context (``seed + 3``) generators.
    ema_decay : float, optional
    weight_decay : float
        AdamW's weight decay (default 0).
    compile : bool
        ``torch.compile`` the backbone.
    train_args : dict, optional
        The training arguments the run depends on (plain values by name), recorded in every
        checkpoint as ``train_args`` so that a resume with other ones can be refused (see
        ``conprediff.training.setup.check_resume``). None records none.
    """

    def __init__(
        self,
        objective: DiffusionObjective,
        stream: BatchStream,
        config: TrainConfig,
        dist_info: DistInfo,
        seed: int,
        ema_decay: float | None = None,
        weight_decay: float = 0.0,
        compile: bool = False,
        train_args: dict[str, Any] | None = None,
    ):
        self.objective = objective
        self.stream = stream
        self.config = config
        self.dist = dist_info
        device = config.device
        self.seed = seed
        self.train_args = dict(train_args) if train_args is not None else None
        self.noise_generator = torch.Generator(device).manual_seed(seed + 2)
        self.context_generator = torch.Generator(device).manual_seed(seed + 3)
        if config.channels_last:
            objective.to(memory_format=torch.channels_last)
        if compile:
            objective.compile_backbone()
        self.model: nn.Module = objective
        if dist_info.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [device.index] if device.type == "cuda" else None
            self.model = DistributedDataParallel(objective, device_ids=ids)
        self.optimizer = torch.optim.AdamW(
            [p for p in objective.parameters() if p.requires_grad],
            lr=config.lr,
            weight_decay=weight_decay,
            **({"fused": True} if fused_adamw_for(device) else {}),
        )
        self.scaler = grad_scaler(device, enabled=config.precision == "fp16")
        self.ema = EMA(objective.backbone, ema_decay) if ema_decay is not None else None
        self.state = TrainState()

    # --------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the run exactly (tensors and plain data)."""
        cfg = self.config
        rng = {
            "cpu": torch.get_rng_state(),
            "noise": self.noise_generator.get_state(),
            "context": self.context_generator.get_state(),
        }
        if cfg.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(cfg.device)
        return {
            "seed": self.seed,
            "run": {"image_shape": list(cfg.image_shape),
                    "data_range": None if cfg.data_range is None else list(cfg.data_range),
                    "precision": cfg.precision,
                    **({} if cfg.autoencoder is None else {"autoencoder": cfg.autoencoder})},
            "step": self.state.step,
            "history": self.state.history,
            "objective": self.objective.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": None
            if self.ema is None
            else {"module": self.ema.module.state_dict(), "num_updates": self.ema.num_updates},
            "data": self.stream.state_dict(),
            "rng": rng,
            **({} if self.train_args is None else {"train_args": dict(self.train_args)}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (weights, optimizer, EMA, data position, RNG states)."""
        device = self.config.device
        self.objective.load_state_dict(state["objective"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.module.load_state_dict(state["ema"]["module"])
            self.ema.num_updates = int(state["ema"]["num_updates"])
        self.state.step = int(state["step"])
        self.state.history = {k: list(v) for k, v in state["history"].items()}
        self.stream.load_state_dict(state["data"])  # replays the epoch's start: uses the CPU RNG
        rng = state["rng"]
        torch.set_rng_state(rng["cpu"])
        self.noise_generator.set_state(rng["noise"])
        self.context_generator.set_state(rng["context"])
        if "cuda" in rng and device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], device)

    def save_checkpoint(self) -> None:
        """Write a checkpoint (rank 0 only)."""
        cfg = self.config
        if self.dist.is_main and cfg.checkpoint_dir is not None:
            write_checkpoint(
                cfg.checkpoint_dir, self.state.step, self.state_dict(), keep=cfg.keep_checkpoints
            )

    # --------------------------------------------------------------------- steps
    def _images(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The batch's images in ``[-1, 1]`` on the device, and its labels when conditional.

        Each batch must lie in ``data_range`` (up to 2 % of its width, as at ``fit``).
        """
        cfg = self.config
        images, labels = split_batch(batch)
        images = check_images(images, "data")
        if tuple(images.shape[1:]) != cfg.image_shape:
            raise ValueError(
                f"data holds images of varying size: expected (C, H, W) = {cfg.image_shape}, "
                f"got a batch of {tuple(images.shape[1:])}"
            )
        x0 = images.to(cfg.device, non_blocking=True)
        if cfg.data_range is not None:  # pixels; latents were checked as they were encoded
            try:  # every batch, not only the one the range was inferred from
                check_in_range(images, cfg.data_range, "data")
            except ValueError as err:
                raise ValueError(f"the batch of step {self.state.step}: {err}") from None
            x0 = cfg.space.encode(x0)
        if cfg.channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        if cfg.tokenize is not None:
            ids, mask = cfg.tokenize(check_prompts(labels, x0.shape[0], "data's captions"))
            return x0, (ids.to(cfg.device), mask.to(cfg.device))
        if cfg.num_classes is None:
            return x0, None
        labels = check_labels(labels, cfg.num_classes, x0.shape[0], "data's labels")
        return x0, labels.to(cfg.device, non_blocking=True)

    def _drop_labels(self, labels: Any) -> Any:
        """Replace each label by the null label ``num_classes`` (each caption by the null
        condition: its mask row cleared) with probability ``label_dropout`` (classifier-free
        guidance), drawn for the global batch."""
        cfg = self.config
        if not cfg.label_dropout:
            return labels
        ids, mask = labels if isinstance(labels, tuple) else (labels, None)
        world, rank = self.dist.world_size, self.dist.rank
        u = torch.rand(ids.shape[0] * world, device=ids.device, generator=self.noise_generator)
        if world > 1:
            u = u[rank::world]
        drop = u < cfg.label_dropout
        if mask is not None:
            return ids, mask & ~drop[:, None]
        return torch.where(drop, torch.full_like(ids, cfg.num_classes), ids)

    def _draw(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Timesteps and noise of the global batch; this rank's slice."""
        world, rank = self.dist.world_size, self.dist.rank
        B = x0.shape[0] * world
        g = self.noise_generator
        t = torch.randint(0, self.config.schedule.timesteps, (B,), device=x0.device, generator=g)
        noise = torch.randn((B, *x0.shape[1:]), device=x0.device, generator=g)
        if world > 1:
            t, noise = t[rank::world], noise[rank::world]
        return t, noise.to(
            memory_format=torch.channels_last
        ) if self.config.channels_last else noise

    def _step(self) -> dict[str, float] | None:
        cfg = self.config
        accum = cfg.grad_accum_steps
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr * lr_factor(
                self.state.step, cfg.lr_warmup_steps, cfg.lr_schedule, cfg.max_steps
            )
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        for micro in range(accum):
            x0, labels = self._images(next(self.stream))
            t, noise = self._draw(x0)
            cond = None if labels is None else self._drop_labels(labels)
            sync = micro == accum - 1 or not self.dist.enabled
            ctx = contextlib.nullcontext() if sync else self.model.no_sync()
            with ctx:
                with autocast(cfg.precision, cfg.device):
                    loss, logs = self.model(
                        x0,
                        t,
                        noise,
                        cfg.schedule,
                        cfg.prediction,
                        cfg.min_snr_gamma,
                        self.context_generator,
                        cond,
                    )
                if not all_min(bool(torch.isfinite(loss)), self.dist, cfg.device):
                    terms = {k: float(v) for k, v in logs.items()}
                    if cfg.on_nonfinite == "skip":
                        self.optimizer.zero_grad(set_to_none=True)
                        return None
                    raise FloatingPointError(
                        f"non-finite loss at step {self.state.step} (terms: {terms}); training "
                        "stopped before the weights, the EMA or any checkpoint were updated. "
                        "Lower lr, set grad_clip, or pass on_nonfinite='skip'"
                    )
                self.scaler.scale(loss / accum).backward()
            totals["loss"] = totals.get("loss", 0.0) + float(loss.detach()) / accum
            for k, v in logs.items():
                totals[k] = totals.get(k, 0.0) + float(v) / accum
        if self.dist.enabled:  # log the global batch's losses, not rank 0's share
            totals = self._average(totals)
        if cfg.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.objective.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.objective.backbone)
        return totals

    def run(
        self, callback: Callable[[dict[str, float]], None] | None = None, progress: bool = True
    ) -> None:
        """Train until ``config.max_steps``, from wherever the state stands."""
        cfg = self.config
        self.objective.train()
        show = progress and self.dist.is_main
        bar = tqdm(
            total=cfg.max_steps,
            initial=self.state.step,
            desc="training",
            disable=not show,
            dynamic_ncols=True,
        )
        window_start, window_images = time.perf_counter(), 0
        first_step = self.state.step
        try:
            while self.state.step < cfg.max_steps:
                totals = self._step()
                self.state.step += 1
                bar.update(1)
                if totals is None:  # skipped: nothing to log, but checkpoints and callbacks run
                    self.state.log(skipped=self.state.step)
                    totals = {}
                else:
                    self.state.log(**totals)
                    window_images += (
                        cfg.grad_accum_steps * self.dist.world_size * self._batch_size()
                    )
                    bar.set_postfix(loss=f"{totals['loss']:.4f}", refresh=False)
                if (
                    callback is not None
                    and self.dist.is_main
                    and (self.state.step % cfg.log_every == 0 or self.state.step == cfg.max_steps)
                ):
                    elapsed = time.perf_counter() - window_start
                    callback(
                        {
                            "step": self.state.step,
                            **totals,
                            "lr": self.optimizer.param_groups[0]["lr"],
                            "images_per_second": window_images / max(elapsed, 1e-9),
                        }
                    )
                    window_start, window_images = time.perf_counter(), 0
                if cfg.checkpoint_every and self.state.step % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
            # the last step too, so that resume='latest' on a finished run has nothing to redo
            last = self.state.step
            if cfg.checkpoint_every and last > first_step:
                if last % cfg.checkpoint_every:
                    self.save_checkpoint()
                if self.dist.enabled:
                    import torch.distributed as dist

                    dist.barrier()  # no rank returns before rank 0 has written it
        finally:
            bar.close()
            self.objective.eval()

    def _average(self, totals: dict[str, float]) -> dict[str, float]:
        import torch.distributed as dist

        keys = sorted(totals)
        values = torch.tensor(
            [totals[k] for k in keys], dtype=torch.float64, device=self.config.device
        )
        dist.all_reduce(values)
        values /= self.dist.world_size
        return dict(zip(keys, values.tolist(), strict=True))

    def _batch_size(self) -> int:
        return self.stream.last_batch_size
