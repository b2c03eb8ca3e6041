"""Each simplification pass on its own, and plans with and without them give the same results
(bit for bit: the passes never reorder arithmetic)."""

import numpy as np
import pytest
from specs import build_graph, case_id, cases

import cgraph as cg
from cgraph.schedule import Plan
from cgraph.simplify import cse, fold, identities, simplify


def ops_of(g):
    """The ops a plan of g's outputs runs (dead nodes are never scheduled)."""
    return sorted(s.op for s in Plan(g, [g.output_node(o) for o in g.outputs], passes=()).steps)


def test_cse_merges_repeated_work_and_equal_constants():
    g = cg.Graph()
    x = g.input("x", (3,))
    g.output("y", cg.sin(x) * 2.0 + cg.sin(x) * 2.0)
    d, where = cse(g)
    assert ops_of(d) == ["add", "mul", "sin"]
    assert len([n for n in d.nodes.values() if n.op == "constant"]) == 1
    X = np.array([0.1, 0.2, 0.3])
    assert np.array_equal(cg.Evaluator(d).run({"x": X})["y"], 4 * np.sin(X))
    assert where[g.outputs["y"].name] == d.outputs["y"].name


def test_fold_turns_constant_subgraphs_into_constants_but_not_big_broadcasts():
    g = cg.Graph()
    x = g.input("x", (2,))
    c = g.constant("c", np.array([1.0, 4.0]))
    z = g.constant("z", 0.0)
    g.output("y", x * cg.sqrt(c) + 1.0)
    g.output("big", cg.broadcast_to(z, (100, 100)))
    d, _ = fold(g)
    assert ops_of(d) == ["add", "broadcast_to", "mul"]
    np.testing.assert_array_equal(cg.Evaluator(d).run({"x": np.ones(2)})["y"], [2.0, 3.0])


def test_identities():
    g = cg.Graph()
    x = g.input("x", (2, 3))
    y = ((x * 1.0) + 0.0 - 0.0) / 1.0
    y = cg.neg(cg.neg(y))
    y = cg.transpose(cg.transpose(y))
    y = cg.cast(cg.reshape(y, (2, 3)), "float64")
    g.output("y", y)
    g.output("b", x + np.zeros((4, 2, 3)))  # not an identity: it broadcasts
    d, where = identities(g)
    assert where[g.outputs["y"].name] == "x"
    assert ops_of(d) == ["add"]


def test_forward_mode_reuses_the_other_output():
    """The lecture's sin/cos graph: the tangent of sin(a) is cos(a) * a', and cos(a) is y2."""
    g = cg.Graph()
    w0, w1, x = g.input("w0", ()), g.input("w1", ()), g.input("x", (None,))
    a5 = w1 * x + w0
    g.output("y1", cg.sin(a5))
    g.output("y2", cg.cos(a5))
    fm = cg.ForwardMode(g, ["y1", "y2"], ["w1"])
    steps = [s.op for s in fm.plan.steps]
    assert steps.count("sin") == 1 and steps.count("cos") == 1
    feeds = {"w0": 0.3, "w1": -1.2, "x": np.linspace(-1, 1, 5)}
    _, t = fm.jvp(feeds, {"w1": 1.0})
    u = -1.2 * feeds["x"] + 0.3
    np.testing.assert_allclose(t["y1"], feeds["x"] * np.cos(u), rtol=1e-15)


CASES = cases()


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_same_results_with_and_without_passes(case):
    spec, shapes = case
    xs = spec.draw(np.random.default_rng(0), shapes)
    g = build_graph(spec, shapes, scale=3.0)
    feeds = {f"a{i}": x for i, x in enumerate(xs)}
    wrt = [f"a{i}" for i in range(len(shapes)) if np.issubdtype(xs[i].dtype, np.floating)]
    if g.outputs["out"].shape != ():
        g.output("s", cg.sum(g.outputs["out"] * 1.5))
    gg = cg.gradient_graph(g, "out" if g.outputs["out"].shape == () else "s", wrt)
    targets = [gg.output_node(o) for o in gg.outputs]
    from cgraph.executors.base import Executor

    results = []
    for passes in ((), ("fold", "identities", "cse")):
        plan = Plan(gg, targets, passes=passes)
        ex = Executor(gg)
        vals = ex._run(plan, ex._leaves(plan, feeds))
        results.append([np.asarray(v) for v in vals])
    for a, b in zip(*results):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_unknown_pass():
    g = cg.Graph()
    g.output("x", g.input("x", ()))
    with pytest.raises(ValueError, match="unknown pass 'nope'"):
        simplify(g, ["x"], ["nope"])
