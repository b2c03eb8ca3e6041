"""ONNX export and import: every op of the spec table, gradient graphs and the Iris MLP export,
pass onnx.checker (full check) and give cgraph's outputs in onnxruntime; models built with
onnx.helper (and exported ones) import, run as onnxruntime runs them, and differentiate."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx_backend import retyped as _retyped
from specs import COMPARISONS, build_graph, case_id, cases

import cgraph as cg
from cgraph.ops.registry import OPS

BUILTIN = {name for name, op in OPS.items() if not op.user}

CASES = cases()
TOL = {"float64": 1e-12, "float32": 1e-5}


def run_ort(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))


# onnxruntime's CPU provider has these operators in float32 only (no float64 kernels)
ORT_FLOAT32_ONLY = {"Conv", "ConvTranspose", "AveragePool", "Erf", "Atan"}


def ort_outputs(model, feeds, dtype):
    """onnxruntime's outputs, and the dtype whose tolerance they meet: a float64 model that uses
    an operator onnxruntime has only in float32 runs as a float32 copy (its outputs cast back)."""
    if dtype != "float64" or not {n.op_type for n in model.graph.node} & ORT_FLOAT32_ONLY:
        return run_ort(model, feeds), dtype
    got = run_ort(_retyped(model, TensorProto.FLOAT), {k: v.astype(np.float32) if v.dtype == np.float64 else v
                                       for k, v in feeds.items()})
    return {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in got.items()}, "float32"


def assert_same(got, want, dtype):
    assert set(got) >= set(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype, k
        assert got[k].shape == v.shape, k
        # a float32 element made from a difference of large terms is only as exact as they are:
        # the absolute tolerance scales with the array's largest value
        scale = max(1.0, float(np.max(np.abs(v)))) if v.size and v.dtype.kind == "f" else 1.0
        np.testing.assert_allclose(got[k], v, rtol=TOL[dtype], atol=TOL[dtype] * scale, err_msg=k)


def spec_graph(spec, shapes, dtype, dynamic):
    """The spec's graph with axis 0 of every input of rank >= 1 a `None` size if `dynamic`."""
    g = cg.Graph(spec.name)
    args = []
    for i, shape in enumerate(shapes):
        kind = spec.domain[i] if i < len(spec.domain) else "real"
        shp = tuple(None if dynamic and j == 0 else d for j, d in enumerate(shape))
        args.append(g.input(f"a{i}", shp, "bool" if kind == "bool" else "int64" if kind.startswith("idx") else dtype))
    g.output("out", spec.build(*args))
    return g


def buildable(spec, shapes, dynamic):
    try:
        spec_graph(spec, shapes, "float64", dynamic)
    except cg.ShapeError:  # a case that a run-time batch size makes ill-formed
        return False
    return True


# ---- export -------------------------------------------------------------------------------

def test_every_registered_op_has_an_export_rule():
    assert BUILTIN <= cg.onnx.EXPORTABLE, sorted(BUILTIN - cg.onnx.EXPORTABLE)


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_export_every_op_runs_in_onnxruntime(case, dtype, tmp_path):
    spec, shapes = case
    g = build_graph(spec, shapes, dtype)
    feeds = {f"a{i}": x for i, x in enumerate(spec.draw(np.random.default_rng(0), shapes, dtype))}
    cg.onnx.export(g, tmp_path / "m.onnx")
    model = onnx.load(tmp_path / "m.onnx")
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == list(feeds)
    got, tol = ort_outputs(model, feeds, dtype)
    want = cg.Evaluator(g).run(feeds)
    if not spec.onnx_values:  # dropout: onnxruntime's own mask; each element dropped or scaled
        x, rate = feeds["a0"], float(next(n for n in g.nodes.values() if n.op == "dropout").attrs["rate"])
        kept = got["out"] != 0  # (onnxruntime scales by 1 / (1 - rate) computed in float32)
        np.testing.assert_allclose(got["out"][kept], (x / (1 - rate))[kept], rtol=1e-6)
        return
    assert_same(got, want, tol)


@pytest.mark.parametrize("name,fn,ref", COMPARISONS, ids=[c[0] for c in COMPARISONS])
def test_export_comparisons(name, fn, ref):
    g = cg.Graph()
    a, b = g.input("a", (None, 4)), g.input("b", (4,), "float32")
    g.output("out", fn(a, b))
    g.output("picked", cg.where(fn(a, b), a, 0.0))
    feeds = {"a": np.round(np.random.default_rng(1).normal(size=(3, 4))),
             "b": np.round(np.random.default_rng(2).normal(size=(4,))).astype(np.float32)}
    got = run_ort(cg.onnx.to_model(g), feeds)
    np.testing.assert_array_equal(got["out"], ref(feeds["a"], feeds["b"]))
    assert_same(got, cg.Evaluator(g).run(feeds), "float64")


def test_export_internal_ops_mixed_dtypes_and_symbolic_sizes():
    """The ops derivative rules use, int and bool values, numpy's type promotion (float32 with
    float64), and None sizes as symbolic dimensions."""
    from cgraph.ops.array import sum_to

    g = cg.Graph("internal")
    x = g.input("x", (None, 1, 3), "float32")
    k = g.input("k", (3,), "int64")
    e = cg.expand_dims(cg.squeeze(x, 1), (0, 2))  # (1, N, 1, 3)
    g.output("e", e)
    g.output("s", sum_to(cg.broadcast_to(g.param("p", np.arange(3.0)), (4, 3)), (1, 3)))
    g.output("cast", cg.cast(cg.sign(x), "int64") + k)
    g.output("promoted", x * np.float64(2.5))  # float64 wins, as in numpy
    g.output("count", cg.sum(x > 0))
    g.output("x_itself", x)
    model = cg.onnx.to_model(g)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "x_dim0" and dims[1].dim_value == 1
    for n in (2, 5):
        feeds = {"x": np.random.default_rng(n).normal(size=(n, 1, 3)).astype(np.float32),
                 "k": np.array([1, -2, 3])}
        assert_same(run_ort(model, feeds), cg.Evaluator(g).run(feeds), "float64")


def _iris(dtype="float64", seed=0, steps=200):
    """The lecture's Iris MLP, trained by gradient descent for a few steps on separable data."""
    rng = np.random.default_rng(seed)
    g = cg.Graph("iris-mlp")
    x = g.input("x", (None, 3), dtype)
    y = g.input("y", (None, 3), dtype)
    V = g.param("V", rng.normal(0, 0.5, (3, 16)), dtype)
    W = g.param("W", rng.normal(0, 0.5, (16, 3)), dtype)
    logits = cg.logistic(x @ V) @ W
    g.output("loss", cg.softmax_cross_entropy(logits, y))
    g.output("logits", logits)
    labels = rng.integers(0, 3, 150)
    X = (np.eye(3)[labels] * 2 + rng.normal(0, 0.5, (150, 3))).astype(dtype)
    Y = np.eye(3)[labels].astype(dtype)
    rm = cg.ReverseMode(g, of="loss", wrt=["V", "W"])
    for _ in range(steps):
        _, grads = rm.grad({"x": X, "y": Y})
        for k in ("V", "W"):
            g.set_param(k, g.params[k] - 0.5 * grads[k])
    return g, {"x": X, "y": Y}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("opset", [13, 17, 18, 21])
def test_export_trained_iris_mlp_and_its_gradient_graph(dtype, opset):
    g, feeds = _iris(dtype)
    model = cg.onnx.to_model(g, opset=opset)
    assert {t.name for t in model.graph.initializer} == {"V", "W"}
    assert [o.name for o in model.graph.output] == ["loss", "logits"]
    for n in (150, 7):  # any batch size: the first axis is symbolic
        part = {k: v[:n] for k, v in feeds.items()}
        assert_same(run_ort(model, part), cg.Evaluator(g).run(part), dtype)
    gg = cg.gradient_graph(g, "loss", ["V", "W"])
    got = run_ort(cg.onnx.to_model(gg, opset=opset), feeds)
    assert_same(got, cg.Evaluator(gg).run(feeds), dtype)
    assert got["loss"] < 0.5, "the model was trained"


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_export_gradient_graphs(case, dynamic):
    """Gradient graphs use shape_of, sum_to, broadcast_to with run-time shapes, expand_dims,
    scatter, dim_size, cast and sign: they export and run too."""
    spec, shapes = case
    if not spec.smooth or not buildable(spec, shapes, dynamic):
        return
    g = spec_graph(spec, shapes, "float64", dynamic)
    out = g.outputs["out"]
    g.output("loss", cg.sum(out * cg.sin(out)))  # a scalar that weighs each element differently
    wrt = [f"a{i}" for i in range(len(shapes)) if i not in spec.nondiff_args]
    try:
        gg = cg.gradient_graph(g, "loss", wrt)
    except cg.DerivativeError as e:  # take's derivative needs the size of its axis, here a run-time one
        assert dynamic and "known when the graph is built" in str(e)
        return
    feeds = {f"a{i}": x for i, x in enumerate(spec.draw(np.random.default_rng(3), shapes))}
    if not spec.onnx_values:  # onnxruntime draws its own dropout mask
        cg.onnx.to_model(gg)
        return
    got, tol = ort_outputs(cg.onnx.to_model(gg), feeds, "float64")
    assert_same(got, cg.Evaluator(gg).run(feeds), tol)


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 5), st.integers(1, 4), st.integers(1, 4), st.sampled_from(["float64", "float32"]),
       st.integers(0, 2**31))
def test_export_random_shapes(n, m, k, dtype, seed):
    """A graph with broadcasting, batched matmul, slicing, reductions and softmax, exported once
    with symbolic sizes and run at random sizes, with its gradient graph."""
    g = cg.Graph("random")
    a = g.input("a", (None, m, k), dtype)
    b = g.input("b", (k,), dtype)
    c = g.param("c", np.random.default_rng(seed).normal(size=(k, m)), dtype)
    h = cg.tanh(a * b + 1.0) @ c  # (n, m, m)
    h = cg.concat([h, h[:, ::-1, :]], axis=2)[:, :, 1:]  # (n, m, 2m-1)
    score = cg.mean(cg.log_softmax(h, axis=(1, 2)), axis=0) + cg.max(h, axis=0)
    g.output("score", score)
    g.output("loss", cg.sum(cg.logsumexp(score) * cg.softplus(cg.sum(h, axis=(0, 2)))))
    gg = cg.gradient_graph(g, "loss", ["a", "c"])
    rng = np.random.default_rng(seed)
    feeds = {"a": rng.normal(size=(n, m, k)).astype(dtype), "b": rng.normal(size=(k,)).astype(dtype)}
    assert_same(run_ort(cg.onnx.to_model(g), feeds), cg.Evaluator(g).run(feeds), dtype)
    assert_same(run_ort(cg.onnx.to_model(gg), feeds), cg.Evaluator(gg).run(feeds), dtype)


def test_export_unsupported_op_names_it():
    fft = cg.define_op("test/fancy_fft", lambda x: np.abs(np.fft.fft(x)), lambda x: (x.shape, x.dtype))
    g = cg.Graph("spectral")
    x = g.input("x", (4,))
    g.output("y", cg.exp(fft(x)) + fft(x))
    with pytest.raises(cg.onnx.OnnxError) as err:
        cg.onnx.export(g, None)
    msg = str(err.value)
    assert "\n" not in msg and "'spectral'" in msg and "test/fancy_fft (2 nodes)" in msg
    assert isinstance(err.value, cg.CgraphError) and x.shape == (4,)


def test_export_errors():
    g = cg.Graph("empty")
    g.input("x", (2,))
    with pytest.raises(cg.onnx.OnnxError, match="no outputs"):
        cg.onnx.to_model(g)
    g.output("y", g["x"] * 2.0)
    with pytest.raises(cg.onnx.OnnxError, match="opset 9 is not supported"):
        cg.onnx.to_model(g, opset=9)


def test_output_names_that_clash_with_node_names():
    """Outputs keep their names even where a node of another output already has that name;
    one node can be several outputs."""
    g = cg.Graph()
    x = g.input("x", (2,))
    r = cg.relu(x)
    g.output("relu", r * 2.0)  # the node named "relu" is not this output
    g.output("r", r)
    g.output("r2", r)
    model = cg.onnx.to_model(g)
    feeds = {"x": np.array([-1.0, 3.0])}
    assert_same(run_ort(model, feeds), cg.Evaluator(g).run(feeds), "float64")


# ---- import -------------------------------------------------------------------------------

def _helper_mlp(opset=13):
    """x (N, 4) -> Gemm -> Relu -> Gemm (transB) -> Softmax, as another framework writes it."""
    rng = np.random.default_rng(7)
    inits = [numpy_helper.from_array(rng.normal(size=(4, 8)).astype(np.float32), "fc1.weight"),
             numpy_helper.from_array(rng.normal(size=(8,)).astype(np.float32), "fc1.bias"),
             numpy_helper.from_array(rng.normal(size=(3, 8)).astype(np.float32), "fc2.weight"),
             numpy_helper.from_array(rng.normal(size=(3,)).astype(np.float32), "fc2.bias")]
    nodes = [helper.make_node("Gemm", ["x", "fc1.weight", "fc1.bias"], ["h"], alpha=0.5, beta=2.0),
             helper.make_node("Relu", ["h"], ["a"]),
             helper.make_node("Gemm", ["a", "fc2.weight", "fc2.bias"], ["logits"], transB=1),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=1)]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 3])], inits)
    ops = [helper.make_opsetid("", opset)]
    return helper.make_model(graph, opset_imports=ops, ir_version=helper.find_min_ir_version_for(ops))


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_import_helper_mlp_matches_onnxruntime_and_differentiates(opset, tmp_path):
    model = _helper_mlp(opset)
    onnx.save(model, tmp_path / "mlp.onnx")
    g = cg.onnx.load(tmp_path / "mlp.onnx")
    assert list(g.inputs) == ["x"] and list(g.outputs) == ["probs"]
    assert sorted(g.params) == ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]
    assert g.inputs["x"].shape == (None, 4) and g.params["fc1.weight"].dtype == np.float32
    X = np.random.default_rng(1).normal(size=(6, 4)).astype(np.float32)
    assert_same(cg.Evaluator(g).run({"x": X}), run_ort(model, {"x": X}), "float32")

    # Differentiate the imported graph: its gradient against central differences (in float64).
    g64 = cg.onnx.load(_as_float64(model))
    y = g64.input("y", (None, 3))
    g64.output("loss", -cg.sum(y * cg.log(g64.outputs["probs"])) / 6.0)
    feeds = {"x": X.astype(np.float64), "y": np.eye(3)[[0, 1, 2, 0, 1, 2]]}
    assert cg.gradcheck(g64, feeds, of="loss", wrt=list(g64.params) + ["x"]) < 1e-6


def _as_float64(model):
    return _retyped(model, TensorProto.DOUBLE)


def test_imported_model_fine_tunes_with_fit():
    """Initializers are trainable params: cg.fit lowers a loss added to the imported graph."""
    g = cg.onnx.load(_as_float64(_helper_mlp()))
    y = g.input("y", (None, 3))
    g.output("loss", -cg.sum(y * cg.log(g.outputs["probs"])) / cg.sum(y))
    rng = np.random.default_rng(0)
    data = {"x": rng.normal(size=(12, 4)), "y": np.eye(3)[rng.integers(0, 3, 12)]}
    before = {k: v.copy() for k, v in g.params.items()}
    first = cg.Evaluator(g, outputs=["loss"]).run(data)["loss"]
    cg.fit(g, data, optimizer=cg.optim.Adam(lr=0.02), epochs=150, progress=False)
    assert cg.Evaluator(g, outputs=["loss"]).run(data)["loss"] < 0.5 * first
    assert all(not np.array_equal(before[k], g.params[k]) for k in before)


DYNAMIC = [(c, d) for c in CASES for d in (False, True) if buildable(*c, d)]


@pytest.mark.parametrize("case,dynamic", DYNAMIC, ids=[f"{case_id(c)}-{'dyn' if d else 'static'}" for c, d in DYNAMIC])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_round_trip_exported_models(case, dynamic, dtype):
    """Export, import: the imported graph gives onnxruntime's (and the original's) outputs."""
    spec, shapes = case
    g = spec_graph(spec, shapes, dtype, dynamic)
    model = cg.onnx.to_model(g)
    if not spec.onnx_values:  # dropout exports in training mode, which cgraph imports not
        with pytest.raises(cg.onnx.OnnxError, match=r"Dropout in training mode"):
            cg.onnx.load(model)
        return
    g2 = cg.onnx.load(model)
    feeds = {f"a{i}": x for i, x in enumerate(spec.draw(np.random.default_rng(0), shapes, dtype))}
    got, tol = ort_outputs(model, feeds, dtype)
    assert_same(cg.Evaluator(g2).run(feeds), got, tol)
    assert_same(cg.Evaluator(g2).run(feeds), cg.Evaluator(g).run(feeds), dtype)


def test_round_trip_iris_keeps_names_params_constants_and_gradients(tmp_path):
    g, feeds = _iris(steps=20)
    g.metadata["trained_on"] = "iris"
    stat = g.param("stat", np.ones(3), trainable=False)
    g.output("scaled", g.outputs["logits"] * stat + g.constant("shift", np.arange(3.0)))
    cg.onnx.export(g, tmp_path / "iris.onnx")
    g2 = cg.onnx.load(tmp_path / "iris.onnx")
    assert list(g2.inputs) == ["x", "y"] and list(g2.outputs) == ["loss", "logits", "scaled"]
    assert g2.trainable == ["V", "W"] and set(g2.params) == {"V", "W", "stat"}
    assert g2.nodes["shift"].op == "constant" and g2.metadata == {"trained_on": "iris"}
    assert_same(cg.Evaluator(g2).run(feeds), cg.Evaluator(g).run(feeds), "float64")
    want = cg.ReverseMode(g, of="loss", wrt=["V", "W", "x"]).grad(feeds)[1]
    got = cg.ReverseMode(g2, of="loss", wrt=["V", "W", "x"]).grad(feeds)[1]
    assert_same(got, want, "float64")
    small = {k: v[:5] for k, v in feeds.items()}
    assert cg.gradcheck(g2, small, of="loss", wrt=["V", "W", "x"]) < 1e-6


def _model(nodes, inputs, outputs, inits=(), opset=18):
    graph = helper.make_graph(nodes, "m", inputs, outputs, list(inits))
    ops = [helper.make_opsetid("", opset)]
    return helper.make_model(graph, opset_imports=ops, ir_version=helper.find_min_ir_version_for(ops))


def _vi(name, shape, t=TensorProto.DOUBLE):
    return helper.make_tensor_value_info(name, t, shape)


@pytest.mark.parametrize("opset", [13, 18])
def test_import_covers_the_listed_ops(opset):
    """One model with every op the importer lists (MatMul of vectors, Reshape with a 0, axes as
    attributes before opset 18 and inputs after, Constant nodes), against onnxruntime."""
    c = lambda name, v, dt=np.int64: helper.make_node("Constant", [], [name], value=numpy_helper.from_array(
        np.asarray(v, dt), name))
    def red(op, x, out, axes, **kw):  # axes: an input from opset 18 (13 for ReduceSum), else an attribute
        if opset >= 18 or op == "ReduceSum":
            return [c(out + ".axes", axes), helper.make_node(op, [x, out + ".axes"], [out], **kw)]
        return [helper.make_node(op, [x], [out], axes=axes, **kw)]

    nodes = [
        c("two", 2.0, np.float64), c("shape", [0, 2, 2]), c("ax", [1]),
        helper.make_node("MatMul", ["x", "w"], ["xw"]),                  # (N, 4)
        helper.make_node("MatMul", ["v", "w"], ["vw"]),                  # (4,) vector @ matrix
        helper.make_node("Add", ["xw", "vw"], ["s1"]),
        helper.make_node("Sub", ["s1", "two"], ["s2"]),
        helper.make_node("Mul", ["s2", "s2"], ["s3"]),
        helper.make_node("Div", ["s3", "two"], ["s4"]),
        helper.make_node("Neg", ["s4"], ["s5"]),
        helper.make_node("Exp", ["s5"], ["e"]),
        helper.make_node("Sigmoid", ["xw"], ["sg"]),
        helper.make_node("Tanh", ["xw"], ["th"]),
        helper.make_node("Sqrt", ["e"], ["sq"]),
        helper.make_node("Log", ["sq"], ["lg"]),
        helper.make_node("Pow", ["sg", "two"], ["pw"]),
        helper.make_node("Relu", ["th"], ["rl"]),
        helper.make_node("Reshape", ["rl", "shape"], ["rs"]),           # (N, 2, 2)
        helper.make_node("Transpose", ["rs"], ["tr"], perm=[0, 2, 1]),
        helper.make_node("Concat", ["tr", "rs"], ["cc"], axis=2),       # (N, 2, 4)
        helper.make_node("Identity", ["cc"], ["id"]),
        helper.make_node("LogSoftmax", ["id"], ["ls"], axis=1),
        helper.make_node("Softmax", ["id"], ["sm"], axis=-1),
        *red("ReduceSum", "ls", "rsum", [1], keepdims=0),
        *red("ReduceMean", "sm", "rmean", [2], keepdims=1),
        *red("ReduceMax", "id", "rmax", [1, 2], keepdims=0),
        helper.make_node("Greater", ["pw", "lg"], ["gt"]),
        helper.make_node("LessOrEqual", ["pw", "lg"], ["le"]),
        helper.make_node("Equal", ["gt", "le"], ["eq"]),
        helper.make_node("Where", ["gt", "pw", "lg"], ["wh"]),
        helper.make_node("Unsqueeze", ["rmax", "ax"], ["un"]),
    ]
    model = _model(nodes,
                   [_vi("x", ["N", 3]), _vi("v", [3])],
                   [_vi("rsum", ["N", 4]), _vi("rmean", ["N", 2, 1]), _vi("un", ["N", 1]), _vi("wh", ["N", 4]),
                    helper.make_tensor_value_info("eq", TensorProto.BOOL, ["N", 4])],
                   [numpy_helper.from_array(np.random.default_rng(0).normal(size=(3, 4)), "w")], opset)
    g = cg.onnx.load(model)
    feeds = {"x": np.random.default_rng(1).normal(size=(5, 3)), "v": np.array([0.5, -1.0, 2.0])}
    assert_same(cg.Evaluator(g).run(feeds), run_ort(model, feeds), "float64")
    assert g.nodes["two"].op == "constant" and list(g.params) == ["w"]


def test_import_batch_normalization_inference():
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(v, k) for k, v in
             {"scale": rng.normal(size=3), "bias": rng.normal(size=3), "mean": rng.normal(size=3),
              "var": rng.uniform(0.5, 2, 3)}.items()]
    nodes = [helper.make_node("BatchNormalization", ["x", "scale", "bias", "mean", "var"], ["y"], epsilon=1e-3),
             helper.make_node("BatchNormalization", ["z", "scale", "bias", "mean", "var"], ["w"])]
    model = _model(nodes, [_vi("x", ["N", 3, 2, 2]), _vi("z", ["N", 3])],
                   [_vi("y", ["N", 3, 2, 2]), _vi("w", ["N", 3])], inits)
    g = cg.onnx.load(model)
    assert g.trainable == ["scale", "bias"], "running statistics are not trained"
    feeds = {"x": rng.normal(size=(4, 3, 2, 2)), "z": rng.normal(size=(5, 3))}
    assert_same(cg.Evaluator(g).run(feeds), run_ort(model, feeds), "float64")


@pytest.mark.parametrize("opset", [12, 13, 18])
def test_import_convolutional_model_matches_onnxruntime_and_differentiates(opset):
    """Conv (bias, groups, auto_pad, dilations), ConvTranspose, MaxPool, AveragePool (the padding
    left out of the mean, ONNX's default), Gather, OneHot, ArgMax, Atan, Erf, Clip, ReduceProd,
    ReduceMin, CumSum and Dropout (inference) as another framework writes them."""
    rng = np.random.default_rng(3)
    c = lambda name, v, dt=np.int64: helper.make_node("Constant", [], [name], value=numpy_helper.from_array(
        np.asarray(v, dt), name))
    red = lambda op, x, out, axes, **kw: (  # axes: an input from opset 18 (ReduceProd, ReduceMin)
        [c(out + ".axes", axes), helper.make_node(op, [x, out + ".axes"], [out], **kw)] if opset >= 18
        else [helper.make_node(op, [x], [out], axes=axes, **kw)])
    clip = [c("lo", -0.5, np.float32), c("hi", 0.8, np.float32), helper.make_node("Clip", ["e", "lo", "hi"], ["cl"])]
    inits = {"k1": rng.normal(size=(4, 2, 3, 3)), "b1": rng.normal(size=4), "k2": rng.normal(size=(4, 2, 2, 2)),
             "kt": rng.normal(size=(4, 1, 2, 2)), "table": rng.normal(size=(10, 3))}
    nodes = [
        helper.make_node("Conv", ["x", "k1", "b1"], ["c1"], pads=[1, 1, 1, 1]),                    # (N, 4, 6, 6)
        helper.make_node("Conv", ["c1", "k2"], ["c2"], group=2, auto_pad="SAME_UPPER", strides=[2, 2]),  # (N, 4, 3, 3)
        helper.make_node("Conv", ["c1", "k2"], ["c3"], group=2, dilations=[2, 1], auto_pad="VALID"),  # (N, 4, 4, 5)
        helper.make_node("ConvTranspose", ["c2", "kt"], ["ct"], strides=[2, 2], output_padding=[1, 1],
                         group=2, pads=[0, 0, 1, 1]),                                                # (N, 2, 6, 6)
        helper.make_node("MaxPool", ["c1"], ["mp"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("AveragePool", ["c3"], ["ap"], kernel_shape=[2, 3], pads=[1, 0, 0, 1]),
        helper.make_node("Atan", ["ap"], ["at"]),
        helper.make_node("Erf", ["mp"], ["e"]),
        *clip,
        *red("ReduceProd", "cl", "pr", [2, 3], keepdims=0),
        *red("ReduceMin", "ct", "mn", [1], keepdims=1),
        c("ax", 1), helper.make_node("CumSum", ["pr", "ax"], ["cs"], exclusive=1, reverse=1),
        c("ratio", 0.5, np.float32), helper.make_node("Dropout", ["cs", "ratio"], ["dr"]),
        helper.make_node("Gather", ["table", "ids"], ["emb"], axis=0),                            # (N, 2, 3)
        helper.make_node("ArgMax", ["emb"], ["am"]),                                               # axis 0, kept
        c("depth", 10), c("vals", [-1.0, 2.0], np.float32),
        helper.make_node("OneHot", ["ids", "depth", "vals"], ["oh"], axis=1),                     # (N, 10, 2)
    ]
    f = TensorProto.FLOAT
    model = _model(nodes, [_vi("x", ["N", 2, 6, 6], f), _vi("ids", ["N", 2], TensorProto.INT64)],
                   [_vi("dr", ["N", 4], f), _vi("mn", ["N", 1, 6, 6], f), _vi("at", ["N", 4, 4, 4], f),
                    _vi("emb", ["N", 2, 3], f), _vi("am", [1, 2, 3], TensorProto.INT64), _vi("oh", ["N", 10, 2], f)],
                   [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()], opset)
    g = cg.onnx.load(model)
    feeds = {"x": rng.normal(size=(3, 2, 6, 6)).astype(np.float32), "ids": np.array([[1, 9], [-2, 0], [4, 4]])}
    assert_same(cg.Evaluator(g).run(feeds), run_ort(model, feeds), "float32")
    ops = {n.op for n in g.nodes.values()}
    assert {"conv2d", "conv2d_transpose", "max_pool2d", "avg_pool2d", "take", "one_hot", "argmax", "atan",
            "erf", "clip", "prod", "min", "cumsum"} <= ops and "dropout" not in ops

    g64 = cg.onnx.load(_as_float64(model))  # differentiate it: every param and the image
    loss = sum(cg.sum(cg.square(t)) for name, t in g64.outputs.items() if t.dtype.kind == "f")
    g64.output("loss", loss)
    f64 = {"x": feeds["x"].astype(np.float64)[:1] * 0.5, "ids": feeds["ids"][:1]}
    assert cg.gradcheck(g64, f64, of="loss", wrt=["x", "k1", "b1", "k2", "kt", "table"]) < 1e-6


def test_import_clip_with_bounds_as_attributes_and_one_side_open():
    nodes = [helper.make_node("Clip", ["x"], ["y"], min=-0.5, max=0.25), helper.make_node("Clip", ["x"], ["z"])]
    f = TensorProto.FLOAT
    old = _model(nodes, [_vi("x", [5], f)], [_vi("y", [5], f), _vi("z", [5], f)], opset=10)
    nodes = [helper.make_node("Constant", [], ["hi"], value=numpy_helper.from_array(np.array(0.3, np.float32), "hi")),
             helper.make_node("Clip", ["x", "", "hi"], ["y"])]
    new = _model(nodes, [_vi("x", [5], f)], [_vi("y", [5], f)], opset=13)
    feeds = {"x": np.linspace(-1, 1, 5).astype(np.float32)}
    for model in (old, new):
        assert_same(cg.Evaluator(cg.onnx.load(model)).run(feeds), run_ort(model, feeds), "float32")


def test_import_unsupported_ops_in_one_line():
    ein = lambda i, o: helper.make_node("Einsum", [i], [o], equation="nchw->nchw")
    nodes = [ein("x", "c1"), ein("c1", "c2"), helper.make_node("LpPool", ["c2"], ["p"], kernel_shape=[1, 1]),
             helper.make_node("MaxPool", ["p"], ["y", "where"], kernel_shape=[1, 1]),
             helper.make_node("BatchNormalization", ["y", "s", "s", "s", "s"], ["z"], training_mode=1)]
    inits = [numpy_helper.from_array(np.ones(1), "s")]
    model = _model(nodes, [_vi("x", [1, 1, 4, 4])], [_vi("z", [1, 1, 4, 4])], inits)
    with pytest.raises(cg.onnx.OnnxError) as err:
        cg.onnx.load(model)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.endswith("cannot import: Einsum (2), BatchNormalization (training mode) (1), "
                        "LpPool (1), MaxPool (second output) (1)")


def test_import_errors(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07garbage that is not protobuf\xff\xff")
    with pytest.raises(cg.onnx.OnnxError, match="not an ONNX model"):
        cg.onnx.load(tmp_path / "junk.onnx")
    half = _model([helper.make_node("Squeeze", ["x", "s"], ["y"])],
                  [_vi("x", [2, 1]), _vi("s", [1], TensorProto.INT64)], [_vi("y", ["a"])])
    with pytest.raises(cg.onnx.OnnxError, match=r"node 'y' \(Squeeze\): the axes \('s'\) must be known before"):
        cg.onnx.load(half)
    bf16 = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [2], TensorProto.BFLOAT16)],
                  [_vi("y", [2], TensorProto.BFLOAT16)])
    with pytest.raises(cg.onnx.OnnxError, match="input 'x': element type 16"):  # numpy has no bfloat16
        cg.onnx.load(bf16)


def _relu_model(**props):
    model = _model([helper.make_node("Relu", ["x"], ["y"], name="act")], [_vi("x", [2])], [_vi("y", [2])],
                   [numpy_helper.from_array(np.ones(2), "w")])
    helper.set_model_props(model, props)
    return model


def _import_error(data) -> str:
    with pytest.raises(cg.onnx.OnnxError) as err:
        cg.onnx.load(data)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_malformed_models_raise_only_onnx_errors_naming_the_part():
    """What mutated files found: each is one OnnxError line naming the initializer, node or
    metadata at fault, never KeyError, ValueError, JSONDecodeError or UnicodeDecodeError."""
    model = _relu_model()
    model.graph.initializer[0].data_type = 64  # no ONNX type
    assert _import_error(model.SerializeToString()).startswith("ONNX initializer 'w': ")
    model = _relu_model()
    w = model.graph.initializer[0]
    w.ClearField("raw_data")
    w.double_data.extend([1.0, 2.0, 3.0])  # three numbers for dims (2,)
    assert _import_error(model.SerializeToString()).startswith("ONNX initializer 'w': ")
    for text in ("", "{", '{"a": 1}', "[1, 2]"):
        msg = _import_error(_relu_model(**{"cgraph.constants": text}).SerializeToString())
        assert msg.startswith("ONNX metadata_props 'cgraph.constants' must be a JSON list of names")
    # strings that are not UTF-8 (protobuf can only make them by editing the bytes)
    model = _relu_model(note="NOTE")
    model.graph.name = "onnx-graph"
    data = model.SerializeToString()
    for field, where in ((b"NOTE", "metadata_props 'note' is not UTF-8 text"),
                         (b"onnx-graph", "the graph name is not UTF-8 text"),
                         (b"\x01y", "ONNX output b'\\xff': output name must be a non-empty string")):
        assert data.count(field) == (1 if field != b"\x01y" else 2)
        assert where in _import_error(data.replace(field, field[:-1] + b"\xff"))
    g = cg.onnx.load(data.replace(b"act", b"\xff\xfe\xfd"))  # a node's own name is only for messages
    assert cg.loads(cg.dumps(g)).metadata == {"note": "NOTE"}


def test_an_imported_model_saves_loads_and_draws(tmp_path):
    g = cg.onnx.load(_relu_model(note="✓"))
    h = cg.loads(cg.dumps(g))
    assert h.metadata == {"note": "✓"} and list(h.nodes) == list(g.nodes)
    cg.render(h, tmp_path / "m.svg")
    assert (tmp_path / "m.svg").read_bytes().startswith(b"<?xml")


# ---- the optional dependency -----------------------------------------------------------

def test_core_imports_without_onnx():
    """`import cgraph` never imports onnx; without it, cg.onnx says which extra to install."""
    code = ("import sys; sys.modules['onnx'] = None\n"
            "import cgraph as cg\n"
            "g = cg.Graph(); g.output('y', g.input('x', (2,)) * 2.0)\n"
            "try:\n    cg.onnx.export(g, 'never.onnx')\n"
            "except cg.onnx.OnnxMissingError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "cgraph.onnx needs the onnx package: pip install 'cgraph-ad[onnx]'"
    code = "import sys, cgraph; print('onnx' in sys.modules, 'onnxruntime' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.split() == ["False", "False"]


def test_metadata_keys_are_json():
    g, _ = _iris(steps=0)
    props = {p.key: p.value for p in cg.onnx.to_model(g).metadata_props}
    assert json.loads(props["cgraph.constants"]) == [] and json.loads(props["cgraph.frozen"]) == []


# ---- the command line ---------------------------------------------------------------------

def test_cli_export_and_import(tmp_path, capsys):
    from cgraph.cli import main

    g, feeds = _iris(steps=20)
    cg.save(g, tmp_path / "iris.pb")
    assert main(["export", str(tmp_path / "iris.pb")]) == 0  # writes iris.onnx beside the model
    assert capsys.readouterr().out.startswith(f"wrote {tmp_path / 'iris.onnx'}: ONNX opset 17")
    model = onnx.load(tmp_path / "iris.onnx")
    onnx.checker.check_model(model, full_check=True)
    assert_same(run_ort(model, feeds), cg.Evaluator(g).run(feeds), "float64")
    assert main(["import", str(tmp_path / "iris.onnx"), "-o", str(tmp_path / "back.pb")]) == 0
    g2 = cg.load(tmp_path / "back.pb")
    assert list(g2.inputs) == ["x", "y"] and g2.trainable == ["V", "W"]
    assert_same(cg.Evaluator(g2).run(feeds), cg.Evaluator(g).run(feeds), "float64")
    assert main(["export", str(tmp_path / "back.pb"), "-o", str(tmp_path / "o18.onnx"), "--opset", "18"]) == 0
    assert onnx.load(tmp_path / "o18.onnx").opset_import[0].version == 18


def test_cli_errors_are_one_line(tmp_path):
    conv = _model([helper.make_node("Einsum", ["x"], ["y"], equation="ij->ji")], [_vi("x", [3, 3])], [_vi("y", [3, 3])])
    onnx.save(conv, tmp_path / "conv.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\xff\xff not a model")
    for path, says in (("conv.onnx", "uses ops cgraph cannot import: Einsum (1)"), ("junk.onnx", "not an ONNX model"),
                       ("missing.onnx", "No such file")):
        run = subprocess.run([sys.executable, "-m", "cgraph", "import", str(tmp_path / path)],
                             capture_output=True, text=True)
        assert run.returncode == 1 and run.stdout == ""
        assert run.stderr.startswith("cgraph import: error: ") and says in run.stderr
        assert run.stderr.count("\n") == 1, run.stderr
    assert not (tmp_path / "conv.pb").exists()


def test_gradient_with_a_run_time_size_of_one_exports(tmp_path):
    """The gradient sums over an axis that is 1 only at run time: exported with ONNX ops that
    find the axes from the shapes, it agrees with cgraph for one row and for four."""
    ort = pytest.importorskip("onnxruntime")
    g = cg.Graph("stretch")
    x = g.input("x", (None, 4))
    w = g.param("w", np.linspace(-1, 1, 16).reshape(4, 4))
    g.output("l", cg.sum(cg.tanh(x + w)))
    gg = cg.gradient_graph(g, "l", ["x", "w"])
    cg.onnx.export(gg, tmp_path / "g.onnx")
    sess = ort.InferenceSession(str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"])
    for n in (1, 4):
        X = np.random.default_rng(n).normal(size=(n, 4))
        ours = cg.Evaluator(gg).run({"x": X})
        theirs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": X})))
        for k in ("grad/x", "grad/w"):
            np.testing.assert_allclose(theirs[k], ours[k], rtol=1e-12, atol=1e-14)


def test_run_time_shapes_import():
    """A Reshape to a shape fed at run time (a 0 copies the input's size), an Expand to one
    computed from a Shape of an input with a size known only at run time, ConstantOfShape."""
    nodes = [helper.make_node("Reshape", ["x", "s"], ["r"]), helper.make_node("Shape", ["x"], ["xs"]),
             helper.make_node("Expand", ["c", "xs"], ["e"]), helper.make_node("ConstantOfShape", ["xs"], ["z"],
                                                                               value=numpy_helper.from_array(
                                                                                   np.array([7], np.int64)))]
    model = _model(nodes, [_vi("x", ["n", 3]), _vi("s", [2], TensorProto.INT64)],
                   [_vi("r", [None, None]), _vi("e", [None, 3]), _vi("z", [None, None], TensorProto.INT64)],
                   [numpy_helper.from_array(np.array([1.0, 2.0, 3.0]), "c")])
    g = cg.onnx.load(model)
    X = np.arange(12.0).reshape(4, 3)
    out = cg.Evaluator(g).run({"x": X, "s": np.array([0, -1])})
    assert np.array_equal(out["r"], X) and np.array_equal(out["e"], np.tile([1.0, 2.0, 3.0], (4, 1)))
    assert np.array_equal(out["z"], np.full((4, 3), 7))
    assert np.array_equal(cg.Evaluator(g).run({"x": X, "s": np.array([6, 2])})["r"], X.reshape(6, 2))


@pytest.mark.parametrize("dtype", ["float16", "int32", "int16", "int8", "uint8"])
def test_narrow_dtypes_export_run_in_onnxruntime_and_import_back(dtype, tmp_path):
    g = cg.Graph("narrow")
    x = g.input("x", (None, 3), dtype)
    c = g.constant("c", np.array([1, 2, 3], dtype))
    g.output("y", x + c)
    g.output("b", cg.less(x, c))
    X = np.array([[0, 5, 2], [3, 1, 9]], dtype)
    want = cg.Evaluator(g).run({"x": X})
    cg.onnx.export(g, tmp_path / "m.onnx")
    model = onnx.load(tmp_path / "m.onnx")
    onnx.checker.check_model(model, full_check=True)
    got = run_ort(model, {"x": X})
    back = cg.Evaluator(cg.onnx.load(model)).run({"x": X})
    for out in (got, back):
        assert all(out[k].dtype == v.dtype and np.array_equal(out[k], v) for k, v in want.items())


def test_derivatives_are_for_float_dtypes_only():
    g = cg.Graph()
    x = g.input("x", (3,), "float16")
    i = g.input("i", (3,), "int32")
    g.output("y", cg.sum(x * x * cg.cast(i, "float16")))
    _, grads = cg.ReverseMode(g, of="y", wrt=["x"]).grad({"x": np.array([1, 2, 3], np.float16),
                                                        "i": np.array([1, 0, 2], np.int32)})
    assert grads["x"].dtype == np.float16 and grads["x"].tolist() == [2.0, 0.0, 12.0]
    with pytest.raises(cg.DerivativeError, match="wrt 'i': a int32 input has no derivative"):
        cg.ReverseMode(g, of="y", wrt=["i"])


LIGHT = sorted(p for p in (Path(onnx.__file__).parent / "backend" / "test" / "data" / "light").glob("light_*.onnx")
               if not p.name.endswith("_output_0.pb"))


@pytest.mark.parametrize("path", LIGHT, ids=[p.stem.removeprefix("light_") for p in LIGHT])
def test_light_real_models_differentiate(path):
    """ONNX's nine light real models (ResNet-50, VGG-19, Inception...; their outputs are checked
    by test_onnx_suite), computed in float64: the gradient wrt the input image of a weighted sum
    of the logits (the softmax's input) and of every ReLU's output (with the light models'
    constant weights every class has the same logit, so the softmax itself is constant, and in
    some the logits do not depend on the image) matches central differences along a direction
    that moves three pixels."""
    model = _retyped(onnx.load(path), TensorProto.DOUBLE)
    inits = {t.name for t in model.graph.initializer}
    (vi,) = [vi for vi in model.graph.input if vi.name not in inits]
    shape = tuple(d.dim_value for d in vi.type.tensor_type.shape.dim)
    x = np.arange(np.prod(shape)).reshape(shape) / np.prod(shape)
    g = cg.onnx.load(model)
    (out,) = g.outputs.values()
    logits = g[out.node.inputs[0]] if out.op == "softmax" else out
    rng = np.random.default_rng(0)
    parts = [logits, *(g[n.name] for n in g.nodes.values() if n.op == "relu")]
    terms = [cg.mean(t * rng.normal(size=t.shape)) for t in parts]
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    g.output("s", total)
    _, grads = cg.ReverseMode(g, of="s", wrt=[vi.name]).grad({vi.name: x})
    d = np.zeros(shape)
    for pixel, v in (((0, 0, shape[2] // 2, shape[3] // 2), 1.0), ((0, shape[1] - 1, 3, shape[3] - 5), -0.5),
                     ((0, 1, shape[2] - 2, 7), 0.25)):
        d[pixel] = v
    ev, h = cg.Evaluator(g, outputs=["s"]), 1e-4
    fd = (ev.run({vi.name: x + h * d})["s"] - ev.run({vi.name: x - h * d})["s"]) / (2 * h)
    directional = float(np.sum(grads[vi.name] * d))
    assert directional != 0.0
    assert abs(directional - fd) <= 1e-3 * abs(fd), (directional, fd)  # the sums are large: FD loses digits
