"""Numerical precision and memory layout, chosen by device in one place.

``precision`` (of :class:`~conprediff.ConPreDiffModel`, and of ``sample`` and ``inpaint``) is
``'fp32'``, ``'bf16'``, ``'fp16'`` or ``'auto'``. :func:`resolve_precision` turns ``'auto'`` into
``'bf16'`` where the device computes bfloat16 fast (:func:`fast_bf16`: a CUDA GPU with native
bf16, a CPU with AVX512-BF16 or AMX) and ``'fp32'`` elsewhere. :func:`autocast` runs the network's
forward pass in the chosen precision; the losses, the W2 metric, the EMA, the optimizer state and
the samplers' arithmetic stay float32.

The memory format and optimizer kernel per device (:func:`channels_last_for`,
:func:`fused_adamw_for`), from the measurements in ``docs/benchmarks/fast_path.md``:

========================  ===================  ===========
device                    channels-last        fused AdamW
========================  ===================  ===========
CUDA                      yes                  yes
CPU with AVX512           float32 only         no
other CPUs (AVX2, ...)    no                   no
other devices (MPS, ...)  no                   no
========================  ===================  ===========

On the AVX512 CPU measured, channels-last sped float32 training up and slowed bfloat16 down.
CPUs with AVX2 only are not measured, so they stay contiguous; fused AdamW on the CPU is not
measured either, so the CPU keeps the default (foreach) kernel.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from ._validation import check_choice

__all__ = [
    "PRECISIONS",
    "autocast",
    "channels_last_for",
    "fast_bf16",
    "fused_adamw_for",
    "resolve_precision",
]

#: The values ``precision`` takes.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _cpu_has(feature: str) -> bool:
    """``torch.cpu._is_<feature>_supported()``, False where this torch lacks the probe."""
    probe = getattr(torch.cpu, f"_is_{feature}_supported", None)
    return bool(probe()) if probe is not None else False


def _cpu_avx512() -> bool:
    """Whether torch's CPU kernels run their AVX512 versions."""
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")()
    return capability == "AVX512"


def _cuda_bf16() -> bool:
    """Whether the current CUDA device computes bfloat16 natively (compute capability 8.0+)."""
    if not torch.cuda.is_available():
        return False
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch < 2.3: no emulation to exclude
        return bool(torch.cuda.is_bf16_supported())


def fast_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes bfloat16 faster than float32.

    True on a CUDA GPU with native bf16 (``torch.cuda.is_bf16_supported`` without emulation)
    and on a CPU with AVX512-BF16 or AMX tiles; False elsewhere (a CPU with AVX2 only runs
    bf16 autocast several times slower than float32).
    """
    kind = torch.device(device).type
    if kind == "cuda":
        return _cuda_bf16()
    if kind == "cpu":
        return _cpu_has("avx512_bf16") or _cpu_has("amx_tile")
    return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``precision`` checked, with ``'auto'`` resolved for ``device``.

    Parameters
    ----------
    precision : {'auto', 'fp32', 'bf16', 'fp16'}
        ``'auto'`` is ``'bf16'`` where :func:`fast_bf16` holds, else ``'fp32'``; the others
        are returned as given.
    device : torch.device or str
        Where the network runs.

    Returns
    -------
    str
        ``'fp32'``, ``'bf16'`` or ``'fp16'``.
    """
    precision = check_choice(precision, "precision", PRECISIONS)
    if precision != "auto":
        return precision
    return "bf16" if fast_bf16(device) else "fp32"


def autocast(precision: str, device: torch.device | str) -> Any:
    """A context manager running the network in ``precision`` on ``device``.

    ``torch.autocast`` with bfloat16 or float16 (``'auto'`` resolved by
    :func:`resolve_precision`); a ``contextlib.nullcontext`` for ``'fp32'``.
    """
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=_DTYPES[precision])


def channels_last_for(device: torch.device | str, precision: str) -> bool:
    """Whether training on ``device`` in ``precision`` (resolved) runs channels-last.

    True on CUDA, and on a CPU with AVX512 in ``'fp32'``; False otherwise (see the table in the
    module documentation and ``docs/benchmarks/fast_path.md``).
    """
    kind = torch.device(device).type
    if kind == "cuda":
        return True
    return kind == "cpu" and precision == "fp32" and _cpu_avx512()


def fused_adamw_for(device: torch.device | str) -> bool:
    """Whether AdamW uses its fused kernel on ``device``: on CUDA only (the CPU's is unmeasured,
    see ``docs/benchmarks/fast_path.md``)."""
    return torch.device(device).type == "cuda"
