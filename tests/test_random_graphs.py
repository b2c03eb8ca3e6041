"""Random graphs (hypothesis): every optimisation of a plan (simplification, in-place steps,
straight-line code) against the plain step-by-step interpreter with no passes: the same values,
the same gradients, feeds and params untouched, and the measured peak equal to the predicted."""

import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import cgraph as cg
from cgraph.schedule import Plan, Stats, interpret_plan

UNARY = [cg.tanh, cg.exp, cg.sin, cg.logistic, cg.neg, cg.square, lambda t: t.T.T,
         lambda t: cg.reshape(t, (-1, 4)), lambda t: t * 1.0 + 0.0, lambda t: cg.softmax(t)]
BINARY = [cg.add, cg.sub, cg.mul, cg.maximum, lambda a, b: a @ b]


@st.composite
def graphs(draw):
    g = cg.Graph("random")
    x = g.input("x", (None, 4))
    w = g.param("w", np.linspace(-1, 1, 16).reshape(4, 4))
    b = g.param("b", np.array([0.1, -0.2, 0.3, 0.0]))
    pool = [x, w, x @ w + b]
    for _ in range(draw(st.integers(2, 14))):
        if draw(st.booleans()):
            f = draw(st.sampled_from(UNARY))
            pool.append(f(draw(st.sampled_from(pool))))
        else:
            f = draw(st.sampled_from(BINARY))
            a, c = draw(st.sampled_from(pool)), draw(st.sampled_from(pool))
            try:
                pool.append(f(a, c))
            except cg.ShapeError:
                continue
    outs = draw(st.lists(st.sampled_from(pool[2:]), min_size=1, max_size=3))
    for i, t in enumerate(outs):
        g.output(f"o{i}", t)
    g.output("loss", cg.mean(cg.tanh(outs[0])))
    return g


def reference(graph, targets, feeds):
    """The targets' values by the interpreter, no passes; params and constants from `graph`."""
    plan = Plan(graph, targets, passes=())
    vals = {n: feeds[n] if n in feeds else graph.value(n) for n in plan.leaves}
    return interpret_plan(plan, vals, Stats())


@settings(max_examples=40, deadline=None)
@given(graphs(), st.integers(1, 5))
def test_optimised_plans_equal_the_plain_interpreter(g, n):
    X = np.random.default_rng(n).normal(size=(n, 4))
    X0, P0 = X.copy(), {k: v.copy() for k, v in g.params.items()}
    ev = cg.Evaluator(g)
    try:
        out = ev.run({"x": X})
    except cg.FeedError:  # x's run-time size met a static one (x + w with n != 4): the user's error
        assume(False)
    ref = reference(g, [g.output_node(o) for o in ev.outputs], {"x": X})
    for o, r in zip(ev.outputs, ref):
        np.testing.assert_allclose(out[o], r, rtol=1e-12, atol=1e-15)
    assert ev.stats.peak_bytes == ev.stats.predicted_peak_bytes

    rm = cg.ReverseMode(g, "loss", ["x", "w", "b"])
    value, grads = rm.grad({"x": X})
    d = cg.gradient_graph(g, "loss", ["x", "w", "b"])
    ref = reference(d, [d.output_node(o) for o in d.outputs], {"x": X})
    np.testing.assert_allclose(value, ref[0], rtol=1e-12)
    for k, r in zip(["x", "w", "b"], ref[1:]):
        np.testing.assert_allclose(grads[k], r, rtol=1e-10, atol=1e-13)
    assert rm.stats.peak_bytes == rm.stats.predicted_peak_bytes
    assert np.array_equal(X, X0) and all(np.array_equal(g.params[k], P0[k]) for k in P0)
