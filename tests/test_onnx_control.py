"""ONNX import of control flow (cgraph/onnx/_import_control.py): If, Loop and Scan become cond,
while_loop and scan; values against onnxruntime and cgraph's own graphs, gradients against the
original graphs and central differences; what cgraph's loops cannot express is one OnnxError."""

from __future__ import annotations

import numpy as np
import pytest
from control_cases import all_cases

import cgraph as cg

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

CONTROL = ("cond", "scan", "while_loop")


def run_ort(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds), strict=True))


def model_of(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "m", inputs, outputs, initializer=list(inits))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(m, full_check=True)
    return m


def tensor(name, dtype, shape):
    return helper.make_tensor_value_info(name, dtype, shape)


def ops_of(g):
    return [n.op for n in g.nodes.values()]


def central_difference(f, x, eps=1e-6):
    out = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        d = np.zeros_like(x)
        d[i] = eps
        out[i] = (f(x + d) - f(x - d)) / (2 * eps)
    return out


@pytest.mark.parametrize("case", all_cases(), ids=lambda c: c.name)
def test_cgraphs_own_control_flow_comes_back_the_same(case):
    """Export (If, Scan, Loop) and import again: the same ops, values and gradients."""
    g = case.graph
    h = cg.onnx.load(cg.onnx.export(g, None))
    assert sorted(o for o in ops_of(h) if o in CONTROL) == sorted(o for o in ops_of(g) if o in CONTROL)
    want, got = cg.Evaluator(g).run(case.feeds), cg.Evaluator(h).run(case.feeds)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-13, atol=1e-13)
    wrt = [w for w in case.wrt if h.nodes[w].op in ("param", "input")]
    _, ga = cg.ReverseMode(g, "loss", wrt).grad(case.feeds)
    _, gb = cg.ReverseMode(h, "loss", wrt).grad(case.feeds)
    for w in wrt:
        np.testing.assert_allclose(gb[w], ga[w], rtol=1e-12, atol=1e-12)


def _scan_model(opset=17):
    """A Scan over x (3, 4, 2) along axis 1 from the end, its outputs stacked along axis 1 and
    reversed, with a state and a value of the graph around read in the body."""
    body = helper.make_graph(
        [helper.make_node("Mul", ["s_in", "x_t"], ["prod"]),
         helper.make_node("Add", ["prod", "w"], ["s_out"]),
         helper.make_node("Tanh", ["s_out"], ["y_t"])],
        "body", [tensor("s_in", TensorProto.DOUBLE, [3, 2]), tensor("x_t", TensorProto.DOUBLE, [3, 2])],
        [tensor("s_out", TensorProto.DOUBLE, [3, 2]), tensor("y_t", TensorProto.DOUBLE, [3, 2])])
    node = helper.make_node("Scan", ["s0", "x"], ["s_final", "ys"], body=body, num_scan_inputs=1,
                            scan_input_axes=[1], scan_input_directions=[1], scan_output_axes=[1],
                            scan_output_directions=[1])
    return model_of([node], [tensor("s0", TensorProto.DOUBLE, [3, 2]), tensor("x", TensorProto.DOUBLE, [3, 4, 2])],
                    [tensor("s_final", TensorProto.DOUBLE, [3, 2]), tensor("ys", TensorProto.DOUBLE, [3, 4, 2])],
                    [numpy_helper.from_array(np.array([0.5, -0.25]), "w")], opset)


def test_scan_axes_and_directions_match_onnxruntime_and_differentiate():
    model = _scan_model()
    g = cg.onnx.load(model)
    assert "scan" in ops_of(g)
    rng = np.random.default_rng(0)
    feeds = {"s0": rng.normal(size=(3, 2)), "x": rng.normal(size=(3, 4, 2))}
    want = run_ort(model, feeds)
    got = cg.Evaluator(g).run(feeds)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-12, atol=1e-12)
    g.output("loss", cg.sum(g.outputs["ys"] * g.outputs["ys"]) + cg.sum(g.outputs["s_final"]))
    _, grads = cg.ReverseMode(g, "loss", ["x", "w"]).grad(feeds)

    def loss(x=feeds["x"], w=None):
        f = dict(feeds, x=x)
        out = cg.Evaluator(g).run(f, params={} if w is None else {"w": w})
        return float(out["loss"])
    np.testing.assert_allclose(grads["x"], central_difference(lambda x: loss(x=x), feeds["x"]), rtol=1e-6, atol=1e-8)
    w0 = np.asarray(g.params["w"])
    np.testing.assert_allclose(grads["w"], central_difference(lambda w: loss(w=w), w0), rtol=1e-6, atol=1e-8)


def _while_model():
    """A Loop of a trip count and a condition given at run time: v doubles while v < limit
    (limit read from the graph around), at most M times; the iteration number is summed."""
    body = helper.make_graph(
        [helper.make_node("Mul", ["v_in", "two"], ["v_out"]),
         helper.make_node("Cast", ["i"], ["i_f"], to=TensorProto.DOUBLE),
         helper.make_node("Add", ["acc_in", "i_f"], ["acc_out"]),
         helper.make_node("Less", ["v_out", "limit"], ["c_out"])],
        "body", [tensor("i", TensorProto.INT64, []), tensor("c_in", TensorProto.BOOL, []),
                 tensor("v_in", TensorProto.DOUBLE, []), tensor("acc_in", TensorProto.DOUBLE, [])],
        [tensor("c_out", TensorProto.BOOL, []), tensor("v_out", TensorProto.DOUBLE, []),
         tensor("acc_out", TensorProto.DOUBLE, [])],
        initializer=[numpy_helper.from_array(np.array(2.0), "two")])
    node = helper.make_node("Loop", ["M", "c0", "v0", "acc0"], ["v", "acc"], body=body)
    return model_of([node], [tensor("M", TensorProto.INT64, []), tensor("c0", TensorProto.BOOL, []),
                             tensor("v0", TensorProto.DOUBLE, []), tensor("limit", TensorProto.DOUBLE, [])],
                    [tensor("v", TensorProto.DOUBLE, []), tensor("acc", TensorProto.DOUBLE, [])],
                    [numpy_helper.from_array(np.array(0.0), "acc0")])


@pytest.mark.parametrize("M, c0, v0, limit", [(10, True, 1.0, 50.0), (3, True, 1.0, 50.0), (0, True, 1.0, 5.0),
                                              (10, False, 1.0, 5.0), (10, True, 7.0, 5.0)])
def test_a_loop_with_run_time_trip_count_and_condition_matches_onnxruntime(M, c0, v0, limit):
    model = _while_model()
    g = cg.onnx.load(model)
    assert "while_loop" in ops_of(g)
    feeds = {"M": np.array(M), "c0": np.array(c0), "v0": np.array(v0), "limit": np.array(limit)}
    want = run_ort(model, feeds)
    got = cg.Evaluator(g).run(feeds)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


def _for_model(trips=5, cond_input=False):
    """A Loop of a trip count known before the run with a scan output: h = tanh(h * a + x[i])."""
    body = helper.make_graph(
        [helper.make_node("Gather", ["x", "i"], ["x_i"], axis=0),
         helper.make_node("Mul", ["h_in", "a"], ["ha"]),
         helper.make_node("Add", ["ha", "x_i"], ["pre"]),
         helper.make_node("Tanh", ["pre"], ["h_out"]),
         helper.make_node("Identity", ["c_in"], ["c_out"]),
         helper.make_node("Mul", ["h_out", "h_out"], ["y"])],
        "body", [tensor("i", TensorProto.INT64, []), tensor("c_in", TensorProto.BOOL, []),
                 tensor("h_in", TensorProto.DOUBLE, [2])],
        [tensor("c_out", TensorProto.BOOL, []), tensor("h_out", TensorProto.DOUBLE, [2]),
         tensor("y", TensorProto.DOUBLE, [2])])
    node = helper.make_node("Loop", ["M", "c0" if cond_input else "", "h0"], ["h", "ys"], body=body)
    inits = [numpy_helper.from_array(np.array(trips, dtype=np.int64), "M"),
             numpy_helper.from_array(np.array([0.7, -1.3]), "a")]
    inputs = [tensor("h0", TensorProto.DOUBLE, [2]), tensor("x", TensorProto.DOUBLE, [trips, 2])]
    if cond_input:
        inputs.append(tensor("c0", TensorProto.BOOL, []))
    outputs = [tensor("h", TensorProto.DOUBLE, [2]), tensor("ys", TensorProto.DOUBLE, [trips, 2])]
    return model_of([node], inputs, outputs, inits)


def test_a_loop_with_scan_outputs_and_a_known_trip_count_is_a_scan():
    model = _for_model()
    g = cg.onnx.load(model)
    assert "scan" in ops_of(g) and "while_loop" not in ops_of(g)
    rng = np.random.default_rng(1)
    feeds = {"h0": rng.normal(size=2), "x": rng.normal(size=(5, 2))}
    want = run_ort(model, feeds)
    got = cg.Evaluator(g).run(feeds)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-13)
    g.output("loss", cg.sum(g.outputs["ys"]) + cg.sum(g.outputs["h"]))
    _, grads = cg.ReverseMode(g, "loss", ["x"]).grad(feeds)
    numeric = central_difference(lambda x: float(cg.Evaluator(g).run(dict(feeds, x=x))["loss"]), feeds["x"])
    np.testing.assert_allclose(grads["x"], numeric, rtol=1e-6, atol=1e-8)


def test_what_cgraphs_loops_cannot_express_is_one_onnx_error():
    with pytest.raises(cg.onnx.OnnxError, match=r"scan outputs needs a trip count known before the run") as e:
        cg.onnx.load(_for_model(cond_input=True))
    assert "\n" not in str(e.value)
    body = helper.make_graph([helper.make_node("Add", ["s_in", "x_t"], ["s_out"])], "body",
                             [tensor("s_in", TensorProto.FLOAT, [2]), tensor("x_t", TensorProto.FLOAT, [2])],
                             [tensor("s_out", TensorProto.FLOAT, [2])])
    scan8 = model_of([helper.make_node("Scan", ["", "s0", "x"], ["s"], body=body, num_scan_inputs=1)],
                     [tensor("s0", TensorProto.FLOAT, [1, 2]), tensor("x", TensorProto.FLOAT, [1, 3, 2])],
                     [tensor("s", TensorProto.FLOAT, [1, 2])], opset=8)
    with pytest.raises(cg.onnx.OnnxError, match="Scan before opset 9"):
        cg.onnx.load(scan8)


def _if_model(cond_init=None):
    then = helper.make_graph([helper.make_node("Mul", ["x", "x"], ["t"])], "then", [],
                             [tensor("t", TensorProto.DOUBLE, [3])])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                              [tensor("e", TensorProto.DOUBLE, [3])])
    node = helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)
    inputs = [tensor("x", TensorProto.DOUBLE, [3])]
    inits = []
    if cond_init is None:
        inputs.append(tensor("c", TensorProto.BOOL, [1]))
    else:
        inits.append(numpy_helper.from_array(np.array([cond_init]), "c"))
    return model_of([node], inputs, [tensor("y", TensorProto.DOUBLE, [3])], inits)


def test_if_reads_both_branches_with_the_names_around_them():
    model = _if_model()
    g = cg.onnx.load(model)
    assert "cond" in ops_of(g)
    x = np.array([1.0, -2.0, 3.0])
    for c in (True, False):
        feeds = {"x": x, "c": np.array([c])}
        np.testing.assert_array_equal(cg.Evaluator(g).run(feeds)["y"], run_ort(model, feeds)["y"])
        g2 = cg.onnx.load(model)
        g2.output("s", cg.sum(g2.outputs["y"]))
        _, grads = cg.ReverseMode(g2, "s", ["x"]).grad(feeds)
        np.testing.assert_array_equal(grads["x"], 2 * x if c else -np.ones(3))


def test_an_if_decided_before_the_run_imports_the_branch_taken_alone():
    for c, want in ((True, [1.0, 4.0, 9.0]), (False, [-1.0, 2.0, -3.0])):
        g = cg.onnx.load(_if_model(cond_init=c))
        assert "cond" not in ops_of(g)
        np.testing.assert_array_equal(cg.Evaluator(g).run({"x": np.array([1.0, -2.0, 3.0])})["y"], want)


def test_ops_inside_bodies_are_listed_with_the_others():
    model = _if_model()
    model.graph.node[0].attribute[0].g.node[0].op_type = "Det"  # then_branch: an op cgraph cannot import
    with pytest.raises(cg.onnx.OnnxError, match=r"uses ops cgraph cannot import: Det \(1\)"):
        cg.onnx.load(model)
