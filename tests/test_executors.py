"""Executors: feeds, params, outputs, errors, and memory: freeing on chains (flat peak in the
evaluator and forward mode, linear in reverse mode), predicted == measured, tracemalloc agrees."""

import tracemalloc

import numpy as np
import pytest

import cgraph as cg


def chain(n, width, act=cg.tanh, seed=0):
    g = cg.Graph(f"chain{n}")
    h = g.input("x", (None, width))
    rng = np.random.default_rng(seed)
    for i in range(n):
        with g.scope(f"layer{i}"):
            h = act(h @ g.param("W", rng.normal(0, 1 / np.sqrt(width), (width, width))))
    g.output("y", h)
    g.output("loss", cg.mean(h))
    return g


def test_evaluator_outputs_subset_and_set_param_is_seen():
    g = cg.Graph()
    x = g.input("x", (None, 2))
    w = g.param("w", np.array([1.0, 2.0]))
    g.output("a", x * w)
    g.output("b", cg.sum(x))
    ev = cg.Evaluator(g, outputs=["a"])
    X = np.ones((3, 2))
    np.testing.assert_array_equal(ev.run({"x": X})["a"], [[1, 2]] * 3)
    g.set_param("w", [3.0, 4.0])
    np.testing.assert_array_equal(ev.run({"x": X})["a"], [[3, 4]] * 3)
    assert set(cg.Evaluator(g).run({"x": X})) == {"a", "b"}


def test_feeds_and_params_are_never_written():
    g = chain(3, 4)
    X = np.random.default_rng(0).normal(size=(5, 4))
    X0, P0 = X.copy(), {k: v.copy() for k, v in g.params.items()}
    cg.Evaluator(g).run({"x": X})
    cg.ReverseMode(g, "loss", ["x", "layer0/W"]).grad({"x": X})
    cg.ForwardMode(g, ["y"], ["x"]).jvp({"x": X}, {"x": X})
    np.testing.assert_array_equal(X, X0)
    for k, v in g.params.items():
        np.testing.assert_array_equal(v, P0[k])


def test_feed_errors():
    g = cg.Graph("m")
    g.input("x", (None, 3))
    g.input("n", (2,), "int64")
    g.param("p", np.ones(3))
    g.output("y", g["x"] * g["p"])
    ev = cg.Evaluator(g)
    with pytest.raises(cg.FeedError, match=r"missing feed for input 'x' \(None, 3\)"):
        ev.run({})
    with pytest.raises(cg.FeedError, match="feed 'z' is not an input of graph 'm'"):
        ev.run({"x": np.ones((2, 3)), "z": 1})
    with pytest.raises(cg.FeedError, match="feed 'p' is a param, not an input"):
        ev.run({"x": np.ones((2, 3)), "p": np.ones(3)})
    with pytest.raises(cg.FeedError, match=r"feed 'x': shape \(2, 4\) does not match the input's \(None, 3\)"):
        ev.run({"x": np.ones((2, 4))})
    with pytest.raises(cg.FeedError, match="cannot cast float64 to the input's int64"):
        cg.Evaluator(g, outputs=["y"]).run({"x": np.ones((1, 3)), "n": np.ones(2)})
    out = ev.run({"x": np.ones((2, 3), np.int64)})  # ints are cast to the input's float64
    assert out["y"].dtype == np.float64


def test_run_time_size_conflicts_name_the_feeds_and_the_node():
    """Feeds whose run-time sizes cannot go together are a FeedError naming them (and the node
    whose shape rule refuses them), in every executor; a kernel failing for another reason is
    a ShapeError naming the node."""
    g = cg.Graph("m")
    a, b = g.input("a", (None, 3)), g.input("b", (None, 3))
    c = g.input("c", (None, 3))
    g.output("s", a + b)
    g.output("loss", cg.sum(cg.reshape(a, (-1,)) * cg.reshape(b, (-1,))))
    g.output("r", cg.reshape(c, (-1, 2)))
    feeds = {"a": np.ones((5, 3)), "b": np.ones((3, 3)), "c": np.ones((4, 3))}
    both = r"the run-time sizes of feeds 'a' \(5, 3\) and 'b' \(3, 3\) do not fit together: "
    with pytest.raises(cg.FeedError, match=both + r"add \(add\): shapes \(5, 3\) and \(3, 3\) do not broadcast "
                                             r"\[inputs: a \(5, 3\), b \(3, 3\)\]"):
        cg.Evaluator(g, outputs=["s"]).run(feeds)
    with pytest.raises(cg.FeedError, match=both + r"mul \(mul\)"):
        cg.ReverseMode(g, "loss", ["a"]).grad(feeds)
    with pytest.raises(cg.FeedError, match=both):
        cg.ForwardMode(g, ["loss"], ["b"]).jvp(feeds, {})
    with pytest.raises(cg.FeedError, match=r"^feed 'c' \(5, 3\) does not fit reshape_2 \(reshape\): cannot reshape "
                                           r"15 "):
        cg.Evaluator(g, outputs=["r"]).run({**feeds, "c": np.ones((5, 3))})
    assert cg.Evaluator(g, outputs=["r"]).run(feeds)["r"].shape == (6, 2)

    fussy = cg.define_op("test/fussy", kernel=lambda x: x if x.size < 4 else np.sqrt(-np.ones(-1)),
                         infer=lambda x: (x.shape, x.dtype), inputs=1)
    h = cg.Graph()
    h.output("y", fussy(h.input("x", (None,))))
    with pytest.raises(cg.ShapeError, match=r"fussy \(test/fussy\): ValueError: .*\[inputs: x \(5,\)\]"):
        cg.Evaluator(h).run({"x": np.ones(5)})


def test_numeric_errors_under_seterr_raise_stay_what_they_are():
    g = cg.Graph()
    g.output("y", cg.log(g.input("x", (2,))))
    with np.errstate(all="raise"):
        with pytest.raises(FloatingPointError, match=r"^log \(log\): divide by zero encountered in log \[inputs: "
                                                     r"x \(2,\)\]"):
            cg.Evaluator(g).run({"x": np.array([0.0, 1.0])})
    np.testing.assert_array_equal(cg.Evaluator(g).run({"x": np.array([1.0, 1.0])})["y"], [0.0, 0.0])


@pytest.mark.parametrize("n", [8, 32, 128])
def test_evaluator_peak_is_flat_in_depth_and_agrees_with_tracemalloc(n):
    width, batch = 512, 256
    g = chain(n, width)
    X = np.random.default_rng(1).normal(size=(batch, width))
    ev = cg.Evaluator(g, outputs=["y"])
    ev.run({"x": X})
    tracemalloc.start()
    tracemalloc.reset_peak()
    ev.run({"x": X})
    _, traced = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    layer = batch * width * 8
    assert ev.stats.peak_bytes == 2 * layer  # a matmul's input and output, whatever the depth
    assert ev.stats.predicted_peak_bytes == ev.stats.peak_bytes
    assert abs(traced - ev.stats.peak_bytes) < 0.05 * layer


@pytest.mark.parametrize("n", [4, 16, 64])
def test_forward_mode_peak_is_flat_and_reverse_is_linear(n):
    width, batch = 64, 32
    layer = width * batch * 8
    g = chain(n, width)
    X = np.random.default_rng(2).normal(size=(batch, width))
    fm = cg.ForwardMode(g, ["y"], ["x"])
    fm.jvp({"x": X}, {"x": X})
    # a layer's value and tangent, and the next layer's two products: whatever the depth
    # (the activation and its derivative are written over their dying inputs)
    assert fm.stats.peak_bytes == 3 * layer
    rm = cg.ReverseMode(g, "loss", ["x"])
    rm.grad({"x": X})
    # the n activations backward reads (tanh outputs), plus one layer of working space
    assert rm.stats.peak_bytes <= (n + 1) * layer + 64
    assert rm.stats.peak_bytes >= n * layer
    for ex in (fm, rm):
        assert ex.stats.predicted_peak_bytes == ex.stats.peak_bytes


def test_lecture_squared_error_graph_both_modes():
    """L = 0.5 (y - w x)^2: a4 = w x, a5 = a4 - y, a6 = a5^2, a7 = 0.5 a6."""
    g = cg.Graph()
    w, x, y = g.input("w", ()), g.input("x", ()), g.input("y", ())
    g.output("L", 0.5 * cg.square(w * x - y))
    feeds = {"w": 0.7, "x": 1.5, "y": -0.4}
    closed = -(feeds["y"] - feeds["w"] * feeds["x"]) * feeds["x"]
    _, gr = cg.ReverseMode(g, "L", ["w", "x", "y"]).grad(feeds)
    assert float(gr["w"]) == pytest.approx(closed, rel=1e-15)
    assert float(gr["y"]) == pytest.approx(feeds["y"] - feeds["w"] * feeds["x"], rel=1e-15)
    _, t = cg.ForwardMode(g, ["L"], ["w"]).jvp(feeds, {"w": 1.0})
    assert float(t["L"]) == pytest.approx(closed, rel=1e-15)


def test_lecture_sin_cos_graph_both_modes():
    w0, w1, xv = 0.3, -1.2, 0.7
    g = cg.Graph()
    a1, a2, a3 = g.input("w0", ()), g.input("w1", ()), g.input("x", ())
    a5 = a2 * a3 + a1
    g.output("y1", cg.sin(a5))
    g.output("y2", cg.cos(a5))
    feeds = {"w0": w0, "w1": w1, "x": xv}
    u = w1 * xv + w0
    _, t = cg.ForwardMode(g, ["y1", "y2"], ["w0", "w1", "x"]).jvp(feeds, {"w1": 1.0})
    assert float(t["y1"]) == pytest.approx(xv * np.cos(u), rel=1e-15)
    assert float(t["y2"]) == pytest.approx(-xv * np.sin(u), rel=1e-15)
    _, adj = cg.ReverseMode(g, "y2", ["w0", "w1", "x"]).grad(feeds)
    assert float(adj["w0"]) == pytest.approx(-np.sin(u), rel=1e-15)
    assert float(adj["w1"]) == pytest.approx(-xv * np.sin(u), rel=1e-15)
    assert float(adj["x"]) == pytest.approx(-w1 * np.sin(u), rel=1e-15)


def test_iris_mlp_gradients_equal_the_lecture_code():
    """The lecture's hand-written `gradients` (the lecture's worked example)."""
    rng = np.random.default_rng(0)
    N, D, M, C = 150, 3, 16, 3
    X = np.c_[rng.normal(size=(N, 2)), np.ones(N)]
    Y = np.eye(C)[rng.integers(0, C, N)]
    Vv, Wv = rng.normal(size=(D, M)) * 0.1, rng.normal(size=(M, C)) * 0.1

    def logistic(z):
        return 1 / (1 + np.exp(-z))

    def softmax(u):
        e = np.exp(u - u.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    Z = logistic(X @ Vv)
    dY = softmax(Z @ Wv) - Y
    dW = Z.T @ dY / N
    dV = X.T @ (dY @ Wv.T * Z * (1 - Z)) / N

    g = cg.Graph("iris")
    x, y = g.input("x", (None, D)), g.input("y", (None, C))
    V, W = g.param("V", Vv), g.param("W", Wv)
    g.output("loss", cg.softmax_cross_entropy(cg.logistic(x @ V) @ W, y))
    _, gr = cg.ReverseMode(g, "loss", ["V", "W"]).grad({"x": X, "y": Y})
    np.testing.assert_allclose(gr["W"], dW, rtol=0, atol=1e-10)
    np.testing.assert_allclose(gr["V"], dV, rtol=0, atol=1e-10)


def test_api_derivative_graph_snippet():
    rng = np.random.default_rng(0)
    g = cg.Graph()
    x, y = g.input("x", (None, 3)), g.input("y", (None, 3))
    V = g.param("V", rng.normal(0, 0.5, (3, 4)))
    W = g.param("W", rng.normal(0, 0.5, (4, 3)))
    g.output("loss", cg.softmax_cross_entropy(cg.tanh(x @ V) @ W, y))
    feeds = {"x": rng.normal(size=(5, 3)), "y": np.eye(3)[[0, 1, 2, 1, 0]]}
    gg = cg.gradient_graph(g, of="loss", wrt=["V", "W"])
    assert list(gg.outputs) == ["loss", "grad/V", "grad/W"]
    v = rng.normal(size=(3, 4))
    hv = cg.ForwardMode(gg, of=["grad/V"], wrt=["V"]).jvp(feeds, {"V": v})[1]["grad/V"]
    H = cg.jacobian(gg, feeds, of="grad/V", wrt="V", mode="reverse")  # reverse over reverse
    np.testing.assert_allclose(hv, np.tensordot(H, v, axes=2), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(H.reshape(12, 12), H.reshape(12, 12).T, atol=1e-10)  # symmetric
    g.set_param("V", np.zeros((3, 4)))  # gradient_graph holds its own copy of the params
    assert not np.allclose(gg.params["V"], 0)
