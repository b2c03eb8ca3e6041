"""cg.vmap, a graph transform: every op's batching rule against a Python loop over examples,
on the op table and on its forward-mode and reverse-mode graphs; run-time sizes; per-example
gradients against torch.func; batched graphs save, load, draw and differentiate; ops without
a batching rule."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from specs import build_graph, case_id, cases

import cgraph as cg
from cgraph.autodiff import COTANGENT, TANGENT, Seed, jvp_graph, vjp_graph
from cgraph.ops.registry import OPS

B = 3
CASES = cases()
BATCHED: set[str] = set()  # the ops whose batching rule the tests below ran


@pytest.fixture(scope="module", autouse=True)
def record_batching_rules():
    """Wrap every op's batching rule to record which ops the tests batch."""
    saved = {name: op.batch for name, op in OPS.items()}
    for name, op in OPS.items():
        if op.batch is not None:
            object.__setattr__(op, "batch", _recorder(name, op.batch))
    yield
    for name, op in OPS.items():
        object.__setattr__(op, "batch", saved[name])


def _recorder(name, rule):
    @functools.wraps(rule)
    def run(*args, **kw):
        BATCHED.add(name)
        return rule(*args, **kw)
    return run


def stack_feeds(per_example, batched):
    return {k: np.stack([f[k] for f in per_example]) if k in batched else per_example[0][k] for k in per_example[0]}


def check_against_loop(graph, per_example, batched, rtol=1e-12, atol=1e-13):
    """vmap(graph) on the stacked feeds equals the graph run on each example (and its peak
    bytes are the predicted ones)."""
    gb = cg.vmap(graph, in_axes={k: 0 for k in batched})
    evb = cg.Evaluator(gb)
    out = evb.run(stack_feeds(per_example, batched))
    assert evb.stats.peak_bytes == evb.stats.predicted_peak_bytes, "the memory books follow run-time batch sizes"
    ev = cg.Evaluator(graph)
    loop = [ev.run(f) for f in per_example]
    for o in graph.outputs:
        want = np.stack([r[o] for r in loop])
        assert out[o].shape == want.shape, o
        assert out[o].dtype == want.dtype, o
        np.testing.assert_allclose(out[o], want, rtol=rtol, atol=atol, err_msg=o)
    return gb


def examples(spec, shapes, n=B, seed=0):
    """Per-example feeds; the inputs that are not batched take example 0's value."""
    rng = np.random.default_rng(seed)
    return [{f"a{i}": x for i, x in enumerate(spec.draw(rng, shapes))} for _ in range(n)]


def subsets(k):
    """Every input batched, and each input alone."""
    return [tuple(range(k))] + ([(i,) for i in range(k)] if k > 1 else [])


def _fix_unbatched(per_example, batched):
    """Unbatched inputs are the same for every example."""
    for f in per_example[1:]:
        for k in f:
            if k not in batched:
                f[k] = per_example[0][k]
    return per_example


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_vmap_equals_a_loop_over_examples(case):
    spec, shapes = case
    g = build_graph(spec, shapes, scale=1.5)
    for which in subsets(len(shapes)):
        batched = {f"a{i}" for i in which}
        check_against_loop(g, _fix_unbatched(examples(spec, shapes), batched), batched)


@pytest.mark.parametrize("case", [c for c in CASES if c[0].smooth], ids=[case_id(c) for c in CASES if c[0].smooth])
def test_vmap_of_forward_and_reverse_mode_graphs_equals_a_loop(case):
    """The derivative graphs' ops (sum_to, scatter, broadcast_to, ...) batch too: a batch of
    examples with their own tangents (cotangents), against a loop of ForwardMode (ReverseMode)."""
    spec, shapes = case
    g = build_graph(spec, shapes, scale=1.5)
    wrt = [f"a{i}" for i in range(len(shapes)) if i not in spec.nondiff_args]
    rng = np.random.default_rng(1)
    out_shape = g.outputs["out"].shape
    for which in subsets(len(shapes)):
        batched = {f"a{i}" for i in which}
        per = _fix_unbatched(examples(spec, shapes), batched)
        fwd = jvp_graph(g, ["out"], wrt)
        for f in per:
            f.update({TANGENT + w: rng.normal(size=f[w].shape) for w in wrt})
        check_against_loop(fwd, per, batched | {TANGENT + w for w in wrt})
        rev = vjp_graph(g, ["out"], wrt, seed=Seed.INPUT)
        for f in per:
            for w in wrt:
                del f[TANGENT + w]
            f[COTANGENT + "out"] = rng.normal(size=out_shape)
        check_against_loop(rev, per, batched | {COTANGENT + "out"}, atol=1e-12)
        # the cotangent alone batched: many directions through one reverse sweep
        check_against_loop(rev, _fix_unbatched(per, {COTANGENT + "out"}), {COTANGENT + "out"}, atol=1e-12)


def test_comparisons_cast_and_stop_gradient_batch():
    g = cg.Graph()
    a, b = g.input("a", (3, 4)), g.input("b", (4,))
    for name in ("less", "less_equal", "greater", "greater_equal", "equal"):
        g.output(name, getattr(cg, name)(a, b))
    g.output("cast", cg.cast(cg.greater(a, b), "float64") + cg.stop_gradient(a) * 2.0)
    rng = np.random.default_rng(2)
    per = [{"a": np.round(rng.normal(size=(3, 4))), "b": np.round(rng.normal(size=4))} for _ in range(B)]
    for batched in ({"a"}, {"b"}, {"a", "b"}):
        check_against_loop(g, _fix_unbatched([dict(f) for f in per], batched), batched)


def iris_like(batch=None, seed=0):
    rng = np.random.default_rng(seed)
    g = cg.Graph("iris")
    x = g.input("x", (batch, 3))
    y = g.input("y", (batch, 3))
    V = g.param("V", rng.normal(0, 0.5, (3, 16)))
    W = g.param("W", rng.normal(0, 0.5, (16, 3)))
    logits = cg.logistic(x @ V) @ W
    g.output("loss", cg.softmax_cross_entropy(logits, y))
    g.output("logits", logits)
    return g


def test_run_time_sizes_batch():
    """Graphs whose examples have sizes known only at run time (shape_of, dim_size, sum_to
    and broadcast_to with a run-time shape, reshape with -1) batch, in value and gradient."""
    g = cg.Graph("sizes")
    x = g.input("x", (None, 4))
    w = g.param("w", np.linspace(-1, 1, 4))
    h = cg.tanh(x * w)
    g.output("r", cg.reshape(h, (-1, 2)))
    g.output("m", cg.mean(h, axis=0) + cg.sum(cg.mse(h, x)))
    g.output("loss", cg.binary_cross_entropy(h, cg.logistic(x)) + cg.max(x))
    gg = cg.gradient_graph(g, of="loss", wrt=["x", "w"])
    rng = np.random.default_rng(3)
    for rows in (1, 5):
        per = [{"x": rng.normal(size=(rows, 4))} for _ in range(B)]
        check_against_loop(g, per, {"x"})
        gb = check_against_loop(gg, per, {"x"})
        assert {"shape_of", "sum_to", "broadcast_to"} <= {n.op for n in gg.nodes.values()}
        assert gb.outputs["grad/w"].shape == (None, 4)
        feeds = {"x": np.stack([f["x"] for f in per])}
        np.testing.assert_array_equal(cg.Evaluator(cg.loads(cg.dumps(gb))).run(feeds)["grad/x"],
                                      cg.Evaluator(gb).run(feeds)["grad/x"])


def test_per_example_gradients_equal_torch_func():
    torch = pytest.importorskip("torch")
    from torch.func import grad, vmap

    g = iris_like(batch=1)
    pe = cg.vmap(cg.gradient_graph(g, of="loss", wrt=["V", "W"]), in_axes={"x": 0, "y": 0})
    rng = np.random.default_rng(4)
    X = rng.normal(size=(150, 1, 3))
    Y = np.eye(3)[rng.integers(0, 3, 150)].reshape(150, 1, 3)
    out = cg.Evaluator(pe).run({"x": X, "y": Y})
    assert out["grad/W"].shape == (150, 16, 3) and out["loss"].shape == (150,)

    def loss(V, W, x, y):
        return torch.nn.functional.cross_entropy(torch.sigmoid(x @ V) @ W, y)

    t = [torch.tensor(a) for a in (g.params["V"], g.params["W"], X, Y)]
    gV, gW = vmap(grad(loss, argnums=(0, 1)), in_dims=(None, None, 0, 0))(*t)
    np.testing.assert_allclose(out["grad/V"], gV.numpy(), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(out["grad/W"], gW.numpy(), rtol=1e-10, atol=1e-14)
    # the mean of the per-example gradients is the batch's gradient
    _, grads = cg.ReverseMode(iris_like(), "loss", ["V", "W"]).grad({"x": X[:, 0], "y": Y[:, 0]})
    np.testing.assert_allclose(out["grad/W"].mean(0), grads["W"], rtol=1e-10)


def test_per_example_gradients_with_run_time_rows():
    g = iris_like(batch=None)
    pe = cg.vmap(cg.gradient_graph(g, of="loss", wrt=["V", "W"]), in_axes={"x": 0, "y": 0})
    rng = np.random.default_rng(5)
    X = rng.normal(size=(4, 2, 3))
    Y = np.eye(3)[rng.integers(0, 3, (4, 2))]
    out = cg.Evaluator(pe).run({"x": X, "y": Y})
    rm = cg.ReverseMode(g, "loss", ["V", "W"])
    for i in range(4):
        np.testing.assert_allclose(out["grad/V"][i], rm.grad({"x": X[i], "y": Y[i]})[1]["V"], rtol=1e-12)


def test_a_batched_graph_saves_draws_and_differentiates(tmp_path):
    g = iris_like(batch=2)
    gb = cg.vmap(g, in_axes={"x": 0})
    rng = np.random.default_rng(6)
    feeds = {"x": rng.normal(size=(5, 2, 3)), "y": np.eye(3)[[0, 2]]}
    cg.save(gb, tmp_path / "b.pb")
    back = cg.load(tmp_path / "b.pb")
    np.testing.assert_array_equal(cg.Evaluator(back).run(feeds)["logits"], cg.Evaluator(gb).run(feeds)["logits"])
    assert "matmul" in cg.to_dot(gb)
    # differentiate the batched graph: the sum of the per-example losses
    gg = cg.gradient_graph(_summed(gb, "loss"), of="total", wrt=["V", "x"])
    out = cg.Evaluator(gg).run(feeds)
    rm = cg.ReverseMode(g, "loss", ["V", "x"])
    per = [rm.grad({"x": feeds["x"][i], "y": feeds["y"]})[1] for i in range(5)]
    np.testing.assert_allclose(out["grad/V"], sum(p["V"] for p in per), rtol=1e-12)
    np.testing.assert_allclose(out["grad/x"], np.stack([p["x"] for p in per]), rtol=1e-12)


def _summed(g, output):
    """g with one more output: the sum of `output`."""
    d, _ = g.rebuild()
    d.output("total", cg.sum(d.outputs[output]))
    return d


def test_in_axes_other_than_zero_and_unbatched_outputs():
    g = cg.Graph()
    x = g.input("x", (2, 3))
    w = g.param("w", np.arange(3.0))
    g.output("y", cg.sum(x * w, axis=1))
    g.output("w2", w * 2.0)  # the same for every example: repeated along the batch
    g.output("s", cg.squeeze(cg.reshape(x, (2, 1, 3)), 1))
    gb = cg.vmap(g, in_axes={"x": 1})
    assert gb.inputs["x"].shape == (2, None, 3)
    X = np.random.default_rng(7).normal(size=(2, 4, 3))
    out = cg.Evaluator(gb).run({"x": X})
    np.testing.assert_allclose(out["y"], np.stack([(X[:, i] * np.arange(3.0)).sum(1) for i in range(4)]))
    np.testing.assert_array_equal(out["w2"], np.tile(np.arange(3.0) * 2, (4, 1)))
    np.testing.assert_array_equal(out["s"], X.transpose(1, 0, 2))
    gs = cg.vmap(g, in_axes={"x": -1}, size=5)
    assert gs.inputs["x"].shape == (2, 3, 5) and gs.outputs["y"].shape == (5, 2)


def test_vmap_twice_and_matmul_broadcasting():
    g = cg.Graph()
    a, b = g.input("a", (2, 3)), g.input("b", (3, 4))
    g.output("c", cg.tanh(a @ b))
    gbb = cg.vmap(cg.vmap(g, in_axes={"a": 0}), in_axes={"a": 0, "b": 0})
    rng = np.random.default_rng(8)
    A, Bm = rng.normal(size=(5, 4, 2, 3)), rng.normal(size=(5, 3, 4))
    out = cg.Evaluator(gbb).run({"a": A, "b": Bm})["c"]
    np.testing.assert_allclose(out, np.tanh(A @ Bm[:, None]), rtol=1e-12)


square_plus = cg.define_op("test_vmap/square_plus", kernel=lambda x, *, c: x * x + c,
                           infer=lambda x, *, c: (x.shape, x.dtype), attrs={"c": float},
                           jvp=[lambda t, out, x, *, c: 2.0 * x * t], vjp=[lambda g, out, x, *, c: 2.0 * x * g])
square_plus_batched = cg.define_op(
    "test_vmap/square_plus_batched", kernel=lambda x, *, c: x * x + c, infer=lambda x, *, c: (x.shape, x.dtype),
    attrs={"c": float}, batch=lambda batched, x, *, c: square_plus_batched(x, c=c))


def test_ops_without_a_batching_rule():
    g = cg.Graph()
    x = g.input("x", (3,))
    g.output("y", cg.tanh(square_plus(x, c=1.0)))
    with pytest.raises(cg.BatchingError, match=r"\(test_vmap/square_plus\): the op has no batching rule.*size="):
        cg.vmap(g, in_axes={"x": 0})
    X = np.random.default_rng(9).normal(size=(4, 3))
    out = cg.Evaluator(cg.vmap(g, in_axes={"x": 0}, size=4)).run({"x": X})["y"]
    np.testing.assert_allclose(out, np.tanh(X * X + 1))
    h = cg.Graph()
    h.output("y", square_plus_batched(h.input("x", (3,)), c=2.0))
    out = cg.Evaluator(cg.vmap(h, in_axes={"x": 0})).run({"x": X})["y"]
    np.testing.assert_allclose(out, X * X + 2)
    assert "none declared" in str(cg.op_info("test_vmap/square_plus"))


def test_vmap_refuses_what_it_cannot_batch():
    g = iris_like()
    with pytest.raises(cg.BatchingError, match="'V' is not an input"):
        cg.vmap(g, in_axes={"V": 0})
    with pytest.raises(cg.BatchingError, match="not a position"):
        cg.vmap(g, in_axes={"x": 3})
    with pytest.raises(cg.BatchingError, match="needs in_axes"):
        cg.vmap(g, in_axes={})


def test_per_example_gradients_export_to_onnx():
    ort = pytest.importorskip("onnxruntime")
    g = iris_like(batch=1)
    pe = cg.vmap(cg.gradient_graph(g, of="loss", wrt=["W"]), in_axes={"x": 0, "y": 0})
    rng = np.random.default_rng(10)
    X, Y = rng.normal(size=(5, 1, 3)), np.eye(3)[rng.integers(0, 3, 5)].reshape(5, 1, 3)
    session = ort.InferenceSession(cg.onnx.to_model(pe).SerializeToString())
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": X, "y": Y}), strict=True))
    np.testing.assert_allclose(got["grad/W"], cg.Evaluator(pe).run({"x": X, "y": Y})["grad/W"], rtol=1e-12)


def _control_graphs():
    from control_cases import all_cases
    out = []
    for c in all_cases():
        out += [(c.name, c.graph, c.feeds), (c.name + "-grad", cg.gradient_graph(c.graph, "loss", c.wrt), c.feeds)]
        if c.name == "rnn":  # a budgeted plan: a scan with checkpoints and a scan_revolve
            full = cg.ReverseMode(c.graph, "loss", c.wrt)
            full.grad(c.feeds)
            rm = cg.ReverseMode(c.graph, "loss", c.wrt, memory_budget=int(full.stats.peak_bytes * 0.8))
            rm.grad(c.feeds)
            out.append(("rnn-budget", rm.memory_plan.plan.graph, c.feeds))
    return out


@pytest.mark.parametrize("name,graph,feeds", _control_graphs(), ids=[c[0] for c in _control_graphs()])
def test_control_flow_batches_every_input(name, graph, feeds):
    """cond (with a predicate that differs from example to example too), scan, while_loop and
    the budgeted reverse sweep, batched over each input in turn."""
    rng = np.random.default_rng(4)
    for k in feeds:
        if k not in graph.inputs:
            continue
        per = [{kk: v + (0.3 * rng.normal(size=np.shape(v)) if kk == k else 0) for kk, v in feeds.items()
                if kk in graph.inputs} for _ in range(B)]
        if name.startswith("cond") and k == "a":
            per[1]["a"] = -np.abs(per[1]["a"]) - 1.0  # the other branch for this example
        check_against_loop(graph, per, {k}, rtol=1e-10, atol=1e-11)


def test_every_op_has_a_batching_rule_that_the_tests_run():
    """Runs last in this file: every built-in op's rule was exercised above, and the catalogue
    states each op's batching and sparsity rules."""
    builtin = {name for name, op in OPS.items() if not op.user}
    assert all(OPS[name].batch is not None for name in builtin)
    if not BATCHED:
        pytest.skip("counts the rules that this file's other tests ran")
    assert builtin - BATCHED <= set(), sorted(builtin - BATCHED)
    for name in builtin:
        text = str(cg.op_info(name))
        batching = next(line for line in text.splitlines() if line.startswith("- **batching**"))
        sparsity = next(line for line in text.splitlines() if line.startswith("- **sparsity**"))
        assert len(batching) > 30 and len(sparsity) > 30, name
