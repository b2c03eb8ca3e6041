"""The graph builder: an explicit, static graph of named nodes, and Tensor handles to them.

A `Graph` holds nodes in the order they were built (always a topological order), the values
of its params and constants, and its named outputs. Leaves are inputs (fed at run time),
params (trainable, value stored here) and constants (stored, not trainable); every other node
applies an op from `cgraph.ops` to earlier nodes. Shapes and dtypes are inferred, and checked,
as each node is built.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import networkx as nx
import numpy as np

from cgraph.errors import CgraphError, GraphError, RenderError, ShapeError
from cgraph.ops.registry import LEAF_OPS, Operand, Subgraph, apply, get_op
from cgraph.shapes import DTYPES, TUPLE, Meta, Shape, as_dtype, format_shape, normalize_index

__all__ = ["DTYPES", "LEAF_OPS", "Drawable", "Graph", "GraphError", "Meta", "Node", "Shape", "Tensor", "as_dtype",
           "format_shape"]


@dataclass(frozen=True, slots=True)
class Node:
    """One node: a leaf (input, param, constant) or an op applied to earlier nodes by name."""

    name: str
    op: str
    inputs: tuple[str, ...]
    attrs: Mapping[str, Any]
    shape: Shape
    dtype: np.dtype
    index: int  # creation order; a topological order of the graph
    parts: tuple[Meta, ...] | None = None  # a control-flow node's results (its dtype is TUPLE)

    @property
    def is_leaf(self) -> bool:
        """An input, a param or a constant (no op computes it)."""
        return self.op in LEAF_OPS

    @property
    def meta(self) -> Meta:
        return Meta(self.shape, self.dtype, self.parts)



class Drawable:
    """What Jupyter shows as a drawing (SVG): a Graph, a Plan, a MemoryPlan, a Trace.

    cgraph.render draws them; it is a layer above this module, so it fills in `_drawer` when it
    is imported (as `import cgraph` does). Without Graphviz's `dot`, Jupyter shows the text."""

    _drawer: ClassVar[Callable[[Any], str] | None] = None

    def _repr_svg_(self) -> str | None:
        if Drawable._drawer is None:
            return None
        try:
            return Drawable._drawer(self)
        except RenderError:  # no `dot` program: the text repr stands in
            return None


class Graph(Drawable, Subgraph):
    """A static computation graph, built from Python and run by the executors.

    >>> g = Graph("demo")
    >>> x = g.input("x", shape=(None, 3))
    >>> g.output("y", x * 2.0)
    """

    def __init__(self, name: str = "graph") -> None:
        self.name = name
        self.metadata: dict[str, str] = {}  # free key/values, saved with the model
        self.state: dict[str, np.ndarray] = {}  # named arrays outside the graph, saved with the
        #                                         model (an optimizer's moments, say)
        self._nodes: dict[str, Node] = {}
        self._values: dict[str, np.ndarray] = {}  # params and constants, read-only arrays
        self._params: dict[str, np.ndarray] = {}  # the params among them, in creation order
        self._outputs: dict[str, str] = {}  # output name -> node name
        self._scopes: list[str] = []
        self._next_suffix: dict[str, int] = {}
        # A control-flow body while it is traced: the graph around it, and the tensors of that
        # graph (or of ones around it) it reads, each captured as one of its inputs.
        self._parent: Graph | None = None
        self._captures: dict[tuple[int, str], tuple[Tensor, str]] = {}
        self._siblings: list[Graph] = []
        self._frozen = False  # a finished body: nothing more may be added

    # ---- leaves ---------------------------------------------------------------------------

    def input(self, name: str, shape: Sequence[int | None], dtype: Any = "float64") -> Tensor:
        """A value fed at run time; None in `shape` is a size known only then."""
        shape = _check_shape(shape, name)
        return self._add_leaf("input", name, shape, as_dtype(dtype), None)

    def param(self, name: str, value: Any, dtype: Any = None, trainable: bool = True) -> Tensor:
        """A value stored in the graph (copied) that `set_param` can change; float64 unless
        given float32. `trainable=False` marks state that training updates by other means
        than gradients (batch norm's running statistics): `fit` leaves it out of `wrt`."""
        src = _param_source(name, value)
        with np.errstate(over="ignore"):
            arr = np.array(src, dtype=dtype, copy=True)
        if dtype is None and not np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(np.float64)
        if not np.issubdtype(arr.dtype, np.floating):
            raise ShapeError(f"param {name!r}: params must be floats (float64, float32, float16), not {arr.dtype}")
        arr = arr.astype(as_dtype(arr.dtype), copy=False)
        _check_overflow(name, src, arr)
        attrs = {} if trainable else {"trainable": False}
        return self._add_leaf("param", name, arr.shape, arr.dtype, arr, attrs)

    def constant(self, name: str | None, value: Any, dtype: Any = None) -> Tensor:
        """A stored value that is not trained (copied); `name` None: a fresh "const" name."""
        if name is None:
            name = self.fresh_name("const").rsplit("/", 1)[-1]
        arr = np.array(value, dtype=dtype, copy=True)
        if dtype is None and arr.dtype.kind in "iu" and arr.dtype not in DTYPES:
            arr = arr.astype(np.int64)
        elif dtype is None and arr.dtype.kind == "f" and arr.dtype not in DTYPES:
            arr = arr.astype(np.float64)
        arr = arr.astype(as_dtype(arr.dtype), copy=False)
        return self._add_leaf("constant", name, arr.shape, arr.dtype, arr)

    def output(self, name: str, tensor: Tensor) -> Tensor:
        """Name `tensor` as an output of the graph."""
        tensor = self._own(tensor, f"output {name!r}")
        _check_name(name, "output")
        if tensor.dtype == TUPLE:
            raise GraphError(f"output {name!r}: {tensor.name!r} is the tuple of a control-flow node's results; "
                             "output its results")
        if name in self._outputs:
            raise GraphError(f"output {name!r} is already defined")
        self._outputs[name] = tensor.name
        return tensor

    @contextlib.contextmanager
    def scope(self, name: str) -> Iterator[None]:
        """Prefix the names of nodes built inside with `name/` (scopes nest)."""
        if not name or "/" in name:
            raise GraphError(f"scope name {name!r} must be non-empty and contain no '/'")
        self._scopes.append(name)
        try:
            yield
        finally:
            self._scopes.pop()

    # ---- params ---------------------------------------------------------------------------

    @property
    def params(self) -> Mapping[str, np.ndarray]:
        """The current param values, as read-only arrays: `set_param` replaces one, and training
        (`cg.fit`, `cg.optim`) updates them in place, so an array read here before a step shows
        the new values after it: `.copy()` it to keep a snapshot."""
        return types.MappingProxyType(self._params)

    def set_param(self, name: str, value: Any) -> None:
        """Replace a param's value (copied); its shape must stay and its dtype be castable."""
        node = self._nodes.get(name)
        if node is None or node.op != "param":
            raise GraphError(f"{name!r} is not a param of graph {self.name!r}")
        arr = _param_source(name, value)
        if arr.shape != node.shape:
            raise ShapeError(
                f"param {name!r}: new value has shape {format_shape(arr.shape)}, "
                f"the param has {format_shape(node.shape)}"
            )
        if arr.dtype == node.dtype:
            arr = arr.copy()
        elif np.can_cast(arr.dtype, node.dtype, "same_kind"):
            with np.errstate(over="ignore"):
                new = arr.astype(node.dtype)
            _check_overflow(name, arr, new)
            arr = new
        else:
            raise ShapeError(f"param {name!r}: cannot cast {arr.dtype} to {node.dtype}")
        arr.flags.writeable = False
        self._values[name] = self._params[name] = arr

    # ---- reading --------------------------------------------------------------------------

    @property
    def trainable(self) -> list[str]:
        """The names of the params that training changes by their gradients."""
        return [n.name for n in self._nodes.values() if n.op == "param" and n.attrs.get("trainable", True)]

    @property
    def nodes(self) -> Mapping[str, Node]:
        """All nodes by name, in creation (topological) order."""
        return types.MappingProxyType(self._nodes)

    @property
    def outputs(self) -> dict[str, Tensor]:
        """The named outputs."""
        return {k: Tensor(self, v) for k, v in self._outputs.items()}

    @property
    def inputs(self) -> dict[str, Tensor]:
        """The input leaves, by name."""
        return {n.name: Tensor(self, n.name) for n in self._nodes.values() if n.op == "input"}

    def value(self, name: str) -> np.ndarray:
        """The stored value of a param or constant (read-only, not a copy)."""
        return self._values[name]

    def output_node(self, output: str) -> str:
        """The name of the node that output `output` refers to."""
        node = self._outputs.get(output)
        if node is None:
            raise GraphError(f"graph {self.name!r} has no output {output!r} "
                             f"(outputs: {', '.join(self._outputs) or 'none'})")
        return node

    def __getitem__(self, name: str) -> Tensor:
        if name not in self._nodes:
            raise GraphError(f"graph {self.name!r} has no node {name!r}")
        return Tensor(self, name)

    def __contains__(self, name: object) -> bool:
        return name in self._nodes

    def __len__(self) -> int:
        return len(self._nodes)

    def __repr__(self) -> str:
        return f"Graph({self.name!r}, {len(self._nodes)} nodes, outputs={list(self._outputs)})"

    def needed_by(self, targets: Sequence[str]) -> set[str]:
        """The names of `targets` and of every node they depend on: one sweep back over the
        creation order, which is a topological order, so linear in the graph's size."""
        needed = set(targets)
        for node in reversed(self._nodes.values()):
            if node.name in needed:
                needed.update(node.inputs)
        return needed

    def to_networkx(self) -> nx.MultiDiGraph:
        """The graph as networkx: one node per graph node (op, shape, dtype, attrs), one edge
        per input with `index` its position (a MultiDiGraph, so `mul(x, x)` keeps both edges)."""
        G = nx.MultiDiGraph(name=self.name, outputs=dict(self._outputs))
        for n in self._nodes.values():
            G.add_node(n.name, op=n.op, shape=n.shape, dtype=str(n.dtype), attrs=dict(n.attrs))
        for n in self._nodes.values():
            for i, src in enumerate(n.inputs):
                G.add_edge(src, n.name, key=i, index=i)
        return G

    # ---- control-flow bodies -------------------------------------------------------------

    def enclosing(self) -> list[Graph]:
        """The graphs around this one while it is traced as a body, innermost first."""
        out, g = [], self._parent
        while g is not None:
            out.append(g)
            g = g._parent
        return out

    def open_body(self, parent: Graph, siblings: Sequence[Graph] = ()) -> None:
        """Start tracing this graph as a body inside `parent` (whose tensors it may capture).
        `siblings`, bodies of the same node traced before it, keep the same inputs: whatever
        one captures, all capture, in the same order."""
        self._parent = parent
        self._siblings = [*siblings]
        for s in siblings:
            s._siblings.append(self)
            for outer, _ in s._captures.values():
                self.capture(outer)

    def close_body(self) -> list[Tensor]:
        """Finish tracing this body: it is frozen, and the tensors of `parent` it captured are
        returned in the order of the inputs they became."""
        self._parent = None
        self._siblings = []
        self._frozen = True
        return [outer for outer, _ in self._captures.values()]

    def freeze(self) -> Graph:
        """Nothing more may be added (a body held by a node); returns the graph."""
        self._frozen = True
        return self

    def capture(self, t: Tensor) -> Tensor:
        """The input of this body that stands for tensor `t` of an enclosing graph (made the
        first time; through every graph in between)."""
        if t.graph is self:
            return t
        if self._parent is None:
            raise GraphError(f"tensor {t.name!r} of graph {t.graph.name!r} cannot be used in graph {self.name!r}"
                             + (" (a finished control-flow body)" if self._frozen else ""))
        outer = self._parent.capture(t)
        key = (id(outer.graph), outer.name)
        if key not in self._captures:
            for g in (self, *self._siblings):
                if key in g._captures:
                    continue
                name = outer.name if outer.name not in g._nodes else g.fresh_name(outer.name)
                g._captures[key] = (outer, g.input(name, outer.shape, outer.dtype).name)
        return Tensor(self, self._captures[key][1])

    # ---- building (op functions, transforms and the file reader) ---------------------------

    def add_leaf(self, kind: str, name: str, shape: Shape, dtype: Any, value: np.ndarray | None = None,
                 trainable: bool = True) -> Tensor:
        """A leaf as a file reader or a graph transform makes it: `kind` is "input", "param" or
        "constant", and a param's or constant's `value` (of exactly `shape` and `dtype`) is
        kept as given, made read-only, not copied. Building by hand, use `input`, `param` and
        `constant`, which check and copy."""
        if kind not in LEAF_OPS:
            raise GraphError(f"{kind!r} is not a leaf kind ({', '.join(LEAF_OPS)})")
        if (value is None) != (kind == "input"):
            raise GraphError(f"{kind} {name!r}: {'an input has no' if kind == 'input' else 'needs a'} stored value")
        if value is not None and (value.shape != tuple(shape) or value.dtype != dtype):
            raise ShapeError(f"{kind} {name!r}: a value of {format_shape(value.shape)} {value.dtype} for "
                             f"{format_shape(tuple(shape))} {np.dtype(dtype)}")
        attrs = {"trainable": False} if kind == "param" and not trainable else {}
        return self._add_leaf(kind, name, tuple(shape), np.dtype(dtype), value, attrs)

    def copy_node(self, node: Node, inputs: Sequence[str] | None = None, name: str | None = None,
                  value: np.ndarray | None = None) -> Tensor:
        """A node like `node` (of any graph): the same op and attributes, or for a leaf the same
        kind, shape, dtype, trainable flag and the stored `value` given; named `name` (default
        its own) and reading `inputs` (default its own input names). An op node's shape and
        dtype are inferred again here."""
        name = node.name if name is None else name
        if node.is_leaf:
            return self.add_leaf(node.op, name, node.shape, node.dtype, value,
                                 trainable=node.attrs.get("trainable", True))
        return self.add_node(node.op, node.inputs if inputs is None else inputs, node.attrs, name=name)

    def rebuild(self, rewrite: Callable[[Graph, Node, list[str]], str | None] | None = None, *,
                nodes: Sequence[str] | set[str] | None = None, copy_values: bool = False,
                then: Callable[[Graph, Node, str], None] | None = None) -> tuple[Graph, dict[str, str]]:
        """A new graph of this graph's nodes (all, or those in `nodes`), in creation order, and
        where each node went: the one way cgraph copies and rewrites graphs (simplification,
        derivatives, checkpointing).

        `rewrite(new_graph, node, inputs)` sees each node with its inputs' new names; it may
        add nodes to the new graph and return the name of the one that stands for `node`, or
        None to have it copied; `then(new_graph, node, name)` runs after each node is placed
        (to build more right after it: forward mode's tangents). A copied op node whose inputs
        kept their shapes and dtypes keeps its own (inferring them again would give the same),
        so a rebuild costs little per node. Leaf values are shared (they are read-only) unless
        `copy_values`. A copy of the whole graph keeps its outputs, metadata and state; a copy
        of some nodes keeps the metadata only."""
        d = Graph(self.name)
        d.metadata = dict(self.metadata)
        keep = None if nodes is None else set(nodes)
        where: dict[str, str] = {}
        mine, theirs = self._nodes, d._nodes
        for node in mine.values():
            if keep is not None and node.name not in keep:
                continue
            inputs = [where[s] for s in node.inputs]
            to = rewrite(d, node, inputs) if rewrite is not None else None
            if to is not None:
                pass
            elif not node.is_leaf and node.name not in theirs and all(
                    theirs[b].shape == mine[a].shape and theirs[b].dtype == mine[a].dtype
                    for a, b in zip(node.inputs, inputs, strict=True)):
                theirs[node.name] = Node(node.name, node.op, tuple(inputs), node.attrs, node.shape, node.dtype,
                                         len(theirs), node.parts)
                to = node.name
            else:
                value = self._values.get(node.name)
                to = d.copy_node(node, inputs, value=value.copy() if copy_values and value is not None else value).name
            where[node.name] = to
            if then is not None:
                then(d, node, to)
        if keep is None:
            d.state = dict(self.state)
            for out, name in self._outputs.items():
                d._outputs[out] = where[name]
        return d, where

    def add_node(self, op: str, inputs: Sequence[str], attrs: Mapping[str, Any] | None = None,
                 name: str | None = None) -> Tensor:
        """Append `op` applied to the named nodes. The op's declaration is checked (the number
        of inputs, each attribute's name and type: GraphError), then its shape and dtype are
        inferred and checked (ShapeError), each error naming the node and the op.

        `name` defaults to a fresh name from the op and the current scope.
        """
        opdef = get_op(op)
        name = self.fresh_name(op.rsplit("/", 1)[-1]) if name is None else name
        _check_name(name, f"node ({op})")
        if self._frozen:
            raise GraphError(f"{name} ({op}): graph {self.name!r} is a finished control-flow body; "
                             "build with the tensors of the graph around it")
        if name in self._nodes:
            raise GraphError(f"node name {name!r} is already used")
        inputs = tuple(inputs)
        metas = []
        for src in inputs:
            if not isinstance(src, str) or src not in self._nodes:
                raise GraphError(f"{name} ({op}): input {src!r} is not a node of graph {self.name!r}")
            metas.append(self._nodes[src])
            if metas[-1].dtype == TUPLE and not opdef.project:
                raise GraphError(f"{name} ({op}): input {src!r} is the tuple of a control-flow node's results, "
                                 "which only `result` nodes read")
        attrs = opdef.check(name, len(inputs), attrs or {})
        try:
            meta = opdef.meta(*[m.meta for m in metas], **attrs)
        except ShapeError as e:
            raise ShapeError(f"{name} ({op}): {e} [inputs: {_describe(metas)}]") from None
        except Exception as e:  # a user op's infer, or a shape rule meeting values it never expected
            raise ShapeError(f"{name} ({op}): shape inference failed: {type(e).__name__}: {e} "
                             f"[inputs: {_describe(metas)}]") from None
        node = Node(name, op, inputs, types.MappingProxyType(attrs), tuple(meta.shape),
                    np.dtype(meta.dtype), len(self._nodes), meta.parts)
        self._nodes[name] = node
        return Tensor(self, name)

    def _add_leaf(self, kind: str, name: str, shape: Shape, dtype: np.dtype,
                  value: np.ndarray | None, attrs: Mapping[str, Any] | None = None) -> Tensor:
        _check_name(name, kind)
        if self._frozen:
            raise GraphError(f"{kind} {name!r}: graph {self.name!r} is a finished control-flow body")
        full = "/".join([*self._scopes, name])
        if full in self._nodes:
            raise GraphError(f"node name {full!r} is already used")
        self._nodes[full] = Node(full, kind, (), types.MappingProxyType(dict(attrs or {})), tuple(shape),
                                 dtype, len(self._nodes))
        if value is not None:
            value.flags.writeable = False  # stored values change only through set_param
            self._values[full] = value
            if kind == "param":
                self._params[full] = value
        return Tensor(self, full)

    def fresh_name(self, base: str) -> str:
        """`base` in the current scope, numbered (`mul_1`, `mul_2`, ...) if taken."""
        stem = "/".join([*self._scopes, base])
        if stem not in self._nodes:
            return stem
        i = self._next_suffix.get(stem, 1)  # where the last search stopped: O(1) per name
        while f"{stem}_{i}" in self._nodes:
            i += 1
        self._next_suffix[stem] = i + 1
        return f"{stem}_{i}"

    def _own(self, x: Any, what: str) -> Tensor:
        if not isinstance(x, Tensor):
            raise GraphError(f"{what}: expected a Tensor of graph {self.name!r}, got {type(x).__name__}")
        if x.graph is not self:
            raise GraphError(f"{what}: tensor {x.name!r} belongs to graph {x.graph.name!r}, not {self.name!r}")
        return x


def _check_name(name: Any, what: str) -> None:
    """Names are non-empty strings that a file can hold (UTF-8)."""
    if not isinstance(name, str) or not name:
        raise GraphError(f"{what} name must be a non-empty string, got {name!r}")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise GraphError(f"{what} name {name!r} is not valid Unicode text") from None


def _param_source(name: str, value: Any) -> np.ndarray:
    """A value given for param `name`, as an array: a Tensor has no value before a run."""
    if isinstance(value, Tensor):
        raise GraphError(f"param {name!r}: the value must be an array or a number, not tensor {value.name!r} "
                         "(a tensor has values only in a run: take them from an executor's results)")
    return value if type(value) is np.ndarray else np.asarray(value)


def _check_overflow(name: str, value: np.ndarray, cast: np.ndarray) -> None:
    """Finite numbers of `value` that became inf in param `name`'s dtype (1e40 as float32)."""
    if value.dtype != cast.dtype and value.dtype.kind in "fiu":
        bad = np.isinf(cast) & np.isfinite(value)
        if bad.any():
            raise ShapeError(f"param {name!r}: {value[bad].flat[0].item()!r} overflows {cast.dtype} (whose largest "
                             f"value is {np.finfo(cast.dtype).max:.4g})")


def _describe(metas: Sequence[Node]) -> str:
    return ", ".join(f"{m.name} {format_shape(m.shape)} {m.dtype}" for m in metas)


def _check_shape(shape: Any, name: str) -> Shape:
    try:
        dims = tuple(shape)
    except TypeError:
        raise ShapeError(f"input {name!r}: shape must be a sequence of ints or None, got {shape!r}") from None
    for d in dims:
        if d is not None and (not isinstance(d, (int, np.integer)) or isinstance(d, bool) or d < 0):
            raise ShapeError(f"input {name!r}: bad size {d!r} in shape {shape!r}")
    return tuple(None if d is None else int(d) for d in dims)


class Tensor(Operand):
    """A handle to one node of a graph; operators build new nodes in the same graph."""

    __slots__ = ("graph", "name")
    __array_ufunc__ = None  # numpy arrays on the left defer to our reflected operators

    def __init__(self, graph: Graph, name: str) -> None:
        self.graph = graph
        self.name = name

    @property
    def node(self) -> Node:
        """The node this tensor is a handle to."""
        return self.graph._nodes[self.name]

    @property
    def shape(self) -> Shape:
        """The static shape: a tuple of sizes, None for a size known only at run time."""
        return self.node.shape

    @property
    def dtype(self) -> np.dtype:
        """The element type (one of cgraph.shapes.DTYPES)."""
        return self.node.dtype

    @property
    def ndim(self) -> int:
        """The number of axes."""
        return len(self.node.shape)

    @property
    def op(self) -> str:
        """The op of its node ("input", "param", "constant" for leaves)."""
        return self.node.op

    @property
    def T(self) -> Tensor:
        """The transpose (all axes reversed), as numpy's `.T`."""
        return apply("transpose", self, axes=tuple(range(self.ndim))[::-1])

    def __repr__(self) -> str:
        n = self.node
        return f"<Tensor {n.name!r} {n.op} {format_shape(n.shape)} {n.dtype}>"

    def __hash__(self) -> int:
        return hash((id(self.graph), self.name))

    def __bool__(self) -> bool:
        raise CgraphError(f"tensor {self.name!r} has no truth value while the graph is built; "
                          "use cg.where for a choice that depends on values")

    def __add__(self, o: Any) -> Tensor: return apply("add", self, o)
    def __radd__(self, o: Any) -> Tensor: return apply("add", o, self)
    def __sub__(self, o: Any) -> Tensor: return apply("sub", self, o)
    def __rsub__(self, o: Any) -> Tensor: return apply("sub", o, self)
    def __mul__(self, o: Any) -> Tensor: return apply("mul", self, o)
    def __rmul__(self, o: Any) -> Tensor: return apply("mul", o, self)
    def __truediv__(self, o: Any) -> Tensor: return apply("div", self, o)
    def __rtruediv__(self, o: Any) -> Tensor: return apply("div", o, self)
    def __pow__(self, o: Any) -> Tensor: return apply("pow", self, o)
    def __rpow__(self, o: Any) -> Tensor: return apply("pow", o, self)
    def __matmul__(self, o: Any) -> Tensor: return apply("matmul", self, o)
    def __rmatmul__(self, o: Any) -> Tensor: return apply("matmul", o, self)
    def __neg__(self) -> Tensor: return apply("neg", self)
    def __pos__(self) -> Tensor: return self
    def __abs__(self) -> Tensor: return apply("abs", self)
    def __lt__(self, o: Any) -> Tensor: return apply("less", self, o)
    def __le__(self, o: Any) -> Tensor: return apply("less_equal", self, o)
    def __gt__(self, o: Any) -> Tensor: return apply("greater", self, o)
    def __ge__(self, o: Any) -> Tensor: return apply("greater_equal", self, o)
    def __eq__(self, o: Any) -> Tensor: return apply("equal", self, o)  # type: ignore[override]
    def __getitem__(self, index: Any) -> Tensor: return apply("getitem", self, index=normalize_index(index))
