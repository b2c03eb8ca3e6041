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
    ref = spec.ref(*[x.astype(np.float64) if x.dtype != bool else x for x in xs])
    tol = 1e-12 if dtype == "float64" else 2e-5
    np.testing.assert_allclose(out, ref, rtol=tol, atol=tol)
    assert out.dtype == np.dtype(dtype), "the output keeps the input's float dtype"
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
