"""Image grids and loss curves (matplotlib with the Agg backend; Pillow for PNG grids)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ._validation import check_data_range, check_int

__all__ = ["image_grid", "save_image_grid", "plot_loss", "plot_inpainting", "plot_prompt_grid"]


def image_grid(
    images: torch.Tensor,
    nrow: int | None = None,
    data_range: tuple[float, float] = (-1.0, 1.0),
    padding: int = 1,
    scale: int = 1,
) -> np.ndarray:
    """Tile images ``(N, C, H, W)`` into one uint8 array ``(rows*(H+p)+p, cols*(W+p)+p, C)``.

    Values are mapped from ``data_range`` to 0-255 and clipped; ``scale`` repeats pixels;
    ``nrow`` images per row (default: about the square root of ``N``).
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a (N, C, H, W) tensor, got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    nrow = check_int(nrow, "nrow", 1, optional=True)
    padding = check_int(padding, "padding", 0)
    scale = check_int(scale, "scale", 1)
    lo, hi = check_data_range(data_range)
    x = images.detach().float().cpu()
    x = ((x - lo) / (hi - lo)).clamp(0, 1)
    if scale > 1:
        x = x.repeat_interleave(scale, 2).repeat_interleave(scale, 3)
    N, C, H, W = x.shape
    nrow = nrow or int(np.ceil(np.sqrt(N)))
    ncol = int(np.ceil(N / nrow))
    grid = torch.ones(C, ncol * (H + padding) + padding, nrow * (W + padding) + padding)
    for i in range(N):
        r, c = divmod(i, nrow)
        y0, x0 = padding + r * (H + padding), padding + c * (W + padding)
        grid[:, y0 : y0 + H, x0 : x0 + W] = x[i]
    return (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def save_image_grid(
    images: torch.Tensor,
    path: str | Path,
    nrow: int | None = None,
    data_range: tuple[float, float] = (-1.0, 1.0),
    scale: int = 4,
) -> Path:
    """Write :func:`image_grid` of ``images`` ``(N, C, H, W)`` to a PNG at ``path``."""
    from PIL import Image

    arr = image_grid(images, nrow, data_range, padding=1, scale=scale)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(path)
    return path


def _save(fig, path: str | Path) -> Path:
    """Tighten the layout, write ``fig`` to ``path`` (creating folders) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if len(values) < window or window < 2:
        return values
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def plot_loss(history: dict[str, list[float]], path: str | Path, window: int = 50) -> Path:
    """Plot the loss terms of ``loss_history_`` (moving average over ``window`` steps).

    The point loss is drawn on the left axis; with context prediction, the W2² term (before the
    λ_t weighting) is drawn in a second panel so both can be seen to fall.
    """
    window = check_int(window, "window", 1)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has_ctx = "w2" in history and len(history["w2"]) > 0
    fig, axes = plt.subplots(1, 2 if has_ctx else 1, figsize=(10 if has_ctx else 5.5, 3.6))
    axes = np.atleast_1d(axes)
    w = max(1, min(window, len(history.get("point", [])) // 10))
    point = np.asarray(history.get("point", history.get("loss", [])), dtype=float)
    steps = np.arange(len(point))[len(point) - len(_smooth(point, w)) :]
    axes[0].plot(steps, _smooth(point, w), color="C0")
    axes[0].set(title="point-wise diffusion loss", xlabel="step", ylabel="MSE", yscale="log")
    if has_ctx:
        w2 = np.asarray(history["w2"], dtype=float)
        axes[1].plot(steps, _smooth(w2, w), color="C1")
        axes[1].set(title="context term: mean W2² (before λ_t)", xlabel="step", yscale="log")
    for ax in axes:
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_inpainting(
    images: torch.Tensor,
    masks: torch.Tensor,
    results: torch.Tensor,
    titles: list[str],
    path: str | Path,
    data_range: tuple[float, float] = (-1.0, 1.0),
) -> Path:
    """One column per example: the image, the mask (white = missing) and the inpainted result.

    ``images`` and ``results`` are ``(N, C, H, W)``, ``masks`` ``(N, 1 or C, H, W)`` bool.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = images.shape[0]
    lo, hi = data_range
    fig, axes = plt.subplots(3, n, figsize=(1.6 * n, 5.0), squeeze=False)

    def show(ax, x):
        x = ((x.detach().float().cpu() - lo) / (hi - lo)).clamp(0, 1)
        if x.shape[0] == 1:
            ax.imshow(x[0].numpy(), cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(x.permute(1, 2, 0).numpy())

    for i in range(n):
        show(axes[0, i], images[i])
        axes[1, i].imshow(masks[i, 0].float().cpu().numpy(), cmap="gray", vmin=0, vmax=1)
        show(axes[2, i], results[i])
        axes[0, i].set_title(titles[i], fontsize=8)
    for ax, label in zip(axes[:, 0], ("image", "mask", "result"), strict=True):
        ax.set_ylabel(label)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return _save(fig, path)


def plot_prompt_grid(
    samples: torch.Tensor,
    prompts: list[str],
    path: str | Path,
    data_range: tuple[float, float] = (-1.0, 1.0),
) -> Path:
    """A text model's samples: one row per prompt (written at its left), one column per seed.

    ``samples`` is ``(P, S, C, H, W)`` for ``P`` prompts and ``S`` seeds.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p, s = samples.shape[:2]
    if len(prompts) != p:
        raise ValueError(f"prompts: {len(prompts)} for {p} rows of samples")
    lo, hi = data_range
    fig, axes = plt.subplots(p, s, figsize=(1.0 * s + 3.2, 1.0 * p), squeeze=False)
    for i in range(p):
        for j in range(s):
            x = ((samples[i, j].detach().float().cpu() - lo) / (hi - lo)).clamp(0, 1)
            ax = axes[i, j]
            if x.shape[0] == 1:
                ax.imshow(x[0].numpy(), cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(x.permute(1, 2, 0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i, 0].set_ylabel(prompts[i], rotation=0, ha="right", va="center", fontsize=8)
    return _save(fig, path)
