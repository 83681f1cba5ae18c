"""Tests of ``conprediff.wasserstein`` against POT's exact solvers on the same inputs."""

import json

import numpy as np
import ot
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conprediff.serialization import from_jsonable, to_jsonable
from conprediff.wasserstein import (
    AutoW2,
    ExactW2,
    GaussianW2,
    SinkhornW2,
    SlicedW2,
    SortedW2,
    resolve_metric,
    weighted_moments,
)
from conprediff.wasserstein import sorting as w2_sorting
from conprediff.wasserstein.one_d import _monotone_plan
from conprediff.wasserstein.sorting import NUMPY_SIMD_SORT, resolve_sort, sorted_rows

DT = torch.float64
FAST = settings(max_examples=25, deadline=None)
SLOW = settings(max_examples=10, deadline=None)

# ----------------------------------------------------------------------------------------------
# random problems
# ----------------------------------------------------------------------------------------------


def _weights(rng, P, n, mode):
    if mode == "none":
        return None
    w = rng.uniform(0.05, 1.0, size=(P, n))
    if mode in ("zeros", "support"):  # some dropped points, at least one kept per problem
        drop = rng.uniform(size=(P, n)) < 0.3
        drop[np.arange(P), rng.integers(0, n, size=P)] = False
        if mode == "support":  # uniform on the kept points, as for border neighbourhoods
            w[:] = 1.0
        w[drop] = 0.0
    return torch.tensor(w / w.sum(1, keepdims=True), dtype=DT)


@st.composite
def problems(draw, dims=(1, 4), sizes=(1, 24), n_problems=(1, 3)):
    """A batch ``(x, y, x_weights, y_weights)`` in float64 with random sizes and weights."""
    P = draw(st.integers(*n_problems))
    Q = draw(st.integers(*sizes))
    K = draw(st.integers(*sizes))
    C = draw(st.integers(*dims))
    wx = draw(st.sampled_from(["none", "rand", "zeros", "support"]))
    wy = draw(st.sampled_from(["none", "rand", "zeros", "support"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = torch.tensor(rng.normal(size=(P, Q, C)), dtype=DT)
    y = torch.tensor(rng.normal(size=(P, K, C)) + rng.normal(size=C), dtype=DT)
    return x, y, _weights(rng, P, Q, wx), _weights(rng, P, K, wy)


def _uniform_if_none(w, P, n):
    return torch.full((P, n), 1.0 / n, dtype=DT) if w is None else w


def emd2(x, y, a, b):
    """POT's exact W2² per problem, float64 numpy."""
    P, Q, _ = x.shape
    K = y.shape[1]
    a, b = _uniform_if_none(a, P, Q), _uniform_if_none(b, P, K)
    out = [
        ot.emd2(a[p].numpy(), b[p].numpy(), ot.dist(x[p].numpy(), y[p].numpy())) for p in range(P)
    ]
    return torch.tensor(out, dtype=DT)


def _mean(z, w):
    P, n, _ = z.shape
    return torch.einsum("pn,pnc->pc", _uniform_if_none(w, P, n), z)


def _spread(x, y, a, b):
    """tr Σx + tr Σy: the scale that SinkhornW2's epsilon is relative to."""
    _, vx = weighted_moments(x, a, "diag")
    _, vy = weighted_moments(y, b, "diag")
    return vx.sum(-1) + vy.sum(-1)


def _n_eff(w, P, n):
    return torch.full((P,), float(n), dtype=DT) if w is None else (w > 0).sum(1).to(DT)


def _sinkhorn_bound(x, y, a, b, epsilon):
    """Entropic bias bound: 0 <= OT_eps - W2² <= eps * spread * log min(Q, K) (at convergence)."""
    P, Q, _ = x.shape
    K = y.shape[1]
    n = torch.minimum(_n_eff(a, P, Q), _n_eff(b, P, K))
    return epsilon * _spread(x, y, a, b) * torch.log(n.clamp_min(1.0))


# ----------------------------------------------------------------------------------------------
# against POT
# ----------------------------------------------------------------------------------------------


@FAST
@given(problems())
def test_exact_equals_pot_emd2(prob):
    x, y, a, b = prob
    torch.testing.assert_close(ExactW2()(x, y, a, b), emd2(x, y, a, b), rtol=0, atol=1e-9)


@FAST
@given(problems(dims=(1, 1)))
def test_sorted_equals_pot_emd2_in_1d(prob):
    x, y, a, b = prob
    torch.testing.assert_close(SortedW2()(x, y, a, b), emd2(x, y, a, b), rtol=0, atol=1e-8)
    unsplit = SortedW2(split=False)(x, y, a, b)
    torch.testing.assert_close(unsplit, emd2(x, y, a, b), rtol=0, atol=1e-8)
    for sort in ("network", "numpy"):
        got = SortedW2(sort=sort)(x, y, a, b)
        torch.testing.assert_close(got, emd2(x, y, a, b), rtol=0, atol=1e-8)


@pytest.mark.parametrize("sort", ["network", "numpy"])
def test_sorting_paths_sort_like_torch(sort):
    for n in (1, 2, 3, 5, 8, 13, 24, 32, 40):
        x, y = _no_ties(64, n, 1, n), _no_ties(64, n, 1, 100 + n)
        torch.testing.assert_close(
            SortedW2(sort=sort)(x, y), SortedW2(sort="torch")(x, y), rtol=0, atol=1e-12
        )
    # float32 (packed keys) and float64 (index carried beside / argsort), with ties and -0.0
    for v in (torch.randn(500, 24), torch.randn(500, 8).round(decimals=1),
              torch.randn(300, 13, dtype=DT).round(decimals=1)):
        ref = torch.sort(v, dim=1, stable=True)
        vals, idx = sorted_rows(v, None, sort, True)
        assert torch.equal(vals, ref.values)
        assert torch.equal(v.gather(1, idx), vals)  # the index points at the value
        if v.dtype == torch.float32 or sort == "numpy":  # stable sorts, like torch's
            assert torch.equal(idx, ref.indices)
        assert torch.equal(sorted_rows(v, None, sort, False)[0], ref.values)
        valid = torch.rand(v.shape) < 0.7
        vals, idx = sorted_rows(v, valid.to(v.dtype), sort, True)
        ref = torch.sort(v.masked_fill(~valid, float("inf")), dim=1, stable=True)
        kept = valid.sort(1, descending=True).values  # kept points come first
        assert torch.equal(valid.gather(1, idx), kept)
        assert torch.equal(vals[kept], ref.values[kept])
        assert torch.equal(v.gather(1, idx)[kept], vals[kept])
    neg = torch.tensor([[0.5, -0.0, 0.0, -2.0, -1.0, 3.0, -1e-30, 1e30, float("inf")]])
    vals, idx = sorted_rows(neg, None, sort, True)
    assert torch.equal(vals, neg.sort(1).values)
    assert idx.flatten().tolist() == [3, 4, 6, 1, 2, 0, 5, 7, 8]  # -0.0 ties with +0.0, stably


def test_numpy_sort_needs_the_cpu():
    x = torch.empty(4, 3, 1, device="meta")  # any device but the CPU
    with pytest.raises(ValueError, match="sort='numpy' needs CPU tensors"):
        SortedW2(sort="numpy", validate=False)(x, x)


def test_auto_sort_takes_the_network_for_short_rows_on_the_cpu():
    cpu = torch.device("cpu")
    long_rows = "numpy" if NUMPY_SIMD_SORT else "network"
    assert [resolve_sort("auto", cpu, n) for n in (1, 8, 9, 24)] == (
        ["network", "network", long_rows, long_rows])
    assert resolve_sort("auto", torch.device("meta"), 8) == "torch"
    assert resolve_sort("numpy", cpu, 8) == "numpy"  # an explicit choice is kept


@pytest.mark.parametrize("sort", ["network", "numpy", "torch"])
def test_support_path_in_float32_matches_the_quantile_path(sort):
    # the loss's workload in miniature: uniform predictions, neighbourhoods with dropped points
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 24, 1, generator=g)
    y = torch.randn(400, 24, 1, generator=g) + 0.3
    w = (torch.rand(400, 24, generator=g) < 0.7).float()
    w[:, 0] = 1.0
    w[:100] = 1.0  # a group of full neighbourhoods beside the partial ones
    w = w / w.sum(1, keepdim=True)
    xr = x.clone().requires_grad_()
    got = SortedW2(sort=sort)(xr, y, None, w)
    got.sum().backward()
    xq = x.clone().requires_grad_()
    ref = SortedW2(split=False)(xq, y, None, w)
    ref.sum().backward()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(xr.grad, xq.grad, rtol=1e-5, atol=1e-6)
    assert SortedW2(sort=sort)(x, x).abs().max() == 0  # identical sets: exactly zero


@pytest.mark.parametrize(("m", "n"), [(1, 1), (3, 8), (8, 3), (5, 24), (24, 24), (6, 4)])
def test_monotone_plan_has_the_right_marginals(m, n):
    ii, jj, mass = _monotone_plan(m, n)
    assert len(mass) == m + n - np.gcd(m, n)
    np.testing.assert_allclose(np.bincount(ii, weights=mass, minlength=m), np.full(m, 1 / m))
    np.testing.assert_allclose(np.bincount(jj, weights=mass, minlength=n), np.full(n, 1 / n))
    assert list(ii) == sorted(ii) and list(jj) == sorted(jj)  # monotone


@pytest.mark.parametrize("sort", ["network", "numpy", "torch"])
def test_support_path_gradcheck_with_dropped_points(sort):
    g = torch.Generator().manual_seed(3)
    x = _no_ties(4, 7, 1, 5).requires_grad_()
    y = _no_ties(4, 6, 1, 6).requires_grad_()
    a = torch.ones(4, 7, dtype=DT)
    a[0, 2] = a[2, 5] = 0
    b = (torch.rand(4, 6, generator=g, dtype=DT) < 0.6).to(DT)
    b[:, 0] = 1
    assert torch.autograd.gradcheck(lambda x, y: SortedW2(sort=sort)(x, y, a, b), (x, y))
    x = _no_ties(3, 6, 1, 0).requires_grad_()
    y = _no_ties(3, 6, 1, 1).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y: SortedW2(sort=sort)(x, y), (x, y))


@pytest.mark.parametrize("covariance", ["diag", "full"])
@FAST
@given(prob=problems())
def test_gaussian_equals_pot_bures_wasserstein(covariance, prob):
    x, y, a, b = prob
    m = GaussianW2(covariance)
    mx, cx = weighted_moments(x, a, covariance)
    my, cy = weighted_moments(y, b, covariance)
    if covariance == "diag":
        cx, cy = torch.diag_embed(cx), torch.diag_embed(cy)
    else:
        # POT's matrix square root does not clamp the tiny negative eigenvalues that rounding
        # gives singular covariances (NaN): feed both sides the same, slightly regularised, moments
        ridge = 1e-4 * torch.eye(x.shape[2], dtype=DT)
        raw = cx, cy
        cx, cy = cx + ridge, cy + ridge
    w = ot.gaussian.bures_wasserstein_distance(
        mx.numpy(), my.numpy(), cx.numpy(), cy.numpy(), paired=True
    )
    expected = torch.tensor(w, dtype=DT) ** 2  # POT returns W, not W²
    if covariance == "diag":
        torch.testing.assert_close(m(x, y, a, b), expected, rtol=0, atol=1e-6)
    else:
        got = m.from_moments(mx, cx, my, cy)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
        # and the call on the points is the closed form of their moments
        unreg = m.from_moments(mx, raw[0], my, raw[1])
        torch.testing.assert_close(m(x, y, a, b), unreg, rtol=1e-12, atol=1e-12)


def test_weighted_moments_by_hand():
    y = torch.tensor([[[0.0, 1.0], [2.0, 3.0], [100.0, -7.0]]], dtype=DT)
    w = torch.tensor([[0.25, 0.75, 0.0]], dtype=DT)
    mean, cov = weighted_moments(y, w, "full")
    torch.testing.assert_close(mean, torch.tensor([[1.5, 2.5]], dtype=DT))
    # population covariance: 0.25 * 0.75 * (2, 2)(2, 2)^T
    torch.testing.assert_close(cov, torch.full((1, 2, 2), 0.75, dtype=DT))
    _, var = weighted_moments(y, w, "diag")
    torch.testing.assert_close(var, torch.full((1, 2), 0.75, dtype=DT))


@SLOW
@given(problems(sizes=(1, 12)))
def test_sinkhorn_within_entropic_bound_of_pot(prob):
    """0 <= OT_eps - W2² <= eps * (tr Σx + tr Σy) * log min(Q, K) (+ convergence slack)."""
    x, y, a, b = prob
    eps = 0.05
    ref = emd2(x, y, a, b)
    got = SinkhornW2(epsilon=eps, n_iter=400)(x, y, a, b)
    bound = _sinkhorn_bound(x, y, a, b, eps)
    assert torch.all(got >= ref - 1e-9)  # the rounded plan is feasible
    assert torch.all(got - ref <= bound + 1e-3 * ref + 1e-9)


def test_sinkhorn_error_shrinks_with_epsilon():
    rng = np.random.default_rng(0)
    P, Q, K, C = 8, 8, 6, 2
    x = torch.tensor(rng.normal(size=(P, Q, C)), dtype=DT)
    y = torch.tensor(rng.normal(size=(P, K, C)) + 0.5, dtype=DT)
    b = _weights(rng, P, K, "zeros")
    ref = emd2(x, y, None, b)
    errors = []
    for eps in (1e-1, 3e-2, 1e-2):
        err = SinkhornW2(epsilon=eps, n_iter=1000)(x, y, None, b) - ref
        bound = _sinkhorn_bound(x, y, None, b, eps)
        assert torch.all(err >= -1e-9)
        assert torch.all(err <= bound + 1e-9)
        errors.append(err.abs().max().item())
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 2e-3 * ref.min().item()


# ----------------------------------------------------------------------------------------------
# invariants, for every metric
# ----------------------------------------------------------------------------------------------

EXACT_LIKE = {
    "exact": (ExactW2(), 1e-9),
    "gaussian-diag": (GaussianW2("diag"), 1e-8),
    "gaussian-full": (GaussianW2("full"), 1e-6),
    "sliced": (SlicedW2(n_projections=8, seed=3), 1e-9),
    "sinkhorn-debiased": (SinkhornW2(epsilon=0.1, n_iter=100, debiased=True), None),
    "sinkhorn": (SinkhornW2(epsilon=0.1, n_iter=100), None),
}


def _tol(name, tol, x, y, a, b):
    if tol is not None:
        return tol
    # Sinkhorn: a difference of two values within the entropic bound of W2²
    return (2 * _sinkhorn_bound(x, y, a, b, 0.1) + 1e-8).max().item()


@pytest.mark.parametrize("name", list(EXACT_LIKE))
@FAST
@given(
    prob=problems(sizes=(1, 10)),
    v=st.lists(st.floats(-3, 3), min_size=4, max_size=4),
    scale=st.floats(0.1, 5.0),
)
def test_invariants(name, prob, v, scale):
    metric, tol = EXACT_LIKE[name]
    x, y, a, b = prob
    C = x.shape[2]
    v = torch.tensor(v[:C], dtype=DT)
    base = metric(x, y, a, b)
    t = _tol(name, tol, x, y, a, b)
    scale_t = t * max(1.0, scale**2)
    # W(x, x) = 0
    xx = metric(x, x, a, a)
    if name == "sinkhorn":
        assert torch.all(xx.abs() <= _sinkhorn_bound(x, x, a, a, 0.1) + 1e-9)
    elif name == "sinkhorn-debiased":
        assert torch.all(xx == 0)
    else:
        torch.testing.assert_close(xx, torch.zeros_like(xx), rtol=0, atol=t)
    # symmetry
    torch.testing.assert_close(metric(y, x, b, a), base, rtol=0, atol=t)
    # a common shift changes nothing
    torch.testing.assert_close(metric(x + v, y + v, a, b), base, rtol=0, atol=t)
    # scaling both by s multiplies by s²
    torch.testing.assert_close(
        metric(scale * x, scale * y, a, b), scale**2 * base, rtol=0, atol=scale_t
    )
    # shifting x alone by v adds |v|² + 2 v·(m_x - m_y) (not for the sliced distance)
    if name != "sliced":
        dm = _mean(x, a) - _mean(y, b)
        expected = base + (v * v).sum() + 2 * (dm * v).sum(-1)
        tol_shift = 1e-8 if tol is None else t
        torch.testing.assert_close(metric(x + v, y, a, b), expected, rtol=0, atol=tol_shift)


@FAST
@given(prob=problems(dims=(1, 1)), v=st.floats(-3, 3), scale=st.floats(0.1, 5.0))
def test_sorted_invariants(prob, v, scale):
    x, y, a, b = prob
    m = SortedW2()
    base = m(x, y, a, b)
    torch.testing.assert_close(m(x, x, a, a), torch.zeros_like(base), rtol=0, atol=1e-12)
    torch.testing.assert_close(m(y, x, b, a), base, rtol=0, atol=1e-10)
    torch.testing.assert_close(m(x + v, y + v, a, b), base, rtol=0, atol=1e-9)
    torch.testing.assert_close(
        m(scale * x, scale * y, a, b), scale**2 * base, rtol=1e-9, atol=1e-10
    )
    dm = (_mean(x, a) - _mean(y, b))[:, 0]
    torch.testing.assert_close(m(x + v, y, a, b), base + v * v + 2 * v * dm, rtol=0, atol=1e-9)


def test_sinkhorn_debiased_is_zero_on_identical_sets_and_symmetric():
    rng = np.random.default_rng(1)
    x = torch.tensor(rng.normal(size=(4, 7, 3)), dtype=DT)
    y = torch.tensor(rng.normal(size=(4, 5, 3)), dtype=DT)
    m = SinkhornW2(epsilon=0.05, n_iter=300, debiased=True)
    assert torch.all(m(x, x) == 0)
    torch.testing.assert_close(m(x, y), m(y, x), rtol=1e-6, atol=1e-9)


# ----------------------------------------------------------------------------------------------
# zero weights: no influence on the value nor on the gradient
# ----------------------------------------------------------------------------------------------

ALL_METRICS = {
    "exact": ExactW2(),
    "sinkhorn": SinkhornW2(epsilon=0.1, n_iter=50),
    "sinkhorn-debiased": SinkhornW2(epsilon=0.1, n_iter=50, debiased=True),
    "sliced": SlicedW2(n_projections=4, seed=0),
    "gaussian-diag": GaussianW2("diag"),
    "gaussian-full": GaussianW2("full"),
    "auto": AutoW2(seed=0),
}


@pytest.mark.parametrize(
    ("name", "C"),
    [(n, c) for n in ALL_METRICS for c in (1, 3)] + [("sorted", 1)],  # SortedW2 is 1-D only
)
def test_zero_weights_have_no_influence(name, C):
    metric = SortedW2() if name == "sorted" else ALL_METRICS[name]
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 6, C, dtype=DT, generator=gen, requires_grad=True)
    y = torch.randn(3, 6, C, dtype=DT, generator=gen, requires_grad=True)
    a = torch.rand(3, 6, dtype=DT, generator=gen) + 0.1
    b = torch.rand(3, 6, dtype=DT, generator=gen) + 0.1
    a[:, 2] = 0
    b[:, 0] = 0
    b[1] = 1.0 / 6  # one problem with uniform target weights (SortedW2's fast path, mixed batch)
    a[1] = 1.0 / 6
    a, b = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)
    value = metric(x, y, a, b)
    value.sum().backward()
    assert torch.all(x.grad[[0, 2], 2] == 0)
    assert torch.all(y.grad[[0, 2], 0] == 0)
    assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()
    moved_x = x.detach().clone()
    moved_x[[0, 2], 2] += 100.0
    moved_y = y.detach().clone()
    moved_y[[0, 2], 0] -= 50.0
    torch.testing.assert_close(metric(moved_x, moved_y, a, b), value.detach(), rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------------------------
# gradients
# ----------------------------------------------------------------------------------------------


def _no_ties(P, n, C, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(P, n, C, dtype=DT, generator=gen)


@pytest.mark.parametrize("weighted", [False, True])
def test_gradcheck_sorted(weighted):
    x = _no_ties(3, 5, 1, 0).requires_grad_()
    y = _no_ties(3, 5 if not weighted else 4, 1, 1).requires_grad_()
    a = b = None
    if weighted:
        gen = torch.Generator().manual_seed(2)
        a = torch.rand(3, 5, dtype=DT, generator=gen)
        a[0, 1] = 0
        a = a / a.sum(1, keepdim=True)
        b = torch.rand(3, 4, dtype=DT, generator=gen)
        b = b / b.sum(1, keepdim=True)
    assert torch.autograd.gradcheck(lambda x, y: SortedW2()(x, y, a, b), (x, y))


def test_gradcheck_exact_unique_plan():
    # generic points, uniform weights, Q == K: the optimal plan is a unique permutation
    x = _no_ties(2, 3, 2, 3).requires_grad_()
    y = _no_ties(2, 3, 2, 4).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y: ExactW2()(x, y), (x, y))


@pytest.mark.parametrize("debiased", [False, True])
def test_gradcheck_sinkhorn(debiased):
    x = _no_ties(2, 4, 2, 5).requires_grad_()
    y = _no_ties(2, 3, 2, 6).requires_grad_()
    b = torch.tensor([[0.5, 0.0, 0.5], [0.2, 0.3, 0.5]], dtype=DT)
    m = SinkhornW2(epsilon=0.1, n_iter=30, debiased=debiased)
    assert torch.autograd.gradcheck(lambda x, y: m(x, y, None, b), (x, y))


def test_gradcheck_sliced():
    x = _no_ties(2, 5, 3, 7).requires_grad_()
    y = _no_ties(2, 4, 3, 8).requires_grad_()
    m = SlicedW2(n_projections=5, seed=1)
    assert torch.autograd.gradcheck(lambda x, y: m(x, y), (x, y))


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_gradcheck_gaussian(covariance):
    x = _no_ties(2, 6, 3, 9).requires_grad_()
    y = _no_ties(2, 5, 3, 10).requires_grad_()
    b = torch.tensor([[0.2, 0.2, 0.2, 0.4, 0.0], [0.1, 0.2, 0.3, 0.2, 0.2]], dtype=DT)
    m = GaussianW2(covariance)
    assert torch.autograd.gradcheck(lambda x, y: m(x, y, None, b), (x, y))


def test_gradcheck_gaussian_from_moments_full():
    gen = torch.Generator().manual_seed(11)
    mx = torch.randn(2, 3, dtype=DT, generator=gen, requires_grad=True)
    my = torch.randn(2, 3, dtype=DT, generator=gen, requires_grad=True)
    lx = torch.randn(2, 3, 3, dtype=DT, generator=gen)
    ly = torch.randn(2, 3, 3, dtype=DT, generator=gen)
    cx = (lx @ lx.mT + 0.1 * torch.eye(3, dtype=DT)).requires_grad_()
    cy = (ly @ ly.mT + 0.1 * torch.eye(3, dtype=DT)).requires_grad_()
    m = GaussianW2("full")
    assert torch.autograd.gradcheck(m.from_moments, (mx, cx, my, cy))


def test_gaussian_gradient_finite_with_singular_covariances():
    # 2 points in 3-D: rank-1 covariances with repeated zero eigenvalues
    x = _no_ties(2, 2, 3, 12).requires_grad_()
    y = _no_ties(2, 2, 3, 13).requires_grad_()
    GaussianW2("full")(x, y).sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()
    z = torch.zeros(2, 1, 3, dtype=DT, requires_grad=True)  # a single point: covariance 0
    GaussianW2("full")(z, y.detach()).sum().backward()
    assert torch.isfinite(z.grad).all()


# ----------------------------------------------------------------------------------------------
# properties of individual metrics
# ----------------------------------------------------------------------------------------------


def test_gaussian_from_moments_matches_call():
    x, y = _no_ties(4, 6, 2, 14), _no_ties(4, 9, 2, 15)
    for cov in ("diag", "full"):
        m = GaussianW2(cov)
        mx, cx = weighted_moments(x, None, cov)
        my, cy = weighted_moments(y, None, cov)
        torch.testing.assert_close(m.from_moments(mx, cx, my, cy), m(x, y))


def test_gaussian_diag_equals_full_for_diagonal_covariances():
    gen = torch.Generator().manual_seed(16)
    mx, my = torch.randn(3, 4, dtype=DT, generator=gen), torch.randn(3, 4, dtype=DT, generator=gen)
    vx, vy = torch.rand(3, 4, dtype=DT, generator=gen), torch.rand(3, 4, dtype=DT, generator=gen)
    diag = GaussianW2("diag").from_moments(mx, vx, my, vy)
    full = GaussianW2("full").from_moments(mx, torch.diag_embed(vx), my, torch.diag_embed(vy))
    torch.testing.assert_close(diag, full)


def test_sliced_seed_reproducible_and_equals_sorted_in_1d():
    x, y = _no_ties(5, 7, 3, 17), _no_ties(5, 4, 3, 18)
    m = SlicedW2(n_projections=16, seed=42)
    torch.testing.assert_close(m(x, y), m(x, y), rtol=0, atol=0)
    assert not torch.equal(m(x, y), SlicedW2(n_projections=16, seed=43)(x, y))
    x1, y1 = x[..., :1], y[..., :1]
    b = torch.rand(5, 4, dtype=DT)
    b = b / b.sum(1, keepdim=True)
    torch.testing.assert_close(m(x1, y1, None, b), SortedW2()(x1, y1, None, b))


def test_sliced_lower_bound_of_exact():
    x, y = _no_ties(6, 8, 3, 19), _no_ties(6, 8, 3, 20) + 1.0
    assert torch.all(SlicedW2(n_projections=32, seed=0)(x, y) <= ExactW2()(x, y) + 1e-12)


@pytest.mark.parametrize("name", list(ALL_METRICS))
def test_float32_in_float32_out_and_close_to_float64(name):
    metric = ALL_METRICS[name]
    x, y = _no_ties(4, 6, 2, 21), _no_ties(4, 5, 2, 22)
    out32 = metric(x.float(), y.float())
    assert out32.dtype == torch.float32 and out32.shape == (4,)
    torch.testing.assert_close(out32.double(), metric(x, y), rtol=1e-4, atol=1e-5)


def test_sorted_float32_mixed_batch():
    x, y = _no_ties(50, 8, 1, 23).float(), _no_ties(50, 8, 1, 24).float()
    b = torch.full((50, 8), 1 / 8)
    b[::3, :3] = 0
    b = b / b.sum(1, keepdim=True)
    out = SortedW2()(x, y, None, b)
    assert out.dtype == torch.float32
    torch.testing.assert_close(
        out.double(), emd2(x.double(), y.double(), None, b.double()), rtol=1e-5, atol=1e-6
    )


def test_auto_and_resolve_metric():
    auto = AutoW2(seed=0)
    assert isinstance(auto.metric_for(1), SortedW2)
    assert isinstance(auto.metric_for(3), SlicedW2)
    x1, y1 = _no_ties(3, 5, 1, 25), _no_ties(3, 5, 1, 26)
    torch.testing.assert_close(auto(x1, y1), SortedW2()(x1, y1))
    x3, y3 = _no_ties(3, 5, 3, 27), _no_ties(3, 5, 3, 28)
    torch.testing.assert_close(auto(x3, y3), SlicedW2(n_projections=16, seed=0)(x3, y3))
    for name, cls in [
        ("exact", ExactW2),
        ("sorted", SortedW2),
        ("sinkhorn", SinkhornW2),
        ("sliced", SlicedW2),
        ("gaussian", GaussianW2),
        ("auto", AutoW2),
    ]:
        assert isinstance(resolve_metric(name), cls)
    assert isinstance(resolve_metric("auto", n_channels=1), SortedW2)
    assert isinstance(resolve_metric("auto", n_channels=4), SlicedW2)
    obj = SinkhornW2(epsilon=0.3)
    assert resolve_metric(obj) is obj


def test_sklearn_params_and_repr():
    m = SinkhornW2(epsilon=0.5, n_iter=7, debiased=True)
    assert m.get_params() == {"epsilon": 0.5, "n_iter": 7, "debiased": True, "validate": True}
    assert "epsilon=0.5" in repr(m)
    assert SlicedW2(seed=3).set_params(n_projections=5).n_projections == 5


# ----------------------------------------------------------------------------------------------
# validation at the public boundary
# ----------------------------------------------------------------------------------------------


def _xy():
    return torch.zeros(2, 3, 1), torch.zeros(2, 4, 1)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"x": np.zeros((2, 3, 1))}, TypeError, "x must be a torch.Tensor"),
        ({"x": torch.zeros(2, 3, 1, dtype=torch.int64)}, TypeError, "x must be a floating"),
        ({"x": torch.zeros(2, 3)}, ValueError, r"x must have shape \(P, n_points, C\)"),
        ({"x": torch.zeros(2, 0, 1)}, ValueError, "x must hold at least one point"),
        ({"y": torch.zeros(2, 4)}, ValueError, r"y must have shape \(P, n_points, C\)"),
        ({"y": torch.zeros(3, 4, 1)}, ValueError, "y must have the number of problems P"),
        ({"y": torch.zeros(2, 4, 2)}, ValueError, "y must have the number of channels C"),
        ({"y": torch.zeros(2, 4, 1, dtype=DT)}, TypeError, "y must have the dtype of x"),
        ({"x_weights": torch.ones(2, 4) / 4}, ValueError, r"x_weights must have shape \(P, Q\)"),
        ({"y_weights": torch.ones(2, 3) / 3}, ValueError, r"y_weights must have shape \(P, K\)"),
        ({"x_weights": [[1.0, 0, 0]] * 2}, TypeError, "x_weights must be a torch.Tensor"),
        (
            {"x_weights": torch.tensor([[1.5, -0.5, 0], [1, 0, 0]])},
            ValueError,
            "x_weights must be finite and non-negative",
        ),
        (
            {"y_weights": torch.tensor([[1.5, -0.5, 0, 0], [1, 0, 0, 0]])},
            ValueError,
            "y_weights must be finite and non-negative",
        ),
        (
            {"y_weights": torch.tensor([[0.0, 0, 0, 0], [1, 0, 0, 0]])},
            ValueError,
            "y_weights must have a positive sum",
        ),
    ],
)
@pytest.mark.parametrize("metric", [SortedW2(), SinkhornW2(n_iter=2), GaussianW2(), ExactW2()])
def test_validation_names_the_argument(metric, kwargs, exc, match):
    x, y = _xy()
    args = {"x": x, "y": y, "x_weights": None, "y_weights": None, **kwargs}
    with pytest.raises(exc, match=match):
        metric(**args)


@pytest.mark.parametrize(
    "make", [SortedW2, lambda **kw: GaussianW2("full", **kw), lambda **kw: SlicedW2(8, 0, **kw)]
)
def test_validation_can_be_switched_off(make):
    x, y = _no_ties(3, 3, 1, 40), _no_ties(3, 4, 1, 41)
    good = torch.tensor([[0.5, 0.0, 0.5], [1.0, 0.0, 0.0], [0.2, 0.3, 0.5]], dtype=DT)
    checked, unchecked = make(), make(validate=False)
    # on valid weights the switch changes nothing
    assert torch.equal(unchecked(x, y, good, None), checked(x, y, good, None))
    # a negative weight in problem 0: an error when checked, a number when not, and the valid
    # problems of the same batch keep their values (computed alone by the checked metric)
    bad = good.clone()
    bad[0] = torch.tensor([1.5, -0.5, 0.0], dtype=DT)
    with pytest.raises(ValueError, match="x_weights must be finite and non-negative"):
        checked(x, y, bad, None)
    out = unchecked(x, y, bad, None)
    assert out.shape == (3,)
    torch.testing.assert_close(out[1:], checked(x[1:], y[1:], good[1:], None), rtol=0, atol=1e-12)
    # a row of zeros: no error either, a non-finite value in that problem only
    zero = good.clone()
    zero[2] = 0.0
    with pytest.raises(ValueError, match="x_weights must have a positive sum"):
        checked(x, y, zero, None)
    out = unchecked(x, y, zero, None)
    assert not torch.isfinite(out[2])
    torch.testing.assert_close(out[:2], checked(x[:2], y[:2], good[:2], None), rtol=0, atol=1e-12)


def test_validation_switched_off_sorted_matches_pot():
    x, y = _no_ties(4, 5, 1, 42), _no_ties(4, 3, 1, 43)
    a = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.0], [0.2] * 5, [0.5, 0.5, 0, 0, 0], [1, 0, 0, 0, 0]],
                     dtype=DT)
    torch.testing.assert_close(
        SortedW2(validate=False)(x, y, a, None), emd2(x, y, a, None), rtol=0, atol=1e-12
    )


def test_sorted_rejects_several_channels():
    with pytest.raises(ValueError, match=r"C == 1 channel, got x of shape \(2, 3, 2\)"):
        SortedW2()(torch.zeros(2, 3, 2), torch.zeros(2, 4, 2))


def test_constructor_argument_errors():
    x, y = _xy()
    with pytest.raises(ValueError, match="covariance must be one of 'full', 'diag'"):
        GaussianW2("spherical")(x, y)
    with pytest.raises(ValueError, match="covariance must be one of 'full', 'diag'"):
        weighted_moments(y, covariance="spherical")
    with pytest.raises(ValueError, match="n_projections must be an integer >= 1"):
        SlicedW2(n_projections=0)(x, y)
    with pytest.raises(ValueError, match="epsilon must be a finite number > 0"):
        SinkhornW2(epsilon=0.0)(x, y)
    with pytest.raises(ValueError, match="n_iter must be an integer >= 1"):
        SinkhornW2(n_iter=0)(x, y)
    with pytest.raises(ValueError, match="num_iter_max must be an integer >= 1"):
        ExactW2(num_iter_max=0)(x, y)
    with pytest.raises(ValueError, match="sort must be one of"):
        SortedW2(sort="radix")(x, y)


@pytest.mark.parametrize(
    ("metric", "match"),
    [
        (SlicedW2(n_projections=4.0), "n_projections must be an integer"),
        (SlicedW2(seed=1.5), "seed must be an integer or None"),
        (SinkhornW2(epsilon="0.1"), "epsilon must be a number"),
        (SinkhornW2(n_iter=2.0), "n_iter must be an integer"),
        (SinkhornW2(debiased="yes"), "debiased must be True or False"),
        (SortedW2(sort=None), "sort must be one of"),
        (SortedW2(split=1), "split must be True or False"),
        (SortedW2(validate="no"), "validate must be True or False"),
        (GaussianW2(covariance=None), "covariance must be one of"),
    ],
)
def test_constructor_argument_type_errors(metric, match):
    x, y = _xy()
    with pytest.raises(TypeError, match=match):
        metric(x, y)


def test_constructor_arguments_accept_numpy_scalars():
    x, y = _no_ties(2, 3, 2, 44), _no_ties(2, 4, 2, 45)
    torch.testing.assert_close(
        SlicedW2(np.int64(4), seed=np.int64(7))(x, y), SlicedW2(4, seed=7)(x, y), rtol=0, atol=0
    )
    torch.testing.assert_close(
        SinkhornW2(np.float32(0.5), np.int64(3))(x, y), SinkhornW2(0.5, 3)(x, y), rtol=0, atol=0
    )


def test_from_moments_validation():
    m = GaussianW2("full")
    mean, cov = torch.zeros(2, 3), torch.zeros(2, 3, 3)
    with pytest.raises(ValueError, match=r"cov_y must have shape \(P, C, C\)"):
        m.from_moments(mean, cov, mean, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="mean_y must have the shape of mean_x"):
        m.from_moments(mean, cov, torch.zeros(2, 4), cov)
    with pytest.raises(TypeError, match="cov_x must be a torch.Tensor"):
        m.from_moments(mean, np.zeros((2, 3, 3)), mean, cov)


def test_resolve_metric_errors():
    with pytest.raises(ValueError, match="metric must be one of"):
        resolve_metric("wasserstein")
    with pytest.raises(TypeError, match="metric must be a string or a metric object"):
        resolve_metric(3)
    with pytest.raises(ValueError, match="metric 'sorted' is exact in one dimension only"):
        resolve_metric("sorted", n_channels=3)
    with pytest.raises(ValueError, match="n_channels must be an integer >= 1"):
        resolve_metric("auto", n_channels=0)
    with pytest.raises(TypeError, match="n_channels must be an integer or None"):
        resolve_metric("auto", n_channels=1.0)
    assert isinstance(resolve_metric("auto", n_channels=np.int64(3)), SlicedW2)


def test_1d_solver_restores_the_thread_count(monkeypatch):
    # the CPU sorting network runs on one intra-op thread and must leave torch's setting as it
    # was, also when it raises
    before = torch.get_num_threads()
    seen = []
    original = w2_sorting._sorting_network

    def spy(n):
        seen.append(torch.get_num_threads())
        return original(n)

    try:
        torch.set_num_threads(2)
        monkeypatch.setattr(w2_sorting, "_sorting_network", spy)
        x = torch.randn(10, 4, 1, requires_grad=True)
        SortedW2(sort="network")(x, torch.randn(10, 4, 1)).sum().backward()
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 2

        def boom(n):
            raise RuntimeError("boom")

        monkeypatch.setattr(w2_sorting, "_sorting_network", boom)
        with pytest.raises(RuntimeError, match="boom"):
            SortedW2(sort="network")(x, torch.randn(10, 4, 1))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------------------------
# saved models name metric classes by their import path
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "metric",
    [
        SortedW2(sort="numpy", validate=False),
        SlicedW2(n_projections=5, seed=3),
        SinkhornW2(epsilon=0.5, n_iter=7, debiased=True),
        GaussianW2("full"),
        ExactW2(num_iter_max=10),
        AutoW2(n_projections=4, seed=1),
    ],
)
def test_metrics_round_trip_through_json(metric):
    data = to_jsonable(metric)
    assert data["__class__"].startswith("conprediff.wasserstein.")
    back = from_jsonable(json.loads(json.dumps(data)))
    assert type(back) is type(metric)
    assert back.get_params() == metric.get_params()


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("SortedW2", SortedW2),
        ("SlicedW2", SlicedW2),
        ("SinkhornW2", SinkhornW2),
        ("GaussianW2", GaussianW2),
        ("ExactW2", ExactW2),
        ("AutoW2", AutoW2),
    ],
)
def test_files_written_before_the_package_split_still_load(name, cls):
    # model files written when conprediff.wasserstein was one module name the classes
    # "conprediff.wasserstein.<Name>"; the package re-exports them under that path
    params = {"validate": False}
    got = from_jsonable({"__class__": f"conprediff.wasserstein.{name}", "params": params})
    assert type(got) is cls
    assert got.validate is False
    # and new files keep naming them by that public path, wherever the class is defined
    assert to_jsonable(got)["__class__"] == f"conprediff.wasserstein.{name}"
