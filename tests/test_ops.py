"""Every op's values against numpy, over several shapes, with broadcasting, axis and keepdims,
in float64 and float32; static shapes inferred at build time equal the run's."""

import numpy as np
import pytest
from specs import COMPARISONS, build_graph, case_id, cases

import cgraph as cg
from cgraph.ops.registry import OPS

CASES = cases()


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_values_match_numpy(case, dtype):
    spec, shapes = case
    rng = np.random.default_rng(0)
    xs = spec.draw(rng, shapes, dtype)
    g = build_graph(spec, shapes, dtype)
    out = cg.Evaluator(g).run({f"a{i}": x for i, x in enumerate(xs)})["out"]
    ref = spec.ref(*[x.astype(np.float64) if x.dtype.kind == "f" else x for x in xs])
    tol = 1e-12 if dtype == "float64" else 2e-5
    np.testing.assert_allclose(out, ref, rtol=tol, atol=tol)
    assert out.dtype == np.dtype(spec.out_dtype or dtype), "the output keeps the input's float dtype"
    assert out.shape == g.outputs["out"].shape, "the static shape equals the run's shape"


@pytest.mark.parametrize("name,fn,ref", COMPARISONS, ids=[c[0] for c in COMPARISONS])
def test_comparisons_give_bool(name, fn, ref):
    g = cg.Graph()
    a, b = g.input("a", (3, 4)), g.input("b", (4,))
    g.output("out", fn(a, b))
    x = np.round(np.random.default_rng(1).normal(size=(3, 4)))
    y = np.round(np.random.default_rng(2).normal(size=(4,)))
    out = cg.Evaluator(g).run({"a": x, "b": y})["out"]
    assert out.dtype == bool and g.outputs["out"].dtype == bool
    np.testing.assert_array_equal(out, ref(x, y))


def test_every_registered_op_is_exercised():
    """The spec table (and the internal ops the derivative rules use) cover the registry."""
    from specs import SPECS

    built = set()
    for spec in SPECS:
        gg = build_graph(spec, spec.shapes[0])
        built |= {n.op for n in gg.nodes.values()}
    internal = {"shape_of", "sum_to", "expand_dims", "squeeze", "scatter", "dim_size", "sign", "cast",
                "stop_gradient",  # stop_gradient: tests/test_contract.py
                "cond", "scan", "while_loop", "result", "scan_revolve"}  # control flow: tests/test_control.py
    comparisons = {c[0] for c in COMPARISONS}
    builtin = {name for name, op in OPS.items() if not op.user}
    assert builtin - built - comparisons <= internal, builtin - built - comparisons - internal


def test_operators_and_scalar_lifting():
    g = cg.Graph()
    x = g.input("x", (2,), "float32")
    y = 1 + 2 * x - x / 4 + x ** 2 - (-x)
    z = np.full(2, 2.0) * x  # a numpy array keeps its own dtype: float64 wins, as in numpy
    g.output("y", y)
    g.output("z", z)
    g.output("r", np.ones((1, 2)) @ cg.reshape(x, (2, 1)))
    X = np.array([1.0, 2.0], np.float32)
    out = cg.Evaluator(g).run({"x": X})
    assert y.dtype == np.float32 and out["y"].dtype == np.float32, "Python numbers take the tensor's dtype"
    np.testing.assert_allclose(out["y"], 1 + 2 * X - X / 4 + X ** 2 + X)
    assert out["z"].dtype == np.float64
    np.testing.assert_allclose(out["r"], [[3.0]])


def test_maximum_ties_share():
    g = cg.Graph()
    a, b = g.input("a", (3,)), g.input("b", (3,))
    g.output("out", cg.sum(cg.maximum(a, b)))
    g.output("m", cg.max(a))
    _, gr = cg.ReverseMode(g, "out", ["a", "b"]).grad({"a": [1.0, 2.0, 3.0], "b": [1.0, 5.0, 0.0]})
    np.testing.assert_array_equal(gr["a"], [0.5, 0.0, 1.0])
    np.testing.assert_array_equal(gr["b"], [0.5, 1.0, 0.0])
    _, gm = cg.ReverseMode(g, "m", ["a"]).grad({"a": [3.0, 1.0, 3.0], "b": [0, 0, 0]})
    np.testing.assert_array_equal(gm["a"], [0.5, 0.0, 0.5])


def test_losses_are_stable_for_huge_logits():
    g = cg.Graph()
    u, y = g.input("u", (2, 3)), g.input("y", (2, 3))
    g.output("sce", cg.softmax_cross_entropy(u, y))
    g.output("bce", cg.binary_cross_entropy(u, y))
    g.output("lse", cg.logsumexp(u))
    U = np.array([[1000.0, 0.0, -1000.0], [-800.0, 800.0, 0.0]])
    Y = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    out = cg.Evaluator(g).run({"u": U, "y": Y})
    assert np.isfinite(out["sce"]) and out["sce"] == pytest.approx(0.0, abs=1e-300)
    assert out["bce"] == pytest.approx(2 * np.log(2) / 2)  # only the zero logits cost log 2
    np.testing.assert_allclose(out["lse"], [1000.0, 800.0])


def test_run_time_sizes():
    """None sizes: the same graph runs for any batch, and rules that need the size get it."""
    g = cg.Graph()
    x = g.input("x", (None, 3))
    g.output("m", cg.mean(x, axis=0))
    g.output("r", cg.reshape(x, (-1,)))
    assert g.outputs["r"].shape == (None,)
    ev = cg.Evaluator(g)
    for n in (1, 4, 7):
        X = np.arange(3.0 * n).reshape(n, 3)
        out = ev.run({"x": X})
        np.testing.assert_allclose(out["m"], X.mean(0))
        assert out["r"].shape == (3 * n,)


def test_reductions_of_ints_and_bools_follow_numpy():
    g = cg.Graph()
    b, i = g.input("b", (2, 3), "bool"), g.input("i", (2, 3), "int64")
    g.output("mb", cg.mean(b, axis=1))
    g.output("mi", cg.mean(i))
    g.output("sb", cg.sum(b, axis=-1))
    g.output("xi", cg.max(i, axis=-1, keepdims=True))
    B = np.array([[True, False, True], [True, True, True]])
    ints = np.array([[1, 5, 2], [7, 0, 3]])
    out = cg.Evaluator(g).run({"b": B, "i": ints})
    np.testing.assert_array_equal(out["mb"], B.mean(1))
    assert out["mi"] == ints.mean() and out["mi"].dtype == np.float64
    np.testing.assert_array_equal(out["sb"], B.sum(-1))
    np.testing.assert_array_equal(out["xi"], ints.max(-1, keepdims=True))


def test_take_and_one_hot_refuse_indices_out_of_range_when_the_graph_runs():
    g = cg.Graph("lookup")
    table = g.param("table", np.arange(12.0).reshape(4, 3))
    ids = g.input("ids", (None, 2), "int64")
    g.output("emb", cg.take(table, ids))
    g.output("hot", cg.one_hot(ids, 4))
    ev = cg.Evaluator(g)
    out = ev.run({"ids": [[0, -1], [3, 3]]})
    np.testing.assert_array_equal(out["emb"], np.arange(12.0).reshape(4, 3)[[[0, -1], [3, 3]]])
    np.testing.assert_array_equal(out["hot"], np.eye(4)[[[0, 3], [3, 3]]])
    with pytest.raises(cg.ShapeError, match=r"^take \(take\): IndexError: index 4 is out of bounds .* size 4"):
        ev.run({"ids": [[0, 4]]})
    with pytest.raises(cg.ShapeError, match=r"^one_hot \(one_hot\): IndexError: index -5 is out of range for depth 4"):
        cg.Evaluator(g, outputs=["hot"]).run({"ids": [[0, -5]]})
    with pytest.raises(cg.ShapeError, match="indices must be int64, got float64"):
        cg.take(table, g.input("f", (2,)))


def test_embedding_gradient_sums_repeated_ids():
    g = cg.Graph()
    table = g.param("table", np.zeros((5, 2)))
    ids = g.input("ids", (None,), "int64")
    g.output("loss", cg.sum(cg.take(table, ids) * g.constant("w", [1.0, 10.0])))
    _, grads = cg.ReverseMode(g, "loss", ["table"]).grad({"ids": [1, 3, 1, -1, 1]})
    np.testing.assert_array_equal(grads["table"], [[0, 0], [3, 30], [0, 0], [1, 10], [1, 10]])


@pytest.mark.parametrize("zeros", [[5], [0, 7], [2, 3, 11]])
def test_prod_derivatives_with_zeros_against_torch(zeros):
    """One, two or three zeros in a reduction: the gradient is exact (torch's, which handles
    zeros too); the Hessian as well where at most one element of each reduction is zero."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(len(zeros))
    X = rng.uniform(0.5, 1.5, (3, 4)) * rng.choice([-1, 1], (3, 4))
    X.ravel()[zeros] = 0.0
    g = cg.Graph()
    x = g.input("x", (3, 4))
    g.output("loss", cg.sum(cg.prod(x, axis=1) * g.constant("w", [1.0, -2.0, 3.0])))
    gg = cg.gradient_graph(g, "loss", ["x"])
    got = cg.Evaluator(gg).run({"x": X})["grad/x"]
    f = lambda t: (t.prod(1) * torch.tensor([1.0, -2.0, 3.0], dtype=t.dtype)).sum()
    np.testing.assert_allclose(got, torch.func.grad(f)(torch.tensor(X)).numpy(), rtol=1e-12, atol=1e-12)
    H = cg.jacobian(gg, {"x": X}, of="grad/x", wrt="x")
    H_torch = torch.func.hessian(f)(torch.tensor(X)).numpy()
    single = [r for r in range(3) if np.count_nonzero(X[r] == 0) <= 1]
    np.testing.assert_allclose(H[single][:, :, single], H_torch[single][:, :, single], rtol=1e-12, atol=1e-12)


def test_dropout_mask_is_a_function_of_the_seed():
    g = cg.Graph("drop")
    x = g.input("x", (200, 50))
    seed = g.input("seed", (), "int64")
    y = cg.dropout(x, 0.25, seed)
    g.output("y", y)
    g.output("loss", cg.sum(y * y))
    g.output("same", cg.dropout(x, 0.25, seed))
    g.output("eval", cg.dropout(x, 0.25, seed, training=False))
    X = np.random.default_rng(0).normal(size=(200, 50))
    ev = cg.Evaluator(g)
    a, b = ev.run({"x": X, "seed": 3}), ev.run({"x": X, "seed": 3})
    np.testing.assert_array_equal(a["y"], b["y"])  # reruns agree
    np.testing.assert_array_equal(a["y"], a["same"])  # so do two nodes with one seed
    assert g.outputs["eval"].name == "x"  # not training: x itself
    kept = a["y"] != 0
    assert abs(kept.mean() - 0.75) < 0.01
    np.testing.assert_allclose(a["y"][kept], X[kept] / 0.75)
    c = ev.run({"x": X, "seed": 4})
    assert (c["y"] != 0).mean() > 0.7 and np.mean((c["y"] != 0) != kept) > 0.2  # another seed, another mask
    _, grads = cg.ReverseMode(g, "loss", ["x"]).grad({"x": X, "seed": 3})
    np.testing.assert_allclose(grads["x"], 2 * a["y"] / 0.75)  # the backward sweep uses the same mask
    h = cg.loads(cg.dumps(g))
    np.testing.assert_array_equal(cg.Evaluator(h).run({"x": X, "seed": 3})["y"], a["y"])
    g32 = cg.Graph()
    g32.output("y", cg.dropout(g32.input("x", (200, 50), "float32"), 0.25, 3))
    y32 = cg.Evaluator(g32).run({"x": X.astype(np.float32)})["y"]
    assert y32.dtype == np.float32
    np.testing.assert_array_equal(y32 != 0, kept)  # the mask does not depend on the dtype
    with pytest.raises(cg.ShapeError, match=r"rate must be in \[0, 1\)"):
        cg.dropout(x, 1.0, seed)
    with pytest.raises(TypeError):
        cg.dropout(x, 0.5, 1.5)


def test_erf_without_scipy_is_the_c_library_erf(monkeypatch):
    import math
    import sys

    g = cg.Graph()
    g.output("y", cg.erf(g.input("x", (5,))))
    X = np.linspace(-2.5, 2.5, 5)
    monkeypatch.setitem(sys.modules, "scipy.special", None)  # as if scipy were not installed
    np.testing.assert_array_equal(cg.Evaluator(g).run({"x": X})["y"], [math.erf(v) for v in X])
