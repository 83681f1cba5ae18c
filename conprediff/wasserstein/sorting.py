"""The sorting engine of the exact 1-D solver: stable argsorts of many short rows.

Three interchangeable stable sorts of the rows of an ``(N, n)`` tensor, with the dropped points
(zero weight) placed last:

* ``'network'``: Batcher's odd-even merge sorting network as elementwise ``minimum``/``maximum``
  over whole columns ``(N,)``, run on one intra-op CPU thread;
* ``'numpy'`` (CPU only): ``numpy.sort`` of each row (SIMD sorting networks in numpy 2);
* ``'torch'``: ``torch.sort`` along the last dimension.

In float32 the network and numpy sort int64 keys that pack each value's order-preserving bit
pattern with its column, so values and indices come back from one sort. Why each default was
chosen: see docs/benchmarks/w2_speed.md.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Iterator

import numpy as np
import torch

__all__ = ["NETWORK_AUTO_MAX", "NUMPY_SIMD_SORT", "SORTS", "resolve_sort", "sorted_rows"]

SORTS = ("auto", "torch", "network", "numpy")

# up to this many points per set the network may replace torch.sort
_NETWORK_MAX = 32

# up to this many points per set 'auto' sorts with the network on the CPU, above with numpy
# (numpy pays a fixed cost per row, the network one per comparator); both sets of a problem use
# the same sort, since mixing row and column layouts is slower than either
NETWORK_AUTO_MAX = 8

# numpy >= 2.0 has the SIMD row sorts on x86-64 (AVX2 and AVX-512) and ARM; older numpy sorts
# short rows by insertion sort, slower than the network
NUMPY_SIMD_SORT = int(np.__version__.split(".")[0]) >= 2

_INT32_MAX = 2**31 - 1


@functools.lru_cache(maxsize=64)
def _sorting_network(n: int) -> tuple[tuple[int, int], ...]:
    """Comparators ``(i, j)``, ``i < j``, of Batcher's odd-even merge sort for ``n`` wires.

    Built for the next power of two; comparators touching a wire ``>= n`` are dropped (those wires
    hold ``+inf``, so such comparators never swap).
    """
    m = 1
    while m < n:
        m *= 2
    pairs = []
    p = 1
    while p < m:
        k = p
        while k >= 1:
            for j in range(k % p, m - k, 2 * k):
                for i in range(min(k, m - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return tuple((i, j) for i, j in pairs if j < n)


def _order_keys(v: torch.Tensor) -> torch.Tensor:
    """int64 keys ``(N, n)`` whose order is that of ``v`` ``(N, n)`` (float32 or narrower).

    The high 32 bits hold the float32 bit pattern made order-preserving as a signed integer
    (negative floats have their 31 low bits flipped; -0.0 ties with +0.0, as in ``torch.sort``);
    the low 32 bits hold the column index ``0..n-1``. Sorting the keys therefore sorts the values
    stably, and both the value and its index can be read back from a sorted key
    (:func:`_decode_keys`).
    """
    N, n = v.shape
    bits = (v.float() + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into +0.0
    high = bits ^ ((bits >> 31) & _INT32_MAX)
    words = torch.empty(N, n, 2, dtype=torch.int32, device=v.device)
    hi, lo = (1, 0) if sys.byteorder == "little" else (0, 1)
    words[..., hi] = high
    words[..., lo] = torch.arange(n, dtype=torch.int32, device=v.device)
    return words.view(torch.int64).view(N, n)


def _decode_keys(keys: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Values (``dtype``) and int64 indices of int64 keys from :func:`_order_keys`."""
    words = keys.view(torch.int32).view(*keys.shape, 2)
    hi, lo = (1, 0) if sys.byteorder == "little" else (0, 1)
    high = words[..., hi]
    values = (high ^ ((high >> 31) & _INT32_MAX)).view(torch.float32).to(dtype)
    return values, words[..., lo].to(torch.int64)


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run torch's CPU operations in the block on one intra-op thread (no-op on other devices).

    The sorting network issues hundreds of operations of a few microseconds each on ``(N,)``
    columns. Split across threads, each of them waits for every thread at its end, and on a busy
    machine (more runnable threads than cores) those waits dominate; on one thread the network is
    as fast on an idle machine. The rest of the solver (a few dozen larger operations) keeps all
    threads. ``torch.set_num_threads`` is process-wide; the previous value is restored on exit,
    also when the block raises. Measurements: see docs/benchmarks/w2_speed.md.
    """
    if device.type != "cpu" or torch.get_num_threads() == 1:
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _network(v: torch.Tensor) -> torch.Tensor:
    """The rows of ``v`` ``(N, n)`` sorted by Batcher's network, as columns ``(n, N)``.

    Each comparator is two elementwise operations over whole columns ``(N,)``. They write into
    ``n + 1`` preallocated rows of one buffer (the column that is no longer needed becomes the
    next output), so the network allocates nothing and reads the strided input columns only once.
    """
    N, n = v.shape
    buf = v.new_empty(n + 1, N)
    free = list(buf.unbind(0))
    cols = list(v.unbind(1))
    owned = [False] * n  # whether cols[k] is a buffer row (else a view of the input)
    with _one_cpu_thread(v.device):
        for i, j in _sorting_network(n):
            lo = free.pop()
            torch.minimum(cols[i], cols[j], out=lo)
            if owned[j]:
                torch.maximum(cols[i], cols[j], out=cols[j])  # elementwise: in place is safe
            else:
                hi = free.pop()
                torch.maximum(cols[i], cols[j], out=hi)
                cols[j], owned[j] = hi, True
            if owned[i]:
                free.append(cols[i])
            cols[i], owned[i] = lo, True
    return torch.stack(cols, 0)


def _network_with_index_f64(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The network on float64 rows ``(N, n)``, the index carried beside the values: columns."""
    N, n = v.shape
    vals = list(v.unbind(1))
    idx = list(torch.arange(n, device=v.device).view(n, 1).expand(n, N).unbind(0))
    with _one_cpu_thread(v.device):
        for i, j in _sorting_network(n):
            swap = vals[i] > vals[j]
            lo = torch.minimum(vals[i], vals[j])
            vals[j] = torch.maximum(vals[i], vals[j])
            vals[i] = lo
            ilo = torch.where(swap, idx[j], idx[i])
            idx[j] = torch.where(swap, idx[i], idx[j])
            idx[i] = ilo
    return torch.stack(vals, 0), torch.stack(idx, 0)


def _network_sorted_columns(
    v: torch.Tensor, with_index: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The rows of ``v`` ``(N, n)`` sorted by the network (stable), as columns ``(n, N)``.

    Every comparator is two elementwise operations over whole columns ``(N,)``. The index rides
    along packed into int64 keys (float32 and narrower, :func:`_order_keys`) or, in float64,
    beside the values.
    """
    if not with_index:
        return _network(v), None
    if v.dtype != torch.float64:
        return _decode_keys(_network(_order_keys(v)), v.dtype)
    return _network_with_index_f64(v)


def _numpy_sorted_rows(
    v: torch.Tensor, with_index: bool, owned: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The rows of CPU ``v`` ``(N, n)`` sorted by numpy (stable), and the source column of each.

    numpy (2.0 and later) sorts each short row with SIMD sorting networks held in registers
    (x86-simd-sort on x86-64, Highway's vqsort on ARM). In float32 it sorts the int64 keys of
    :func:`_order_keys`, which are distinct, so any sort of them is stable; other dtypes use
    ``numpy.argsort(kind='stable')``. ``owned``: ``v`` may be overwritten (it is then sorted in
    place, which spares a fresh large array).
    """
    a = v.detach().numpy()
    if not with_index:
        if owned:
            a.sort(axis=1)
            return v, None
        return torch.from_numpy(np.sort(a, axis=1)), None
    if v.dtype != torch.float32:
        idx = np.argsort(a, axis=1, kind="stable")
        return torch.from_numpy(np.take_along_axis(a, idx, 1)), torch.from_numpy(idx)
    keys = _order_keys(v)
    keys.numpy().sort(axis=1)
    return _decode_keys(keys, v.dtype)


def resolve_sort(sort: str, device: torch.device, n: int | None = None) -> str:
    """The concrete sort for rows of up to ``n`` points on ``device``.

    ``'auto'`` becomes, on the CPU, ``'network'`` for ``n <= NETWORK_AUTO_MAX`` (8) and
    ``'numpy'`` above (with numpy older than 2.0, always ``'network'``), and ``'torch'`` on other
    devices. An explicit choice is kept; ``'numpy'`` off the CPU raises ``ValueError``.
    """
    if sort != "auto":
        if sort == "numpy" and device.type != "cpu":
            raise ValueError(f"sort='numpy' needs CPU tensors, got tensors on {device}")
        return sort
    if device.type != "cpu":
        return "torch"
    if not NUMPY_SIMD_SORT or (n is not None and n <= NETWORK_AUTO_MAX):
        return "network"
    return "numpy"


def _masked(v: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """``v`` with the dropped points (``keep`` 0.0) set to ``+inf``, so that they sort last."""
    if keep is None:
        return v
    # float arithmetic (faster than a boolean masked_fill on the CPU) and one new tensor only
    inf = torch.sub(0.5, keep).mul_(float("inf"))
    return torch.maximum(v, inf, out=inf)


def sorted_rows(
    v: torch.Tensor, keep: torch.Tensor | None, sort: str, with_index: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The rows of ``v`` ``(N, n)`` sorted (stable; dropped points last), as rows ``(N, n)``.

    ``keep`` is None (all points) or ``(N, n)`` with 1.0 for the points kept and 0.0 for the
    dropped ones (they become ``+inf``). ``sort`` is resolved (:func:`resolve_sort`). Returns
    the sorted values and, when ``with_index``, the int64 source column of each. The network
    (``n <= 32``; else ``torch.sort``) works on columns and returns transposed views.
    """
    masked = _masked(v, keep)
    if sort == "numpy":
        return _numpy_sorted_rows(masked, with_index, masked is not v)
    v = masked
    if sort == "torch" or v.shape[1] > _NETWORK_MAX:
        s = torch.sort(v, dim=1, stable=True)
        return s.values, s.indices if with_index else None
    vals, idx = _network_sorted_columns(v, with_index)
    return vals.T, None if idx is None else idx.T
