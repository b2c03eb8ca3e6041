"""Control flow (cgraph/control.py): cond, scan and while_loop against numpy loops and torch, in
both modes and to second order, nested and closing over params; memory books predicted ==
measured; plans whose size does not grow with the step count; build-time errors."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from control_cases import all_cases, branch, nested, newton, params_of, rnn, scalars, tuple_scan

import cgraph as cg
from cgraph.autodiff import jvp_graph, vjp_graph

CASES = all_cases()
IDS = [c.name for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_values_match_the_numpy_loop(case):
    out = cg.Evaluator(case.graph).run(case.feeds)
    ref = case.ref(case.feeds, params_of(case.graph))
    for k, v in ref.items():
        np.testing.assert_allclose(out[k], v, rtol=1e-12, atol=1e-12)


def test_float32_end_to_end():
    c = rnn(dtype="float32")
    out = cg.Evaluator(c.graph).run(c.feeds)
    assert out["ys"].dtype == np.float32
    ref = c.ref({k: v.astype(np.float64) for k, v in c.feeds.items()}, params_of(c.graph))
    np.testing.assert_allclose(out["ys"], ref["ys"], rtol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_reverse_mode_against_finite_differences(case):
    assert cg.gradcheck(case.graph, case.feeds, "loss", case.wrt) < 1e-6


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_mode_agrees_with_reverse_mode(case):
    """<J v, 1> from a JVP equals <v, J^T 1> from the gradient, along random directions."""
    rng = np.random.default_rng(5)
    _, grads = cg.ReverseMode(case.graph, "loss", case.wrt).grad(case.feeds)
    v = {w: rng.normal(size=np.shape(grads[w])) for w in case.wrt}
    _, tangents = cg.ForwardMode(case.graph, ["loss"], case.wrt).jvp(case.feeds, v)
    expected = sum(float(np.sum(grads[w] * v[w])) for w in case.wrt)
    assert abs(float(tangents["loss"]) - expected) < 1e-9 * max(1.0, abs(expected))


def test_rnn_gradients_against_torch():
    torch = pytest.importorskip("torch")
    c = rnn(T=8, B=3)
    _, grads = cg.ReverseMode(c.graph, "loss", c.wrt).grad(c.feeds)
    p = {k: torch.tensor(v, requires_grad=True) for k, v in {**params_of(c.graph), **c.feeds}.items()}
    h, total = p["h0"], 0
    for t in range(8):
        h = torch.tanh(h @ p["W"] + p["x"][t] @ p["U"] + p["b"])
        total = total + 0.5 * (h * h).sum()
    (total + h.sum()).backward()
    for w in c.wrt:
        np.testing.assert_allclose(grads[w], p[w].grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", [rnn(), nested(), newton(), branch(), scalars()],
                         ids=["rnn", "nested", "while", "cond", "scalars"])
def test_second_order_both_ways(case):
    """The Hessian through the loop: forward over reverse (Hessian-vector products) against
    differences of gradients, and reverse over reverse checked against finite differences."""
    rng = np.random.default_rng(6)
    w = case.wrt[0]
    gg = cg.gradient_graph(case.graph, "loss", [w])
    base = case.graph.params[w] if w in case.graph.params else case.feeds[w]
    v = rng.normal(size=np.shape(base))
    hv = cg.ForwardMode(gg, [f"grad/{w}"], [w]).jvp(case.feeds, {w: v})[1][f"grad/{w}"]
    rm = cg.ReverseMode(case.graph, "loss", [w])
    eps = 1e-6

    def grad_at(x):
        if w in case.graph.params:
            return cg.ReverseMode(case.graph, "loss", [w]).vjp(case.feeds, {"loss": 1.0})[1][w] if x is None else \
                _grad_with_param(case.graph, w, x)
        return rm.grad({**case.feeds, w: x})[1][w]

    numeric = (grad_at(base + eps * v) - grad_at(base - eps * v)) / (2 * eps)
    np.testing.assert_allclose(hv, numeric, rtol=1e-5, atol=1e-6)
    gg.output("hv", cg.sum(gg.outputs[f"grad/{w}"] * v))
    assert cg.gradcheck(gg, case.feeds, "hv", [w]) < 1e-5


def _grad_with_param(g, w, x):
    old = np.array(g.params[w])
    g.set_param(w, x)
    try:
        return cg.ReverseMode(g, "loss", [w]).grad({k: v for k, v in CASES_FEEDS[g.name].items()})[1][w]
    finally:
        g.set_param(w, old)


CASES_FEEDS = {c.graph.name: c.feeds for c in [rnn(), nested(), newton(), branch(), scalars()]}


def test_hessian_of_a_loss_through_a_scan_matches_torch():
    torch = pytest.importorskip("torch")
    c = rnn(T=4, B=2, D=2, H=3)
    gg = cg.gradient_graph(c.graph, "loss", ["W"])
    H = cg.jacobian(gg, c.feeds, "grad/W", "W", mode="forward")
    p = {k: torch.tensor(v) for k, v in {**params_of(c.graph), **c.feeds}.items()}

    def loss(W):
        h, total = p["h0"], 0
        for t in range(4):
            h = torch.tanh(h @ W + p["x"][t] @ p["U"] + p["b"])
            total = total + 0.5 * (h * h).sum()
        return total + h.sum()

    ref = torch.autograd.functional.hessian(loss, p["W"]).numpy()
    np.testing.assert_allclose(H, ref, rtol=1e-9, atol=1e-10)


def test_control_flow_on_0d_values_matches_torch():
    """Gradient and Hessian of the 0-d case (scan, cond and while_loop of 0-d values) against
    torch's autograd of the same loop."""
    torch = pytest.importorskip("torch")
    c = scalars()
    wrt = ["u", "xs", "w"]
    p = {k: torch.tensor(v) for k, v in {**params_of(c.graph), **c.feeds}.items()}

    def loss(u, xs, w):
        h, ys = u, []
        for t in range(5):
            h = torch.tanh(h * w + xs[t])
            ys.append(h * xs[t])
        y = h * u * w if h > 0 else torch.sin(h) - u
        for _ in range(3):
            y = y * 0.5 + w * u
        return y + torch.stack(ys).sum() * h

    args = tuple(p[k] for k in wrt)
    ref_grads = torch.autograd.functional.jacobian(loss, args)
    _, grads = cg.ReverseMode(c.graph, "loss", wrt).grad(c.feeds)
    for k, r in zip(wrt, ref_grads, strict=True):
        np.testing.assert_allclose(grads[k], r.numpy(), rtol=1e-12, atol=1e-12)
    gg = cg.gradient_graph(c.graph, "loss", ["u"])
    H = cg.jacobian(gg, c.feeds, "grad/u", "u", mode="forward")
    ref = torch.autograd.functional.hessian(lambda u: loss(u, p["xs"], p["w"]), p["u"]).numpy()
    np.testing.assert_allclose(H, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_onnx_export_of_values_and_gradients_matches_onnxruntime(case):
    """Each case and its gradient graph as ONNX (If, Scan, Loop), run by onnxruntime."""
    ort = pytest.importorskip("onnxruntime")
    for g in (case.graph, cg.gradient_graph(case.graph, "loss", case.wrt)):
        session = ort.InferenceSession(cg.onnx.to_model(g).SerializeToString(), providers=["CPUExecutionProvider"])
        names = {i.name for i in session.get_inputs()}
        got = session.run(None, {k: v for k, v in case.feeds.items() if k in names})
        want = cg.Evaluator(g).run(case.feeds)
        for o, v in zip(session.get_outputs(), got, strict=True):
            np.testing.assert_allclose(v, want[o.name], rtol=1e-12, atol=1e-12, err_msg=f"{g.name} {o.name}")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_predicted_peak_equals_measured_in_every_mode(case):
    ev = cg.Evaluator(case.graph)
    ev.run(case.feeds)
    fm = cg.ForwardMode(case.graph, ["loss"], case.wrt[:1])
    fm.jvp(case.feeds, {})
    fm.jvp(case.feeds, {case.wrt[0]: np.ones_like(np.asarray(case.graph.params.get(case.wrt[0],
                                                                                   case.feeds.get(case.wrt[0]))))})
    rm = cg.ReverseMode(case.graph, "loss", case.wrt)
    rm.grad(case.feeds)
    for ex in (ev, fm, rm):
        assert ex.stats.peak_bytes == ex.stats.predicted_peak_bytes > 0


def test_a_scan_frees_its_steps_and_its_books_match_the_allocations():
    """A 200-step scan of (64, 64) carries: the evaluation's peak is a few carries and the
    stacked ys, whatever the step count, and numpy allocates about what the books say."""
    g = cg.Graph("long")
    h0 = g.input("h0", (64, 64))
    W = g.param("W", np.eye(64) * 0.5)
    hT, ys = cg.scan(lambda h, _: (cg.tanh(h @ W), cg.sum(h)), h0, None, length=200)
    g.output("hT", hT)
    g.output("ys", ys)
    ev = cg.Evaluator(g)
    feeds = {"h0": np.ones((64, 64))}
    ev.run(feeds)
    layer = 64 * 64 * 8
    assert ev.stats.peak_bytes == ev.stats.predicted_peak_bytes
    assert ev.stats.peak_bytes <= 4 * layer + 200 * 8
    tracemalloc.start()
    tracemalloc.reset_peak()
    ev.run(feeds)
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert abs(traced - ev.stats.peak_bytes) < 0.1 * ev.stats.peak_bytes


def test_plans_do_not_grow_with_the_step_count():
    sizes = []
    for T in (10, 10_000):
        c = rnn(T=T)
        d = vjp_graph(c.graph, ["loss"], c.wrt)
        sizes.append((len(cg.Evaluator(c.graph).plan.steps), len(cg.ReverseMode(c.graph, "loss", c.wrt).plan.steps),
                      len(d.nodes), len(jvp_graph(c.graph, ["loss"], c.wrt).nodes)))
    assert sizes[0] == sizes[1]


def test_a_body_reads_params_two_graphs_out_and_gradients_reach_them():
    c = nested()
    scan = next(n for n in c.graph.nodes.values() if n.op == "scan")
    assert "W" in scan.inputs and "s" in scan.inputs  # the closures are the node's inputs
    _, grads = cg.ReverseMode(c.graph, "loss", ["W"]).grad(c.feeds)
    assert np.abs(grads["W"]).sum() > 0


def test_tuple_carries_keep_their_structure_and_ints_count():
    c = tuple_scan()
    out = cg.Evaluator(c.graph).run(c.feeds)
    assert out["n"] == 5 and out["n"].dtype == np.int64


def test_while_loop_trip_count_depends_on_the_data_and_max_trips_bounds_it():
    c = newton()
    assert cg.Evaluator(c.graph).run(c.feeds)["trips"] == 5
    short = newton(max_trips=2)
    out = cg.Evaluator(short.graph).run(short.feeds)
    assert out["trips"] == 2
    np.testing.assert_allclose(out["loss"], short.ref(short.feeds, params_of(short.graph))["loss"])


def test_reverse_mode_through_while_loop_needs_max_trips():
    c = newton(max_trips=None)
    _, t = cg.ForwardMode(c.graph, ["loss"], ["a"]).jvp(c.feeds, {"a": np.ones(3)})
    np.testing.assert_allclose(t["loss"], np.sum(0.5 / np.sqrt(c.feeds["a"])), rtol=1e-9)
    with pytest.raises(cg.DerivativeError, match="reverse mode needs max_trips"):
        cg.ReverseMode(c.graph, "loss", ["a"]).grad(c.feeds)


def test_cond_takes_one_branch_only():
    g = cg.Graph()
    p = g.input("p", (), "bool")
    x = g.input("x", (2,))
    y = cg.cond(p, lambda v: v * 2.0, lambda v: cg.log(v), x)  # log of negatives: never run when p
    g.output("y", y)
    with np.errstate(all="raise"):
        np.testing.assert_allclose(cg.Evaluator(g).run({"p": True, "x": [-1.0, -2.0]})["y"], [-2.0, -4.0])


def test_scan_without_xs_and_reverse_stacking():
    g = cg.Graph()
    x0 = g.input("x0", ())
    c, ys = cg.scan(lambda c, _: (c * 2.0, c), x0, None, length=4)
    _, rs = cg.scan(lambda c, x: (c + x, c + x), x0, ys, reverse=True)
    g.output("c", c)
    g.output("ys", ys)
    g.output("rs", rs)
    out = cg.Evaluator(g).run({"x0": 1.0})
    assert out["c"] == 16 and list(out["ys"]) == [1, 2, 4, 8] and list(out["rs"]) == [16, 15, 13, 9]


def test_zero_steps_give_the_init():
    g = cg.Graph()
    x = g.input("x", (None, 2))
    c, ys = cg.scan(lambda c, xt: (c + xt, xt * 2.0), g.constant("c0", np.ones(2)), x)
    g.output("c", c)
    g.output("ys", ys)
    ev = cg.Evaluator(g)
    out = ev.run({"x": np.zeros((0, 2))})
    assert list(out["c"]) == [1, 1] and out["ys"].shape == (0, 2)
    assert ev.stats.peak_bytes == ev.stats.predicted_peak_bytes


def test_a_body_that_changes_a_carry_is_a_shape_error_naming_it():
    g = cg.Graph()
    h = g.input("h", (3,))
    with pytest.raises(cg.ShapeError, match=r"carry 0 \(init 'h'\) from \(3,\) float64 to \(1, 3\) float64"):
        cg.scan(lambda c, _: (cg.reshape(c, (1, 3)), None), h, None, length=2)
    with pytest.raises(cg.ShapeError, match="carry 0"):
        cg.while_loop(lambda c: cg.sum(c) > 0, lambda c: cg.cast(c, "float32"), h)


def test_build_errors_are_one_line():
    g = cg.Graph()
    x = g.input("x", (3,))
    with pytest.raises(cg.ShapeError, match="bool scalar"):
        cg.cond(cg.sum(x), lambda v: v, lambda v: v, x)
    with pytest.raises(cg.ShapeError, match="then_branch gives"):
        cg.cond(cg.sum(x) > 0, lambda v: v, lambda v: cg.sum(v), x)
    with pytest.raises(cg.GraphError, match="structure"):
        cg.scan(lambda c, xt: ((c, c), xt), x, x)
    with pytest.raises(cg.GraphError, match="pair"):
        cg.scan(lambda c, xt: c, x, x)
    with pytest.raises(cg.ShapeError, match="needs a length"):
        cg.scan(lambda c, xt: (c, None), x, None)
    leaked = []
    cg.scan(lambda c, xt: (leaked.append(c) or c, None), x, x)
    with pytest.raises(cg.GraphError, match="finished control-flow body"):
        leaked[0] * 2.0
    with pytest.raises(cg.GraphError, match="cannot be combined"):
        x + leaked[0]


def test_results_and_tuples_are_guarded():
    g = cg.Graph()
    x = g.input("x", (3,))
    c, _ = cg.scan(lambda c, xt: (c + xt, None), x, g.input("xs", (2, 3)))
    tup = g[c.node.inputs[0]]
    with pytest.raises(cg.GraphError, match="only `result` nodes read"):
        tup + 1.0
    with pytest.raises(cg.GraphError, match="output its results"):
        g.output("t", tup)


# ---- reverse mode under a memory budget ---------------------------------------------------

@pytest.mark.parametrize("n,s", [(1, 1), (2, 1), (7, 2), (10, 3), (100, 5), (300, 4), (64, 63), (1000, 10)])
def test_binomial_schedule_reaches_griewanks_minimum(n, s):
    from math import comb

    from cgraph.control import binomial_schedule
    runs, turns, slots, top, live = [0] * n, [], set(), 0, 0
    state = 0
    for act in binomial_schedule(n, s):
        if act[0] == "advance":
            assert act[1] == state
            for t in range(act[1], act[2]):
                runs[t] += 1
            state = act[2]
        elif act[0] == "store":
            assert act[1] == state
            slots.add(act[1])
            live += 1
            top = max(top, live)
        elif act[0] == "restore":
            assert act[1] == 0 or act[1] in slots
            state = act[1]
        elif act[0] == "free":
            slots.remove(act[1])
            live -= 1
        else:
            assert act[1] == state
            turns.append(act[1])
    r = next(r for r in range(1, n + 1) if comb(s + r, s) >= n)
    assert turns == list(range(n - 1, -1, -1))  # every step's adjoint once, last first
    assert top <= s and max(runs) <= r
    assert sum(runs) == (r * n - comb(s + r, r - 1) if n > 1 else 0)


def test_the_target_10000_steps_in_32_snapshots_run_each_step_at_most_4_times():
    from cgraph.control import revolve_counts
    most, extra, stored = revolve_counts(10_000, 32)
    assert most <= 4 and stored <= 32


def test_budgets_bound_the_peak_keep_the_gradients_and_are_monotone():
    c = rnn(T=40, B=4, D=2, H=16)
    rm = cg.ReverseMode(c.graph, "loss", c.wrt)
    _, ref = rm.grad(c.feeds)
    full = rm.stats.peak_bytes
    last_extra = None
    for frac in (0.25, 0.3, 0.5, 0.8, 1.0):
        budget = int(full * frac)
        rb = cg.ReverseMode(c.graph, "loss", c.wrt, memory_budget=budget)
        _, grads = rb.grad(c.feeds)
        for w in c.wrt:
            np.testing.assert_allclose(grads[w], ref[w], rtol=1e-12, atol=1e-13)
        mp = rb.memory_plan
        assert rb.stats.peak_bytes == rb.stats.predicted_peak_bytes == mp.predicted_peak <= budget
        extra = sum(sc.extra_steps for sc in mp.scans)
        assert last_extra is None or extra <= last_extra  # more budget, never more recomputation
        last_extra = extra
        if frac < 1.0:
            assert "binomial checkpointing" in str(mp) and mp.scans[0].stored <= mp.scans[0].steps
    assert last_extra == 0  # the whole unbudgeted peak: nothing recomputed
    with pytest.raises(cg.MemoryBudgetError) as e:
        cg.ReverseMode(c.graph, "loss", c.wrt, memory_budget=1000).grad(c.feeds)
    smallest = e.value.smallest
    rb = cg.ReverseMode(c.graph, "loss", c.wrt, memory_budget=smallest)
    rb.grad(c.feeds)
    assert rb.stats.peak_bytes <= smallest and rb.memory_plan.scans[0].stored == 1


def test_bodies_nest_as_deep_as_a_file_holds_and_deeper_is_refused_by_save(tmp_path):
    """Protobuf readers parse at most 100 nested messages: 24 bodies in bodies save and load;
    25 are refused by save in one line, leaving no file, rather than written unreadable."""
    def nested_conds(depth):
        g = cg.Graph("deep")
        a = g.input("a", (2,))

        def f(u, d):
            return u * 2.0 if d == 0 else cg.cond(cg.sum(u) > 0, lambda v: f(v, d - 1), lambda v: v - 1.0, u)
        g.output("y", f(a, depth))
        return g

    g = nested_conds(cg.io.MAX_NESTING)
    back = cg.loads(cg.dumps(g))
    np.testing.assert_array_equal(cg.Evaluator(back).run({"a": np.ones(2)})["y"], np.full(2, 2.0))
    with pytest.raises(cg.GraphError, match=r"^cannot save graph 'deep': node 'cond' .* bodies nested 25 deep; "
                                            r"a file holds at most 24 \(protobuf") as e:
        cg.save(nested_conds(cg.io.MAX_NESTING + 1), tmp_path / "deep.pb")
    assert "\n" not in str(e.value) and not list(tmp_path.iterdir())


def test_a_budgeted_plan_saves_loads_and_draws():
    c = rnn(T=10)
    full = cg.ReverseMode(c.graph, "loss", c.wrt)
    full.grad(c.feeds)
    rb = cg.ReverseMode(c.graph, "loss", c.wrt, memory_budget=int(full.stats.peak_bytes * 0.7))
    rb.grad(c.feeds)
    g = rb.memory_plan.plan.graph
    assert {"scan_revolve"} <= {n.op for n in g.nodes.values()}
    h = cg.loads(cg.dumps(g))
    a, b = cg.Evaluator(g).run(c.feeds), cg.Evaluator(h).run(c.feeds)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert "scan_revolve" in cg.to_dot(g, plan=rb.memory_plan)


# ---- the examples -------------------------------------------------------------------------

def _example(name: str):
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parent.parent / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_rnn_sequence_learns_saves_reloads_and_draws(tmp_path):
    got = _example("rnn_sequence").main(["--steps", "12", "--epochs", "25", "--out", str(tmp_path)])
    assert got["test"] < 0.5 * got["last"] and got["same"] == 1.0
    assert (tmp_path / "rnn_sequence.pb").is_file()
    assert (tmp_path / "rnn_sequence.svg").is_file() or (tmp_path / "rnn_sequence.dot").is_file()


def test_example_newton_sqrt_matches_the_closed_form():
    got = _example("newton_sqrt").main()
    assert got["forward"] < 1e-12 and got["reverse"] < 1e-12


def test_vmap_applies_control_flow_to_each_example():
    """No batching rules yet for cond, scan and while_loop: vmap runs them example by example
    (the batch size given), which agrees with running each example alone."""
    c = branch()
    A = np.stack([c.feeds["a"], -np.abs(c.feeds["a"]) - 1.0])  # one example each way
    gb = cg.vmap(c.graph, in_axes={"a": 0}, size=2)
    got = cg.Evaluator(gb).run({"a": A, "b": c.feeds["b"]})
    for k in range(2):
        one = cg.Evaluator(c.graph).run({"a": A[k], "b": c.feeds["b"]})
        np.testing.assert_allclose(got["y"][k], one["y"], rtol=1e-14)
