r"""Batched Wasserstein-2 metrics between small weighted point sets.

Every metric in this module is a small object (a scikit-learn ``BaseEstimator``: the constructor
only stores its arguments, ``get_params`` and ``repr`` work) with one common call signature::

    metric(x, y, x_weights=None, y_weights=None) -> torch.Tensor of shape (P,)

which returns the **squared** Wasserstein-2 distance (or the metric's approximation of it)

.. math::
    W_2^2(\mu_p, \nu_p) = \min_{T \in U(a_p, b_p)} \sum_{i,j} T_{ij}\, \lVert x_{p,i} - y_{p,j}
    \rVert_2^2, \qquad \mu_p = \sum_i a_{p,i} \delta_{x_{p,i}},\quad
    \nu_p = \sum_j b_{p,j} \delta_{y_{p,j}}

for ``P`` independent problems at once:

* ``x``: ``(P, Q, C)`` — ``P`` problems of ``Q`` points in ``C`` dimensions (in the context loss:
  the decoder's predicted samples, one problem per image point);
* ``y``: ``(P, K, C)`` — the second point sets (in the context loss: the true neighbours);
* ``x_weights``: ``(P, Q)`` and ``y_weights``: ``(P, K)`` — non-negative masses with a positive
  sum per problem (they are normalised to sum to 1); ``None`` means uniform. Zero weights are
  allowed and have no influence on the value nor any gradient: they mark neighbours dropped at
  image borders.

The result has the dtype and device of ``x`` (float32 or float64, CPU or CUDA) and is differentiable
in ``x`` (and in ``y``). Input shapes are validated at the call (``ValueError``/``TypeError`` naming
the argument); the value checks on the weights (non-negative, positive sum) cost a device
synchronisation on CUDA and can be switched off with ``validate=False``.

Metrics
-------
:class:`ExactW2`
    POT's network-simplex solver per problem (float64, CPU loop): the reference; slow.
:class:`SortedW2`
    Exact in one dimension with arbitrary weights, via quantile functions; batched and fast.
:class:`SinkhornW2`
    Batched log-domain entropic OT with :math:`\varepsilon`-scaling; optionally debiased.
:class:`SlicedW2`
    Sliced Wasserstein: random directions, then the exact 1-D solver.
:class:`GaussianW2`
    Bures–Wasserstein closed form between moment-matched Gaussians (diagonal or full covariance);
    :meth:`GaussianW2.from_moments` takes Gaussians directly.
:class:`AutoW2` and :func:`resolve_metric`
    The default of the context loss: :class:`SortedW2` for ``C == 1`` and :class:`SlicedW2` for
    ``C > 1`` (see :class:`AutoW2` for why).

References
----------
* Peyré, G., & Cuturi, M. (2019). Computational optimal transport: With applications to data
  science. Foundations and Trends in Machine Learning, 11(5-6), 355-607.
* Bonneel, N., Rabin, J., Peyré, G., & Pfister, H. (2015). Sliced and Radon Wasserstein
  barycenters of measures. Journal of Mathematical Imaging and Vision, 51(1), 22-45.
* Dowson, D. C., & Landau, B. V. (1982). The Fréchet distance between multivariate normal
  distributions. Journal of Multivariate Analysis, 12(3), 450-455.
* Givens, C. R., & Shortt, R. M. (1984). A class of Wasserstein metrics for probability
  distributions. Michigan Mathematical Journal, 31(2), 231-240.
* Feydy, J., Séjourné, T., Vialard, F.-X., Amari, S., Trouvé, A., & Peyré, G. (2019).
  Interpolating between optimal transport and MMD using Sinkhorn divergences. AISTATS.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from fractions import Fraction
from typing import NamedTuple

import numpy as np
import torch
from sklearn.base import BaseEstimator
from torch.utils.checkpoint import checkpoint

__all__ = [
    "AutoW2",
    "ExactW2",
    "GaussianW2",
    "SinkhornW2",
    "SlicedW2",
    "SortedW2",
    "resolve_metric",
    "weighted_moments",
]


# --------------------------------------------------------------------------------------------
# validation and small helpers
# --------------------------------------------------------------------------------------------


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def _check_weights(w, name: str, P: int, n: int, n_name: str, ref: torch.Tensor, validate: bool):
    if w is None:
        return None
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(w).__name__}")
    if w.dtype.is_complex:
        raise TypeError(f"{name} must be a real tensor, got dtype {w.dtype}")
    if w.ndim != 2 or w.shape[0] != P or w.shape[1] != n:
        raise ValueError(f"{name} must have shape (P, {n_name}) = ({P}, {n}), got {_shape(w)}")
    if w.device != ref.device:
        raise ValueError(f"{name} must be on the device of x ({ref.device}), got {w.device}")
    w = w.to(ref.dtype)
    if validate:
        if bool((w < 0).any()) or not bool(torch.isfinite(w).all()):
            raise ValueError(
                f"{name} must be finite and non-negative; got negative or non-finite entries"
            )
        if bool((w.sum(-1) <= 0).any()):
            raise ValueError(
                f"{name} must have a positive sum in every problem (row); got a row of zeros"
            )
    return w


def _check_points(x, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor (float32 or float64), got dtype {x.dtype}"
        )
    if x.ndim != 3:
        raise ValueError(
            f"{name} must have shape (P, n_points, C) (3 dimensions), got "
            f"{x.ndim} dimensions with shape {_shape(x)}"
        )
    if x.shape[1] == 0:
        raise ValueError(f"{name} must hold at least one point per problem, got shape {_shape(x)}")


def _check_inputs(x, y, x_weights, y_weights, validate: bool):
    """Validate the common call signature; return the weights cast to x's dtype."""
    _check_points(x, "x")
    _check_points(y, "y")
    if y.dtype != x.dtype:
        raise TypeError(f"y must have the dtype of x ({x.dtype}), got {y.dtype}")
    if y.device != x.device:
        raise ValueError(f"y must be on the device of x ({x.device}), got {y.device}")
    if y.shape[0] != x.shape[0]:
        raise ValueError(
            f"y must have the number of problems P of x ({x.shape[0]}) in its first "
            f"dimension, got shape {_shape(y)}"
        )
    if y.shape[2] != x.shape[2]:
        raise ValueError(
            f"y must have the number of channels C of x ({x.shape[2]}) in its last "
            f"dimension, got shape {_shape(y)}"
        )
    P, Q, _ = x.shape
    K = y.shape[1]
    xw = _check_weights(x_weights, "x_weights", P, Q, "Q", x, validate)
    yw = _check_weights(y_weights, "y_weights", P, K, "K", x, validate)
    return xw, yw


def _normalise(w: torch.Tensor | None, P: int, n: int, ref: torch.Tensor) -> torch.Tensor:
    """Weights (P, n) summing to 1 (uniform when ``w`` is None)."""
    if w is None:
        return ref.new_full((P, n), 1.0 / n)
    return w / w.sum(-1, keepdim=True)


def _sq_cost(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean cost ``(P, Q, K)``; the difference form keeps it exact and >= 0."""
    return (x.unsqueeze(2) - y.unsqueeze(1)).pow(2).sum(-1)


# --------------------------------------------------------------------------------------------
# 1-D exact solver (shared by SortedW2 and SlicedW2)
# --------------------------------------------------------------------------------------------
#
# Two paths, both exact:
#
# * the *support* path, for problems whose weights are uniform on their support (every weight
#   of a row is 0 or the row's common value: uniform sets, and neighbourhoods whose out-of-grid
#   points were dropped). Both sets are argsorted with the zero-weight points last; the monotone
#   optimal plan between ``m`` and ``n`` equal masses depends only on ``(m, n)``, so it is a
#   cached list of (i, j, mass) triples, and value and gradient are computed together in one
#   custom autograd function (no graph through the sort).
# * the *quantile* path, for arbitrary weights: the merged grid of the two cumulative weight
#   vectors, located with ``torch.searchsorted`` (ordinary autograd).


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


_NETWORK_MAX = 32  # up to this many points per set the network may replace torch.sort
_SORTS = ("auto", "torch", "network", "numpy")
_INT32_MAX = 2**31 - 1


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
def _one_cpu_thread(device: torch.device):
    """Run torch's CPU operations in the block on one intra-op thread (no-op on other devices).

    The sorting network issues hundreds of operations of a few microseconds each on ``(N,)``
    columns. Split across threads, each of them waits for every thread at its end; on a busy
    machine (more runnable threads than cores) those waits grow from microseconds to
    milliseconds. Measured on 2 cores shared with a training run, K = 8, N = 50,176: the network
    took 360 ms with 2 threads and 0.46 ms on one; on an idle machine one thread is as fast
    (1.7 against 1.8 ms at K = 24). The rest of the solver (a few dozen larger operations) keeps
    all threads: on one thread it was 1.3-1.8x slower on an idle machine. ``torch.set_num_threads``
    is process-wide; the previous value is restored on exit.
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


def _numpy_sorted_rows(
    v: torch.Tensor, with_index: bool, owned: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The rows of CPU ``v`` ``(N, n)`` sorted by numpy (stable), and the source column of each.

    numpy (2.0 and later) sorts each short row with SIMD sorting networks held in registers
    (x86-simd-sort on x86-64, Highway's vqsort on ARM), several times faster on the CPU than
    torch's sort, or than a network of elementwise operations over whole columns. In float32 it
    sorts the int64 keys of :func:`_order_keys`, which are distinct, so any sort of them is stable;
    other dtypes use ``numpy.argsort(kind='stable')``. ``owned``: ``v`` may be overwritten (it is
    then sorted in place: each fresh multi-megabyte array costs page faults).
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


# numpy >= 2.0 has the SIMD row sorts on x86-64 (AVX2 and AVX-512) and ARM; older numpy sorts
# short rows by insertion sort, slower than the network
_NUMPY_SIMD_SORT = int(np.__version__.split(".")[0]) >= 2


# Up to this many points per set 'auto' sorts with the network on the CPU: numpy pays a fixed
# cost of tens of nanoseconds per row, the network a cost per comparator. Measured on 50,176 rows
# (AMD EPYC, numpy 2.4, one thread), values only: n = 8 network 0.43 ms against numpy 1.64,
# n = 16 1.11 against 1.49, n = 24 2.32 against 2.15; with the index (int64 keys, twice the
# bytes): n = 8 1.27 against 1.72, n = 12 2.64 against 1.97. Both sets of a problem use the same
# sort: the network returns column-major views, and mixing layouts is slower than either.
_NETWORK_AUTO_MAX = 8


def _resolve_sort(sort: str, device: torch.device, n: int | None = None) -> str:
    """The sort for rows of up to ``n`` points: 'auto' -> on the CPU the network for
    ``n <= 8`` and 'numpy' above (with numpy older than 2.0, always the network); 'torch' on
    other devices."""
    if sort != "auto":
        if sort == "numpy" and device.type != "cpu":
            raise ValueError(f"sort='numpy' needs CPU tensors, got tensors on {device}")
        return sort
    if device.type != "cpu":
        return "torch"
    if not _NUMPY_SIMD_SORT or (n is not None and n <= _NETWORK_AUTO_MAX):
        return "network"
    return "numpy"


def _masked(v: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """``v`` with the dropped points (``keep`` 0.0) set to ``+inf``, so that they sort last."""
    if keep is None:
        return v
    # float arithmetic, much faster than a boolean masked_fill on the CPU, and one new tensor
    # only (on the CPU each fresh multi-megabyte tensor costs page faults: measured 0.6 ms for
    # this form against 5.5 ms for three out-of-place operations on (50,176, 24) float32)
    inf = torch.sub(0.5, keep).mul_(float("inf"))
    return torch.maximum(v, inf, out=inf)


def _sorted_rows(
    v: torch.Tensor, keep: torch.Tensor | None, sort: str, with_index: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The rows of ``v`` ``(N, n)`` sorted (stable; dropped points last), as rows ``(N, n)``.

    ``keep`` is None (all points) or ``(N, n)`` with 1.0 for the points kept and 0.0 for the
    dropped ones (they become ``+inf``). ``sort`` is resolved (:func:`_resolve_sort`). Returns
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


def _network_sorted_columns(
    v: torch.Tensor, with_index: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The rows of ``v`` ``(N, n)`` sorted by the network (stable), as columns ``(n, N)``.

    Every comparator is two elementwise operations over whole columns ``(N,)``. The index rides
    along packed into int64 keys (float32 and narrower, :func:`_order_keys`) or, in float64,
    beside the values.
    """
    N, n = v.shape
    if not with_index:
        return _network(v), None
    if v.dtype != torch.float64:
        return _decode_keys(_network(_order_keys(v)), v.dtype)
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


@functools.lru_cache(maxsize=4096)
def _monotone_plan(m: int, n: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[float, ...]]:
    """The monotone optimal plan between ``m`` and ``n`` equal masses, as ``(i, j, mass)`` lists.

    Sorted atom ``i`` of the first set holds ``[i/m, (i+1)/m)`` of the unit interval and atom
    ``j`` of the second ``[j/n, (j+1)/n)``; the plan moves the length of each non-empty
    intersection (``m + n - gcd(m, n)`` of them), computed in exact rational arithmetic.
    """
    cuts = sorted({Fraction(i, m) for i in range(m + 1)} | {Fraction(j, n) for j in range(n + 1)})
    ii, jj, mass = [], [], []
    for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
        ii.append(int(lo * m))  # floor: the atom whose interval contains [lo, hi)
        jj.append(int(lo * n))
        mass.append(float(hi - lo))
    return tuple(ii), tuple(jj), tuple(mass)


def _support_groups(m, n, Q: int, K: int):
    """``[(m, n, rows or None)]``: the problems grouped by their support sizes ``(m, n)``.

    ``m`` and ``n`` are ``(N,)`` sizes or None (all points kept); rows None means all problems.
    One stable argsort of the group codes yields every group's rows, in increasing order (on the
    CPU numpy's, a radix sort of the int16 codes: 0.4 ms for 50,176 problems against 1.3 ms for
    ``torch.argsort``).
    """
    if m is None and n is None:
        return [(Q, K, None)]
    m = torch.full_like(n, Q) if m is None else m
    n = torch.full_like(m, K) if n is None else n
    code = m * (K + 1) + n
    counts = torch.bincount(code, minlength=(Q + 1) * (K + 1))
    codes = counts.nonzero().squeeze(1)
    if codes.numel() == 1:
        c = int(codes[0])
        return [(c // (K + 1), c % (K + 1), None)]
    if code.device.type == "cpu" and (Q + 1) * (K + 1) <= np.iinfo(np.int16).max:
        order = torch.from_numpy(np.argsort(code.numpy().astype(np.int16), kind="stable"))
    else:
        order = torch.argsort(code, stable=True)
    rows = order.split(counts[codes].tolist())
    return [(c // (K + 1), c % (K + 1), r) for c, r in zip(codes.tolist(), rows, strict=True)]


class _SupportW2(torch.autograd.Function):
    r"""Exact 1-D W2² for weights uniform on their support; value and gradient in one pass.

    Inputs: ``x`` ``(N, Q)``, ``y`` ``(N, K)``, keep masks of the same shapes (1.0 kept, 0.0
    dropped; None = all kept) and support sizes ``(N,)`` int64 (None = all). The work is done on
    sorted rows; the gradient in the sorted order,
    :math:`2 \sum_j \pi_{ij} (x_{(i)} - y_{(j)})`, is scattered back to the input positions.
    """

    @staticmethod
    def forward(ctx, x, y, x_keep, y_keep, m, n, sort):
        N, Q = x.shape
        K = y.shape[1]
        need_x, need_y = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        sort = _resolve_sort(sort, x.device, max(Q, K))
        xs, ix = _sorted_rows(x, x_keep, sort, need_x)  # (N, Q)
        ys, iy = _sorted_rows(y, y_keep, sort, need_y)  # (N, K)
        groups = _support_groups(m, n, Q, K)
        identity = Q == K  # the identity plan with masses 1/K, computed on every problem below
        if identity:
            groups = [g for g in groups if g[:2] != (K, K)]
        parts = []  # (rows, value, gradient in x, gradient in y) of every other group
        for mg, ng, rows in groups:
            ii, jj, mass = _monotone_plan(mg, ng)
            ii = torch.tensor(ii, device=x.device)
            jj = torch.tensor(jj, device=x.device)
            mass = torch.tensor(mass, device=x.device, dtype=xs.dtype)
            xg = xs if rows is None else xs.index_select(0, rows)
            yg = ys if rows is None else ys.index_select(0, rows)
            dg = xg.index_select(1, ii) - yg.index_select(1, jj)  # (Ng, L) pairs of the plan
            val = torch.mv(dg * dg, mass)
            dm = dg.mul_(mass) if need_x or need_y else None
            gxg = xg.new_zeros(xg.shape).index_add_(1, ii, dm, alpha=2) if need_x else None
            gyg = yg.new_zeros(yg.shape).index_add_(1, jj, dm, alpha=-2) if need_y else None
            parts.append((rows, val, gxg, gyg))
        if identity:
            # Every problem, in place on the sorted values (no longer needed); the problems with
            # dropped points (inf among their sorted values) are overwritten by their own plans
            # below. Row sums as matrix-vector products: a reduction along a short last
            # dimension is several times slower on the CPU.
            d = xs.sub_(ys) if xs.is_contiguous() else xs - ys
            gx = d * (2.0 / K) if need_x else None
            gy = d * (-2.0 / K) if need_y else None
            out = torch.mv(d.square_(), d.new_full((K,), 1.0 / K))
        else:
            out = x.new_empty(N)
            gx = x.new_empty(N, Q) if need_x else None
            gy = y.new_empty(N, K) if need_y else None
        for rows, val, gxg, gyg in parts:
            if rows is None:
                out, gx, gy = val, gxg, gyg
                continue
            out.index_copy_(0, rows, val)
            if need_x:
                gx.index_copy_(0, rows, gxg)
            if need_y:
                gy.index_copy_(0, rows, gyg)
        # each row of an index is a permutation, so the scatter writes every entry
        gx_full = torch.empty_like(gx).scatter_(1, ix, gx) if need_x else None
        gy_full = torch.empty_like(gy).scatter_(1, iy, gy) if need_y else None
        ctx.save_for_backward(gx_full, gy_full)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        gx, gy = ctx.saved_tensors
        g = grad.unsqueeze(1)
        return (None if gx is None else g * gx, None if gy is None else g * gy,
                None, None, None, None, None)


def _w2_1d_quantile(x, y, a, b) -> torch.Tensor:
    """``(N, Q)``, ``(N, K)`` with weights ``(N, Q)``/``(N, K)`` (None = uniform): quantile form."""
    N, Q = x.shape
    K = y.shape[1]
    xs, ix = x.sort(-1)
    ys, iy = y.sort(-1)
    if a is None:
        ca = torch.arange(1, Q + 1, device=x.device, dtype=x.dtype).div_(Q).expand(N, Q)
    else:
        ca = a.gather(-1, ix).cumsum(-1)
        ca = ca / ca[:, -1:]  # ends at exactly 1
    if b is None:
        cb = torch.arange(1, K + 1, device=x.device, dtype=x.dtype).div_(K).expand(N, K)
    else:
        cb = b.gather(-1, iy).cumsum(-1)
        cb = cb / cb[:, -1:]
    u = torch.cat([ca, cb], -1).sort(-1).values  # merged grid, (N, Q + K), last entry 1
    u_lo = torch.cat([u.new_zeros(N, 1), u[:, :-1]], -1)
    du = u - u_lo
    # On (u_lo, u] the quantile function of x is the first sorted atom whose cumulative weight
    # exceeds u_lo; zero-weight atoms never qualify, so they get neither value nor gradient.
    jx = torch.searchsorted(ca.contiguous(), u_lo, right=True).clamp_max_(Q - 1)
    jy = torch.searchsorted(cb.contiguous(), u_lo, right=True).clamp_max_(K - 1)
    d = xs.gather(-1, jx) - ys.gather(-1, jy)
    return (du * d * d).sum(-1)


class _Support(NamedTuple):
    """Support of a weight matrix ``(N, n)``; None fields mean "all points" / "all problems"."""

    keep: torch.Tensor | None  # (N, n) 1.0 where the weight is > 0, else 0.0
    size: torch.Tensor | None  # (N,) int64: number of points kept
    uniform: torch.Tensor | None  # (N,) bool: the kept weights of the problem are equal


def _support(w: torch.Tensor | None) -> _Support:
    """Which problems have weights uniform on their support.

    Built from elementwise float operations and matrix-vector products only (reductions along a
    short last dimension, and boolean masks, are several times slower on the CPU). Kept weights
    that differ by less than ``8 eps`` of the dtype, relative to their sum, count as equal: the
    same order as the rounding of the sums that follow.
    """
    if w is None:
        return _Support(None, None, None)
    N, n = w.shape
    keep = w.sign()
    ones = w.new_ones(n)
    size = torch.mv(keep, ones)
    total = torch.mv(w, ones)
    dev = keep * (total / size).unsqueeze(1)
    spread = torch.mv(dev.sub_(w).abs_(), ones)  # in place: fresh large tensors cost page faults
    uniform = spread <= (8 * torch.finfo(w.dtype).eps) * total
    full = bool((size == n).all())
    return _Support(
        None if full else keep,
        None if full else size.round().to(torch.int64),
        None if bool(uniform.all()) else uniform,
    )


def _select(s: _Support, rows: torch.Tensor) -> _Support:
    return _Support(
        None if s.keep is None else s.keep.index_select(0, rows),
        None if s.size is None else s.size.index_select(0, rows),
        None,
    )


def _w2_1d(x, y, a=None, b=None, split: bool = True, sort: str = "auto") -> torch.Tensor:
    """Exact batched 1-D W2²: ``x`` ``(N, Q)``, ``y`` ``(N, K)``, weights or None -> ``(N,)``.

    Problems whose weights are uniform on their support take the support path; the others (all
    problems when ``split=False``) the quantile path.
    """
    if x.dtype in (torch.float16, torch.bfloat16):  # solve in float32, answer in x's dtype
        a = None if a is None else a.float()
        b = None if b is None else b.float()
        return _w2_1d(x.float(), y.float(), a, b, split, sort).to(x.dtype)
    if not split:
        return _w2_1d_quantile(x, y, a, b)
    sa, sb = _support(a), _support(b)
    if sa.uniform is None and sb.uniform is None:
        return _SupportW2.apply(x, y, sa.keep, sb.keep, sa.size, sb.size, sort)
    ok = sa.uniform if sb.uniform is None else sb.uniform if sa.uniform is None else (
        sa.uniform & sb.uniform)
    fast = ok.nonzero().squeeze(1)
    slow = (~ok).nonzero().squeeze(1)
    r_slow = _w2_1d_quantile(
        x.index_select(0, slow),
        y.index_select(0, slow),
        None if a is None else a.index_select(0, slow),
        None if b is None else b.index_select(0, slow),
    )
    if fast.numel() == 0:
        return r_slow
    fa, fb = _select(sa, fast), _select(sb, fast)
    r_fast = _SupportW2.apply(
        x.index_select(0, fast), y.index_select(0, fast),
        fa.keep, fb.keep, fa.size, fb.size, sort,
    )
    out = x.new_zeros(x.shape[0])
    return out.index_copy(0, torch.cat([fast, slow]), torch.cat([r_fast, r_slow]))


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------


class _W2Metric(BaseEstimator):
    """Common base: validation and the call signature; subclasses implement ``_compute``."""

    def __call__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        x_weights: torch.Tensor | None = None,
        y_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Squared W2 (or its approximation) for ``P`` problems.

        Parameters
        ----------
        x : torch.Tensor, shape (P, Q, C)
            First point sets (floating point).
        y : torch.Tensor, shape (P, K, C)
            Second point sets, same dtype and device as ``x``.
        x_weights : torch.Tensor, shape (P, Q), optional
            Non-negative masses of ``x`` (normalised per problem); None means uniform.
        y_weights : torch.Tensor, shape (P, K), optional
            Non-negative masses of ``y`` (normalised per problem); None means uniform.

        Returns
        -------
        torch.Tensor, shape (P,)
            Squared distances, dtype and device of ``x``.
        """
        xw, yw = _check_inputs(x, y, x_weights, y_weights, getattr(self, "validate", True))
        return self._compute(x, y, xw, yw)

    def _compute(self, x, y, a, b):  # pragma: no cover - abstract
        raise NotImplementedError


class ExactW2(_W2Metric):
    r"""Exact squared W2 by POT's network simplex (``ot.emd``), one problem at a time.

    The reference metric: the plan :math:`T^\star_p` of every problem is computed in float64 with
    NumPy on the CPU, and the value is returned as the torch expression

    .. math::
        W_2^2(\mu_p, \nu_p) = \sum_{i,j} T^\star_{p,ij}\, \lVert x_{p,i} - y_{p,j} \rVert^2,

    so that autograd gives, with the plan held fixed, the envelope-theorem gradient
    :math:`\partial W_2^2 / \partial x_{p,i} = 2 \sum_j T^\star_{p,ij} (x_{p,i} - y_{p,j})` (a true
    gradient wherever the optimal plan is unique). Slow: a Python loop over the problems.

    Parameters
    ----------
    num_iter_max : int, default=100000
        Maximum number of network-simplex iterations per problem (POT's ``numItermax``).
    validate : bool, default=True
        Check the weights' values (non-negative, positive sum) at every call.

    See Also
    --------
    ot.emd2 : the POT solver this wraps.

    References
    ----------
    * Peyré, G., & Cuturi, M. (2019). Computational optimal transport, ch. 3.
    """

    def __init__(self, num_iter_max: int = 100000, validate: bool = True):
        self.num_iter_max = num_iter_max
        self.validate = validate

    def _compute(self, x, y, a, b):
        import ot

        P, Q, _ = x.shape
        K = y.shape[1]
        cost = _sq_cost(x, y)
        M = cost.detach().to("cpu", torch.float64).numpy()
        an = _normalise(a, P, Q, x).detach().to("cpu", torch.float64).numpy()
        bn = _normalise(b, P, K, x).detach().to("cpu", torch.float64).numpy()
        plans = np.empty((P, Q, K))
        for p in range(P):
            ap = an[p] / an[p].sum()
            bp = bn[p] / bn[p].sum()
            plans[p] = ot.emd(ap, bp, M[p], numItermax=self.num_iter_max)
        T = torch.from_numpy(plans).to(device=x.device, dtype=x.dtype)
        return (T * cost).sum((1, 2))


class SortedW2(_W2Metric):
    r"""Exact squared W2 in one dimension, with arbitrary weights, batched (no loop).

    In 1-D the optimal plan is monotone and

    .. math::
        W_2^2(\mu, \nu) = \int_0^1 \bigl(F_\mu^{-1}(u) - F_\nu^{-1}(u)\bigr)^2 \, du
        = \sum_k (u_k - u_{k-1}) \bigl(F_\mu^{-1}(u_k^-) - F_\nu^{-1}(u_k^-)\bigr)^2,

    where :math:`0 = u_0 \le u_1 \le \dots \le u_{Q+K} = 1` is the merged grid of the two
    cumulative weight vectors, on each interval of which both quantile functions are constant.
    Zero-weight atoms contribute nothing, to the value or the gradient.

    Two exact paths:

    * **support path** (problems whose weights are uniform on their support, e.g. uniform sets,
      or neighbourhoods whose out-of-grid points were dropped). Both sets are argsorted with the
      zero-weight atoms last. Between :math:`m` and :math:`n` equal masses the monotone plan
      depends only on :math:`(m, n)`; it is computed once, in exact rational arithmetic, and
      cached. For :math:`m = n` it is the identity and
      :math:`W_2^2 = \frac1n \sum_i (x_{(i)} - y_{(i)})^2`. The value and the gradient
      :math:`\partial W_2^2 / \partial x_i = 2 \sum_j \pi_{ij} (x_i - y_j)` are computed in
      one pass by a custom autograd function, so no graph is built through the sort. It is not
      twice differentiable.
    * **quantile path** (any other weights): the merged grid from the cumulative weights, with
      ``torch.searchsorted``, under ordinary autograd.

    Cost :math:`O((Q+K)\log(Q+K))` per problem.

    Parameters
    ----------
    split : bool, default=True
        Send the problems whose weights are uniform on their support to the support path and only
        the others to the quantile path. This costs one device synchronisation on CUDA. False
        sends every problem to the quantile path.
    sort : {'auto', 'numpy', 'network', 'torch'}, default='auto'
        How the support path argsorts. All are stable sorts and give the same results.

        * 'numpy' (CPU only): ``numpy.sort`` of each short row, which numpy 2 does with SIMD
          sorting networks in registers. In float32 it sorts int64 keys that pack each value's
          order-preserving bit pattern with its index. The fastest on the CPU above about ten
          points per set: 1.3-2x the network at 24 (``docs/benchmarks/w2_speed.md``).
        * 'network': for up to 32 points, a Batcher odd-even merge sorting network of
          elementwise ``minimum``/``maximum`` over whole columns ``(P,)``, on the same keys;
          4-5x faster than ``torch.sort`` on the CPU, and faster than numpy up to 8 points per
          set (numpy pays a fixed cost per row).
        * 'torch': ``torch.sort`` along the short last dimension.
        * 'auto': on the CPU 'network' when both sets have at most 8 points (the loss's
          ring of one stride) and 'numpy' above (with numpy older than 2.0, always 'network');
          'torch' on other devices.
    validate : bool, default=True
        Check the weights' values (non-negative, positive sum) at every call.

    Raises
    ------
    ValueError
        At call time, when the points have more than one channel (``C > 1``).

    Notes
    -----
    The sorting network runs on one intra-op thread on the CPU (``torch.set_num_threads(1)``
    while it runs, then restored). Its hundreds of small operations would otherwise wait for
    every thread at each step, which costs 100x on a busy machine. numpy's sort runs on one
    thread anyway.

    References
    ----------
    * Peyré, G., & Cuturi, M. (2019). Computational optimal transport, remark 2.30.
    """

    def __init__(self, split: bool = True, sort: str = "auto", validate: bool = True):
        self.split = split
        self.sort = sort
        self.validate = validate

    def _compute(self, x, y, a, b):
        if self.sort not in _SORTS:
            raise ValueError(f"sort must be one of {_SORTS}, got {self.sort!r}")
        if x.shape[2] != 1:
            raise ValueError(
                "SortedW2 is exact in one dimension only: x and y must have C == 1 channel, got "
                f"x of shape {_shape(x)}; use SlicedW2, SinkhornW2 or GaussianW2 for C > 1"
            )
        return _w2_1d(x[..., 0], y[..., 0], a, b, split=self.split, sort=self.sort)


def _weighted_mean(z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.einsum("pn,pnc->pc", w, z)


def _log_weights(w: torch.Tensor) -> torch.Tensor:
    # log 0 = -inf without an infinite gradient on the weights
    tiny = torch.finfo(w.dtype).tiny
    return torch.where(w > 0, w.clamp_min(tiny).log(), torch.full_like(w, -float("inf")))


class SinkhornW2(_W2Metric):
    r"""Entropic approximation of squared W2: batched log-domain Sinkhorn with ε-scaling.

    Each problem's two sets are first centred at their weighted means
    :math:`m_x, m_y` (the squared cost decomposes exactly as
    :math:`W_2^2 = \lVert m_x - m_y \rVert^2 + W_2^2(\bar\mu, \bar\nu)` between the centred
    measures), and entropic OT is solved between the centred sets with the cost
    :math:`C_{ij} = \lVert \bar x_i - \bar y_j \rVert^2` and a regularisation relative to the
    spread of the data,

    .. math::
        \varepsilon_p = \varepsilon \,
        \bigl(\operatorname{tr}\Sigma_x + \operatorname{tr}\Sigma_y\bigr),
        \qquad T^\varepsilon = \operatorname*{argmin}_{T \in U(a, b)} \langle T, C \rangle
        + \varepsilon_p \operatorname{KL}(T \,\Vert\, a \otimes b),

    so that the result does not depend on the units of the data (scaling both sets by ``s``
    multiplies it by ``s²`` exactly) nor on a shift of either set. The log-domain iterations
    :math:`f_i = -\varepsilon \log \sum_j b_j e^{(g_j - C_{ij})/\varepsilon}`,
    :math:`g_j = -\varepsilon \log \sum_i a_i e^{(f_i - C_{ij})/\varepsilon}` start at
    :math:`\varepsilon = \operatorname{tr}\Sigma_x + \operatorname{tr}\Sigma_y` and multiply it by
    0.8 at every iteration down to :math:`\varepsilon_p` (ε-scaling), then continue at
    :math:`\varepsilon_p` for the rest of the ``n_iter`` iterations.

    **Returned quantity** (not debiased): the transport cost of the entropic plan, without the
    entropy term,

    .. math::
        \mathrm{OT}_\varepsilon(x, y) = \lVert m_x - m_y \rVert^2 + \langle T^\varepsilon, C \rangle
        \;\ge\; W_2^2 \quad\text{and}\quad
        \mathrm{OT}_\varepsilon - W_2^2 \le \varepsilon_p \log \min(Q, K)

    at convergence. With ``debiased=True``, the Sinkhorn divergence built on the same quantity with
    the same :math:`\varepsilon_p` (that of the pair ``(x, y)``):
    :math:`S(x, y) = \mathrm{OT}_\varepsilon(x, y) - \tfrac12 \mathrm{OT}_\varepsilon(x, x) -
    \tfrac12 \mathrm{OT}_\varepsilon(y, y)`, which is exactly 0 for ``y = x``.

    The last plan is rounded onto the transport polytope :math:`U(a, b)` (Altschuler et al.,
    2017), so the value is always the cost of a feasible plan (never below :math:`W_2^2`), even
    before convergence.

    Gradients are those of the returned value, by autograd through the iterations; each
    iteration is checkpointed, so memory stays of the order of one ``(P, Q, K)`` cost matrix.

    Parameters
    ----------
    epsilon : float, default=1e-2
        Regularisation relative to :math:`\operatorname{tr}\Sigma_x + \operatorname{tr}\Sigma_y`.
    n_iter : int, default=100
        Number of Sinkhorn iterations (each updates both potentials), ε-scaling included.
    debiased : bool, default=False
        Return the Sinkhorn divergence instead of the entropic transport cost.
    validate : bool, default=True
        Check the weights' values (non-negative, positive sum) at every call.

    References
    ----------
    * Peyré, G., & Cuturi, M. (2019). Computational optimal transport, ch. 4.
    * Feydy, J. et al. (2019). Interpolating between optimal transport and MMD using Sinkhorn
       divergences. AISTATS.
    * Altschuler, J., Weed, J., & Rigollet, P. (2017). Near-linear time approximation
       algorithms for optimal transport via Sinkhorn iteration. NeurIPS.
    """

    def __init__(
        self,
        epsilon: float = 1e-2,
        n_iter: int = 100,
        debiased: bool = False,
        validate: bool = True,
    ):
        self.epsilon = epsilon
        self.n_iter = n_iter
        self.debiased = debiased
        self.validate = validate

    def _compute(self, x, y, a, b):
        if not (float(self.epsilon) > 0):
            raise ValueError(f"epsilon must be > 0, got {self.epsilon!r}")
        if int(self.n_iter) < 1:
            raise ValueError(f"n_iter must be >= 1, got {self.n_iter!r}")
        P, Q, _ = x.shape
        K = y.shape[1]
        a = _normalise(a, P, Q, x)
        b = _normalise(b, P, K, x)
        mx, my = _weighted_mean(x, a), _weighted_mean(y, b)
        xc, yc = x - mx.unsqueeze(1), y - my.unsqueeze(1)
        spread = (_weighted_mean(xc * xc, a) + _weighted_mean(yc * yc, b)).sum(-1)
        spread = torch.where(spread > 0, spread, torch.ones_like(spread))
        la, lb = _log_weights(a), _log_weights(b)
        ot_xy = self._centred(xc, yc, a, b, la, lb, spread)
        mean_term = (mx - my).pow(2).sum(-1)
        if not self.debiased:
            return mean_term + ot_xy
        ot_xx = self._centred(xc, xc, a, a, la, la, spread)
        ot_yy = self._centred(yc, yc, b, b, lb, lb, spread)
        return mean_term + ot_xy - 0.5 * (ot_xx + ot_yy)

    def _centred(self, xc, yc, a, b, la, lb, spread):
        C = _sq_cost(xc, yc)
        n_iter = int(self.n_iter)
        f = C.new_zeros(C.shape[:2])
        g = C.new_zeros(C.shape[0], C.shape[2])
        use_ckpt = torch.is_grad_enabled() and C.requires_grad
        for k in range(n_iter):
            rel = max(float(self.epsilon), _EPS_DECAY**k)
            eps = (rel * spread).unsqueeze(-1)
            if use_ckpt:
                f, g = checkpoint(_sinkhorn_step, f, g, C, la, lb, eps, use_reentrant=False)
            else:
                f, g = _sinkhorn_step(f, g, C, la, lb, eps)
        # plan of the last iteration (eps is then epsilon * spread once n_iter exceeds the scaling)
        logT = (f.unsqueeze(2) + g.unsqueeze(1) - C) / eps.unsqueeze(-1)
        T = _round_to_marginals(torch.exp(logT + la.unsqueeze(2) + lb.unsqueeze(1)), a, b)
        return (T * C).sum((1, 2))


_EPS_DECAY = 0.8  # epsilon-scaling factor per iteration


def _round_to_marginals(T: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Project a positive plan ``(P, Q, K)`` onto the plans with marginals ``a`` and ``b``.

    Altschuler, Weed & Rigollet (2017), algorithm 2: scale down the rows, then the columns, that
    carry too much mass, and add the rank-one correction of the remaining deficits.
    """
    row = T.sum(2)
    T = T * torch.where(row > a, a / row.clamp_min(torch.finfo(T.dtype).tiny), 1.0).unsqueeze(2)
    col = T.sum(1)
    T = T * torch.where(col > b, b / col.clamp_min(torch.finfo(T.dtype).tiny), 1.0).unsqueeze(1)
    da = (a - T.sum(2)).clamp_min(0)
    db = (b - T.sum(1)).clamp_min(0)
    tot = da.sum(1, keepdim=True)
    scale = torch.where(tot > 0, 1.0 / tot.clamp_min(torch.finfo(T.dtype).tiny), 0.0)
    return T + (da * scale).unsqueeze(2) * db.unsqueeze(1)


def _sinkhorn_step(f, g, C, la, lb, eps):
    """One log-domain Sinkhorn iteration; ``eps`` ``(P, 1)``."""
    e3 = eps.unsqueeze(-1)
    f = -eps * torch.logsumexp(lb.unsqueeze(1) + (g.unsqueeze(1) - C) / e3, dim=2)
    g = -eps * torch.logsumexp(la.unsqueeze(2) + (f.unsqueeze(2) - C) / e3, dim=1)
    return f, g


def _directions(n_projections: int, C: int, seed, device, dtype) -> torch.Tensor:
    gen = None
    if seed is not None:
        gen = torch.Generator(device="cpu")
        gen.manual_seed(int(seed))
    theta = torch.randn(n_projections, C, generator=gen, dtype=torch.float64)
    theta = theta / theta.norm(dim=1, keepdim=True).clamp_min(1e-300)
    return theta.to(device=device, dtype=dtype)


class SlicedW2(_W2Metric):
    r"""Sliced squared W2: the exact 1-D solver averaged over random directions.

    .. math::
        \mathrm{SW}_2^2(\mu, \nu) \approx \frac1L \sum_{l=1}^{L}
        W_2^2\bigl((\theta_l)_\# \mu, (\theta_l)_\# \nu\bigr), \qquad
        \theta_l \sim \mathcal U(\mathbb S^{C-1}),

    with the same ``L = n_projections`` directions for all problems of a call and the 1-D problems
    solved exactly by :class:`SortedW2`'s solver (weights included). It is a distance in its own
    right, a lower bound of :math:`W_2^2` (each projection is 1-Lipschitz); for isotropic
    differences it is about :math:`W_2^2 / C`. For ``C == 1`` it equals :class:`SortedW2`.

    Parameters
    ----------
    n_projections : int, default=64
        Number of random directions ``L``.
    seed : int or None, default=None
        Seed of the directions (a ``torch.Generator`` on the CPU): two calls with the same seed
        use the same directions. None draws fresh directions from torch's global generator at
        every call (an unbiased stochastic estimate, suitable for a training loss).
    validate : bool, default=True
        Check the weights' values (non-negative, positive sum) at every call.

    References
    ----------
    * Bonneel, N., Rabin, J., Peyré, G., & Pfister, H. (2015). Sliced and Radon Wasserstein
       barycenters of measures. JMIV 51(1), 22-45.
    """

    def __init__(self, n_projections: int = 64, seed: int | None = None, validate: bool = True):
        self.n_projections = n_projections
        self.seed = seed
        self.validate = validate

    def _compute(self, x, y, a, b):
        L = int(self.n_projections)
        if L < 1:
            raise ValueError(f"n_projections must be >= 1, got {self.n_projections!r}")
        P, Q, C = x.shape
        K = y.shape[1]
        theta = _directions(L, C, self.seed, x.device, x.dtype)  # (L, C)
        # (P, n, L) -> (P, L, n) -> (P * L, n)
        xp = (x @ theta.T).transpose(1, 2).reshape(P * L, Q)
        yp = (y @ theta.T).transpose(1, 2).reshape(P * L, K)
        ar = None if a is None else a.unsqueeze(1).expand(P, L, Q).reshape(P * L, Q)
        br = None if b is None else b.unsqueeze(1).expand(P, L, K).reshape(P * L, K)
        return _w2_1d(xp, yp, ar, br).view(P, L).mean(-1)


# --------------------------------------------------------------------------------------------
# Gaussian closed form
# --------------------------------------------------------------------------------------------


def weighted_moments(
    y: torch.Tensor, weights: torch.Tensor | None = None, covariance: str = "full"
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Weighted mean and (population) covariance or variances of ``P`` point sets.

    .. math::
        m = \sum_k w_k y_k, \qquad
        \Sigma = \sum_k w_k (y_k - m)(y_k - m)^\top, \qquad w_k = \frac{w_k}{\sum_l w_l}

    (biased estimator: divided by the total weight, not by ``K - 1``).

    Parameters
    ----------
    y : torch.Tensor, shape (P, K, C)
        Point sets.
    weights : torch.Tensor, shape (P, K), optional
        Non-negative weights with a positive sum per problem (normalised here); None is uniform.
    covariance : {'full', 'diag'}, default='full'
        Return the full covariance matrices or only the variances.

    Returns
    -------
    mean : torch.Tensor, shape (P, C)
    cov : torch.Tensor, shape (P, C, C) for ``'full'``, or (P, C) variances for ``'diag'``
    """
    _check_points(y, "y")
    if covariance not in ("full", "diag"):
        raise ValueError(f"covariance must be 'full' or 'diag', got {covariance!r}")
    P, K, _ = y.shape
    w = _check_weights(weights, "weights", P, K, "K", y, validate=False)
    w = _normalise(w, P, K, y)
    mean = _weighted_mean(y, w)
    yc = y - mean.unsqueeze(1)
    if covariance == "diag":
        return mean, _weighted_mean(yc * yc, w)
    return mean, torch.einsum("pk,pkc,pkd->pcd", w, yc, yc)


class _SymSqrtm(torch.autograd.Function):
    """Square root of symmetric PSD matrices ``(..., C, C)`` (eigenvalues clamped at 0).

    The backward pass solves the Sylvester equation ``S dS + dS S = dA`` in the eigenbasis, which is
    stable with repeated eigenvalues (unlike differentiating ``eigh``'s eigenvectors); components
    between two zero eigenvalues get a zero (sub)gradient.
    """

    @staticmethod
    def forward(ctx, A):
        lam, V = torch.linalg.eigh(A)
        s = lam.clamp_min(0).sqrt()
        ctx.save_for_backward(s, V)
        return (V * s.unsqueeze(-2)) @ V.mT

    @staticmethod
    def backward(ctx, G):
        s, V = ctx.saved_tensors
        G = 0.5 * (G + G.mT)
        Gt = V.mT @ G @ V
        den = s.unsqueeze(-1) + s.unsqueeze(-2)
        tiny = torch.finfo(s.dtype).tiny
        Gt = torch.where(den > 0, Gt / den.clamp_min(tiny), torch.zeros_like(Gt))
        return V @ Gt @ V.mT


def _sym(A: torch.Tensor) -> torch.Tensor:
    return 0.5 * (A + A.mT)


class GaussianW2(_W2Metric):
    r"""Bures–Wasserstein closed form between the moment-matched Gaussians of ``x`` and ``y``.

    With the weighted means and population covariances of :func:`weighted_moments`,

    .. math::
        W_2^2\bigl(\mathcal N(m_x, \Sigma_x), \mathcal N(m_y, \Sigma_y)\bigr)
        = \lVert m_x - m_y \rVert^2 + \operatorname{tr}\Bigl(\Sigma_x + \Sigma_y
        - 2 \bigl(\Sigma_y^{1/2} \Sigma_x \Sigma_y^{1/2}\bigr)^{1/2}\Bigr)

    and, for ``covariance='diag'``, :math:`\lVert m_x - m_y \rVert^2 + \sum_c (\sigma_{x,c} -
    \sigma_{y,c})^2`. It is the W2 distance between the Gaussians, not between the point sets
    (equal to it when both sets are Gaussian, e.g. the affine decoder's prediction); it is a lower
    bound of the point sets' :math:`W_2^2` (Gelbrich's bound). The matrix square roots use
    ``torch.linalg.eigh`` with eigenvalues clamped at 0 and a Sylvester-equation backward pass
    that is stable with repeated or zero eigenvalues.

    Parameters
    ----------
    covariance : {'diag', 'full'}, default='diag'
        Moment-match with diagonal (independent channels) or full covariance matrices.
    validate : bool, default=True
        Check the weights' values (non-negative, positive sum) at every call.

    See Also
    --------
    weighted_moments, ot.gaussian.bures_wasserstein_distance

    References
    ----------
    * Dowson, D. C., & Landau, B. V. (1982). The Fréchet distance between multivariate normal
       distributions. Journal of Multivariate Analysis, 12(3), 450-455.
    * Givens, C. R., & Shortt, R. M. (1984). A class of Wasserstein metrics for probability
       distributions. Michigan Mathematical Journal, 31(2), 231-240.
    """

    def __init__(self, covariance: str = "diag", validate: bool = True):
        self.covariance = covariance
        self.validate = validate

    def _check_covariance(self) -> None:
        if self.covariance not in ("full", "diag"):
            raise ValueError(f"covariance must be 'full' or 'diag', got {self.covariance!r}")

    def _compute(self, x, y, a, b):
        self._check_covariance()
        mx, cx = weighted_moments(x, a, self.covariance)
        my, cy = weighted_moments(y, b, self.covariance)
        return self._closed_form(mx, cx, my, cy)

    def from_moments(
        self,
        mean_x: torch.Tensor,
        cov_x: torch.Tensor,
        mean_y: torch.Tensor,
        cov_y: torch.Tensor,
    ) -> torch.Tensor:
        r"""Squared W2 between Gaussians given by their moments.

        Parameters
        ----------
        mean_x, mean_y : torch.Tensor, shape (P, C)
            Means.
        cov_x, cov_y : torch.Tensor
            Covariances, shape (P, C, C) (symmetric positive semi-definite) when
            ``covariance='full'``, or variances, shape (P, C) (non-negative), when ``'diag'``.

        Returns
        -------
        torch.Tensor, shape (P,)
            :math:`\lVert m_x - m_y \rVert^2 + \mathcal B^2(\Sigma_x, \Sigma_y)`.
        """
        self._check_covariance()
        names = ("mean_x", "cov_x", "mean_y", "cov_y")
        for name, t in zip(names, (mean_x, cov_x, mean_y, cov_y), strict=True):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            if not t.is_floating_point():
                raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
        if mean_x.ndim != 2:
            raise ValueError(f"mean_x must have shape (P, C), got {_shape(mean_x)}")
        P, C = mean_x.shape
        if mean_y.shape != mean_x.shape:
            raise ValueError(
                f"mean_y must have the shape of mean_x {_shape(mean_x)}, got {_shape(mean_y)}"
            )
        want = (P, C) if self.covariance == "diag" else (P, C, C)
        want_s = "(P, C)" if self.covariance == "diag" else "(P, C, C)"
        for name, t in (("cov_x", cov_x), ("cov_y", cov_y)):
            if tuple(t.shape) != want:
                raise ValueError(
                    f"{name} must have shape {want_s} = {want} for covariance="
                    f"{self.covariance!r}, got {_shape(t)}"
                )
        return self._closed_form(mean_x, cov_x, mean_y, cov_y)

    def _closed_form(self, mx, cx, my, cy):
        mean_term = (mx - my).pow(2).sum(-1)
        if self.covariance == "diag":
            tiny = torch.finfo(cx.dtype).tiny
            d = cx.clamp_min(tiny).sqrt() - cy.clamp_min(tiny).sqrt()
            return mean_term + (d * d).sum(-1)
        sy = _SymSqrtm.apply(_sym(cy))
        cross = torch.linalg.eigvalsh(_sym(sy @ cx @ sy))
        tiny = torch.finfo(cx.dtype).tiny
        cross = cross.clamp_min(tiny).sqrt().sum(-1)
        trace = torch.diagonal(cx, dim1=-2, dim2=-1).sum(-1) + torch.diagonal(
            cy, dim1=-2, dim2=-1
        ).sum(-1)
        return mean_term + (trace - 2 * cross).clamp_min(0)


# --------------------------------------------------------------------------------------------
# default choice
# --------------------------------------------------------------------------------------------


class AutoW2(_W2Metric):
    r"""The context loss's default metric: exact :class:`SortedW2` for ``C == 1``, else
    :class:`SlicedW2`.

    Why sliced for ``C > 1`` (``benchmarks/w2_speed.py``, ``docs/benchmarks/w2_speed.md``): it
    keeps the exact 1-D solver (weights and dropped border neighbours included) and its cost grows
    only linearly with the number of directions, so it stays far faster than the Python loop over
    ``ot.emd2``; :class:`SinkhornW2` needs on the order of a hundred iterations over ``(P, Q, K)``
    cost matrices to be accurate, which costs about as much as the exact loop on the loss's
    workload. Sliced W2 is a different distance (a lower bound of W2², about W2²/C), not an
    approximation of W2²; with a fresh set of directions at every call (``seed=None``) it is an
    unbiased estimate of the sliced distance, which is what a training loss needs.

    Parameters
    ----------
    n_projections : int, default=16
        Directions of the sliced metric for ``C > 1``.
    seed : int or None, default=None
        Seed of the directions (None: fresh directions at every call).
    validate : bool, default=True
        Check the weights' values (non-negative, positive sum) at every call.
    """

    def __init__(self, n_projections: int = 16, seed: int | None = None, validate: bool = True):
        self.n_projections = n_projections
        self.seed = seed
        self.validate = validate

    def metric_for(self, n_channels: int) -> _W2Metric:
        """The metric used for points with ``n_channels`` channels."""
        if n_channels == 1:
            return SortedW2(validate=self.validate)
        return SlicedW2(n_projections=self.n_projections, seed=self.seed, validate=self.validate)

    def _compute(self, x, y, a, b):
        return self.metric_for(x.shape[2])._compute(x, y, a, b)


_NAMES = {
    "exact": ExactW2,
    "sorted": SortedW2,
    "sinkhorn": SinkhornW2,
    "sliced": SlicedW2,
    "gaussian": GaussianW2,
    "auto": AutoW2,
}


def resolve_metric(metric: str | _W2Metric = "auto", n_channels: int | None = None) -> _W2Metric:
    """Turn a metric name or object into a metric object.

    Parameters
    ----------
    metric : {'auto', 'exact', 'sorted', 'sinkhorn', 'sliced', 'gaussian'} or metric object
        A name (the class with its default arguments) or an object with the common call
        signature, returned unchanged.
    n_channels : int, optional
        Number of channels ``C`` of the points. With ``'auto'``, the concrete metric that
        :class:`AutoW2` would use for ``C`` channels; ``'sorted'`` with ``n_channels > 1`` is
        rejected here rather than at the first call.

    Returns
    -------
    metric object

    Raises
    ------
    ValueError
        Unknown name, or ``'sorted'`` with ``n_channels > 1``.
    TypeError
        Neither a string nor a callable.
    """
    if n_channels is not None and (not isinstance(n_channels, int) or n_channels < 1):
        raise ValueError(f"n_channels must be a positive int or None, got {n_channels!r}")
    if isinstance(metric, str):
        key = metric.lower()
        if key not in _NAMES:
            raise ValueError(
                f"metric must be one of {sorted(_NAMES)} or a metric object, got {metric!r}"
            )
        if key == "auto":
            auto = AutoW2()
            return auto if n_channels is None else auto.metric_for(n_channels)
        if key == "sorted" and n_channels is not None and n_channels > 1:
            raise ValueError(
                f"metric 'sorted' is exact in one dimension only, but n_channels="
                f"{n_channels}; use 'sliced', 'sinkhorn', 'gaussian' or 'auto'"
            )
        return _NAMES[key]()
    if callable(metric):
        return metric
    raise TypeError(
        f"metric must be a string or a metric object (callable), got {type(metric).__name__}"
    )
