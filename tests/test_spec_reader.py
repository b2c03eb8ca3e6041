"""The format's two documents are a specification (issue 12): tests/spec_reader.py, a reader written
from proto/cgraph.proto and docs/ops.md alone, and cgraph's `loads` agree on every file: valid files
of every op (gradient graphs, float32 and float64, None sizes), the same files mutated as a hostile
or buggy writer would (re-framed with valid checksums so that the validation is reached), byte-level
damage, and random single-op files that probe every op's dtype and shape rules."""

from __future__ import annotations

import itertools
import struct
import zlib

import numpy as np
import pytest
import spec_reader
from test_io import ALL, reframe, small_model

import cgraph as cg
from cgraph._proto import cgraph_pb2 as pb

DTYPE_CODES = [pb.DATA_TYPE_FLOAT64, pb.DATA_TYPE_FLOAT32, pb.DATA_TYPE_INT64, pb.DATA_TYPE_BOOL]


class Referee:
    """Feeds files to both readers and keeps the score."""

    def __init__(self):
        self.valid = self.invalid = 0
        self.disagree: list[str] = []

    def __call__(self, data: bytes, label: str) -> bool | None:
        try:
            spec_reader.validate(data)
            mine = None
        except spec_reader.SpecError as e:
            mine = str(e)
        try:
            cg.loads(data)
            theirs = None
        except cg.GraphFormatError as e:
            theirs = str(e)
        if (mine is None) != (theirs is None):
            self.disagree.append(f"{label}: spec reader {'accepts' if mine is None else 'refuses: ' + mine}; "
                                 f"cgraph {'accepts' if theirs is None else 'refuses: ' + theirs}")
            return None
        if mine is None:
            self.valid += 1
        else:
            self.invalid += 1
        return mine is None

    def model(self, m: pb.Model, label: str, payload: bytes = b"") -> bool | None:
        return self(reframe(m, payload), label)

    def check(self, at_least_valid: int = 0, at_least_invalid: int = 0) -> None:
        assert not self.disagree, f"{len(self.disagree)} disagreements:\n" + "\n".join(self.disagree[:40])
        assert self.valid >= at_least_valid and self.invalid >= at_least_invalid, (self.valid, self.invalid)


def decoded(g: cg.Graph) -> pb.Model:
    return pb.Model.FromString(cg.dumps(g)[:-30])


def copy(msg):
    out = type(msg)()
    out.CopyFrom(msg)
    return out


def reorder(rep, order) -> None:
    """Rearrange a repeated message field: its item order[k] becomes item k."""
    items = [copy(x) for x in rep]
    del rep[:]
    rep.extend(items[k] for k in order)


# ---- valid files ----------------------------------------------------------------------------

def test_every_valid_file_is_accepted_by_both():
    ref = Referee()
    for name, g, _ in ALL:
        for limit in (cg.io.INLINE_LIMIT, 0):
            assert ref(cg.dumps(g, inline_limit=limit), f"{name} (inline_limit={limit})")
    ref.check(at_least_valid=2 * len(ALL))


# ---- node mutations ---------------------------------------------------------------------------

def picked_nodes() -> list[tuple[str, pb.Model, int]]:
    """Up to three instances of every op, from different graphs (the batch graphs first: they
    have None sizes, float32 and every gradient op), as (graph name, model, node index)."""
    seen: dict[str, list] = {}
    for name, g, _ in ALL:
        m = None
        for i, node in enumerate(g.nodes.values()):
            if node.is_leaf:
                continue
            got = seen.setdefault(node.op, [])
            if len(got) < 3 and all(n != name for n, _, _ in got):
                m = m or decoded(g)
                got.append((name, m, i))
    return [x for got in seen.values() for x in got]


def extract(m: pb.Model, i: int) -> pb.Model:
    """Node i alone, its inputs made input leaves of the same names, dtypes and shapes, and it
    the only output (small files: fast loads)."""
    out = pb.Model(format_version=m.format_version, min_reader_version=m.min_reader_version)
    out.graph.SetInParent()
    node = m.graph.node[i]
    by_name = {n.name: n for n in m.graph.node[:i]}
    for name in dict.fromkeys(node.input):
        src = by_name[name]
        out.graph.node.add(name=name, op="input", dtype=src.dtype, shape=src.shape)
    out.graph.node.append(node)
    out.graph.output.add(name="out", node=node.name)
    return out


def attr_wrong_values() -> list[tuple[str, pb.AttrValue]]:
    v = pb.AttrValue
    return [("i", v(i=1)), ("b", v(b=True)), ("b0", v(b=False)), ("s", v(s="float64")), ("f", v(f=0.5)),
            ("f1", v(f=1.0)), ("ints", v(ints=pb.IntTuple(item=[pb.OptionalInt(value=1)]))),
            ("ints-none", v(ints=pb.IntTuple(item=[pb.OptionalInt(none=True)]))), ("ints-empty", v(ints=pb.IntTuple())),
            ("index", v(index=pb.Index(item=[pb.IndexItem(slice=pb.Slice())]))),
            ("index-ellipsis", v(index=pb.Index(item=[pb.IndexItem(ellipsis=True)]))), ("unset", v())]


def tweaks(a: pb.AttrValue) -> list[tuple[str, pb.AttrValue]]:
    """Values of the same field near the original: often still valid, often not."""
    out = []

    def variant(label, edit):
        b = copy(a)
        edit(b)
        out.append((label, b))

    field = a.WhichOneof("value")
    if field == "i":
        for d in (1, -1, 3, -3, 10):
            variant(f"i{d:+}", lambda b, d=d: setattr(b, "i", b.i + d))
    elif field == "b":
        variant("flip", lambda b: setattr(b, "b", not b.b))
    elif field == "s":
        for s in ("float64", "float32", "int64", "bool", "float16", "uint16", "", "Float64"):
            variant(f"s={s}", lambda b, s=s: setattr(b, "s", s))
    elif field == "ints":
        items = a.ints.item
        for j, it in enumerate(items):
            if it.WhichOneof("kind") == "value":
                for d in (1, -1, -4, 4):
                    variant(f"item{j}{d:+}", lambda b, j=j, v=it.value + d: setattr(b.ints.item[j], "value", v))
                variant(f"item{j}=None", lambda b, j=j: setattr(b.ints.item[j], "none", True))
            else:
                for s in (0, 1, 3):
                    variant(f"item{j}={s}", lambda b, j=j, s=s: setattr(b.ints.item[j], "value", s))
                variant(f"item{j}-none-false", lambda b, j=j: setattr(b.ints.item[j], "none", False))
            variant(f"item{j}-unset", lambda b, j=j: b.ints.item[j].ClearField("kind"))
        variant("reversed", lambda b: reorder(b.ints.item, reversed(range(len(items)))))
        variant("append0", lambda b: b.ints.item.add(value=0))
        variant("append-1", lambda b: b.ints.item.add(value=-1))
        variant("append-none", lambda b: b.ints.item.add(none=True))
        if len(items):
            variant("drop-last", lambda b: b.ints.item.pop())
            variant("dup-first", lambda b: b.ints.item.append(b.ints.item[0]))
        variant("empty", lambda b: b.ints.ClearField("item"))

        def as_index(b):  # the same index written with the `index` field
            b.index.CopyFrom(pb.Index(item=[pb.IndexItem(at=i.value) if i.HasField("value")
                                            else pb.IndexItem(new_axis=True) for i in b.ints.item]))
        variant("as-index", as_index)
    elif field == "index":
        for j, it in enumerate(a.index.item):
            kind = it.WhichOneof("kind")
            if kind == "at":
                for d in (1, -1, 5, -5):
                    variant(f"at{j}{d:+}", lambda b, j=j, d=d: setattr(b.index.item[j], "at", b.index.item[j].at + d))
            elif kind == "slice":
                for f in ("start", "stop", "step"):
                    for val in (0, 1, 2, -1, -2, 7, -7, None):
                        def edit(b, j=j, f=f, val=val):
                            s = b.index.item[j].slice
                            s.ClearField(f) if val is None else setattr(s, f, val)
                        variant(f"slice{j}.{f}={val}", edit)
            elif kind in ("new_axis", "ellipsis"):
                variant(f"{kind}{j}=false", lambda b, j=j, kind=kind: setattr(b.index.item[j], kind, False))
            variant(f"item{j}-unset", lambda b, j=j: b.index.item[j].ClearField("kind"))
            variant(f"drop{j}", lambda b, j=j: b.index.item.pop(j))
        variant("add-ellipsis", lambda b: b.index.item.add(ellipsis=True))
        variant("add-ellipsis-front", lambda b: b.index.item.insert(0, pb.IndexItem(ellipsis=True)))
        variant("add-new-axis", lambda b: b.index.item.add(new_axis=True))
        variant("add-at0", lambda b: b.index.item.add(at=0))
        variant("add-slice", lambda b: b.index.item.add(slice=pb.Slice(start=1)))
        variant("empty", lambda b: b.index.ClearField("item"))
    return out


def node_mutations(m: pb.Model, i: int, rng: np.random.Generator):
    """(label, model) for every way to break node i, alone in a graph with its inputs."""
    base = extract(m, i)
    node = base.graph.node[-1]
    earlier = [n.name for n in base.graph.node[:-1]]

    def mut(label, edit):
        x = copy(base)
        edit(x.graph.node[-1], x)
        return label, x

    yield mut("unchanged", lambda n, x: None)
    # inputs
    yield mut("one input more", lambda n, x: n.input.append(n.input[0]))
    yield mut("two inputs more", lambda n, x: n.input.extend([n.input[0]] * 2))
    if len(node.input):
        yield mut("one input fewer", lambda n, x: n.input.pop())
        yield mut("no inputs", lambda n, x: n.ClearField("input"))
        yield mut("dangling input", lambda n, x: n.input.__setitem__(0, "nope"))
        yield mut("input names itself", lambda n, x: n.input.__setitem__(0, n.name))
        yield mut("inputs reversed", lambda n, x: n.input.reverse())
        for j in range(1, len(earlier)):
            yield mut(f"input 0 = {earlier[j]}", lambda n, x, j=j: n.input.__setitem__(0, earlier[j]))
    # attributes
    for k, a in enumerate(node.attr):
        for label, v in attr_wrong_values() + tweaks(a.value):
            yield mut(f"{a.name} {label}", lambda n, x, k=k, v=v: n.attr[k].value.CopyFrom(v))
        yield mut(f"no {a.name}", lambda n, x, k=k: n.attr.pop(k))
        yield mut(f"{a.name} twice", lambda n, x, k=k: n.attr.append(n.attr[k]))
        yield mut(f"{a.name} without value", lambda n, x, k=k: n.attr[k].ClearField("value"))
    yield mut("unknown attribute", lambda n, x: n.attr.add(name="zzz", value=pb.AttrValue(i=1)))
    yield mut("attribute without name", lambda n, x: n.attr.add(name="", value=pb.AttrValue(i=1)))
    for name in ("axes", "keepdims", "axis", "shape", "index", "dtype"):
        if all(a.name != name for a in node.attr):
            yield mut(f"added {name}", lambda n, x, name=name: n.attr.add(name=name, value=pb.AttrValue(
                ints=pb.IntTuple(item=[pb.OptionalInt(value=0)]))))
    # the op
    same_arity = [op for op, (ar, *_) in spec_reader.OPS.items() if ar[0] <= len(node.input) and
                  (ar[1] is None or len(node.input) <= ar[1]) and op != node.op]
    for op in rng.choice(same_arity, size=min(4, len(same_arity)), replace=False):
        yield mut(f"op {op}", lambda n, x, op=op: setattr(n, "op", str(op)))
    for op in ("nope", "my/op", "input", "constant", "", "Add", "exp "):
        yield mut(f"op {op!r}", lambda n, x, op=op: setattr(n, "op", op))
    # stored dtype and shape
    for code in (*DTYPE_CODES, 0, 9):
        if code != node.dtype:
            yield mut(f"dtype {code}", lambda n, x, code=code: setattr(n, "dtype", code))
    for j, d in enumerate(node.shape.dim):
        if d.HasField("value"):
            yield mut(f"dim {j} + 1", lambda n, x, j=j: setattr(n.shape.dim[j], "value", n.shape.dim[j].value + 1))
            yield mut(f"dim {j} None", lambda n, x, j=j: setattr(n.shape.dim[j], "none", True))
            yield mut(f"dim {j} -1", lambda n, x, j=j: setattr(n.shape.dim[j], "value", -1))
        else:
            for s in (0, 1, 3):
                yield mut(f"dim {j} = {s}", lambda n, x, j=j, s=s: setattr(n.shape.dim[j], "value", s))
        yield mut(f"dim {j} unset", lambda n, x, j=j: n.shape.dim[j].ClearField("kind"))
        yield mut(f"dim {j} none=false", lambda n, x, j=j: setattr(n.shape.dim[j], "none", False))
    yield mut("shape + (1,)", lambda n, x: n.shape.dim.add(value=1))
    yield mut("shape + (None,)", lambda n, x: n.shape.dim.add(none=True))
    if len(node.shape.dim):
        yield mut("shape without its last axis", lambda n, x: n.shape.dim.pop())
    yield mut("shape unset", lambda n, x: n.ClearField("shape"))
    # fields this version does not know (field 20, a varint)
    yield mut("unknown field in the node", lambda n, x: n.MergeFromString(b"\xa0\x01\x05"))
    yield mut("unknown field in the shape", lambda n, x: n.shape.MergeFromString(b"\xa0\x01\x05"))
    if len(node.attr):
        yield mut("unknown field in an attribute value", lambda n, x: n.attr[0].value.MergeFromString(b"\xa0\x01\x05"))
    # fields for other kinds of node
    yield mut("value on an op node", lambda n, x: n.value.CopyFrom(pb.Tensor(dtype=1, raw_data=b"\0" * 8)))
    yield mut("trainable on an op node", lambda n, x: setattr(n, "trainable", True))
    yield mut("empty name", lambda n, x: setattr(n, "name", ""))
    if earlier:
        yield mut("name of an earlier node", lambda n, x: setattr(n, "name", earlier[0]))


def test_node_mutations_agree():
    ref = Referee()
    rng = np.random.default_rng(12)
    for name, m, i in picked_nodes():
        for label, x in node_mutations(m, i, rng):
            ref.model(x, f"{name} node {i} {m.graph.node[i].name!r} ({m.graph.node[i].op}): {label}")
    ref.check(at_least_valid=800, at_least_invalid=7000)


# ---- leaves, graph structure, versions, state, payload -------------------------------------------

def leafy_graph() -> cg.Graph:
    """Every kind of leaf and leaf dtype: bool and int64 constants and inputs, a frozen param."""
    g = cg.Graph("leaves")
    x = g.input("x", (None, 3))
    k = g.input("k", (2,), "int64")
    b = g.input("b", (), "bool")
    W = g.param("W", np.arange(6.0).reshape(3, 2))
    v = g.param("v", np.ones(2, np.float32), trainable=False)
    c = g.constant("c", np.array([True, False]))
    n = g.constant("n", np.array([[1, 2]]))
    y = cg.where(c, x @ W, cg.cast(n, "float64")) + cg.cast(v, "float64") + cg.cast(k, "float64")
    g.output("y", cg.where(b, y, 0.0))
    g.output("again", y)
    g.state.update({"s": np.array([1, 2]), "t": np.array(True), "u": np.zeros((2, 2), np.float32)})
    return g


def graph_mutations(m: pb.Model, rng: np.random.Generator):
    def mut(label, edit):
        x = copy(m)
        edit(x)
        return label, x

    nodes = m.graph.node
    yield mut("unchanged", lambda x: None)
    # versions and top-level fields
    for fv, mv in [(0, 0), (0, 1), (1, 0), (2, 1), (2, 2), (1, 2), (3, 3), (7, 1), (2**32 - 1, 1)]:
        yield mut(f"versions {fv}/{mv}", lambda x, fv=fv, mv=mv: (setattr(x, "format_version", fv),
                                                                  setattr(x, "min_reader_version", mv)))
    yield mut("no producer", lambda x: (x.ClearField("producer_name"), x.ClearField("producer_version")))
    yield mut("more metadata", lambda x: x.metadata.update({"": "", "k\n": "v\0"}))
    yield mut("footer in the message", lambda x: x.footer.CopyFrom(pb.Footer(magic=0x42504743, message_length=0,
                                                                             payload_length=0, message_crc32=0)))
    yield mut("no graph", lambda x: x.ClearField("graph"))
    yield mut("unknown field in the model", lambda x: x.MergeFromString(b"\x48\x05"))
    yield mut("unknown field in the graph", lambda x: x.graph.MergeFromString(b"\xa0\x01\x05"))
    yield mut("empty graph", lambda x: (x.graph.ClearField("node"), x.graph.ClearField("output")))
    yield mut("graph without a name", lambda x: x.graph.ClearField("name"))
    # outputs
    yield mut("no outputs", lambda x: x.graph.ClearField("output"))
    yield mut("dangling output", lambda x: setattr(x.graph.output[0], "node", "nope"))
    yield mut("output naming nothing", lambda x: setattr(x.graph.output[0], "node", ""))
    yield mut("output without a name", lambda x: setattr(x.graph.output[0], "name", ""))
    yield mut("output twice", lambda x: x.graph.output.append(x.graph.output[0]))
    yield mut("two names for a node", lambda x: x.graph.output.add(name="other", node=x.graph.output[0].node))
    for j in rng.choice(len(nodes), size=min(6, len(nodes)), replace=False):
        yield mut(f"output of node {j}", lambda x, j=j: x.graph.output.add(name="extra", node=x.graph.node[j].name))
    # order and names
    for j in sorted(rng.choice(len(nodes) - 1, size=min(25, len(nodes) - 1), replace=False)):
        order = list(range(len(nodes)))
        order[j], order[j + 1] = j + 1, j
        yield mut(f"nodes {j} and {j + 1} swapped", lambda x, order=order: reorder(x.graph.node, order))
    yield mut("nodes reversed", lambda x: reorder(x.graph.node, reversed(range(len(nodes)))))
    yield mut("first node last", lambda x: reorder(x.graph.node, [*range(1, len(nodes)), 0]))
    for j in rng.choice(len(nodes), size=min(6, len(nodes)), replace=False):
        yield mut(f"node {j} deleted", lambda x, j=j: x.graph.node.pop(j))
        yield mut(f"node {j} twice", lambda x, j=j: x.graph.node.append(x.graph.node[j]))
        yield mut(f"node {j} renamed", lambda x, j=j: _rename(x, j, "renamed/" + x.graph.node[j].name))
    # leaves
    for j, n in enumerate(nodes):
        if n.op not in ("input", "param", "constant"):
            continue
        lab = f"{n.op} {n.name!r}"
        yield mut(f"{lab} with an input", lambda x, j=j: x.graph.node[j].input.append(x.graph.node[0].name))
        yield mut(f"{lab} with an attribute", lambda x, j=j: x.graph.node[j].attr.add(name="axes", value=pb.AttrValue(
            ints=pb.IntTuple())))
        for t in (True, False):
            yield mut(f"{lab} trainable={t}", lambda x, j=j, t=t: setattr(x.graph.node[j], "trainable", t))
        yield mut(f"{lab} trainable cleared", lambda x, j=j: x.graph.node[j].ClearField("trainable"))
        yield mut(f"{lab} shape unset", lambda x, j=j: x.graph.node[j].ClearField("shape"))
        yield mut(f"{lab} dtype unspecified", lambda x, j=j: setattr(x.graph.node[j], "dtype", 0))
        yield mut(f"{lab} as an op", lambda x, j=j: setattr(x.graph.node[j], "op", "exp"))
        for op in ("input", "param", "constant"):
            if op != n.op:
                yield mut(f"{lab} as {op}", lambda x, j=j, op=op: setattr(x.graph.node[j], "op", op))
        yield mut(f"{lab} dim added", lambda x, j=j: x.graph.node[j].shape.dim.add(value=1))
        if n.op == "input":
            yield mut(f"{lab} with a value", lambda x, j=j: x.graph.node[j].value.CopyFrom(pb.Tensor(dtype=1)))
            for code in DTYPE_CODES:
                yield mut(f"{lab} dtype {code}", lambda x, j=j, code=code: setattr(x.graph.node[j], "dtype", code))
            for dj in range(len(n.shape.dim)):
                yield mut(f"{lab} dim {dj} None", lambda x, j=j, dj=dj: setattr(x.graph.node[j].shape.dim[dj], "none",
                                                                                 True))
            continue
        yield from _value_mutations(m, j, mut)
    # state
    for j, t in enumerate(m.state):
        lab = f"state {t.name!r}"
        yield mut(f"{lab} without a name", lambda x, j=j: setattr(x.state[j], "name", ""))
        yield mut(f"{lab} twice", lambda x, j=j: x.state.append(x.state[j]))
        yield mut(f"{lab} dtype unspecified", lambda x, j=j: setattr(x.state[j], "dtype", 0))
        yield mut(f"{lab} dtype 9", lambda x, j=j: setattr(x.state[j], "dtype", 9))
        yield mut(f"{lab} one byte short", lambda x, j=j: setattr(x.state[j], "raw_data", x.state[j].raw_data[:-1]))
        yield mut(f"{lab} one byte long", lambda x, j=j: setattr(x.state[j], "raw_data", x.state[j].raw_data + b"\1"))
        yield mut(f"{lab} with no data", lambda x, j=j: x.state[j].ClearField("raw_data"))
        yield mut(f"{lab} dims + (1,)", lambda x, j=j: x.state[j].dims.append(1))
        yield mut(f"{lab} dims + (0,)", lambda x, j=j: x.state[j].dims.append(0))
        if t.dtype == pb.DATA_TYPE_BOOL:
            yield mut(f"{lab} byte 2", lambda x, j=j: setattr(x.state[j], "raw_data", b"\2" + x.state[j].raw_data[1:]))
    yield mut("state with an empty array", lambda x: x.state.add(name="e", dtype=1, dims=[0, 3], raw_data=b""))
    yield mut("state with a scalar", lambda x: x.state.add(name="sc", dtype=3, raw_data=bytes(8)))
    yield mut("state claiming 2**62 elements", lambda x: x.state.add(name="big", dtype=1, dims=[2**31, 2**31],
                                                                     raw_data=b""))


def _value_mutations(m, j, mut):
    n = m.graph.node[j]
    lab = f"{n.op} {n.name!r}"
    yield mut(f"{lab} without a value", lambda x: x.graph.node[j].ClearField("value"))
    yield mut(f"{lab} value named", lambda x: setattr(x.graph.node[j].value, "name", "v"))
    yield mut(f"{lab} value one byte short", lambda x: setattr(x.graph.node[j].value, "raw_data",
                                                                x.graph.node[j].value.raw_data[:-1]))
    yield mut(f"{lab} value with no data", lambda x: x.graph.node[j].value.ClearField("raw_data"))
    yield mut(f"{lab} value dims + (1,)", lambda x: x.graph.node[j].value.dims.append(1))
    yield mut(f"{lab} value and node dims + (1,)", lambda x: (x.graph.node[j].value.dims.append(1),
                                                               x.graph.node[j].shape.dim.add(value=1)))
    yield mut(f"{lab} node dim None", lambda x: x.graph.node[j].shape.dim.add(none=True))
    for code in (*DTYPE_CODES, 0):
        yield mut(f"{lab} value dtype {code}", lambda x, code=code: setattr(x.graph.node[j].value, "dtype", code))
        yield mut(f"{lab} both dtypes {code}", lambda x, code=code: (setattr(x.graph.node[j].value, "dtype", code),
                                                                     setattr(x.graph.node[j], "dtype", code)))
    # re-typed with bytes to match: an int64 or bool param is refused, a constant is fine
    count = int(np.prod(list(n.value.dims)))
    for code, size in ((pb.DATA_TYPE_INT64, 8), (pb.DATA_TYPE_BOOL, 1), (pb.DATA_TYPE_FLOAT32, 4),
                       (pb.DATA_TYPE_FLOAT64, 8)):
        def retype(x, code=code, size=size):
            x.graph.node[j].dtype = x.graph.node[j].value.dtype = code
            x.graph.node[j].value.raw_data = bytes(count * size)
        yield mut(f"{lab} retyped {code} with its bytes", retype)
    if n.value.dtype == pb.DATA_TYPE_BOOL:
        yield mut(f"{lab} bool byte 2", lambda x: setattr(x.graph.node[j].value, "raw_data",
                                                          b"\2" + x.graph.node[j].value.raw_data[1:]))
        yield mut(f"{lab} bool byte 255", lambda x: setattr(x.graph.node[j].value, "raw_data",
                                                            x.graph.node[j].value.raw_data[:-1] + b"\xff"))


def _rename(x, j, new):
    old = x.graph.node[j].name
    for n in x.graph.node:
        n.name = new if n.name == old else n.name
        for k, name in enumerate(n.input):
            if name == old:
                n.input[k] = new
    for o in x.graph.output:
        o.node = new if o.node == old else o.node


def test_graph_leaf_state_and_version_mutations_agree():
    ref = Referee()
    rng = np.random.default_rng(3)
    picked = [g for name, g, _ in ALL if name == "batch32"]
    picked += [g for name, g, _ in ALL[4::20]] + [leafy_graph(), small_model()]
    for g in picked:
        for label, x in graph_mutations(decoded(g), rng):
            ref.model(x, f"{g.name}: {label}")
    ref.check(at_least_valid=400, at_least_invalid=1000)


def split(data: bytes) -> tuple[pb.Model, bytes]:
    m_len = struct.unpack("<Q", data[-22:-14])[0]
    return pb.Model.FromString(data[:m_len]), data[m_len:-30]


def refs(m: pb.Model) -> list[pb.PayloadRef]:
    return [n.value.payload for n in m.graph.node if n.HasField("value")] + [t.payload for t in m.state]


def test_payload_mutations_agree():
    ref = Referee()
    for g in (leafy_graph(), small_model(), ALL[0][1]):
        m, payload = split(cg.dumps(g, inline_limit=0))
        rs = refs(m)
        assert ref.model(m, f"{g.name}: unchanged", payload)
        for j, r in enumerate(rs):
            for f, d in (("offset", 1), ("offset", -1), ("length", 1), ("length", -1), ("crc32", 1)):
                if getattr(r, f) + d < 0:
                    continue
                x = copy(m)
                rr = refs(x)[j]
                setattr(rr, f, (getattr(rr, f) + d) % 2**32 if f == "crc32" else getattr(rr, f) + d)
                ref.model(x, f"{g.name}: ref {j} {f}{d:+}", payload)
            x = copy(m)  # inline again, the payload section shrinks: other offsets no longer tile
            data = payload[r.offset:r.offset + r.length]
            owner = [n.value for n in x.graph.node if n.HasField("value")] + list(x.state)
            owner[j].raw_data = data
            ref.model(x, f"{g.name}: tensor {j} inline, payload kept", payload)
            rest = payload[:r.offset] + payload[r.offset + r.length:]
            for k in range(j + 1, len(rs)):
                refs(x)[k].offset -= r.length
            ref.model(x, f"{g.name}: tensor {j} inline, payload without it", rest)
        for a, b in itertools.pairwise(range(len(rs))):  # two tensors swap places in the payload
            x = copy(m)
            ra, rb = refs(x)[a], refs(x)[b]
            sa, sb = ra.offset, rb.offset
            ra.offset, rb.offset = sb, sa
            ref.model(x, f"{g.name}: refs {a} and {b} swapped", payload)
        for extra in (b"\0", b"x" * 8):
            ref.model(m, f"{g.name}: payload with {len(extra)} bytes more", payload + extra)
        ref.model(m, f"{g.name}: payload one byte short", payload[:-1])
        bad = bytearray(payload)
        bad[len(bad) // 2] ^= 1
        ref.model(m, f"{g.name}: payload bit flip", bytes(bad))
    ref.check(at_least_valid=20, at_least_invalid=200)


# ---- byte-level damage ------------------------------------------------------------------------

def test_truncations_flips_and_reframed_byte_edits_agree():
    ref = Referee()
    rng = np.random.default_rng(7)
    for g in (small_model(), leafy_graph()):
        for limit in (cg.io.INLINE_LIMIT, 0):
            data = cg.dumps(g, inline_limit=limit)
            for n in range(len(data)):
                ref(data[:n], f"{g.name}/{limit}: first {n} bytes")
            for _ in range(300):
                bad = bytearray(data)
                bad[rng.integers(len(bad))] ^= 1 << int(rng.integers(8))
                ref(bytes(bad), f"{g.name}/{limit}: bit flip")
            m_len = struct.unpack("<Q", data[-22:-14])[0]
            body, payload = data[:m_len], data[m_len:-30]
            for _ in range(600):  # the message edited, the checksum made right: the validation decides
                b = bytearray(body)
                pos = int(rng.integers(len(b)))
                if rng.random() < 0.3:
                    b[pos:pos] = bytes([int(rng.integers(256))])
                else:
                    b[pos] = int(rng.integers(256))
                framed = bytes(b) + payload + struct.pack("<BBB4sBQBQBI", 0x7A, 0x1C, 0x0D, b"CGPB", 0x11, len(b),
                                                          0x19, len(payload), 0x25, zlib.crc32(bytes(b)))
                ref(framed, f"{g.name}/{limit}: message byte {pos} edited, re-framed")
    ref(b"", "empty file")
    ref(b"\0" * 30, "30 zero bytes")
    ref.check(at_least_valid=100, at_least_invalid=5000)


# ---- random single-op files: every op's dtype and shape rules ----------------------------------

DTYPES = ["float64", "float32", "int64", "bool"]


HUGE = [2**31, 2**40 + 1, 2**62, 2**63 - 1]


def random_shape(rng, ndim=None):
    ndim = int(rng.integers(0, 5)) if ndim is None else ndim
    return tuple(None if rng.random() < 0.2 else int(rng.choice(HUGE)) if rng.random() < 0.03
                 else int(rng.choice([0, 1, 1, 2, 3, 4])) for _ in range(ndim))


def random_axes(rng, n, k=None):
    k = int(rng.integers(0, 3)) if k is None else k
    return tuple(int(rng.integers(-n - 1, n + 1)) for _ in range(k))


def random_index(rng, n):
    items = []
    for _ in range(int(rng.integers(0, n + 2))):
        r = rng.random()
        if r < 0.02:
            items.append(int(rng.choice(HUGE)) * int(rng.choice([-1, 1])))
        elif r < 0.3:
            items.append(int(rng.integers(-4, 4)))
        elif r < 0.75:
            def bound():
                return None if rng.random() < 0.4 else int(rng.integers(-5, 6))
            step = None if rng.random() < 0.5 else int(rng.choice([-3, -2, -1, 1, 2, 3]))
            items.append(slice(bound(), bound(), step))
        elif r < 0.9:
            items.append(None)
        else:
            items.append(Ellipsis)
    if items.count(Ellipsis) > 1 and rng.random() < 0.8:
        items = [e for e in items if e is not Ellipsis] + [Ellipsis]
    return tuple(items)


def related(rng, shape):
    """A shape like `shape`: equal, broadcastable, or a size changed."""
    r = rng.random()
    s = list(shape)
    if r < 0.35:
        return tuple(s)
    if r < 0.55 and s:
        return tuple(s[int(rng.integers(0, len(s) + 1)):])
    if r < 0.75 and s:
        j = int(rng.integers(len(s)))
        s[j] = [1, None, 2, 3][int(rng.integers(4))]
        return tuple(s)
    return random_shape(rng)


def _maybe(rng, good, bad, p=0.85):
    return good if rng.random() < p else bad


def _pairs(rng, lo, hi, n=2):
    return tuple(int(rng.integers(lo, hi + 1)) for _ in range(n))


def _pool_attrs(rng):
    k = _pairs(rng, 1, 3)
    return {"kernel": _maybe(rng, k, _pairs(rng, 0, 3, int(rng.integers(1, 4)))),
            "stride": _maybe(rng, _pairs(rng, 1, 3), (0, 1)),
            "padding": _maybe(rng, (*_pairs(rng, 0, k[0] // 2 + 1, 1), *_pairs(rng, 0, k[1] // 2 + 1, 1),
                                    *_pairs(rng, 0, k[0] // 2, 1), *_pairs(rng, 0, k[1] // 2, 1)), (0, 0))}


def _out(size, lo, hi, k, st, dil=1):
    return None if size is None else max((size + lo + hi - dil * (k - 1) - 1) // st + 1, 0)


def _pool_shape(x, at):
    k, st, p = at["kernel"], at.get("stride", (1, 1)), at.get("padding", (0, 0, 0, 0))
    if len(k) != 2 or len(st) != 2 or len(p) != 4 or 0 in st:
        return x
    return (x[0], x[1], _out(x[2], p[0], p[2], k[0], st[0]), _out(x[3], p[1], p[3], k[1], st[1]))


def _image_case(op, rng):
    """Inputs and attrs for the image ops: near-valid 4-D cases, sometimes a piece off."""
    def size(lo=1, hi=9):
        return None if rng.random() < 0.1 else int(rng.integers(lo, hi + 1))
    x = (size(1, 3), int(rng.choice([1, 2, 3, 4])), size(), size())
    dt = "float64" if rng.random() < 0.5 else _maybe(rng, "float32", "int64", 0.9)
    if op.startswith("conv2d"):
        groups = int(rng.choice([1, 1, 2])) if x[1] % 2 == 0 else 1
        groups = _maybe(rng, groups, int(rng.integers(0, 4)), 0.9)
        k = _pairs(rng, 1, 3)
        co = max(groups, 1) * int(rng.integers(1, 3))
        w = (_maybe(rng, co, co + 1, 0.9), _maybe(rng, x[1] // max(groups, 1), x[1], 0.9), *k)
        at = {"stride": _maybe(rng, _pairs(rng, 1, 2), (0, 1)), "padding": _maybe(rng, _pairs(rng, 0, 2, 4), (1, 1)),
              "dilation": _maybe(rng, _pairs(rng, 1, 2), (1,)), "groups": groups}
        for name in [n for n in at if rng.random() < 0.2]:
            del at[name]  # the default
        st, p, d = at.get("stride", (1, 1)), at.get("padding", (0, 0, 0, 0)), at.get("dilation", (1, 1))
        ok = len(st) == 2 and len(p) == 4 and len(d) == 2 and 0 not in st
        out = (x[0], w[0], *((_out(x[2 + i], p[i], p[i + 2], k[i], st[i], d[i]) for i in (0, 1)) if ok
                             else (size(), size())))
        if op == "conv2d":
            return [(dt, x), ("float64", w)], at
        if op == "conv2d_transpose":
            hw = tuple(int(rng.integers(1, 9)) if v is None else v for v in x[2:])
            g = (x[0], w[0], *((_out(hw[i], p[i], p[i + 2], k[i], st[i], d[i]) for i in (0, 1)) if ok
                               else (size(), size())))
            return [(dt, _maybe(rng, g, out)), ("float64", w)], {**at, "size": _maybe(rng, hw, (*hw, 1), 0.9)}
        return [(dt, x), ("float64", _maybe(rng, out, x))], {**at, "kernel": _maybe(rng, k, (0, *k), 0.9)}
    at = _pool_attrs(rng)
    if rng.random() < 0.3:
        del at["stride"]
    if op.startswith("avg"):
        at["count_include_pad"] = bool(rng.random() < 0.5)
    if op in ("max_pool2d", "avg_pool2d"):
        return [(dt, _maybe(rng, x, x[1:], 0.95))], at
    out = _pool_shape(x, at)
    if op == "max_pool2d_gather":
        return [(dt, _maybe(rng, x, out)), ("float64", x)], at
    if op == "max_pool2d_scatter":
        return [(dt, _maybe(rng, out, x)), ("float64", x)], at
    ins = [(dt, _maybe(rng, out, x))]
    if rng.random() < 0.5:
        ins.append((_maybe(rng, "int64", "float64", 0.9), _maybe(rng, (4,), (3,), 0.9)))
    known = tuple(int(rng.integers(1, 9)) if v is None else v for v in x)
    shape = tuple(None if rng.random() < 0.15 else v for v in known) if len(ins) == 2 else known
    return ins, {**at, "shape": shape}


def _index_case(op, rng):
    """Inputs and attrs for take, scatter_add, one_hot and dropout (int64 indices or seeds)."""
    idt = _maybe(rng, "int64", str(rng.choice(DTYPES)), 0.85)
    idx = random_shape(rng, int(rng.integers(0, 3)))
    a = random_shape(rng, int(rng.integers(0, 4)))
    dt = str(rng.choice(DTYPES[:2])) if rng.random() < 0.8 else str(rng.choice(DTYPES))
    if op == "take":
        return [(dt, a), (idt, idx)], {"axis": int(rng.integers(-len(a) - 1, len(a) + 1))}
    if op == "scatter_add":
        ax = int(rng.integers(0, len(a) + 1))
        g = (*a[:ax], *_maybe(rng, idx, idx[::-1] + (1,), 0.85), *a[ax:])
        return [(dt, g), (idt, idx)], {"axis": _maybe(rng, ax, ax + 1 if rng.random() < 0.5 else -1, 0.9),
                                       "size": _maybe(rng, int(rng.integers(0, 5)), -1, 0.95)}
    if op == "one_hot":
        at = {"depth": _maybe(rng, int(rng.integers(1, 5)), 0, 0.9)}
        if rng.random() < 0.7:
            at["dtype"] = str(rng.choice(DTYPES + ["float16"]))
        return [(idt, idx)], at
    seed = _maybe(rng, (), (a[0],) if a else (2,), 0.6) if rng.random() < 0.9 else random_shape(rng, 1)
    return [(dt, a), (idt, seed)], {"rate": _maybe(rng, float(rng.uniform(0, 0.9)), float(rng.choice([-0.5, 1.0, 1.5])),
                                                   0.85)}


def random_case(op, rng):
    """(input metas [(dtype, shape)], attrs) for one node of `op`, often valid, often not."""
    if op.startswith(("conv2d", "max_pool2d", "avg_pool2d")):
        return _image_case(op, rng)
    if op in ("take", "scatter_add", "one_hot", "dropout"):
        return _index_case(op, rng)
    (lo, hi), decl, _, _ = spec_reader.OPS[op]
    x = random_shape(rng)
    n = len(x)
    nin = lo if hi == lo else int(rng.integers(lo, (hi or lo + 3) + 1))
    floaty = rng.random() < 0.7
    dts = [str(rng.choice(DTYPES[:2])) if floaty else str(rng.choice(DTYPES)) for _ in range(nin)]
    shapes = [x] + [related(rng, x) for _ in range(nin - 1)]
    attrs = {}
    for name, (typ, default) in decl.items():
        if default is not spec_reader._REQ and rng.random() < 0.3:
            continue  # the default
        if name == "axes":
            if op == "transpose":
                perm = [int(a) for a in rng.permutation(n)]
                if rng.random() < 0.3 and perm:
                    perm[int(rng.integers(len(perm)))] -= n if rng.random() < 0.5 else 1
                attrs[name] = tuple(perm)
            elif op == "expand_dims":
                k = int(rng.integers(0, 3))
                attrs[name] = random_axes(rng, n + k, k)
            else:
                attrs[name] = random_axes(rng, n)
        elif name == "keepdims":
            attrs[name] = bool(rng.random() < 0.5)
        elif name == "axis":
            attrs[name] = int(rng.integers(-n - 1, n + 1))
        elif name == "dtype":
            attrs[name] = str(rng.choice(DTYPES + ["float16", "uint16"]))
        elif name == "index":
            attrs[name] = random_index(rng, n)
        elif name == "shape":
            target = {"broadcast_to": lambda: tuple(int(rng.integers(1, 4)) for _ in range(int(rng.integers(0, 2))))
                      + tuple(1 if s is None else s for s in x),
                      "sum_to": lambda: tuple(rng.choice([1, s]) for s in x[int(rng.integers(0, n + 1)):]),
                      "reshape": lambda: tuple(int(v) for v in rng.permutation(
                          [-1] + [1 if s is None else s for s in x])[:int(rng.integers(0, n + 2))]),
                      "scatter": lambda: random_shape(rng)}[op]()
            attrs[name] = tuple(None if v is None or rng.random() < 0.1 else -int(rng.integers(1, 3))
                                if rng.random() < 0.05 else int(v) for v in target) \
                if rng.random() < 0.9 else random_shape(rng)
    if op == "scatter" and "index" in attrs and rng.random() < 0.7 and all(v is not None for v in attrs["shape"]):
        try:  # often the cotangent has just the right shape
            shapes[0] = np.broadcast_to(np.empty(()), attrs["shape"])[attrs["index"]].shape
        except (IndexError, ValueError, TypeError):
            pass
    if nin == 2 and op in ("reshape", "broadcast_to", "sum_to", "scatter"):
        dts[1] = "int64" if rng.random() < 0.8 else "float64"
        shapes[1] = (len(attrs.get("shape", ())),) if rng.random() < 0.7 else random_shape(rng, int(rng.integers(3)))
    if op == "where":
        dts[0] = "bool" if rng.random() < 0.8 else dts[0]
    if op == "nll" and rng.random() < 0.6:
        shapes[1] = shapes[0]
    return list(zip(dts, shapes, strict=True)), attrs


def encode_attr(v: pb.AttrValue, value) -> None:
    """A foreign writer's encoding: the Python value as the proto's AttrValue says."""
    if isinstance(value, bool):
        v.b = value
    elif isinstance(value, int):
        v.i = value
    elif isinstance(value, float):
        v.f = value
    elif isinstance(value, str):
        v.s = value
    elif all(e is None or isinstance(e, int) for e in value):
        v.ints.SetInParent()
        for e in value:
            v.ints.item.add(none=True) if e is None else v.ints.item.add(value=e)
    else:
        v.index.SetInParent()
        for e in value:
            if e is None:
                v.index.item.add(new_axis=True)
            elif e is Ellipsis:
                v.index.item.add(ellipsis=True)
            elif isinstance(e, int):
                v.index.item.add(at=e)
            else:
                s = v.index.item.add().slice
                s.SetInParent()
                for f in ("start", "stop", "step"):
                    if getattr(e, f) is not None:
                        setattr(s, f, getattr(e, f))


CODE = {"float64": 1, "float32": 2, "int64": 3, "bool": 4, "float16": 6, "int32": 7, "int16": 8, "int8": 9, "uint8": 10}


def one_op_file(op, metas, attrs, dtype, shape) -> bytes:
    """A file of inputs i0, i1, ... and node n = op(...) stored as (dtype, shape), written from the proto."""
    m = pb.Model(format_version=1, min_reader_version=1, producer_name="test")
    m.graph.SetInParent()
    for j, (dt, s) in enumerate(metas):
        node = m.graph.node.add(name=f"i{j}", op="input", dtype=CODE[dt])
        node.shape.SetInParent()
        for d in s:
            node.shape.dim.add(none=True) if d is None else node.shape.dim.add(value=d)
    node = m.graph.node.add(name="n", op=op, input=[f"i{j}" for j in range(len(metas))], dtype=CODE[dtype])
    node.shape.SetInParent()
    for d in shape:
        node.shape.dim.add(none=True) if d is None else node.shape.dim.add(value=d)
    for k, value in attrs.items():
        encode_attr(node.attr.add(name=k).value, value)
    m.graph.output.add(name="out", node="n")
    return reframe(m)


def built(op, metas, attrs):
    """cgraph's builder on the case: ((dtype, shape) of the node, its graph), or (None, None)."""
    g = cg.Graph()
    for j, (dt, s) in enumerate(metas):
        g.input(f"i{j}", s, dt)
    try:
        t = g.add_node(op, [f"i{j}" for j in range(len(metas))], attrs, name="n")
    except (cg.GraphError, cg.ShapeError):
        return None, None
    g.output("out", t)
    return (str(t.dtype), tuple(t.shape)), g


def inferred(op, metas, attrs):
    """The spec reader's inference, or None if it refuses the case."""
    try:
        spec_reader.validate(one_op_file(op, metas, attrs, "float64", ()))
        return "float64", ()
    except spec_reader.InferenceMismatch as e:
        return e.dtype, e.shape
    except spec_reader.SpecError:
        return None


@pytest.mark.parametrize("op", sorted(set(spec_reader.OPS) - set(spec_reader.CONTROL)))
def test_random_single_op_files_agree(op):
    """Random inputs and attributes: the file stores cgraph's inference when its builder accepts
    (and then cgraph's own writer's file is compared too), else the spec reader's inference when
    that accepts, else some shape; both readers must give the same verdict on each."""
    ref = Referee()
    rng = np.random.default_rng(sum(map(ord, op)))
    for t in range(120):
        metas, attrs = random_case(op, rng)
        label = f"{op} case {t} inputs {metas} attrs {attrs}"
        theirs, g = built(op, metas, attrs)
        mine = inferred(op, metas, attrs)
        if theirs is not None:  # a graph the builder accepts saves, and both readers accept the file
            try:
                data = cg.dumps(g)
            except cg.GraphError as e:
                ref.disagree.append(f"{label}: the builder accepts, save refuses: {e}")
            else:
                if not ref(data, label + f" (cgraph's file, stored {theirs})"):
                    ref.disagree.append(f"{label}: the builder accepts, the saved file is refused")
            ref(one_op_file(op, metas, attrs, *theirs), label + f" (stored {theirs}, cgraph's inference)")
        if mine is not None and mine != theirs:
            ref(one_op_file(op, metas, attrs, *mine), label + f" (stored {mine}, the spec reader's inference)")
        if theirs is None and mine is None:
            ref(one_op_file(op, metas, attrs, metas[0][0], metas[0][1]), label + " (refused by both builders)")
    ref.check(at_least_valid=10)


# ---- the places where the documents and cgraph first disagreed ------------------------------------

F64, I64 = "float64", "int64"
FOUND = [  # (op, inputs, attrs, stored (dtype, shape), valid?)
    # getitem on an axis of unknown size with a negative step: the upper end is the start
    ("getitem", [(F64, (None,))], {"index": (slice(None, None, -2),)}, (F64, (None,)), True),
    ("getitem", [(F64, (None,))], {"index": (slice(-2, None, -1),)}, (F64, (None,)), True),
    ("getitem", [(F64, (None,))], {"index": (slice(None, 3, -1),)}, (F64, (None,)), True),
    ("getitem", [(F64, (None,))], {"index": (slice(5, -3, -1),)}, (F64, (0,)), True),
    ("getitem", [(F64, (None,))], {"index": (slice(None, -3, -1),)}, (F64, (2,)), True),
    # dim_size: no repeated axes
    ("dim_size", [(F64, (None, 3))], {"axes": (0, -2)}, (F64, ()), False),
    # broadcast_to with a sizes input: x and `shape` still broadcast where sizes are known
    ("broadcast_to", [(F64, (2, 3)), (I64, (2,))], {"shape": (None, 5)}, (F64, (None, 5)), False),
    ("broadcast_to", [(F64, (2, 3)), (I64, (2,))], {"shape": (None, 3)}, (F64, (None, 3)), True),
    # with a sizes input, `shape` has no negative size (the builder made (1, -1) nodes that
    # saved and then did not load)
    ("reshape", [(F64, (1, 1)), (I64, (2,))], {"shape": (1, -1)}, (F64, (1, 0)), False),
    ("sum_to", [(F64, (None, 3))], {"shape": (-3, 3)}, (F64, (0, 3)), False),
    # reshape with a sizes input: the element counts agree where both are static
    ("reshape", [(F64, (2, 3)), (I64, (2,))], {"shape": (5, 7)}, (F64, (5, 7)), False),
    ("reshape", [(F64, (2, 3)), (I64, (2,))], {"shape": (3, 2)}, (F64, (3, 2)), True),
    ("reshape", [(F64, (2, 3)), (I64, (2,))], {"shape": (None, 7)}, (F64, (None, 7)), True),
    # scatter with a sizes input: `index` is checked against `shape`, g's shape against it
    ("scatter", [(F64, (1,)), (I64, (1,))], {"shape": (3,), "index": (5,)}, (F64, (3,)), False),
    ("scatter", [(F64, (7,)), (I64, (1,))], {"shape": (3,), "index": (0,)}, (F64, (3,)), False),
    ("scatter", [(F64, (7,)), (I64, (2,))], {"shape": (None, 7), "index": (0,)}, (F64, (None, 7)), True),
]


@pytest.mark.parametrize("op,metas,attrs,stored,valid", FOUND, ids=[f"{c[0]}-{i}" for i, c in enumerate(FOUND)])
def test_what_the_reader_found(op, metas, attrs, stored, valid):
    ref = Referee()
    assert ref(one_op_file(op, metas, attrs, *stored), op) is valid, ref.disagree
    theirs = built(op, metas, attrs)[0]  # and cgraph's builder agrees
    assert theirs == stored if valid else theirs is None


def test_an_index_field_is_not_an_int_tuple():
    """An attribute declared ints or dims given in AttrValue's `index` field is a wrong type,
    even when every entry is an integer (cgraph used to decode it as the same tuple)."""
    m = decoded(small_model())
    (node,) = [n for n in m.graph.node if n.op == "matmul"]
    assert not node.attr
    x = copy(m)
    s = x.graph.node.add(name="s", op="sum", input=[node.name], dtype=node.dtype)
    s.shape.SetInParent()
    s.attr.add(name="axes").value.index.item.extend([pb.IndexItem(at=0), pb.IndexItem(at=1)])
    ref = Referee()
    assert ref.model(x, "sum with axes in an index field") is False, ref.disagree
    s.attr[0].value.ints.item.extend([pb.OptionalInt(value=0), pb.OptionalInt(value=1)])
    assert ref.model(x, "sum with axes in an ints field") is True, ref.disagree
