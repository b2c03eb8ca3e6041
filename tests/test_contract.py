"""Every op is a declared contract, checked at every door (cgraph/ops/registry.py, docs/ops.md):
for every registered op, one input too many, one too few, each attribute of a wrong type,
missing and unknown are refused by the builder, by `load` (files crafted with valid checksums)
in the builder's words, by `save`, and by ONNX import; executors never write into a caller's
array; your own ops (`cg.define_op`) go through the same door; `cg.stop_gradient`."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
from control_cases import comparable
from test_io import ALL

import cgraph as cg
import cgraph.io as cio
from cgraph._proto import cgraph_pb2 as pb
from cgraph.ops.registry import OPS

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
BUILTIN = sorted(name for name, op in OPS.items() if not op.user)


def example_node(op: str) -> cg.Node:
    """A valid node of `op` from the graphs that together use every op (tests/test_io.py)."""
    for _, g, _ in ALL:
        for node in g.nodes.values():
            if node.op == op:
                return node
    raise AssertionError(f"no test graph uses {op}")


def one_node_graph(node: cg.Node, inputs: list[str] | None = None, attrs: dict | None = None) -> cg.Graph:
    """A graph of inputs i0, i1, ... (the example's shapes and dtypes) and a node `op` on them
    (an input that is a tuple of results: its control-flow node, on inputs of its own)."""
    g = cg.Graph(node.op)
    src = {}
    for i, name in enumerate(node.inputs):
        if name not in src:
            src[name] = f"i{i}"
            meta = node_meta(node, i)
            if meta.parts is not None:
                for k, s in enumerate(meta.inputs):
                    m = node_meta(meta, k)
                    g.input(f"j{k}", m.shape, m.dtype)
                g.add_node(meta.op, [f"j{k}" for k in range(len(meta.inputs))], dict(meta.attrs), name=f"i{i}")
            else:
                g.input(f"i{i}", meta.shape, meta.dtype)
    names = [src[n] for n in node.inputs] if inputs is None else inputs
    t = g.add_node(node.op, names, dict(node.attrs) if attrs is None else attrs, name="n")
    g.output("out", t if t.node.parts is None else cg.control.results_of(t)[0])
    return g


def node_meta(node: cg.Node, i: int) -> cg.Node:
    for _, g, _ in ALL:
        if g.nodes.get(node.name) is node:
            return g.nodes[node.inputs[i]]
    raise AssertionError(node.name)


WRONG = {  # values of another type for each attribute type (they survive a file round trip)
    "int": [True, 1.5, "1", (1,)],
    "float": [1, True, "0.5", (1,)],
    "bool": [1, 0, "yes", (True,)],
    "str": [1, True, ("float64",)],
    "ints": [1, (True,), (None,), (1.5,), "0"],
    "dims": [3, (True,), (1.5,)],
    "index": [1, ("a",), (True,), (1.5,)],
    "graph": [1, "body", (1,)],
}


def mistakes(op: str) -> list[tuple[str, list[str], dict]]:
    """(what, inputs, attrs) for each way to break the example node of `op`."""
    node = example_node(op)
    opdef = OPS[op]
    names = [f"i{i}" for i in range(len(node.inputs))]
    names = [names[node.inputs.index(n)] for n in node.inputs]
    out = []
    if opdef.inputs.maximum is not None:
        out.append(("one input too many", names[: opdef.inputs.maximum] + [names[0]] * (
            opdef.inputs.maximum + 1 - len(names[: opdef.inputs.maximum])), dict(node.attrs)))
    if opdef.inputs.minimum > 0:
        out.append(("one input too few", names[: opdef.inputs.minimum - 1], dict(node.attrs)))
    for k, decl in opdef.attrs.items():
        for v in WRONG[decl.type]:
            out.append((f"{k}={v!r}", names, {**node.attrs, k: v}))
        if decl.required:
            out.append((f"no {k}", names, {a: v for a, v in node.attrs.items() if a != k}))
    out.append(("unknown attribute", names, {**node.attrs, "zzz": 1}))
    return out


def encodable(attrs: dict) -> bool:
    """Whether a file can hold these values at all (a tuple of bools or floats it cannot)."""
    try:
        for k, v in attrs.items():
            cio._encode_attr(pb.AttrValue(), v, k)
    except cg.GraphError:
        return False
    return True


CASES = [(op, *m) for op in BUILTIN for m in mistakes(op)]
IDS = [f"{c[0]}-{c[1]}" for c in CASES]
FILE_CASES = [c for c in CASES if encodable(c[3])]
FILE_IDS = [f"{c[0]}-{c[1]}" for c in FILE_CASES]


def build_error(op: str, inputs: list[str], attrs: dict) -> str:
    with pytest.raises(cg.GraphError) as e:
        one_node_graph(example_node(op), inputs, attrs)
    msg = str(e.value)
    assert msg.startswith(f"n ({op}): ") and "\n" not in msg, msg
    return msg


@pytest.mark.parametrize("op,what,inputs,attrs", CASES, ids=IDS)
def test_the_builder_refuses_what_the_declaration_does_not_allow(op, what, inputs, attrs):
    msg = build_error(op, inputs, attrs)
    if "input" in what and "attribute" not in what:
        assert "takes" in msg and f"got {len(inputs)}" in msg
    elif what.startswith("no "):
        assert f"missing attribute {what[3:]!r}" in msg
    elif what == "unknown attribute":
        assert "unknown attribute 'zzz'" in msg
    else:
        assert f"attribute {what.split('=')[0]!r} must be" in msg


def _reframe(m: pb.Model) -> bytes:
    message = m.SerializeToString()
    return message + cio._footer(len(message), 0, cio.crc32(message))


@pytest.mark.parametrize("op,what,inputs,attrs", FILE_CASES, ids=FILE_IDS)
def test_a_crafted_file_is_refused_in_the_builders_words(op, what, inputs, attrs):
    """The valid graph saved, its node edited (checksums made valid again): load refuses it
    with the same message as the builder, and `cgraph check` says so too."""
    expected = build_error(op, inputs, attrs)
    g = one_node_graph(example_node(op))
    m = pb.Model.FromString(cg.dumps(g)[:-30])
    (msg,) = [n for n in m.graph.node if n.name == "n"]
    del msg.input[:]
    msg.input.extend(inputs)
    del msg.attr[:]
    for k, v in attrs.items():
        cio._encode_attr(msg.attr.add(name=k).value, v, k)
    data = _reframe(m)
    with pytest.raises(cg.GraphFormatError) as e:
        cg.loads(data)
    assert str(e.value) == expected


@pytest.mark.parametrize("op", BUILTIN)
def test_save_refuses_what_load_would_refuse_in_the_same_words(op, tmp_path):
    """A graph whose node was changed behind the builder's back (as a bug or a hand edit of
    internals would) does not save: the error is load's and the builder's."""
    for what, inputs, attrs in mistakes(op)[:3]:
        expected = build_error(op, inputs, attrs)
        g = one_node_graph(example_node(op))
        node = g.nodes["n"]
        g._nodes["n"] = dataclasses.replace(node, inputs=tuple(inputs), attrs=types.MappingProxyType(attrs))
        with pytest.raises(cg.GraphError) as e:
            cg.save(g, tmp_path / "m.pb")
        assert str(e.value) == f"cannot save graph {op!r}: {expected}", what
        assert not list(tmp_path.iterdir())


def test_a_graph_the_builder_accepts_always_saves_and_loads_back():
    for _, g, _ in ALL:
        h = cg.loads(cg.dumps(g))
        assert [(n.op, n.inputs, comparable(dict(n.attrs)), n.shape, n.dtype) for n in h.nodes.values()] == \
               [(n.op, n.inputs, comparable(dict(n.attrs)), n.shape, n.dtype) for n in g.nodes.values()]


def test_attributes_are_normalised_and_defaults_filled_in():
    g = cg.Graph()
    x = g.input("x", (2, 3))
    t = g.add_node("sum", ["x"], {"axes": [np.int64(1)]})
    assert dict(t.node.attrs) == {"axes": (1,), "keepdims": False}
    assert type(t.node.attrs["axes"][0]) is int
    assert cg.sum(x, axis=1, keepdims=1).shape == (2, 1)  # op functions are friendlier
    with pytest.raises(cg.GraphError, match=r"attribute 'keepdims' must be a bool, got int 1"):
        g.add_node("sum", ["x"], {"axes": (1,), "keepdims": 1})
    with pytest.raises(cg.GraphError, match=r"attribute 'dtype' must be one of 'float64', 'float32'"):
        g.add_node("cast", ["x"], {"dtype": "uint16"})
    with pytest.raises(cg.GraphError, match=r"^exp_1 \(exp\): takes 1 input \(x\), got 0$"):
        g.add_node("exp", [], name="exp_1")


# ---- ONNX import ---------------------------------------------------------------------------

def _onnx_mutations(node, schema, onnx):
    """(mutated copy, whether ONNX's schema makes it invalid) for each way to break `node`."""
    AP = onnx.AttributeProto
    out = []
    extra = onnx.NodeProto()
    extra.CopyFrom(node)
    extra.input.append(node.input[0] if node.input else "")
    out.append((extra, len(extra.input) > schema.max_input))
    if node.input:
        fewer = onnx.NodeProto()
        fewer.CopyFrom(node)
        fewer.input.pop()
        out.append((fewer, len(fewer.input) < schema.min_input))
    unknown = onnx.NodeProto()
    unknown.CopyFrom(node)
    unknown.attribute.append(onnx.helper.make_attribute("zzz_unknown", 1))
    out.append((unknown, True))
    for i, a in enumerate(node.attribute):
        wrong = onnx.NodeProto()
        wrong.CopyFrom(node)
        replacement = (onnx.helper.make_attribute(a.name, 1.5) if a.type != AP.FLOAT
                       else onnx.helper.make_attribute(a.name, "text"))
        wrong.attribute[i].CopyFrom(replacement)
        out.append((wrong, True))
        if schema.attributes.get(a.name) is not None and schema.attributes[a.name].required:
            missing = onnx.NodeProto()
            missing.CopyFrom(node)
            del missing.attribute[i]
            out.append((missing, True))
    return out


@pytest.mark.parametrize("op", BUILTIN)
def test_onnx_import_refuses_nodes_outside_their_schema(op):
    onnx = pytest.importorskip("onnx")
    g = one_node_graph(example_node(op))
    model = cg.onnx.to_model(g)
    opset = model.opset_import[0].version
    for k, node in enumerate(model.graph.node):
        if node.op_type == "Constant":
            continue
        schema = onnx.defs.get_schema(node.op_type, opset)
        for mutated, invalid in _onnx_mutations(node, schema, onnx):
            bad = onnx.ModelProto()
            bad.CopyFrom(model)
            bad.graph.node[k].CopyFrom(mutated)
            try:
                cg.onnx.load(bad)
            except cg.onnx.OnnxError as e:
                assert "\n" not in str(e)
                continue
            assert not invalid, f"{op}: ONNX {node.op_type} accepted {mutated}"
    assert model.graph.node


# ---- executors never write into a caller's array -----------------------------------------

def test_kernels_get_feeds_read_only_and_user_results_never_alias():
    writes = cg.define_op("test/writes", lambda x: np.add(x, 1, out=x), lambda x: (x.shape, x.dtype))
    same = cg.define_op("test/same", lambda x: x, lambda x: (x.shape, x.dtype))
    g = cg.Graph()
    x = g.input("x", (3,))
    g.output("y", cg.neg(cg.exp(same(x))))  # exp and neg may work in place over their input
    g.output("z", cg.neg(same(cg.exp(x))))
    X = np.array([0.0, 1.0, 2.0])
    out = cg.Evaluator(g).run({"x": X})
    np.testing.assert_array_equal(X, [0.0, 1.0, 2.0])
    np.testing.assert_allclose(out["y"], -np.exp(X))
    np.testing.assert_allclose(out["z"], -np.exp(X))
    h = cg.Graph()
    h.output("y", cg.exp(writes(h.input("x", (3,)))))
    with pytest.raises(cg.CgraphError, match="test/writes"):
        cg.Evaluator(h).run({"x": X})
    np.testing.assert_array_equal(X, [0.0, 1.0, 2.0])


def test_no_input_position_becomes_out():
    """An extra input can no longer reach numpy as `out=`: the builder and the loader refuse it
    (the bug: exp(a, h) + h wrote e**a into h)."""
    g = cg.Graph()
    a, h = g.input("a", (3,)), g.input("h", (3,))
    with pytest.raises(cg.GraphError, match=r"takes 1 input \(x\), got 2"):
        g.add_node("exp", [a.name, h.name])


def test_random_graphs_with_aliasing_user_ops_never_change_feeds_or_params():
    same = cg.define_op("test/alias", lambda x: x, lambda x: (x.shape, x.dtype),
                        jvp=[lambda t, out, x: t], vjp=[lambda g, out, x: g])
    rng = np.random.default_rng(0)
    unary = [cg.exp, cg.neg, cg.tanh, cg.square, same, lambda t: t * 2.0, lambda t: t + 1.0]
    for trial in range(60):
        g = cg.Graph()
        x = g.input("x", (4,))
        w = g.param("w", rng.normal(size=4))
        pool = [x, w]
        for _ in range(rng.integers(2, 10)):
            f = unary[rng.integers(len(unary))]
            a = pool[rng.integers(len(pool))]
            pool.append(f(a) if rng.random() < 0.6 else a + pool[rng.integers(len(pool))])
        g.output("loss", cg.sum(pool[-1]))
        X = rng.normal(size=4)
        X0, W0 = X.copy(), g.params["w"].copy()
        cg.Evaluator(g).run({"x": X})
        cg.ReverseMode(g, "loss", ["x", "w"]).grad({"x": X})
        cg.ForwardMode(g, ["loss"], ["x"]).jvp({"x": X}, {"x": X})
        assert np.array_equal(X, X0) and np.array_equal(g.params["w"], W0), trial


# ---- user ops -----------------------------------------------------------------------------

square_plus = cg.define_op(
    "test/square_plus", kernel=lambda x, *, c: x * x + c, infer=lambda x, *, c: (x.shape, x.dtype),
    inputs=1, attrs={"c": float},
    jvp=[lambda t, out, x, *, c: 2.0 * x * t], vjp=[lambda g, out, x, *, c: 2.0 * x * g], doc="x^2 + c")


def test_a_user_op_is_built_run_and_differentiated_like_any_other():
    g = cg.Graph("user")
    x = g.input("x", (None, 3))
    y = square_plus(x, c=1)  # an int for a float attribute, as numbers elsewhere
    assert y.op == "test/square_plus" and dict(y.node.attrs) == {"c": 1.0}
    g.output("loss", cg.sum(cg.tanh(y)))
    X = np.random.default_rng(1).normal(size=(4, 3))
    out = cg.Evaluator(g).run({"x": X})["loss"]
    np.testing.assert_allclose(out, np.tanh(X * X + 1).sum())
    assert cg.gradcheck(g, {"x": X}, of="loss", wrt=["x"]) < 1e-7
    J = cg.jacobian(g, {"x": X}, of="loss", wrt="x", mode="forward")
    np.testing.assert_allclose(J, (1 - np.tanh(X * X + 1) ** 2) * 2 * X, rtol=1e-10)
    assert "test/square_plus" in cg.to_dot(g)
    assert "x^2 + c" in str(cg.op_info("test/square_plus"))


def test_a_user_op_round_trips_through_a_file_and_a_fresh_process_refuses_it(tmp_path):
    g = cg.Graph("user")
    x = g.input("x", (3,))
    g.output("y", square_plus(x, c=0.5))
    path = tmp_path / "user.pb"
    cg.save(g, path)
    h = cg.load(path)
    np.testing.assert_array_equal(cg.Evaluator(h).run({"x": np.arange(3.0)})["y"], np.arange(3.0) ** 2 + 0.5)
    code = textwrap.dedent(f"""
        import cgraph as cg
        try:
            cg.load({str(path)!r})
        except cg.GraphFormatError as e:
            print(e)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, check=True)
    assert "unknown op 'test/square_plus'" in r.stdout and "must be defined (cg.define_op)" in r.stdout
    r = subprocess.run([sys.executable, "-m", "cgraph", "check", str(path)], capture_output=True, text=True, env=ENV)
    assert r.returncode == 1 and "must be defined" in r.stderr and "Traceback" not in r.stderr


def test_user_op_definitions_and_uses_are_checked():
    with pytest.raises(cg.GraphError, match="must contain a '/'"):
        cg.define_op("square_plus", lambda x: x, lambda x: (x.shape, x.dtype))
    with pytest.raises(cg.GraphError, match="attribute 'c' has type"):
        cg.define_op("test/bad", lambda x: x, lambda x: (x.shape, x.dtype), attrs={"c": complex})
    g = cg.Graph()
    x = g.input("x", (3,))
    with pytest.raises(cg.GraphError, match=r"attribute 'c' must be a float, got str 'one'"):
        square_plus(x, c="one")
    with pytest.raises(cg.GraphError, match=r"missing attribute 'c' \(float\)"):
        square_plus(x)
    with pytest.raises(cg.GraphError, match=r"takes 1 input \(x\), got 2"):
        square_plus(x, x, c=1.0)
    wrong = cg.define_op("test/wrong_dtype", lambda x: x.astype(np.float32), lambda x: (x.shape, x.dtype))
    g.output("y", wrong(x))
    with pytest.raises(cg.ShapeError, match=r"the kernel returned \(3,\) float32, its infer gave \(3,\) float64"):
        cg.Evaluator(g).run({"x": np.ones(3)})
    odd = cg.define_op("test/odd_infer", lambda x: x, lambda x: "nonsense")
    with pytest.raises(cg.ShapeError, match="infer must return"):
        odd(x)
    norule = cg.define_op("test/no_rule", lambda x: x.copy(), lambda x: (x.shape, x.dtype))
    h = cg.Graph()
    h.output("y", cg.sum(norule(h.input("x", (2,)))))
    with pytest.raises(cg.DerivativeError, match=r"\(test/no_rule\): no VJP rule for input 0"):
        cg.ReverseMode(h, "y", ["x"]).grad({"x": np.ones(2)})


def test_a_variadic_user_op():
    total = cg.define_op("test/total", lambda *xs: sum(xs), lambda *xs: (xs[0].shape, xs[0].dtype),
                         inputs=("xs+",), vjp=[lambda g, out, *xs, index: g])
    g = cg.Graph()
    a, b, c = (g.input(n, (2,)) for n in "abc")
    g.output("s", cg.sum(total(a, b, c) * a))
    feeds = {n: np.arange(2.0) + i for i, n in enumerate("abc")}
    assert cg.gradcheck(g, feeds, of="s", wrt=["a", "b", "c"]) < 1e-7
    with pytest.raises(cg.GraphError, match=r"takes at least 1 input \(xs\+\), got 0"):
        g.add_node("test/total", [])


# ---- stop_gradient ------------------------------------------------------------------------

def test_stop_gradient_in_both_modes_in_files_and_in_onnx():
    g = cg.Graph("sg")
    x = g.input("x", (3,))
    g.output("y", cg.sum(x * cg.stop_gradient(x)))
    X = np.array([1.0, -2.0, 0.5])
    assert cg.Evaluator(g).run({"x": X})["y"] == pytest.approx(np.sum(X * X))
    _, grads = cg.ReverseMode(g, "y", ["x"]).grad({"x": X})
    np.testing.assert_allclose(grads["x"], X)  # d/dx of x * c, c = x held fixed: not 2x
    _, tangents = cg.ForwardMode(g, ["y"], ["x"]).jvp({"x": X}, {"x": np.ones(3)})
    assert tangents["y"] == pytest.approx(X.sum())
    h = cg.loads(cg.dumps(g))
    assert "stop_gradient" in {n.op for n in h.nodes.values()}
    np.testing.assert_allclose(cg.ReverseMode(h, "y", ["x"]).grad({"x": X})[1]["x"], X)
    pytest.importorskip("onnx")
    back = cg.onnx.load(cg.onnx.to_model(g))
    assert "stop_gradient" in {n.op for n in back.nodes.values()}
    np.testing.assert_allclose(cg.ReverseMode(back, "y", ["x"]).grad({"x": X})[1]["x"], X)


# ---- the catalogue ------------------------------------------------------------------------

def test_the_catalogue_is_generated_from_the_registry():
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_ops_doc"), "--check"], capture_output=True,
                       text=True, env=ENV)
    assert r.returncode == 0, r.stderr
    text = (ROOT / "docs" / "ops.md").read_text()
    for op in BUILTIN:
        assert f"### `{op}`" in text
    assert "docs/ops.md" in (ROOT / "proto" / "cgraph.proto").read_text()


def test_op_info_is_the_declaration():
    info = cg.op_info("sum")
    assert info.inputs.names == ("x",) and info.inputs.minimum == info.inputs.maximum == 1
    assert info.attrs["axes"].type == "ints" and info.attrs["axes"].required
    assert info.attrs["keepdims"].default is False
    assert str(info).startswith("### `sum`")
    concat = cg.op_info("concat")
    assert concat.inputs.minimum == 1 and concat.inputs.maximum is None
    with pytest.raises(cg.GraphError, match="unknown op 'nope'"):
        cg.op_info("nope")
