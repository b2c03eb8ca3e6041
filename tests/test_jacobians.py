"""Jacobians in a few sweeps: dense ones in one batched plan (chunked under a memory limit),
sparsity patterns from the graph, sparse Jacobians and Hessians by colouring, equal to the
dense ones on the op table and on random graphs, with the sweep counts checked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from specs import build_graph, case_id, cases
from test_random_graphs import graphs

import cgraph as cg
from cgraph.jacobian import sparsity_pattern

pytest.importorskip("scipy")
ROOT = Path(__file__).resolve().parent.parent
CASES = [c for c in cases() if c[0].smooth]


def loop_jacobian(g, feeds, of, wrt):
    """The Jacobian column by column, one ForwardMode sweep each (the reference)."""
    x = np.asarray(feeds[wrt]) if wrt in feeds else g.params[wrt]
    fm = cg.ForwardMode(g, of=[of], wrt=[wrt])
    cols = []
    for j in range(x.size):
        t = np.zeros(x.size)
        t[j] = 1
        cols.append(fm.jvp(feeds, {wrt: t.reshape(x.shape)})[1][of].ravel())
    out_size = cols[0].size if cols else int(np.prod(g.outputs[of].shape))
    return np.stack(cols, axis=1) if cols else np.zeros((out_size, 0))


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_patterns_hold_the_jacobian_and_sparse_equals_dense(case):
    spec, shapes = case
    g = build_graph(spec, shapes, scale=1.5)
    rng = np.random.default_rng(0)
    feeds = {f"a{i}": x for i, x in enumerate(spec.draw(rng, shapes))}
    for i in range(len(shapes)):
        if i in spec.nondiff_args:
            continue
        w = f"a{i}"
        ref = loop_jacobian(g, feeds, "out", w)
        S = cg.jacobian_sparsity(g, feeds, of="out", wrt=w)
        assert S.dtype == bool and S.shape == g.outputs["out"].shape + shapes[i]
        S2 = S.reshape(ref.shape)
        assert not np.any((ref != 0) & ~S2), f"{w}: a nonzero entry outside the pattern"
        for mode in ("forward", "reverse", "auto"):
            dense = cg.jacobian(g, feeds, of="out", wrt=w, mode=mode)
            np.testing.assert_allclose(dense.reshape(ref.shape), ref, rtol=1e-12, atol=1e-14)
            J = cg.Jacobian(g, "out", w, mode=mode, sparse=True)
            sp = J(feeds)
            assert sp.shape == ref.shape
            np.testing.assert_allclose(sp.toarray(), ref, rtol=1e-12, atol=1e-14)
            assert J.sweeps <= (ref.shape[1] if J.mode == "forward" else ref.shape[0])


UNARY = [c for c in CASES if len(c[1]) == 1 and c[0].build in (cg.exp, cg.log, cg.sqrt, cg.square, cg.sin, cg.cos,
                                                                 cg.tanh, cg.logistic, cg.softplus, cg.neg)]


@pytest.mark.parametrize("case", UNARY, ids=[case_id(c) for c in UNARY])
def test_elementwise_jacobians_take_one_sweep(case):
    spec, shapes = case
    g = build_graph(spec, shapes)
    feeds = {"a0": spec.draw(np.random.default_rng(0), shapes)[0]}
    J = cg.Jacobian(g, "out", "a0", sparse=True)
    J(feeds)
    assert J.sweeps == 1


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_sparse_hessians_equal_the_dense_ones(case):
    """Forward over reverse, sparse and dense, on the op table: the gradient graph's ops (the
    VJP rules' sum_to, scatter, broadcasts) have patterns and batching rules too."""
    spec, shapes = case
    g = build_graph(spec, shapes, scale=1.5)
    if g.outputs["out"].dtype.kind != "f":
        return
    d, _ = g.rebuild()
    d.output("loss", cg.sum(cg.tanh(d.outputs["out"])))
    feeds = {f"a{i}": x for i, x in enumerate(spec.draw(np.random.default_rng(1), shapes))}
    for i in range(len(shapes)):
        if i in spec.nondiff_args:
            continue
        w = f"a{i}"
        H = cg.Hessian(d, "loss", w, sparse=True)
        sp = H(feeds).toarray()
        dense = cg.hessian(d, feeds, "loss", w).reshape(sp.shape)
        np.testing.assert_allclose(sp, dense, rtol=1e-11, atol=1e-13)
        np.testing.assert_allclose(dense, dense.T, rtol=1e-8, atol=1e-10)
        assert H.sweeps <= sp.shape[0]


def test_pattern_rules_are_exact_where_they_say_so():
    """Elementwise, moving and grouping rules give exactly the structural nonzeros."""
    g = cg.Graph()
    x = g.input("x", (4, 3))
    y = cg.concat([cg.tanh(x[1:3]), cg.sum(x, axis=0, keepdims=True)], axis=0).T
    g.output("y", cg.reshape(cg.softmax(y, axis=1), (-1,)))
    feeds = {"x": np.random.default_rng(1).normal(size=(4, 3))}
    S = cg.jacobian_sparsity(g, feeds, "y", "x").reshape(9, 12)
    J = cg.jacobian(g, feeds, "y", "x").reshape(9, 12)
    np.testing.assert_array_equal(S, J != 0)


def tridiagonal_residual(n):
    """F(u)_i = u_{i-1} - 2 u_i + u_{i+1} + sin(u_i), with u_0 = u_{n+1} = 0."""
    g = cg.Graph("pde")
    u = g.input("u", (n,))
    zero = np.zeros(1)
    padded = cg.concat([g.constant("edge", zero), u, g.constant("edge2", zero)], axis=0)
    g.output("F", padded[:-2] - 2.0 * u + padded[2:] + cg.sin(u))
    g.output("E", cg.sum(cg.square(padded[1:] - padded[:-1])) + cg.sum(cg.cos(u)))
    return g


def test_a_tridiagonal_jacobian_takes_three_sweeps():
    n = 50
    g = tridiagonal_residual(n)
    U = np.random.default_rng(2).normal(size=n)
    J = cg.Jacobian(g, "F", "u", sparse=True)
    sp = J({"u": U})
    assert J.sweeps == 3 and J.chunks == 1
    want = np.diag(np.cos(U) - 2) + np.diag(np.ones(n - 1), 1) + np.diag(np.ones(n - 1), -1)
    np.testing.assert_allclose(sp.toarray(), want, rtol=1e-14)
    assert sp.nnz == 3 * n - 2
    H = cg.Hessian(g, "E", "u", sparse=True)
    Hs = H({"u": U})
    assert H.sweeps == 3 and H.mode == "forward"
    np.testing.assert_allclose(Hs.toarray(), cg.hessian(g, {"u": U}, "E", "u"), rtol=1e-12, atol=1e-14)


def test_a_sparse_hessian_takes_fewer_sweeps_by_symmetry():
    """An arrowhead Hessian (x0 meets every other unknown): its columns all share row 0, so
    colouring columns needs n colours; a star colouring needs 2 (entries read from a row or a
    column, whichever holds them alone)."""
    n = 12
    g = cg.Graph()
    x = g.input("x", (n,))
    g.output("loss", cg.sum(cg.square(x) * x[0:1]) + cg.sum(cg.sin(x)))
    X = np.random.default_rng(12).normal(size=n)
    H = cg.Hessian(g, "loss", "x", sparse=True)
    np.testing.assert_allclose(H({"x": X}).toarray(), cg.hessian(g, {"x": X}, "loss", "x"), rtol=1e-13, atol=1e-14)
    assert H.sweeps == 2
    J = cg.Jacobian(cg.gradient_graph(g, "loss", ["x"]), "grad/x", "x", mode="forward", sparse=True)
    J({"x": X})
    assert J.sweeps == n


def test_star_colourings_leave_no_two_coloured_path_of_four():
    nx = pytest.importorskip("networkx")
    from cgraph.jacobian import star_colour
    from cgraph.patterns import Pattern

    rng = np.random.default_rng(13)
    for _ in range(100):
        m = int(rng.integers(2, 14))
        A = rng.random((m, m)) < rng.uniform(0.05, 0.5)
        A = A | A.T | np.eye(m, dtype=bool)
        r, c = np.nonzero(A)
        k, colour = star_colour(Pattern.from_pairs((m,), m, r, c))
        assert k == colour.max() + 1
        G = nx.Graph([(i, j) for i, j in zip(r.tolist(), c.tolist()) if i != j])
        assert all(colour[i] != colour[j] for i, j in G.edges)
        for a, b in G.edges:
            for p in (a, b):
                q = b if p == a else a
                for x in G[q]:
                    for y in G[x]:
                        if x != p and y not in (p, q):
                            assert len({colour[p], colour[q], colour[x], colour[y]}) >= 3


def test_a_diagonal_jacobian_takes_one_sweep_and_a_dense_one_all():
    g = cg.Graph()
    x = g.input("x", (30,))
    W = g.param("W", np.random.default_rng(3).normal(size=(30, 20)))
    g.output("d", cg.tanh(x) * 2.0)
    g.output("m", cg.reshape(cg.reshape(x, (1, 30)) @ W, (20,)))
    X = np.random.default_rng(4).normal(size=30)
    J = cg.Jacobian(g, "d", "x", sparse=True)
    np.testing.assert_allclose(J({"x": X}).toarray(), np.diag(2 * (1 - np.tanh(X) ** 2)))
    assert J.sweeps == 1
    J = cg.Jacobian(g, "m", "x", sparse=True)
    np.testing.assert_allclose(J({"x": X}).toarray(), g.params["W"].T, rtol=1e-14)
    assert (J.mode, J.sweeps) == ("reverse", 20)  # 20 rows < 30 columns: each its own colour


def test_dense_jacobians_are_one_batched_run_unless_the_memory_limit_splits_them():
    g = cg.Graph()
    x = g.input("x", (1, 64))
    W1 = g.param("W1", np.random.default_rng(5).normal(0, 0.2, (64, 64)))
    W2 = g.param("W2", np.random.default_rng(6).normal(0, 0.2, (64, 64)))
    g.output("y", cg.tanh(cg.tanh(x @ W1) @ W2))
    X = np.random.default_rng(7).normal(size=(1, 64))
    ref = loop_jacobian(g, {"x": X}, "y", "x").reshape(1, 64, 1, 64)
    J = cg.Jacobian(g, "y", "x")
    np.testing.assert_allclose(J({"x": X}), ref, rtol=1e-12, atol=1e-15)
    assert (J.mode, J.sweeps, J.chunks) == ("forward", 64, 1)
    small = cg.Jacobian(g, "y", "x", memory_limit=8 * 64 * 12)
    np.testing.assert_allclose(small({"x": X}), ref, rtol=1e-12, atol=1e-15)
    assert small.chunks > 4
    plan = small._sweepers["forward"].plan(small._setups[next(iter(small._setups))].chunk)
    chunk = small._setups[next(iter(small._setups))].chunk
    assert plan.predict_peak({"x": (1, 64), "tangent:x": (chunk, 1, 64)}) + chunk * 64 * 8 <= 8 * 64 * 12
    g.set_param("W1", np.zeros((64, 64)))  # a prepared Jacobian reads the current params
    assert not np.any(J({"x": X}))


def test_hessians_forward_over_reverse():
    torch = pytest.importorskip("torch")
    g = cg.Graph()
    x = g.input("x", (2, 3))
    W = g.param("W", np.random.default_rng(8).normal(size=(3, 3)))
    g.output("loss", cg.sum(cg.tanh(x @ W) * x) + cg.logsumexp(cg.reshape(x, (-1,))))
    X = np.random.default_rng(9).normal(size=(2, 3))
    H = cg.hessian(g, {"x": X}, of="loss", wrt="x")
    assert H.shape == (2, 3, 2, 3)
    Wt = torch.tensor(g.params["W"])
    ref = torch.autograd.functional.hessian(
        lambda t: (torch.tanh(t @ Wt) * t).sum() + torch.logsumexp(t.reshape(-1), 0), torch.tensor(X))
    np.testing.assert_allclose(H, ref.numpy(), rtol=1e-10, atol=1e-12)
    HW = cg.hessian(g, {"x": X}, of="loss", wrt="W", sparse=True)
    dense = cg.hessian(g, {"x": X}, of="loss", wrt="W").reshape(9, 9)
    np.testing.assert_allclose(HW.toarray(), dense, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dense, dense.T, rtol=1e-10, atol=1e-12)


@settings(max_examples=15, deadline=None)
@given(graphs(), st.integers(1, 4))
def test_sparse_jacobians_and_hessians_of_random_graphs_equal_the_dense_ones(g, n):
    X = np.random.default_rng(n).normal(size=(n, 4))
    try:
        cg.Evaluator(g).run({"x": X})
    except (cg.ShapeError, cg.FeedError):  # sizes that a batch of n rows cannot fit
        return
    for wrt in ("x", "w"):
        feeds = {"x": X}
        ref = loop_jacobian(g, feeds, "o0", wrt)
        S = sparsity_pattern(g, {"x": X.shape}, "o0", wrt).to_dense()
        assert not np.any((ref != 0) & ~S)
        for mode in ("forward", "reverse"):
            np.testing.assert_allclose(cg.jacobian(g, feeds, "o0", wrt, mode=mode).reshape(ref.shape), ref,
                                       rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(cg.jacobian(g, feeds, "o0", wrt, mode=mode, sparse=True).toarray(), ref,
                                       rtol=1e-10, atol=1e-12)
        H = cg.Hessian(g, "loss", wrt, sparse=True)
        dense = cg.hessian(g, feeds, "loss", wrt).reshape(ref.shape[1], -1)
        np.testing.assert_allclose(H(feeds).toarray(), dense, rtol=1e-9, atol=1e-12)
        assert H.sweeps <= dense.shape[0]


double = cg.define_op("test_jac/double", kernel=lambda x: 2.0 * x, infer=lambda x: (x.shape, x.dtype),
                      jvp=[lambda t, out, x: double(t)], vjp=[lambda g, out, x: double(g)])
double_ruled = cg.define_op("test_jac/double_ruled", kernel=lambda x: 2.0 * x, infer=lambda x: (x.shape, x.dtype),
                            jvp=[lambda t, out, x: double_ruled(t)], vjp=[lambda g, out, x: double_ruled(g)],
                            batch=lambda batched, x: double_ruled(x), pattern=cg.patterns.elementwise)


def test_user_ops_with_rules_are_batched_and_sparse():
    g = cg.Graph()
    x = g.input("x", (6,))
    g.output("y", double_ruled(cg.sin(x)))
    X = np.random.default_rng(11).normal(size=6)
    J = cg.Jacobian(g, "y", "x", sparse=True)
    np.testing.assert_allclose(J({"x": X}).toarray(), np.diag(2 * np.cos(X)), rtol=1e-14)
    assert J.sweeps == 1 and None in J._sweepers[J.mode]._plans  # one plan, whatever the chunk size
    assert "ELEMENTWISE" in str(cg.op_info("test_jac/double_ruled"))


def test_user_ops_without_rules_batch_example_by_example_and_are_dense():
    """A user op in the tangent path with no batching rule: a plan per static chunk size; with
    no pattern rule, its pattern is dense (conservative) and the result is still right."""
    g = cg.Graph()
    x = g.input("x", (5,))
    g.output("y", double(cg.sin(x)))
    X = np.random.default_rng(10).normal(size=5)
    J = cg.Jacobian(g, "y", "x", mode="forward")
    with pytest.raises(cg.BatchingError):
        cg.vmap(cg.autodiff.jvp_graph(g, ["y"], ["x"]), in_axes={"tangent:x": 0})
    ref = loop_jacobian(g, {"x": X}, "y", "x")
    np.testing.assert_allclose(J({"x": X}), ref, rtol=1e-12)
    S = cg.jacobian_sparsity(g, {"x": X}, "y", "x")
    assert S.all(), "no pattern rule: dense"
    sp = cg.jacobian(g, {"x": X}, "y", "x", sparse=True)
    np.testing.assert_allclose(sp.toarray(), ref, rtol=1e-12)


def test_sparse_without_scipy_says_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.sparse", None)
    g = tridiagonal_residual(4)
    with pytest.raises(cg.SparseMissingError, match=r"pip install 'cgraph-ad\[sparse\]'"):
        cg.jacobian(g, {"u": np.ones(4)}, "F", "u", sparse=True)
    assert cg.jacobian_sparsity(g, {"u": np.ones(4)}, "F", "u").sum() == 10  # the pattern needs no scipy
    assert cg.jacobian(g, {"u": np.ones(4)}, "F", "u").shape == (4, 4)


def test_jacobian_arguments_are_checked():
    g = tridiagonal_residual(3)
    with pytest.raises(ValueError, match="mode must be"):
        cg.jacobian(g, {"u": np.ones(3)}, "F", "u", mode="sideways")
    with pytest.raises(cg.DerivativeError, match="wrt 'edge'"):
        cg.jacobian(g, {"u": np.ones(3)}, "F", "edge")
    with pytest.raises(cg.FeedError, match="missing feed for input 'u'"):
        cg.jacobian(g, {}, "F", "u")
    with pytest.raises(cg.DerivativeError, match="scalar"):
        cg.hessian(g, {"u": np.ones(3)}, "F", "u")


def test_the_sparse_jacobian_example_runs():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "sparse_jacobian.py"), "--n", "2000"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "3 colours" in r.stdout and "converged" in r.stdout
