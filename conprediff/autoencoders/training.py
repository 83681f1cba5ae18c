"""The training run behind :meth:`KLAutoencoder.fit <conprediff.autoencoders.KLAutoencoder.fit>`."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .._validation import check_data_range, check_device, check_images, check_in_range
from ..ranges import infer_data_range, to_unit
from ..training.data import BatchStream, as_loader, split_batch
from .protocol import check_image_size

__all__ = ["fit_autoencoder", "latent_std"]

#: Images whose latents set the scaling factor (LDM uses one batch; more is steadier).
SCALE_IMAGES = 4096


def _first_images(data: Any, loader: Any) -> torch.Tensor:
    """The whole tensor, or the loader's first batch (read without touching the random state)."""
    if isinstance(data, torch.Tensor | np.ndarray):
        return check_images(data, "data")
    with torch.random.fork_rng(devices=[]):
        try:
            batch = next(iter(loader))
        except StopIteration:
            raise ValueError("data is empty: it yielded no batch") from None
    return check_images(split_batch(batch)[0], "data")


def _batch(stream: BatchStream, shape: tuple[int, ...], data_range: tuple[float, float],
           step: int) -> torch.Tensor:
    images = check_images(split_batch(next(stream))[0], "data")
    if tuple(images.shape[1:]) != shape:
        raise ValueError(f"data holds images of varying size: expected (C, H, W) = {shape}, got "
                         f"a batch of {tuple(images.shape[1:])}")
    try:
        check_in_range(images, data_range, "data")
    except ValueError as err:
        raise ValueError(f"the batch of step {step}: {err}") from None
    return to_unit(images, data_range)


@torch.no_grad()
def latent_std(ae: Any, loader: Any, data_range: tuple[float, float], device: torch.device,
               limit: int = SCALE_IMAGES) -> float:
    """Standard deviation of ``ae.posterior(x)[0]`` over up to ``limit`` images of ``loader``."""
    values, seen = [], 0
    for batch in loader:
        x = to_unit(check_images(split_batch(batch)[0], "data"), data_range).to(device)
        values.append(ae.posterior(x)[0].double().flatten().cpu())
        seen += x.shape[0]
        if seen >= limit:
            break
    return float(torch.cat(values).std())


def fit_autoencoder(ae: Any, data: Any, y: Any = None) -> None:
    """Train ``ae`` (a :class:`~conprediff.autoencoders.KLAutoencoder`) in place on ``data``."""
    device = check_device(ae.device)
    seed = ae.seed if ae.seed is not None else int(np.random.SeedSequence().entropy % 2**31)
    loader, _ = as_loader(data, None, ae.batch_size, seed)
    first = _first_images(data, loader)
    check_image_size(first.shape, ae.downsampling_factor)
    if ae.data_range == "auto":
        data_range = infer_data_range(first)
    else:
        data_range = check_data_range(ae.data_range)
        check_in_range(first, data_range, "data")
    channels = first.shape[1]
    if ae.in_channels is not None and ae.in_channels != channels:
        raise ValueError(f"in_channels={ae.in_channels} does not match the data's {channels} "
                         "channels")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ae.set_params(in_channels=channels)  # fresh weights, seeded
        ae.to(device).train()
        history = _train(ae, BatchStream(loader), tuple(first.shape[1:]), data_range, device,
                         seed)
        ae.eval()
        ae.fitted_range.copy_(torch.tensor(data_range, dtype=torch.float64))
        ae.fitted_steps.fill_(ae.max_steps)
        ae.fitted_scale.fill_(1.0 / max(latent_std(ae, loader, data_range, device), 1e-8))
    ae.loss_history_ = history


def _train(ae: Any, stream: BatchStream, shape: tuple[int, ...],
           data_range: tuple[float, float], device: torch.device,
           seed: int) -> dict[str, list[float]]:
    opt = torch.optim.Adam(ae.parameters(), lr=ae.lr)
    gen = torch.Generator(device).manual_seed(seed + 1)
    history: dict[str, list[float]] = {"loss": [], "rec": [], "kl": []}
    bar = tqdm(range(ae.max_steps), desc="autoencoder", disable=not ae.verbose, leave=False)
    for step in bar:
        x = _batch(stream, shape, data_range, step).to(device)
        mean, logvar = ae.posterior(x)
        z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=gen,
                                                         device=device)
        rec = (ae.decode(z) - x).abs().mean()
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=(1, 2, 3)).mean()
        loss = rec + ae.kl_weight * kl / x[0].numel()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite autoencoder loss at step {step} "
                                     f"(reconstruction {float(rec):.4g}, KL {float(kl):.4g}); "
                                     "lower lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for key, value in (("loss", loss), ("rec", rec), ("kl", kl)):
            history[key].append(float(value.detach()))
        if step % 20 == 0:
            bar.set_postfix(rec=f"{float(rec.detach()):.4f}")
    return history
