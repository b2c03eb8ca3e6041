"""Saving and loading (cgraph/io.py, proto/cgraph.proto): round trips of every op, bit for bit,
also in a fresh process; the payload section past 2 GiB; every kind of bad file is a one-line
GraphFormatError; atomic saves; the generated code is up to date."""

from __future__ import annotations

import gc
import os
import struct
import subprocess
import sys
import textwrap
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from control_cases import all_cases, comparable
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from specs import build_graph, case_id, cases

import cgraph as cg
import cgraph.io as cio
from cgraph._proto import cgraph_pb2 as pb
from cgraph.ops.registry import OPS

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
LIMITS = [cio.INLINE_LIMIT, 0]  # plain protobuf, and every tensor in the payload section
LIMIT_IDS = ["inline", "payload"]


# ---- graphs that together use every op ----------------------------------------------------

def batch_graph(dtype: str = "float64") -> tuple[cg.Graph, dict[str, np.ndarray]]:
    """A model with a run-time batch size (None), name scopes, a non-trainable param, metadata
    and state; its gradient graph needs shape_of, dim_size, scatter, sum_to, expand_dims..."""
    rng = np.random.default_rng(1)
    g = cg.Graph("batch")
    x = g.input("x", (None, 4), dtype)
    y = g.input("y", (None, 3), dtype)
    k = g.input("k", (None,), "int64")
    with g.scope("layer0"):
        W = g.param("W", rng.normal(size=(4, 6)), dtype=dtype)
        b = g.param("b", rng.normal(size=(6,)), dtype=dtype)
        h = cg.tanh(x @ W + b)
    with g.scope("bn"):
        gamma = g.param("gamma", np.ones(6), dtype=dtype)
        beta = g.param("beta", np.zeros(6), dtype=dtype)
        mean = g.param("mean", rng.normal(size=6), dtype=dtype, trainable=False)
        var = g.param("var", rng.uniform(1, 2, 6), dtype=dtype, trainable=False)
        h = cg.batch_norm(h, gamma, beta) + cg.batch_norm(h, gamma, beta, training=False, mean=mean, var=var)
    with g.scope("head"):
        V = g.param("V", rng.normal(size=(6, 3)), dtype=dtype)
        logits = h @ V
    r = cg.reshape(h, (-1, 2, 3))                       # -1 with a None batch
    r = cg.transpose(r, (0, 2, 1))[..., 1:, None]          # getitem with Ellipsis and None
    z = cg.concat([cg.squeeze(cg.sum(r, axis=2, keepdims=True), (2, 3)), cg.max(h, axis=1, keepdims=True)], axis=1)
    w = cg.where(x[:, :1] > 0.0, cg.exp(x), cg.log(cg.abs(x) + 1.0))
    w = cg.maximum(w, cg.minimum(cg.sqrt(cg.square(x)), cg.sin(x) ** 2 + cg.cos(x)))
    w = cg.softplus(w) - cg.logistic(w) * cg.relu(-w) / (cg.sign(w) + 3.0)
    kf = cg.cast(k, dtype)
    flags = (kf >= 1.0) == (kf < 2.0)
    p = cg.broadcast_to(cg.mean(w, axis=0, keepdims=True), (5, 4))
    loss = (cg.softmax_cross_entropy(logits, y) + cg.mse(logits, y) + cg.binary_cross_entropy(logits, y)
            + cg.mean(cg.log_softmax(w) + cg.softmax(w, axis=0)) + cg.mean(cg.logsumexp(w, keepdims=True))
            + cg.sum(z) * 0.01 + cg.sum(cg.stop_gradient(z)) * 0.02 + cg.sum(p) + cg.mean(cg.where(flags, kf, 0.0))
            + cg.sum(cg.sum(w) <= 0.0))
    g.output("loss", loss)
    g.output("logits", logits)
    g.output("flags", flags)
    g.metadata.update({"lr": "0.1", "accuracy": "0.97", "ünïcode": "✓"})
    g.state.update({"adam/m/W": rng.normal(size=(4, 6)), "step": np.array(7), "mask": np.array([True, False]),
                    "m32": np.ones((2, 2), np.float32)})
    n = 5
    feeds = {"x": rng.normal(size=(n, 4)).astype(dtype), "y": np.eye(3)[rng.integers(0, 3, n)].astype(dtype),
             "k": rng.integers(0, 3, n)}
    return g, feeds


def grad_of_batch(dtype: str = "float64") -> tuple[cg.Graph, dict[str, np.ndarray]]:
    g, feeds = batch_graph(dtype)
    return cg.gradient_graph(g, "loss", g.trainable + ["x"]), feeds


def spec_graphs() -> list[tuple[str, cg.Graph, dict[str, np.ndarray]]]:
    """Every op table case (values vs numpy are tested in test_ops), with its gradient graph."""
    out = []
    for case in cases():
        spec, shapes = case
        rng = np.random.default_rng(0)
        g = build_graph(spec, shapes)
        feeds = dict(zip([f"a{i}" for i in range(len(shapes))], spec.draw(rng, shapes), strict=True))
        out.append((case_id(case), g, feeds))
        if spec.smooth:
            wrt = [f"a{i}" for i in range(len(shapes)) if i not in spec.nondiff_args]
            gg = build_graph(spec, shapes)
            gg.output("sum", cg.sum(gg.outputs["out"]))
            out.append((case_id(case) + "-grad", cg.gradient_graph(gg, "sum", wrt), feeds))
    return out


def control_graphs() -> list[tuple[str, cg.Graph, dict[str, np.ndarray]]]:
    """The control-flow cases (tests/control_cases.py: cond, scan, while_loop, nested), with
    their gradient graphs."""
    out = []
    for c in all_cases():
        out.append((c.name, c.graph, c.feeds))
        out.append((c.name + "-grad", cg.gradient_graph(c.graph, "loss", c.wrt), c.feeds))
        if c.name.startswith(("rnn", "tuple")):  # a budgeted plan: checkpoints and scan_revolve
            full = cg.ReverseMode(c.graph, "loss", c.wrt)
            full.grad(c.feeds)
            rm = cg.ReverseMode(c.graph, "loss", c.wrt, memory_budget=int(full.stats.peak_bytes * 0.8))
            rm.grad(c.feeds)
            out.append((c.name + "-budget", rm.memory_plan.plan.graph, c.feeds))
    return out


ALL = [("batch", *batch_graph()), ("batch32", *batch_graph("float32")), ("batch-grad", *grad_of_batch()),
       ("batch32-grad", *grad_of_batch("float32")), *spec_graphs(), *control_graphs()]


def run(g: cg.Graph, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return cg.Evaluator(g).run({k: v for k, v in feeds.items() if k in g.inputs})


def assert_same_graph(g: cg.Graph, h: cg.Graph) -> None:
    assert h.name == g.name
    assert list(h.nodes) == list(g.nodes)
    for name, a in g.nodes.items():
        b = h.nodes[name]
        assert (b.op, b.inputs, comparable(dict(b.attrs)), b.shape, b.dtype) == \
            (a.op, a.inputs, comparable(dict(a.attrs)), a.shape, a.dtype)
        if a.op in ("param", "constant"):
            va, vb = g.value(name), h.value(name)
            assert va.dtype == vb.dtype and va.shape == vb.shape and va.tobytes() == vb.tobytes()
    assert {k: t.name for k, t in h.outputs.items()} == {k: t.name for k, t in g.outputs.items()}
    assert h.metadata == g.metadata
    assert h.trainable == g.trainable
    assert list(h.state) == list(g.state)
    for k, v in g.state.items():
        assert h.state[k].dtype == v.dtype and np.array_equal(h.state[k], v)


def assert_bitwise(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
        assert np.asarray(a[k]).tobytes() == np.asarray(b[k]).tobytes(), k


def test_the_test_graphs_use_every_op():
    used = {n.op for _, g, _ in ALL for n in g.nodes.values()}
    builtin = {name for name, op in OPS.items() if not op.user}
    assert builtin <= used, sorted(builtin - used)


@pytest.mark.parametrize("limit", LIMITS, ids=LIMIT_IDS)
@pytest.mark.parametrize("name,g,feeds", ALL, ids=[a[0] for a in ALL])
def test_round_trip_is_exact(name, g, feeds, limit):
    data = cg.dumps(g, inline_limit=limit)
    h = cg.loads(data)
    assert_same_graph(g, h)
    assert_bitwise(run(g, feeds), run(h, feeds))
    assert cg.dumps(h, inline_limit=limit) == data  # nothing lost or reordered


def test_save_and_load_a_file_and_gradients_of_the_loaded_graph(tmp_path):
    g, feeds = batch_graph()
    cg.save(g, tmp_path / "m.pb")
    h = cg.load(str(tmp_path / "m.pb"))
    assert_same_graph(g, h)
    wrt = g.trainable
    v1, g1 = cg.ReverseMode(g, of="loss", wrt=wrt).grad(feeds)
    v2, g2 = cg.ReverseMode(h, of="loss", wrt=wrt).grad(feeds)
    assert v1.tobytes() == v2.tobytes()
    assert_bitwise(g1, g2)
    assert h.trainable == [t for t in wrt if t not in ("bn/mean", "bn/var")] == g.trainable
    assert h.metadata["ünïcode"] == "✓" and h.state["step"].dtype == np.int64


def test_fresh_process_reload_is_bit_for_bit(tmp_path):
    picked = [a for a in ALL if a[0] in ("batch", "batch32", "batch-grad", "batch32-grad")] + ALL[4::7]
    for i, (_, g, feeds) in enumerate(picked):
        cg.save(g, tmp_path / f"m{i}.pb", inline_limit=cio.INLINE_LIMIT if i % 2 else 0)
        np.savez(tmp_path / f"f{i}.npz", **{k: v for k, v in feeds.items() if k in g.inputs})
    script = textwrap.dedent("""
        import sys, numpy as np, cgraph as cg
        d = sys.argv[1]
        for i in range(int(sys.argv[2])):
            g = cg.load(f"{d}/m{i}.pb")
            feeds = dict(np.load(f"{d}/f{i}.npz"))
            np.savez(f"{d}/o{i}.npz", **cg.Evaluator(g).run(feeds))
    """)
    subprocess.run([sys.executable, "-c", script, str(tmp_path), str(len(picked))], check=True, env=ENV,
                   cwd=tmp_path)
    for i, (_, g, feeds) in enumerate(picked):
        assert_bitwise(run(g, feeds), dict(np.load(tmp_path / f"o{i}.npz")))


# ---- the layout, as proto/cgraph.proto specifies it --------------------------------------

def spec_footer(m: int, p: int, crc: int) -> bytes:
    """The 30-byte footer, written from the specification (not from cgraph.io)."""
    return struct.pack("<BBB4sBQBQBI", 0x7A, 0x1C, 0x0D, b"CGPB", 0x11, m, 0x19, p, 0x25, crc)


def reframe(model: pb.Model, payload: bytes = b"") -> bytes:
    body = model.SerializeToString()
    return body + payload + spec_footer(len(body), len(payload), zlib.crc32(body))


def small_model() -> cg.Graph:
    g = cg.Graph("small")
    x = g.input("x", (None, 2))
    W = g.param("W", np.arange(6.0).reshape(2, 3))
    g.output("y", cg.relu(x @ W) + 1.0)
    g.state["s"] = np.array([1, 2])
    return g


def test_layout_matches_the_specification():
    g = small_model()
    data = cg.dumps(g)
    body = data[:-30]
    assert data[-30:] == spec_footer(len(body), 0, zlib.crc32(body))
    whole = pb.Model.FromString(data)  # small files are plain protobuf, footer included
    assert whole.footer.magic == 0x42504743 and whole.footer.payload_length == 0
    assert whole.graph.node[1].value.raw_data == np.arange(6.0).tobytes()

    data = cg.dumps(g, inline_limit=0)
    m, p = struct.unpack("<Q", data[-22:-14])[0], struct.unpack("<Q", data[-13:-5])[0]
    assert m + p + 30 == len(data) and p == 48 + 16 + 8  # W, the state, the constant 1.0
    model = pb.Model.FromString(data[:m])
    refs = [n.value.payload for n in model.graph.node if n.HasField("value")] + [t.payload for t in model.state]
    assert [(r.offset, r.length) for r in refs] == [(0, 48), (48, 8), (56, 16)]
    assert all(zlib.crc32(data[m + r.offset:m + r.offset + r.length]) == r.crc32 for r in refs)
    assert m % 64 == 0 and model.padding == bytes(len(model.padding))  # the payload starts aligned
    assert all(r.HasField("crc32") for r in refs)
    assert model.format_version == 4 and model.min_reader_version == 1
    assert (model.producer_name, model.producer_version) == ("cgraph", cg.__version__)


@pytest.mark.parametrize("layout", ["inline", "payload"])
@pytest.mark.parametrize("mmap", [False, True], ids=["read", "mmap"])
def test_version_1_files_still_load(layout, mmap):
    """Files written by the version-1 writer (cgraph before format version 2, kept in
    tests/data): no padding, so their payload tensors are unaligned and, under mmap, read."""
    mf = cio.read_model(ROOT / "tests" / "data" / f"v1-{layout}.pb", mmap=mmap)
    g = mf.graph
    assert (mf.format_version, mf.min_reader_version) == (1, 1) and (mf.payload_bytes > 0) == (layout == "payload")
    assert g.metadata == {"note": "written by the version-1 writer"}
    assert np.array_equal(g.params["W"], np.arange(6.0).reshape(2, 3)) and g.params["b"].dtype == np.float32
    assert g.params["b"].tolist() == [0.5, -1.0, 2.0]
    assert g.state["s"].tolist() == [1, 2] and g.state["mask"].tolist() == [True, False, True]
    out = cg.Evaluator(g).run({"x": np.array([[1.0, -2.0], [0.5, 0.25]])})
    assert np.array_equal(out["y"], np.maximum(np.array([[1.0, -2.0], [0.5, 0.25]]) @ g.params["W"], 0) + 1.0)
    assert out["z"].shape == (2, 3)
    assert cg.loads(cg.dumps(g)).params["W"].tobytes() == g.params["W"].tobytes()


def test_version_3_files_still_load():
    """A file with control flow written by the version-3 writer (kept in tests/data) loads and
    runs as the same graph built now."""
    from control_cases import rnn
    mf = cio.read_model(ROOT / "tests" / "data" / "v3-control.pb")
    assert (mf.format_version, mf.min_reader_version) == (3, 3)
    assert mf.graph.metadata == {"note": "written by the version-3 writer"}
    feeds = {"x": np.linspace(-1, 1, 36).reshape(6, 3, 2), "h0": np.full((3, 4), 0.1)}
    got, want = cg.Evaluator(mf.graph).run(feeds), cg.Evaluator(rnn().graph).run(feeds)
    assert all(np.array_equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("dtype", ["float16", "int32", "int16", "int8", "uint8"])
@pytest.mark.parametrize("inline_limit", [cio.INLINE_LIMIT, 0], ids=["inline", "payload"])
def test_version_4_dtypes_round_trip_and_need_a_version_4_reader(dtype, inline_limit):
    g = cg.Graph("narrow")
    x = g.input("x", (None, 3), dtype)
    c = g.constant("c", np.array([1, 2, 3], dtype))
    g.output("y", cg.maximum(x, c))
    g.output("f", cg.cast(x, "float32") * 2.0)
    g.state["s"] = np.array([7, 8], dtype)
    data = cg.dumps(g, inline_limit=inline_limit)
    m = pb.Model.FromString(data[:struct.unpack("<Q", data[-22:-14])[0]])
    assert (m.format_version, m.min_reader_version) == (4, 4)
    h = cg.loads(data)
    assert h.value("c").dtype == dtype and h.state["s"].dtype == dtype and h["x"].dtype == dtype
    X = np.array([[0, 5, 2], [3, 1, 9]], dtype)
    assert all(np.array_equal(a, b) and a.dtype == b.dtype
               for a, b in zip(cg.Evaluator(h).run({"x": X}).values(), cg.Evaluator(g).run({"x": X}).values(),
                               strict=True))


def test_large_tensors_go_to_the_payload_largest_first():
    g = cg.Graph()
    x = g.input("x", (2,))
    a = g.param("a", np.zeros(100))
    b = g.param("b", np.zeros(10))
    c = g.param("c", np.zeros(50))
    g.output("y", x + cg.sum(a) + cg.sum(b) + cg.sum(c))
    mf = cio._read(cio._BytesSource(cg.dumps(g, inline_limit=300)), "")
    assert mf.payload_bytes == 800 + 400  # a, then c; b (80 bytes) stays inline
    assert cio._read(cio._BytesSource(cg.dumps(g, inline_limit=500)), "").payload_bytes == 800
    assert cio._read(cio._BytesSource(cg.dumps(g)), "").payload_bytes == 0


@pytest.mark.slow
def test_a_model_over_2_gib_saves_reloads_and_evaluates(tmp_path):
    n = (2**31 + 2**27) // 4  # 2.125 GiB of float32
    g = cg.Graph("big")
    x = g.input("x", (3,), "float32")
    w = np.arange(n, dtype=np.float32)
    W = g._add_leaf("param", "W", w.shape, w.dtype, w)  # g.param would hold a second copy
    g.output("y", W[-3:] * x + W[:3])
    crc = zlib.crc32(memoryview(w).cast("B"))
    feeds = {"x": np.array([1.0, 2.0, 3.0], np.float32)}
    expected = run(g, feeds)["y"]
    path = tmp_path / "big.pb"
    cg.save(g, path)
    del g, W, w, x  # every Tensor handle keeps its graph (and the 2 GiB param) alive
    gc.collect()
    size = path.stat().st_size
    assert size > 2**31 + 2**27
    h = cg.load(path)
    assert zlib.crc32(memoryview(h.value("W")).cast("B")) == crc
    assert_bitwise({"y": expected}, run(h, feeds))
    with open(path, "rb") as f:  # the message stays tiny: the tensor is in the payload section
        f.seek(size - 22)
        assert struct.unpack("<Q", f.read(8))[0] < 4096
    del h
    path.unlink()


# ---- bad files ----------------------------------------------------------------------------

def load_error(data: bytes) -> str:
    with pytest.raises(cg.GraphFormatError) as e:
        cg.loads(data)
    msg = str(e.value)
    assert msg and "\n" not in msg
    return msg


def decoded(g: cg.Graph | None = None) -> pb.Model:
    return pb.Model.FromString(cg.dumps(g or small_model())[:-30])


def test_empty_and_random_files():
    assert "empty" in load_error(b"")
    rng = np.random.default_rng(0)
    for n in (1, 29, 30, 31, 100, 4096):
        load_error(rng.bytes(n))
    load_error(b"\x00" * 100)


@pytest.mark.parametrize("limit", LIMITS, ids=LIMIT_IDS)
def test_every_truncation_fails(limit):
    data = cg.dumps(small_model(), inline_limit=limit)
    for n in range(len(data)):
        load_error(data[:n])


@pytest.mark.parametrize("limit", LIMITS, ids=LIMIT_IDS)
def test_seeded_byte_flips_fail(limit):
    data = cg.dumps(small_model(), inline_limit=limit)
    rng = np.random.default_rng(42)
    for _ in range(300):
        bad = bytearray(data)
        bad[rng.integers(len(bad))] ^= int(rng.integers(1, 256))
        load_error(bytes(bad))


def test_appended_bytes_fail():
    load_error(cg.dumps(small_model()) + b"\x00")


def test_unknown_op():
    m = decoded()
    m.graph.node[2].op = "frobnicate"
    assert "unknown op 'frobnicate'" in load_error(reframe(m))


def test_dangling_input_name():
    m = decoded()
    m.graph.node[2].input[0] = "nowhere"
    msg = load_error(reframe(m))
    assert "'nowhere'" in msg and "matmul" in msg


def test_dangling_output():
    m = decoded()
    m.graph.output[0].node = "ghost"
    assert "'ghost'" in load_error(reframe(m))


def test_cycle():
    g = cg.Graph()
    x = g.input("x", (2,))
    a = cg.neg(x)
    b = cg.exp(a)
    g.output("b", b)
    m = decoded(g)
    m.graph.node[1].input[0] = b.name  # neg now reads exp, which reads neg
    assert "cycle" in load_error(reframe(m))


def test_nodes_out_of_order():
    g = cg.Graph()
    x = g.input("x", (2,))
    g.output("b", cg.exp(cg.neg(x)))
    m = decoded(g)
    nodes = list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend([nodes[0], nodes[2], nodes[1]])
    assert "topological" in load_error(reframe(m))


def test_duplicate_node_name():
    m = decoded()
    m.graph.node[1].name = "x"
    assert "used by node 0" in load_error(reframe(m))


def test_future_format_version():
    m = decoded()
    m.format_version, m.min_reader_version = 6, 5
    msg = load_error(reframe(m))
    assert "needs a reader of format version 5" in msg and "reads format version 4" in msg
    m.min_reader_version = 4  # this reader implements version 4
    assert cg.loads(reframe(m)).name == "small"


def test_only_files_with_control_flow_need_a_version_3_reader():
    for name, g, _ in ALL:
        m = pb.Model.FromString(cg.dumps(g)[:-30])
        control = any(n.op in ("cond", "scan", "while_loop") for n in g.nodes.values())
        assert (m.format_version, m.min_reader_version) == (4, 3 if control else 1), name


def test_bodies_with_params_or_bad_shapes_are_refused():
    from control_cases import rnn
    g = rnn().graph
    m = pb.Model.FromString(cg.dumps(g)[:-30])
    (scan,) = [n for n in m.graph.node if n.op == "scan"]
    body = next(a for a in scan.attr if a.name == "body").value.graph
    body.node[0].op = "param"
    msg = load_error(reframe(m))
    assert "attribute 'body': node 0 ('carry', op 'param')" in msg and "no params" in msg
    m = pb.Model.FromString(cg.dumps(g)[:-30])
    (scan,) = [n for n in m.graph.node if n.op == "scan"]
    body = next(a for a in scan.attr if a.name == "body").value.graph
    body.node[0].shape.dim[1].value = 7
    assert "attribute 'body': matmul (matmul): inner sizes 7 and 4 differ" in load_error(reframe(m))


def test_newer_but_compatible_file_loads():
    m = decoded()
    m.format_version = 5  # additions that version-1 readers may ignore
    assert cg.loads(reframe(m)).name == "small"


def test_shapes_that_disagree_with_inference():
    m = decoded()
    m.graph.node[2].shape.dim[1].value = 4  # matmul says (None, 4); inference gives (None, 3)
    assert "shape inference gives (None, 3)" in load_error(reframe(m))


def test_conflicting_shapes_in_the_graph():
    m = decoded()
    m.graph.node[0].shape.dim[1].value = 5  # x (None, 5) @ W (2, 3)
    msg = load_error(reframe(m))
    assert "matmul" in msg and "inner sizes" in msg


def test_tensor_bytes_that_do_not_match_dtype_and_dims():
    m = decoded()
    m.graph.node[1].value.raw_data = m.graph.node[1].value.raw_data[:-8]
    assert "needs 48 bytes, the file has 40" in load_error(reframe(m))


def test_bad_attributes():
    g = cg.Graph()
    x = g.input("x", (2, 3))
    g.output("s", cg.sum(x, axis=1))
    for mutate, expected in [
        (lambda n: n.attr.add(name="color").value.SetInParent(), "unknown attribute 'color'"),
        (lambda n: n.attr.pop(0), "missing attribute 'axes'"),
        (lambda n: setattr(n.attr[1].value, "i", 1), "attribute 'keepdims' must be a bool, got int 1"),
        (lambda n: setattr(n.attr[0].value, "s", "rows"), "sum"),
        (lambda n: n.attr[0].value.ints.item[0].ClearField("kind"), "neither a value nor none"),
        (lambda n: n.attr[0].value.ints.item[0].__setattr__("value", 7), "out of range"),
    ]:
        m = decoded(g)
        mutate(m.graph.node[1])
        assert expected in load_error(reframe(m))
    m = decoded(g)  # a name with line breaks: the message stays one line (what fuzzing found)
    m.graph.node[1].name = m.graph.output[0].node = "sum\nof\u2028rows"
    m.graph.node[1].attr[0].value.s = "rows"
    assert load_error(reframe(m)) == ("sum\\nof\\u2028rows (sum): attribute 'axes' must be a tuple of ints, "
                                      "got str 'rows'")


def test_bad_bool_bytes_and_params_that_are_not_float():
    g = cg.Graph()
    x = g.input("x", (2,))
    c = g.constant("c", np.array([True, False]))
    g.output("y", cg.where(c, x, 0.0))
    m = decoded(g)
    m.graph.node[1].value.raw_data = b"\x01\x02"
    assert "bool" in load_error(reframe(m))
    m = decoded(small_model())
    m.graph.node[1].op = "param"
    m.graph.node[1].dtype = m.graph.node[1].value.dtype = pb.DATA_TYPE_INT64
    load_error(reframe(m))


def test_payload_ranges_must_tile_the_payload():
    data = cg.dumps(small_model(), inline_limit=0)
    m_len = struct.unpack("<Q", data[-22:-14])[0]
    m, payload = pb.Model.FromString(data[:m_len]), data[m_len:-30]
    m.graph.node[1].value.payload.offset = 8
    assert "expected offset 0" in load_error(reframe(m, payload))
    m = pb.Model.FromString(data[:m_len])
    assert "cover" in load_error(reframe(m, payload + b"\x00" * 8))
    m.graph.node[1].value.payload.crc32 ^= 1
    assert "CRC-32" in load_error(reframe(m, payload))


def test_a_message_past_protobufs_limit_is_refused_from_the_footer(tmp_path):
    """A 3 GiB message section (a sparse file) is refused before a byte of it is read."""
    path = tmp_path / "huge.pb"
    m_len = 3 * 2**30
    with open(path, "wb") as f:
        f.truncate(m_len)
        f.seek(m_len)
        f.write(spec_footer(m_len, 0, 0))
    tracemalloc.start()
    try:
        with pytest.raises(cg.GraphFormatError, match=r"claims a message section of 3221225472 bytes, more than "
                                                     r"protobuf's limit of 2147483647"):
            cg.load(path)
        assert tracemalloc.get_traced_memory()[1] < 2**20, "nothing of the message was read"
    finally:
        tracemalloc.stop()


def test_a_tensor_claiming_1e12_elements_allocates_nothing(tmp_path):
    """Under an address-space limit, so a huge allocation would fail the test (MemoryError)."""
    m = decoded()
    node = m.graph.node[1]
    del node.value.dims[:]
    node.value.dims.extend([10**6, 10**6])
    del node.shape.dim[:]
    node.shape.dim.add(value=10**6)
    node.shape.dim.add(value=10**6)
    (tmp_path / "inline.pb").write_bytes(reframe(m))
    data = cg.dumps(small_model(), inline_limit=0)
    m_len = struct.unpack("<Q", data[-22:-14])[0]
    m = pb.Model.FromString(data[:m_len])
    node = m.graph.node[1]
    node.value.dims[:] = [10**6, 10**6]
    node.shape.dim[0].value, node.shape.dim[1].value = 10**6, 10**6
    node.value.payload.length = 8 * 10**12
    (tmp_path / "payload.pb").write_bytes(reframe(m, data[m_len:-30]))
    script = textwrap.dedent("""
        import resource, sys
        import numpy as np, cgraph as cg
        vm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize"))
        limit = vm + 512 * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        for name in ("inline.pb", "payload.pb"):
            try:
                cg.load(name)
                print(name, "loaded")
            except cg.GraphFormatError as e:
                print(name, "GraphFormatError", e)
        try:
            np.ones(2**28)  # 2 GiB: proves the limit bites
            print("limit inactive")
        except MemoryError:
            print("limit active")
    """)
    r = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("inline.pb GraphFormatError") and "8000000000000 bytes" in lines[0]
    assert lines[1].startswith("payload.pb GraphFormatError")
    assert lines[2] == "limit active"


def test_loads_takes_bytes():
    data = cg.dumps(small_model())
    for wrong, hint in (("model.pb", ": for a file, use cg.load"), (Path("model.pb"), ": for a file"), (3, "")):
        with pytest.raises(TypeError, match=f"^cg.loads takes the bytes of a model file, not "
                                            f"{type(wrong).__name__}{hint}"):
            cg.loads(wrong)
    for ok in (bytearray(data), memoryview(data), np.frombuffer(data, np.uint8)):
        assert list(cg.loads(ok).nodes) == list(small_model().nodes)


def test_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        cg.load(tmp_path / "none.pb")


def test_load_reports_the_path(tmp_path):
    (tmp_path / "bad.pb").write_bytes(b"hello")
    with pytest.raises(cg.GraphFormatError, match=r"bad\.pb: .*shorter than the 30-byte footer"):
        cg.load(tmp_path / "bad.pb")


VALID = [cg.dumps(small_model()), cg.dumps(small_model(), inline_limit=0), cg.dumps(batch_graph()[0])]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(which=st.integers(0, len(VALID) - 1), edits=st.lists(
    st.tuples(st.sampled_from(["flip", "insert", "delete", "truncate"]), st.integers(0, 2**31), st.integers(0, 255)),
    min_size=1, max_size=4))
def test_mutated_files_never_raise_anything_else(which, edits):
    data = bytearray(VALID[which])
    for kind, pos, byte in edits:
        pos %= len(data) + 1
        if kind == "flip" and pos < len(data):
            data[pos] ^= byte or 1
        elif kind == "insert":
            data[pos:pos] = bytes([byte])
        elif kind == "delete":
            del data[pos:pos + 1 + byte % 8]
        else:
            del data[pos:]
    if bytes(data) == VALID[which]:
        return
    load_error(bytes(data))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(which=st.integers(0, len(VALID) - 1), pos=st.integers(0, 2**31), byte=st.integers(0, 255),
       insert=st.booleans())
def test_mutated_messages_with_valid_checksums_never_raise_anything_else(which, pos, byte, insert):
    """The message section mutated and re-framed with a correct CRC-32: the validator, not the
    checksum, must catch what is wrong (or load a graph that is valid)."""
    data = VALID[which]
    m_len = struct.unpack("<Q", data[-22:-14])[0]
    body, payload = bytearray(data[:m_len]), data[m_len:-30]
    pos %= len(body)
    if insert:
        body[pos:pos] = bytes([byte])
    else:
        body[pos] = byte
    framed = bytes(body) + payload + spec_footer(len(body), len(payload), zlib.crc32(bytes(body)))
    try:
        g = cg.loads(framed)
    except cg.GraphFormatError as e:
        assert "\n" not in str(e)
        return
    assert isinstance(g, cg.Graph)


# ---- saving -------------------------------------------------------------------------------

def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "m.pb"
    cg.save(small_model(), path)
    before = path.read_bytes()
    calls = []

    def failing_write(f, data):
        calls.append(len(data))
        f.write(bytes(data)[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cio, "_write", failing_write)
    g, _ = batch_graph()
    with pytest.raises(OSError, match="m.pb': no space"):
        cg.save(g, path)
    assert calls and path.read_bytes() == before
    with pytest.raises(OSError):
        cg.save(g, tmp_path / "new.pb")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pb"]


def test_save_keeps_the_umask_permissions(tmp_path):
    cg.save(small_model(), tmp_path / "m.pb")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "m.pb").stat().st_mode & 0o777 == 0o666 & ~umask


def test_unsavable_values_are_clear_errors():
    g = small_model()
    g.metadata["acc"] = 0.9
    with pytest.raises(cg.GraphError, match="metadata 'acc'"):
        cg.dumps(g)
    g = small_model()
    g.state["half"] = np.ones(2, np.uint16)
    with pytest.raises(cg.GraphError, match="state 'half'.*uint16"):
        cg.dumps(g)


def test_attribute_values_round_trip_with_their_types():
    values = [0, -3, True, False, "float32", 1e-5, (), (0, 2), (None, 3, -1),
              (1, slice(None), slice(1, None, 2), None, Ellipsis, slice(-3, -1, None))]
    for v in values:
        msg = pb.AttrValue()
        cio._encode_attr(msg, v, "test")
        got = cio._decode_attr(pb.AttrValue.FromString(msg.SerializeToString()), "test")
        assert got == v and type(got) is type(v)


def test_generated_code_is_up_to_date():
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_proto"), "--check"], capture_output=True,
                       text=True, env=ENV)
    assert r.returncode == 0, r.stderr


def test_spec_documents_every_field():
    """Every field in proto/cgraph.proto has a comment right above it (the spec is the doc)."""
    lines = (ROOT / "proto" / "cgraph.proto").read_text().splitlines()
    fields = [i for i, line in enumerate(lines) if "=" in line and line.rstrip().endswith(";")
              and not line.strip().startswith(("//", "syntax", "reserved", "option"))]
    assert len(fields) > 40
    undocumented = [lines[i].strip() for i in fields
                    if "//" not in lines[i] and not lines[i - 1].strip().startswith("//")]
    assert not undocumented, undocumented
