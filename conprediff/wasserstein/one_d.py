r"""The exact batched 1-D solver and :class:`SortedW2`.

Two paths, both exact:

* the *support* path, for problems whose weights are uniform on their support (every weight of a
  row is 0 or the row's common value: uniform sets, and neighbourhoods whose out-of-grid points
  were dropped). Both sets are argsorted with the zero-weight points last
  (:mod:`conprediff.wasserstein.sorting`); the monotone optimal plan between ``m`` and ``n``
  equal masses depends only on ``(m, n)``, so it is a cached list of ``(i, j, mass)`` triples,
  and value and gradient are computed together in one custom autograd function (no graph
  through the sort).
* the *quantile* path, for arbitrary weights: the merged grid of the two cumulative weight
  vectors, located with ``torch.searchsorted`` (ordinary autograd).

:func:`w2_1d` is shared by :class:`SortedW2` and :class:`~conprediff.wasserstein.SlicedW2`.
"""

from __future__ import annotations

import functools
from fractions import Fraction
from typing import NamedTuple

import numpy as np
import torch

from conprediff._validation import check_bool, check_choice

from .base import W2Metric, shape_str
from .sorting import SORTS, resolve_sort, sorted_rows

__all__ = ["SortedW2", "w2_1d"]


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
    CPU numpy's radix sort of the int16 codes, faster than ``torch.argsort``; see
    docs/benchmarks/w2_speed.md).
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


def _group_parts(xs, ys, groups, need_x: bool, need_y: bool):
    r"""``[(rows, value, gradient in x, gradient in y)]`` of each group, on sorted rows.

    ``xs`` ``(N, Q)`` and ``ys`` ``(N, K)`` are sorted (dropped points last); a group's value is
    :math:`\sum_l \pi_l (x_{(i_l)} - y_{(j_l)})^2` over its monotone plan and its gradients are
    :math:`\pm 2 \sum_l \pi_l (x_{(i_l)} - y_{(j_l)})` scattered to the plan's atoms.
    """
    parts = []
    for mg, ng, rows in groups:
        ii, jj, mass = _monotone_plan(mg, ng)
        ii = torch.tensor(ii, device=xs.device)
        jj = torch.tensor(jj, device=xs.device)
        mass = torch.tensor(mass, device=xs.device, dtype=xs.dtype)
        xg = xs if rows is None else xs.index_select(0, rows)
        yg = ys if rows is None else ys.index_select(0, rows)
        dg = xg.index_select(1, ii) - yg.index_select(1, jj)  # (Ng, L) pairs of the plan
        val = torch.mv(dg * dg, mass)
        dm = dg.mul_(mass) if need_x or need_y else None
        gxg = xg.new_zeros(xg.shape).index_add_(1, ii, dm, alpha=2) if need_x else None
        gyg = yg.new_zeros(yg.shape).index_add_(1, jj, dm, alpha=-2) if need_y else None
        parts.append((rows, val, gxg, gyg))
    return parts


def _identity_all(xs, ys, need_x: bool, need_y: bool):
    """Value ``(N,)`` and gradients ``(N, K)`` of the identity plan (masses ``1/K``) everywhere.

    In place on the sorted values (no longer needed). Row sums as matrix-vector products: a
    reduction along a short last dimension is slower on the CPU.
    """
    K = ys.shape[1]
    d = xs.sub_(ys) if xs.is_contiguous() else xs - ys
    gx = d * (2.0 / K) if need_x else None
    gy = d * (-2.0 / K) if need_y else None
    return torch.mv(d.square_(), d.new_full((K,), 1.0 / K)), gx, gy


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
        sort = resolve_sort(sort, x.device, max(Q, K))
        xs, ix = sorted_rows(x, x_keep, sort, need_x)  # (N, Q)
        ys, iy = sorted_rows(y, y_keep, sort, need_y)  # (N, K)
        groups = _support_groups(m, n, Q, K)
        identity = Q == K  # the identity plan, computed on every problem below
        if identity:
            groups = [g for g in groups if g[:2] != (K, K)]
        parts = _group_parts(xs, ys, groups, need_x, need_y)
        if identity:
            # the problems with dropped points are overwritten by their own plans below
            out, gx, gy = _identity_all(xs, ys, need_x, need_y)
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


def _cumulative(w: torch.Tensor | None, order: torch.Tensor, N: int, n: int, ref: torch.Tensor):
    """Cumulative weights ``(N, n)`` of the sorted atoms, ending at exactly 1 (None: uniform)."""
    if w is None:
        return torch.arange(1, n + 1, device=ref.device, dtype=ref.dtype).div_(n).expand(N, n)
    c = w.gather(-1, order).cumsum(-1)
    return c / c[:, -1:]


def _w2_1d_quantile(x, y, a, b) -> torch.Tensor:
    """``(N, Q)``, ``(N, K)`` with weights ``(N, Q)``/``(N, K)`` (None = uniform): quantile form."""
    N, Q = x.shape
    K = y.shape[1]
    xs, ix = x.sort(-1)
    ys, iy = y.sort(-1)
    ca = _cumulative(a, ix, N, Q, x)
    cb = _cumulative(b, iy, N, K, x)
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
    short last dimension, and boolean masks, are slower on the CPU). Kept weights that differ by
    less than ``8 eps`` of the dtype, relative to their sum, count as equal: the same order as
    the rounding of the sums that follow.
    """
    if w is None:
        return _Support(None, None, None)
    N, n = w.shape
    keep = w.sign()
    ones = w.new_ones(n)
    size = torch.mv(keep, ones)
    total = torch.mv(w, ones)
    dev = keep * (total / size).unsqueeze(1)
    spread = torch.mv(dev.sub_(w).abs_(), ones)  # in place: spares a fresh large tensor
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


def w2_1d(
    x: torch.Tensor,
    y: torch.Tensor,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    split: bool = True,
    sort: str = "auto",
) -> torch.Tensor:
    """Exact batched 1-D W2²: ``x`` ``(N, Q)``, ``y`` ``(N, K)``, weights or None -> ``(N,)``.

    Problems whose weights are uniform on their support take the support path; the others (all
    problems when ``split=False``) the quantile path. float16 and bfloat16 are solved in float32
    and returned in the dtype of ``x``.
    """
    if x.dtype in (torch.float16, torch.bfloat16):
        a = None if a is None else a.float()
        b = None if b is None else b.float()
        return w2_1d(x.float(), y.float(), a, b, split, sort).to(x.dtype)
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


class SortedW2(W2Metric):
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
          points per set.
        * 'network': for up to 32 points, a Batcher odd-even merge sorting network of
          elementwise ``minimum``/``maximum`` over whole columns ``(P,)``, on the same keys;
          faster than ``torch.sort`` on the CPU, and than numpy for a few points per set (numpy
          pays a fixed cost per row).
        * 'torch': ``torch.sort`` along the short last dimension.
        * 'auto': on the CPU 'network' when both sets have at most 8 points (the loss's
          ring of one stride) and 'numpy' above (with numpy older than 2.0, always 'network');
          'torch' on other devices.

        The measurements behind this choice: see docs/benchmarks/w2_speed.md.
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
    every thread at each step, which is far slower on a busy machine (see
    docs/benchmarks/w2_speed.md). numpy's sort runs on one thread anyway.

    References
    ----------
    * Peyré, G., & Cuturi, M. (2019). Computational optimal transport, remark 2.30.
    """

    def __init__(self, split: bool = True, sort: str = "auto", validate: bool = True):
        self.split = split
        self.sort = sort
        self.validate = validate

    def _compute(self, x, y, a, b):
        sort = check_choice(self.sort, "sort", SORTS)
        split = check_bool(self.split, "split")
        if x.shape[2] != 1:
            raise ValueError(
                "SortedW2 is exact in one dimension only: x and y must have C == 1 channel, got "
                f"x of shape {shape_str(x)}; use SlicedW2, SinkhornW2 or GaussianW2 for C > 1"
            )
        return w2_1d(x[..., 0], y[..., 0], a, b, split=split, sort=sort)
