"""The public API's reference snippet, sections 1 (build), 2 (run) and the derivative graphs, verbatim
apart from the data it leaves to the reader (X, Y, feeds, dV, v)."""

import numpy as np

import cgraph as cg


def test_api_md_build_run_and_derivative_graphs():
    rng_data = np.random.default_rng(42)
    X = rng_data.normal(size=(20, 3))
    Y = np.eye(3)[rng_data.integers(0, 3, 20)]
    feeds = {"x": X, "y": Y}
    dV = rng_data.normal(size=(3, 16))
    v = rng_data.normal(size=(3, 16))

    # ---- verbatim from the public API's reference snippet -------------------------------------------------------
    rng = np.random.default_rng(0)

    # 1. Build: an explicit, static graph object.
    g = cg.Graph("iris-mlp")
    x = g.input("x", shape=(None, 3))            # dtype float64 unless dtype="float32"; None = any size
    y = g.input("y", shape=(None, 3))
    V = g.param("V", rng.normal(0, 0.01, (3, 16)))   # trainable, its value lives in the graph
    W = g.param("W", rng.normal(0, 0.01, (16, 3)))
    c = g.constant("half", 0.5)                  # stored, not trainable (a plain Python or numpy
                                                 # scalar/array in an op is lifted to one automatically)
    logits = cg.logistic(x @ V) @ W              # ops are functions in cg and operators on tensors
    loss = cg.softmax_cross_entropy(logits, y)   # mean over rows
    g.output("loss", loss)
    g.output("logits", logits)

    # 2. Run: executors are separate objects that compile a plan once and run it many times.
    ev = cg.Evaluator(g)                         # all outputs; Evaluator(g, outputs=["loss"]) for some
    out = ev.run({"x": X, "y": Y})               # {"loss": ndarray, "logits": ndarray}

    rm = cg.ReverseMode(g, of="loss", wrt=["V", "W"])        # one output; wrt: params or inputs
    value, grads = rm.grad({"x": X, "y": Y})     # grads["V"].shape == (3, 16)
    outs, cots = rm.vjp(feeds, {"loss": 1.0})  # vector-Jacobian product: cots[name] for each wrt

    fm = cg.ForwardMode(g, of=["logits"], wrt=["V"])
    outs, tangents = fm.jvp(feeds, {"V": dV})    # a tangent for each wrt name; tangents["logits"]

    J = cg.jacobian(g, feeds, of="logits", wrt="x", mode="auto")   # "forward" | "reverse" | "auto"
                                                 # J.shape == out.shape + wrt.shape
    err = cg.gradcheck(g, feeds, of="loss", wrt=["V", "W"])        # float: max relative error vs
                                                                   # central finite differences
    rm.stats.peak_bytes     # every executor: bytes of intermediate arrays alive at once

    # Derivatives are graphs too: save them, render them, differentiate them again.
    gg = cg.gradient_graph(g, of="loss", wrt=["V", "W"])   # outputs "loss", "grad/V", "grad/W"
    hv = cg.ForwardMode(gg, of=["grad/V"], wrt=["V"]).jvp(feeds, {"V": v})[1]["grad/V"]
    # ------------------------------------------------------------------------------------------

    assert c.dtype == np.float64
    assert set(out) == {"loss", "logits"} and out["logits"].shape == (20, 3)
    assert float(value) == float(out["loss"]) and grads["V"].shape == (3, 16)
    np.testing.assert_allclose(cots["V"], grads["V"], rtol=1e-14)
    assert tangents["logits"].shape == (20, 3)
    assert J.shape == (20, 3, 20, 3)
    assert err < 1e-7
    assert rm.stats.peak_bytes > 0
    assert list(gg.outputs) == ["loss", "grad/V", "grad/W"]
    # the Hessian-vector product against central differences of the gradient along v
    eps = 1e-5
    g.set_param("V", g.params["V"] + eps * v)
    gp = rm.grad(feeds)[1]["V"]
    g.set_param("V", g.params["V"] - 2 * eps * v)
    gm = rm.grad(feeds)[1]["V"]
    np.testing.assert_allclose(hv, (gp - gm) / (2 * eps), rtol=1e-5, atol=1e-9)


def test_api_md_save_inspect_and_onnx(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    g = cg.Graph("iris-mlp")
    x = g.input("x", shape=(None, 3))
    y = g.input("y", shape=(None, 3))
    V = g.param("V", rng.normal(0, 0.01, (3, 16)))
    W = g.param("W", rng.normal(0, 0.01, (16, 3)))
    logits = cg.logistic(x @ V) @ W
    g.output("loss", cg.softmax_cross_entropy(logits, y))
    g.output("logits", logits)
    feeds = {"x": rng.normal(size=(9, 3)), "y": np.eye(3)[rng.integers(0, 3, 9)]}

    # ---- verbatim from the public API's reference snippet, sections 3 and 4 and ONNX ---------------------------
    cg.save(g, "model.pb")
    g2 = cg.load("model.pb")                     # equal graph; same outputs bit for bit

    dot = cg.to_dot(g)                           # Graphviz source
    cg.render(g, "model.svg")                    # format from the suffix: svg, png, pdf, dot
    G = g.to_networkx()

    cg.onnx.export(g, "model.onnx")            # passes onnx.checker; onnxruntime gives the same outputs
    g3 = cg.onnx.load("model.onnx")            # inputs, outputs and initializers (as params) keep
    # ------------------------------------------------------------------------------------------

    a, b = cg.Evaluator(g).run(feeds), cg.Evaluator(g2).run(feeds)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert isinstance(dot, str) and "softmax_cross_entropy" in dot
    assert (tmp_path / "model.svg").read_text().lstrip().startswith(("<?xml", "<svg"))
    assert set(G.nodes) == set(g.nodes)
    c = cg.Evaluator(g3).run(feeds)
    np.testing.assert_allclose(c["logits"], a["logits"], rtol=1e-12)
    assert set(g3.params) == {"V", "W"}
