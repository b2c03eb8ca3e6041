"""Compiled plans (straight-line code, in-place steps) against the step-by-step interpreter:
the same values bit for bit, the same measured peak, equal to the predicted one; feeds and
params never written; repeated runs with other batch sizes and after set_param."""

import numpy as np
import pytest
from specs import build_graph, case_id, cases

import cgraph as cg
from cgraph.autodiff import jvp_graph, vjp_graph
from cgraph.schedule import Plan, Stats, interpret_plan, run_plan

CASES = cases()


def leaf_values(plan, feeds, model):
    out = []
    for name, kind in zip(plan.leaves, plan.leaf_kinds):
        if kind == "input":
            out.append(np.asarray(feeds[name], dtype=plan.graph.nodes[name].dtype))
        elif kind == "param" and name in model.nodes:
            out.append(model.value(name))
        else:
            out.append(plan.graph.value(name))
    return out


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_compiled_equals_interpreted_and_predicted(case):
    spec, shapes = case
    xs = spec.draw(np.random.default_rng(0), shapes)
    g = build_graph(spec, shapes, scale=2.0)
    wrt = [f"a{i}" for i in range(len(shapes)) if xs[i].dtype.kind == "f"]
    feeds = {f"a{i}": x for i, x in enumerate(xs)}
    rng = np.random.default_rng(1)
    out_shape = np.shape(cg.Evaluator(g).run(feeds)["out"])
    derived = [
        (g, {}),
        (jvp_graph(g, ["out"], wrt), {f"tangent:{w}": rng.normal(size=feeds[w].shape) for w in wrt}),
        (vjp_graph(g, ["out"], wrt), {"cotangent:out": rng.normal(size=out_shape)}),
    ]
    for d, extra in derived:
        all_feeds = {**feeds, **extra}
        before = {k: np.copy(v) for k, v in all_feeds.items()}
        plan = Plan(d, [d.output_node(o) for o in d.outputs])
        leaves = leaf_values(plan, all_feeds, d)
        s1, s2 = Stats(), Stats()
        compiled = run_plan(plan, leaves, s1)
        assert "runner" in plan.__dict__  # small: compiled on its first run
        interpreted = interpret_plan(plan, dict(zip(plan.leaves, leaves)), s2)
        for a, b in zip(compiled, interpreted):
            assert np.array_equal(np.asarray(a), np.asarray(b))
        shapes = {n: np.shape(v) for n, v in zip(plan.leaves, leaves)}
        assert s1.peak_bytes == s2.peak_bytes == plan.predict_peak(shapes)
        for k, v in all_feeds.items():
            assert np.array_equal(v, before[k]), f"feed {k} was written"


def test_in_place_steps_reuse_dying_buffers_only():
    g = cg.Graph()
    x = g.input("x", (None, 4))
    w = g.param("w", np.ones(4))
    h = cg.exp(x * w)  # mul's output dies at exp: exp writes over it
    g.output("y", cg.tanh(h) + h.T.T)  # h is viewed (transpose): nothing writes over h
    plan = cg.Evaluator(g).plan
    by_op = {s.op: s for s in plan.steps}
    assert by_op["exp"].inplace == 0
    assert by_op["tanh"].inplace == -1
    assert by_op["mul"].inplace == -1  # its inputs are a feed and a param
    X = np.random.default_rng(0).normal(size=(3, 4))
    X0, W0 = X.copy(), g.params["w"].copy()
    out = cg.Evaluator(g).run({"x": X})["y"]
    np.testing.assert_allclose(out, np.tanh(np.exp(X)) + np.exp(X))
    assert np.array_equal(X, X0) and np.array_equal(g.params["w"], W0)


def test_repeated_runs_other_batch_sizes_and_set_param():
    rng = np.random.default_rng(0)
    g = cg.Graph()
    x, y = g.input("x", (None, 3)), g.input("y", (None, 2))
    V = g.param("V", rng.normal(size=(3, 5)))
    W = g.param("W", rng.normal(size=(5, 2)))
    g.output("loss", cg.mse(cg.tanh(x @ V) @ W, y))
    early = cg.ReverseMode(g, "loss", ["V", "W"])
    for n in (7, 1, 50, 7):
        X, Y = rng.normal(size=(n, 3)), rng.normal(size=(n, 2))
        g.set_param("V", rng.normal(size=(3, 5)))
        late = cg.ReverseMode(g, "loss", ["V", "W"])
        a, ga = early.grad({"x": X, "y": Y})
        b, gb = late.grad({"x": X, "y": Y})
        assert a == b and all(np.array_equal(ga[k], gb[k]) for k in ga)
        Z = np.tanh(X @ g.params["V"])
        R = Z @ g.params["W"] - Y
        np.testing.assert_allclose(gb["W"], Z.T @ R / n, rtol=1e-12)
        assert early.stats.peak_bytes == early.stats.predicted_peak_bytes


def test_large_plans_are_interpreted_while_young_then_compiled():
    from cgraph.schedule import COMPILE_AT_ONCE, INTERPRETED_RUNS

    g = cg.Graph()
    h = x = g.input("x", (3,))
    for _ in range(COMPILE_AT_ONCE // 2 + 1):  # two steps a round: over the limit
        h = cg.sin(h) * 0.5
    g.output("y", h)
    ev = cg.Evaluator(g)
    plan = ev.plan
    assert len(plan) > COMPILE_AT_ONCE
    X = np.array([0.1, -2.0, 3.0])
    want = X.copy()
    for _ in range(COMPILE_AT_ONCE // 2 + 1):
        want = np.sin(want) * 0.5
    peaks = set()
    for run in range(1, INTERPRETED_RUNS + 3):
        got = ev.run({"x": X})["y"]
        assert ("runner" in plan.__dict__) == (run > INTERPRETED_RUNS)
        np.testing.assert_array_equal(got, want)
        peaks.add(ev.stats.peak_bytes)
    assert peaks == {ev.stats.predicted_peak_bytes}
    assert x.name in plan.leaves
