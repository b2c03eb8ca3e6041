"""Control flow: `cond`, `scan` and `while_loop`, ops whose bodies are subgraphs.

A body is a Python function of Tensors, traced once into a `Graph` (its inputs: the loop's
carries and slices, or the branch's operands, then every tensor of the graphs around it that
the function reads, captured as one more input) held by the node as a "graph" attribute. The
node's inputs are the values of those body inputs, in the same order, so that dependencies,
liveness and derivatives see every value a body reads. A control-flow node's value is the tuple
of its results; `result` nodes take it apart (`cg.scan` returns them).

Executors run these ops like any other: the kernel runs its body's Plan (compiled once, cached
with the body), step after step. Its results are always new buffers (an output that is a body
input, a stored value or a view is copied), and it reports the most bytes it held at once
(`Results.peak`): the carries it owns, the stacked outputs and its body's own peak, which the
op's `peak` rule predicts from shapes alike, so that predicted and measured peaks stay equal:

- scan: Y + the largest of M (the first step), C + M (later steps) and C (the results), where
  Y is the stacked outputs' bytes, C the carries', M the body's peak or, if larger, the bytes
  it leaves alive plus the carries the kernel copies.
- while_loop: C + the largest of the cond's and the body's M (booked for any trip count, as
  the count is not known before the run).
- cond: the larger of the two branches' M (booked whichever branch a run takes).

Derivatives are control flow again (see the rules below `# ---- derivatives`): the JVP of a
loop is the same loop over (primal, tangent) carries; the VJP of a scan is a reverse scan over
the carries and residuals its forward sweep stacked; a while_loop with `max_trips` is
differentiated in reverse mode as a scan of `max_trips` steps that stops changing its carries
once its condition fails.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np

from cgraph.autodiff import COTANGENT, TANGENT, Seed, differentiable, jvp_graph, vjp_graph
from cgraph.batching import vmap
from cgraph.errors import DerivativeError, GraphError, ShapeError
from cgraph.graph import Graph, Meta, Node, Tensor, format_shape
from cgraph.memory import Results
from cgraph.ops.array import broadcast_batch, reshape, transpose, zeros_like
from cgraph.ops.elementwise import cast as cast_op
from cgraph.ops.elementwise import equal, where
from cgraph.ops.reduce import sum as reduce_sum
from cgraph.ops.registry import RESULTS, Attr, DtypeRule, Operand, define, get_op, lift
from cgraph.schedule import Plan, concrete_shapes, interpret_run
from cgraph.shapes import TUPLE, nbytes

Shapes = Sequence[tuple[Any, ...]]  # concrete shapes (sizes known), as the prediction sees them
_TRACING: list[Graph] = []  # the bodies being traced, innermost last


# ---- values as trees --------------------------------------------------------------------------

def _flatten(x: Any, what: str) -> tuple[list[Any], Any]:
    """The leaves of `x` (a Tensor, a number or array, or a tuple or list of them, nested) and
    its structure; None is the empty structure."""
    if x is None:
        return [], None
    if isinstance(x, (tuple, list)):
        items, struct = [], []
        for v in x:
            vi, si = _flatten(v, what)
            items += vi
            struct.append(si)
        return items, tuple(struct)
    if isinstance(x, dict):
        raise GraphError(f"{what}: a dict is not supported; use a tuple")
    return [x], "*"


def _unflatten(struct: Any, items: Sequence[Any]) -> Any:
    it = iter(items)

    def build(s: Any) -> Any:
        if s is None:
            return None
        if s == "*":
            return next(it)
        return tuple(build(c) for c in s)

    return build(struct)


def _home(op: str, values: Sequence[Any]) -> Graph:
    """The graph a control-flow node goes into: the innermost graph among those of the Tensors
    in `values` and the body being traced."""
    graphs = [v.graph for v in values if isinstance(v, Operand)]  # type: ignore[attr-defined]
    if _TRACING:
        graphs.append(_TRACING[-1])
    if not graphs:
        raise GraphError(f"{op}: needs a Tensor among its arguments, to know which graph it belongs to")
    for inner in graphs:
        around = {id(g) for g in inner.enclosing()}
        if all(g is inner or id(g) in around for g in graphs):
            return inner
    raise GraphError(f"{op}: tensors of graphs {graphs[0].name!r} and {graphs[1].name!r} cannot be combined")


def _tensors(home: Graph, values: Sequence[Any], like: Sequence[np.dtype | None] | None = None) -> list[Tensor]:
    """`values` as Tensors of `home`: captured from enclosing graphs, numbers lifted."""
    out = []
    for i, v in enumerate(values):
        if isinstance(v, Operand):
            out.append(home.capture(v))  # type: ignore[arg-type]
        else:
            out.append(lift(home, v, like[i] if like is not None else None))
    return out


class _Trace:
    """One body being traced inside `home`: its inputs are made first, then captures (shared
    with `siblings`, the other bodies of the same node)."""

    def __init__(self, home: Graph, name: str, names: Sequence[str], metas: Sequence[Meta],
                 siblings: Sequence[_Trace] = ()) -> None:
        self.graph = Graph(name)
        self.inputs = [self.graph.input(n, m.shape, m.dtype) for n, m in zip(names, metas, strict=True)]
        self.graph.open_body(home, [s.graph for s in siblings])

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        _TRACING.append(self.graph)
        try:
            return fn(*args)
        finally:
            _TRACING.pop()

    def outputs(self, names: Sequence[str], values: Sequence[Any], like: Sequence[np.dtype | None]) -> list[Tensor]:
        outs = _tensors(self.graph, values, like)
        for n, t in zip(names, outs, strict=True):
            self.graph.output(n, t)
        return outs

    def close(self) -> list[Tensor]:
        return self.graph.close_body()


def _names(prefix: str, n: int) -> list[str]:
    return [prefix] if n == 1 else [f"{prefix}/{i}" for i in range(n)]


def _describe_meta(m: Meta) -> str:
    return f"{format_shape(m.shape)} {m.dtype}"


# ---- bodies at run time -----------------------------------------------------------------------

class _Body:
    """A body's compiled Plan and what its kernel needs to run it and keep its books: where each
    input goes among the plan's leaves, which outputs the kernel must copy to own them (a leaf,
    a view, an output given twice), and the plan's predictions per input shapes."""

    def __init__(self, graph: Graph, outputs: int | None = None) -> None:
        self.graph = graph
        names = list(graph.inputs)
        self.plan = plan = Plan(graph, [graph.output_node(o) for o in list(graph.outputs)[:outputs]])
        pos = {n: i for i, n in enumerate(names)}
        self.template = [None if kind == "input" else plan.graph.value(n)
                         for n, kind in zip(plan.leaves, plan.leaf_kinds, strict=True)]
        self.where = [(li, pos[n]) for li, (n, kind) in enumerate(zip(plan.leaves, plan.leaf_kinds, strict=True))
                      if kind == "input"]
        self.names = names
        steps = {s.name: s for s in plan.steps}
        seen: set[str] = set()
        self.borrowed = []
        for t in plan.targets:
            s = steps.get(t)
            self.borrowed.append(s is None or s.view or t in seen)
            seen.add(t)
        self.runner = plan.runner
        self._predictions: dict[tuple, tuple[int, int, list[Meta]]] = {}

    def run(self, inputs: Sequence[Any]) -> tuple[tuple[Any, ...], int, int]:
        """(outputs, peak, bytes alive at the end) of one run on `inputs`."""
        leaves = list(self.template)
        for li, ii in self.where:
            leaves[li] = inputs[ii]
        try:
            return self.runner(leaves)
        except Exception:  # name the failing node of the body
            return interpret_run(self.plan, dict(zip(self.plan.leaves, leaves, strict=True)))

    def predict(self, shapes: Shapes) -> tuple[int, int, list[Meta]]:
        """(peak, bytes alive at the end, output Metas) for inputs of these concrete shapes."""
        key = tuple(shapes)
        got = self._predictions.get(key)
        if got is None:
            leaf_shapes = dict(zip(self.names, key, strict=True))
            peak, end = self.plan.predict(leaf_shapes)
            meta = concrete_shapes(self.plan.graph, leaf_shapes)
            got = self._predictions[key] = (peak, end, [meta[t] for t in self.plan.targets])
        return got


_BODIES: weakref.WeakKeyDictionary[Graph, dict[int | None, _Body]] = weakref.WeakKeyDictionary()


def body_of(graph: Graph, outputs: int | None = None) -> _Body:
    """The compiled body of `graph` (compiled once per body graph), computing all its outputs or
    the first `outputs`."""
    table = _BODIES.setdefault(graph, {})
    b = table.get(outputs)
    if b is None:
        b = table[outputs] = _Body(graph, outputs)
    return b


def _own(outs: Sequence[Any], borrowed: Sequence[bool], which: range) -> tuple[list[Any], int]:
    """The outputs in `which`, copied where borrowed, and the bytes the copies took."""
    got, copied = [], 0
    for j in which:
        v = outs[j]
        if borrowed[j]:
            v = np.array(v, copy=True)
            copied += v.nbytes
        got.append(v)
    return got, copied


def _borrowed_bytes(b: _Body, metas: Sequence[Meta], which: range) -> int:
    return sum(nbytes(metas[j]) for j in which if b.borrowed[j])


def _check_carries(new: Sequence[Any], old: Sequence[Any]) -> None:
    for j, (a, b) in enumerate(zip(new, old, strict=True)):
        if a.shape != b.shape:
            raise ValueError(f"the body changed carry {j} from {format_shape(b.shape)} to {format_shape(a.shape)}")


# ---- shape rules ------------------------------------------------------------------------------

def infer_body(body: Graph, metas: Sequence[Meta], what: str) -> list[Meta]:
    """The Metas of `body`'s outputs when its inputs have `metas` (each checked against the
    input's declaration: the same dtype and number of axes, sizes equal where both are known)."""
    names = list(body.inputs)
    if len(names) != len(metas):
        raise ShapeError(f"{what} takes {len(names)} inputs, the node gives {len(metas)}")
    shapes = {}
    for n, m in zip(names, metas, strict=True):
        node = body.nodes[n]
        if m.dtype != node.dtype or len(m.shape) != len(node.shape) or any(
                a is not None and b is not None and a != b for a, b in zip(m.shape, node.shape, strict=True)):
            raise ShapeError(f"{what}'s input {n!r} is {_describe_meta(node.meta)}, the node gives {_describe_meta(m)}")
        shapes[n] = tuple(a if a is not None else b for a, b in zip(m.shape, node.shape, strict=True))
    meta = concrete_shapes(body, cast(dict[str, tuple[int, ...]], shapes))
    return [meta[body.output_node(o)] for o in body.outputs]


def _check_carry_metas(outs: Sequence[Meta], ins: Sequence[Meta], what: str) -> None:
    for j, (o, i) in enumerate(zip(outs, ins, strict=False)):
        if o.shape != i.shape or o.dtype != i.dtype:
            raise ShapeError(f"{what} changes carry {j} from {_describe_meta(i)} to {_describe_meta(o)}")


def _scan_length(xs: Sequence[Meta], length: int) -> int | None:
    if not xs:
        if length < 0:
            raise ShapeError("a scan with no slices needs a length")
        return length
    sizes = set()
    for x in xs:
        if not x.shape:
            raise ShapeError("a slice input must have at least one axis (the one scanned)")
        if x.shape[0] is not None:
            sizes.add(x.shape[0])
    if length >= 0:
        sizes.add(length)
    if len(sizes) > 1:
        raise ShapeError(f"the slice inputs (and length) disagree on the number of steps: {sorted(sizes)}")
    return sizes.pop() if sizes else None


def _scan_shape(*metas: Meta, body: Graph, carries: int, slices: int, length: int, reverse: bool,
                checkpoints: int = 0) -> tuple[Meta, ...]:
    """The inputs are the body's, in order: `carries` carries, `slices` slices (each scanned
    along its first axis), the rest read whole; the slices' first sizes (and `length`, when at
    least 0) agree, and give the number of steps n (`length` when there are no slices). Each
    input matches the body input's declaration (a slice without its first axis): the same dtype
    and number of axes, sizes equal where both are known. The body, re-inferred with these
    inputs, gives the carries unchanged (the same shapes and dtypes) and then the per-step
    outputs ys. The results: the final carries, then each y stacked, of shape (n,) + y's, then
    with `checkpoints` s > 0 each carry stacked, of shape (s,) + the carry's: the carries that
    enter the steps the binomial schedule of n steps and s snapshots stores in its first sweep
    (see `binomial_schedule`), in the order stored (the slots left over are zeros)."""
    c, m = carries, slices
    if c + m > len(metas):
        raise ShapeError(f"{c} carries and {m} slices, but {len(metas)} inputs")
    n = _scan_length(metas[c:c + m], length)
    inner = [*metas[:c], *(Meta(x.shape[1:], x.dtype) for x in metas[c:c + m]), *metas[c + m:]]
    outs = infer_body(body, inner, "the body")
    if len(outs) < c:
        raise ShapeError(f"the body gives {len(outs)} outputs for {c} carries")
    _check_carry_metas(outs[:c], metas[:c], "the body")
    return (*outs[:c], *(Meta((n, *y.shape), y.dtype) for y in outs[c:]),
            *(Meta((checkpoints, *x.shape), x.dtype) for x in (metas[:c] if checkpoints else ())))


def _cond_shape(pred: Meta, *metas: Meta, then_branch: Graph, else_branch: Graph) -> tuple[Meta, ...]:
    """`pred` is a bool scalar; the other inputs are each branch's, in order, each matching the
    branch input's declaration (the same dtype and number of axes, sizes equal where both are
    known). Both branches, re-inferred with these inputs, give as many outputs, of the same
    shapes and dtypes: the results."""
    if pred.dtype != np.bool_ or pred.shape != ():
        raise ShapeError(f"the condition must be a bool scalar, got {_describe_meta(pred)}")
    a = infer_body(then_branch, metas, "then_branch")
    b = infer_body(else_branch, metas, "else_branch")
    if len(a) != len(b):
        raise ShapeError(f"then_branch gives {len(a)} results, else_branch {len(b)}")
    for j, (x, y) in enumerate(zip(a, b, strict=True)):
        if x.shape != y.shape or x.dtype != y.dtype:
            raise ShapeError(f"result {j}: then_branch gives {_describe_meta(x)}, else_branch {_describe_meta(y)}")
    return tuple(a)


def _while_shape(*metas: Meta, cond: Graph, body: Graph, carries: int, max_trips: int) -> tuple[Meta, ...]:
    """The inputs are `carries` carries, then the values both graphs read whole; `cond` and
    `body` take them all, each input matching the declaration (the same dtype and number of
    axes, sizes equal where both are known). `cond`, re-inferred with these inputs, gives one
    bool scalar; `body` gives the carries unchanged (the same shapes and dtypes). The results:
    the final carries."""
    c = carries
    if c > len(metas):
        raise ShapeError(f"{c} carries, but {len(metas)} inputs")
    p = infer_body(cond, metas, "cond")
    if len(p) != 1 or p[0].dtype != np.bool_ or p[0].shape != ():
        raise ShapeError(f"cond must give one bool scalar, gives {', '.join(map(_describe_meta, p)) or 'nothing'}")
    outs = infer_body(body, metas, "the body")
    if len(outs) != c:
        raise ShapeError(f"the body gives {len(outs)} outputs for {c} carries")
    _check_carry_metas(outs, metas[:c], "the body")
    return tuple(outs)


def _result_shape(x: Meta, *, index: int) -> tuple:
    """x is the tuple of a control-flow node's results (dtype TUPLE) and `index` is less than
    their number: the shape of result `index`."""
    assert x.parts is not None
    return x.parts[index].shape


# ---- kernels and their books ------------------------------------------------------------------

def _scan_kernel(*args: Any, body: Graph, carries: int, slices: int, length: int, reverse: bool,
                 checkpoints: int = 0) -> Results:
    b = body_of(body)
    c, m = carries, slices
    carry, xs = list(args[:c]), args[c:c + m]
    n = len(xs[0]) if m else length
    if any(len(x) != n for x in xs) or (m and length >= 0 and length != n):
        given = f", length is {length}" if length >= 0 else ""
        raise ValueError(f"the slices have {[len(x) for x in xs]} steps{given}")
    inputs = [*carry, *(x[0] if n else np.empty(x.shape[1:], x.dtype) for x in xs), *args[c + m:]]
    _, _, metas = b.predict([np.shape(v) for v in inputs])
    ys = [np.empty((n, *cast(tuple[int, ...], y.shape)), y.dtype) for y in metas[c:]]
    keep = {}
    if checkpoints:
        keep = {k: j for j, k in enumerate(first_sweep(n, checkpoints))}
        ys += [np.zeros((checkpoints, *np.shape(x)), np.asarray(x).dtype) for x in carry]
    Y = sum(y.nbytes for y in ys)
    own = top = 0
    steps = range(n - 1, -1, -1) if reverse else range(n)
    for k, i in enumerate(steps):
        if k in keep:
            for stack, v in zip(ys[len(ys) - c:], carry, strict=True):
                stack[keep[k]] = v
        for k, x in enumerate(xs):
            inputs[c + k] = x[i]
        inputs[:c] = carry
        outs, peak, end = b.run(inputs)
        new, copied = _own(outs, b.borrowed, range(c))
        top = max(top, own + max(peak, end + copied))
        for y, v in zip(ys, outs[c:], strict=False):
            y[i] = v
        if i == steps[0]:
            _check_carries(new, carry)
        carry = new
        own = sum(v.nbytes for v in carry)
    if n == 0:
        carry = [np.array(v, copy=True) for v in carry]
        own = sum(v.nbytes for v in carry)
    return Results.of([*carry, *ys], Y + max(top, own))


def _scan_peak(node: Node, metas: Sequence[Meta], out: Meta) -> int:
    a = node.attrs
    b = body_of(a["body"])
    c, m = a["carries"], a["slices"]
    assert out.parts is not None
    n = _scan_length(metas[c:c + m], a["length"])
    inner = [*(x.shape for x in metas[:c]), *(x.shape[1:] for x in metas[c:c + m]), *(x.shape for x in metas[c + m:])]
    peak, end, outs = b.predict(inner)
    M = max(peak, end + _borrowed_bytes(b, outs, range(c)))
    C = sum(nbytes(x) for x in metas[:c])
    Y = sum(nbytes(y) for y in out.parts[c:])
    return Y + max(M if n else 0, C + M if n and n >= 2 else 0, C)


def _cond_kernel(pred: Any, *args: Any, then_branch: Graph, else_branch: Graph) -> Results:
    taken, other = (then_branch, else_branch) if pred else (else_branch, then_branch)
    b = body_of(taken)
    outs, peak, end = b.run(args)
    results, copied = _own(outs, b.borrowed, range(len(outs)))
    return Results.of(results, max(max(peak, end + copied), _branch_peak(other, [np.shape(v) for v in args])))


def _branch_peak(branch: Graph, shapes: Shapes) -> int:
    b = body_of(branch)
    peak, end, outs = b.predict(shapes)
    return max(peak, end + _borrowed_bytes(b, outs, range(len(outs))))


def _cond_peak(node: Node, metas: Sequence[Meta], out: Meta) -> int:
    shapes = [m.shape for m in metas[1:]]
    return max(_branch_peak(node.attrs["then_branch"], shapes), _branch_peak(node.attrs["else_branch"], shapes))


def _while_kernel(*args: Any, cond: Graph, body: Graph, carries: int, max_trips: int) -> Results:
    bc, bb = body_of(cond), body_of(body)
    c = carries
    carry, rest = list(args[:c]), list(args[c:])
    cpeak = bpeak = None
    trips = 0
    while trips != max_trips:
        (p,), pk, _ = bc.run([*carry, *rest])
        cpeak = pk if cpeak is None else max(cpeak, pk)
        if not p:
            break
        outs, pk, end = bb.run([*carry, *rest])
        new, copied = _own(outs, bb.borrowed, range(c))
        pk = max(pk, end + copied)
        bpeak = pk if bpeak is None else max(bpeak, pk)
        if trips == 0:
            _check_carries(new, carry)
        carry = new
        trips += 1
    if trips == 0:
        carry = [np.array(v, copy=True) for v in carry]
    shapes = [np.shape(v) for v in args]
    if cpeak is None or bpeak is None:
        pc, pb = _while_parts(bc, bb, shapes, c)
        cpeak = pc if cpeak is None else cpeak
        bpeak = pb if bpeak is None else bpeak
    return Results.of(carry, sum(v.nbytes for v in carry) + max(cpeak, bpeak))


def _while_parts(bc: _Body, bb: _Body, shapes: Shapes, c: int) -> tuple[int, int]:
    cpeak = bc.predict(shapes)[0]
    peak, end, outs = bb.predict(shapes)
    return cpeak, max(peak, end + _borrowed_bytes(bb, outs, range(c)))


def _while_peak(node: Node, metas: Sequence[Meta], out: Meta) -> int:
    a = node.attrs
    c = a["carries"]
    pc, pb = _while_parts(body_of(a["cond"]), body_of(a["body"]), [m.shape for m in metas], c)
    return sum(nbytes(m) for m in metas[:c]) + max(pc, pb)


# ---- the ops ----------------------------------------------------------------------------------

BODY_DOC = "a body: inputs in the node's input order, outputs as the op says"
_result = define(
    "result", lambda x, *, index: x[index], inputs=("x",), shape=_result_shape,
    dtype=DtypeRule("the dtype of result `index` of x", lambda d, a: TUPLE), project=True,
    attrs={"index": Attr("int", minimum=0, doc="which result")},
    doc="result `index` of a control-flow node (the same array, not a copy)",
    grad_doc="the derivative of that result, as its control-flow node's rules give it")
_cond = define(
    "cond", _cond_kernel, inputs=("pred", "xs*"), shape=_cond_shape, dtype=RESULTS, multi=True,
    attrs={"then_branch": Attr("graph", doc=BODY_DOC + " (the results when pred is true)"),
           "else_branch": Attr("graph", doc=BODY_DOC + " (the results when pred is false)")},
    peak=_cond_peak,
    doc="then_branch(*xs) if pred else else_branch(*xs): only the branch taken runs",
    grad_doc="JVP: a cond of the branches' JVPs; VJP: a cond of the branches' VJPs (differentiating the branch "
             "taken)")
_scan = define(
    "scan", _scan_kernel, inputs=("xs*",), shape=_scan_shape, dtype=RESULTS, multi=True,
    attrs={"body": Attr("graph", doc=BODY_DOC + ": (carries, slices, the rest) -> (carries, ys)"),
           "carries": Attr("int", minimum=0, doc="how many inputs (the first) are carries"),
           "slices": Attr("int", minimum=0, doc="how many inputs (after the carries) are scanned along axis 0"),
           "length": Attr("int", -1, minimum=-1, doc="the number of steps (-1: the slices' length)"),
           "reverse": Attr("bool", False, doc="run the steps from the last slice to the first"),
           "checkpoints": Attr("int", 0, minimum=0, doc="also return the carries that a budgeted reverse sweep "
                                                        "(scan_revolve) starts from, in that many snapshots")},
    peak=_scan_peak,
    doc="a loop over the slices' first axis (as jax.lax.scan): carry, y_i = body(carry, x_i, ...) for each "
        "step; the results are the final carries, then the ys stacked along a new first axis",
    grad_doc="JVP: a scan of the body's JVP over (primal, tangent) carries; VJP: a reverse scan of the body's VJP "
             "over the carries and residuals the forward scan stacked")
_while_loop = define(
    "while_loop", _while_kernel, inputs=("xs*",), shape=_while_shape, dtype=RESULTS, multi=True,
    attrs={"cond": Attr("graph", doc="(carries, the rest) -> a bool scalar: whether to run the body again"),
           "body": Attr("graph", doc=BODY_DOC + ": (carries, the rest) -> carries"),
           "carries": Attr("int", minimum=0, doc="how many inputs (the first) are carries"),
           "max_trips": Attr("int", -1, minimum=-1, doc="the most times the body runs (-1: no limit)")},
    peak=_while_peak,
    doc="carries = body(carries, ...) while cond(carries, ...) holds (and fewer than max_trips times); the "
        "results are the final carries",
    grad_doc="JVP: a while_loop over (primal, tangent) carries; VJP (with max_trips only): as a scan of max_trips "
             "steps that keeps its carries once cond fails")


def results_of(t: Tensor) -> list[Tensor]:
    """The `result` nodes of a control-flow node's tuple, one per result."""
    assert t.node.parts is not None
    return [_result(t, index=i) for i in range(len(t.node.parts))]


# ---- derivatives ------------------------------------------------------------------------------
#
# Derivative bodies are new graphs made from the body's derivative graph (autodiff's jvp_graph
# or vjp_graph, which differentiate nested control flow with these same rules), copied into a
# body whose inputs are in the order the new node gives them.

def _inline(src: Graph, dst: Graph, inputs: dict[str, Tensor], nodes: set[str] | None = None) -> dict[str, str]:
    """Copy the nodes of `src` (all, or those in `nodes`, in creation order) into `dst`: its
    inputs become `inputs[name]`, its constants and op nodes new nodes (keeping their names
    where free); returns where each went."""
    where: dict[str, str] = {}
    for node in src.nodes.values():
        if node.name in inputs:
            where[node.name] = inputs[node.name].name
            continue
        if nodes is not None and node.name not in nodes:
            continue
        if node.op == "input":
            continue  # not read by the nodes copied (else they find no value for it below)
        name = node.name if node.name not in dst.nodes else dst.fresh_name(node.name)
        if node.is_leaf:
            where[node.name] = dst.add_leaf(node.op, name, node.shape, node.dtype, src.value(node.name)).name
        else:
            missing = [i for i in node.inputs if i not in where]
            if missing:
                raise GraphError(f"{src.name}: {node.name} reads {missing[0]!r}, which has no value in {dst.name!r}")
            where[node.name] = dst.add_node(node.op, [where[i] for i in node.inputs], node.attrs, name=name).name
    return where


def _new_body(name: str, specs: Sequence[tuple[str, Meta]]) -> tuple[Graph, dict[str, Tensor]]:
    g = Graph(name)
    return g, {n: g.input(n, m.shape, m.dtype) for n, m in specs}


def _finish(g: Graph, outs: Sequence[Tensor]) -> Graph:
    for i, t in enumerate(outs):
        g.output(f"out/{i}", t)
    return g.freeze()


def _float_deps(body: Graph) -> list[set[int]]:
    """For each output of `body`, the inputs (by position) it depends on through float values."""
    pos = {n: i for i, n in enumerate(body.inputs)}
    deps: dict[str, set[int]] = {}
    for node in body.nodes.values():  # one sweep in creation (topological) order
        if node.name in pos:
            deps[node.name] = {pos[node.name]} if node.dtype.kind == "f" else set()
        elif node.is_leaf or not differentiable(node):
            deps[node.name] = set()
        else:
            deps[node.name] = set().union(*(deps[i] for i in node.inputs))
    return [deps[body.output_node(o)] for o in body.outputs]


def _carry_fixed_point(deps: list[set[int]], c: int, start: set[int], others: set[int]) -> set[int]:
    """The carries (by position) whose derivative is not zero: those given one, and those that
    a step makes depend on such a carry or on another input with one (`others`)."""
    live = set(start)
    while True:
        more = {j for j in range(c) if deps[j] & (live | others)} - live
        if not more:
            return live
        live |= more


def _inner_metas(metas: Sequence[Meta], c: int, m: int) -> list[Meta]:
    """What a scan's body sees of its inputs: a slice without its first axis."""
    return [Meta(x.shape[1:], x.dtype) if c <= i < c + m else x for i, x in enumerate(metas)]


def _scan_jvp(ts: list[Any], _: Any, *xs: Tensor, body: Graph, carries: int, slices: int, length: int,
              reverse: bool, checkpoints: int = 0) -> tuple[Tensor, tuple[Tensor, ...], tuple[Any, ...]]:
    c, m = carries, slices
    names = list(body.inputs)
    deps = _float_deps(body)
    given = {i for i, t in enumerate(ts) if t is not None}
    live = _carry_fixed_point(deps, c, {j for j in given if j < c}, {i for i in given if i >= c})
    act = sorted(live | {i for i in given if i >= c})
    J = jvp_graph(body, list(body.outputs), [names[i] for i in act])
    groups = [range(c), range(c, c + m), range(c + m, len(names))]
    metas = _inner_metas([x.node.meta for x in xs], c, m)
    specs = []
    for grp in groups:
        specs += [(names[i], metas[i]) for i in grp]
        specs += [(TANGENT + names[i], metas[i]) for i in grp if i in act]
    B, ins = _new_body("jvp_body", specs)
    where = _inline(J, B, {n: ins[n] for n in ins if n in J.nodes})
    outs = list(body.outputs)
    ny = len(outs) - c
    y_tan = [j for j in range(c, len(outs)) if deps[j] & set(act) and body.outputs[outs[j]].dtype.kind == "f"]
    node_outs = [B[where[J.output_node(o)]] for o in outs]
    tan_outs = {j: B[where[J.output_node(TANGENT + outs[j])]] for j in [*sorted(live), *y_tan]}
    _finish(B, [*node_outs[:c], *(tan_outs[j] for j in sorted(live)), *node_outs[c:], *(tan_outs[j] for j in y_tan)])
    node_in: list[Tensor] = []
    for grp in groups:
        node_in += [xs[i] for i in grp]
        node_in += [ts[i] if ts[i] is not None else zeros_like(xs[i]) for i in grp if i in act]
    new = _scan(*node_in, body=B, carries=c + len(live), slices=m + sum(1 for i in act if c <= i < c + m),
                length=length, reverse=reverse)
    res = results_of(new)
    k = c + len(live)
    primal = (*res[:c], *res[k:k + ny])
    tcar = dict(zip(sorted(live), res[c:k], strict=True))
    tys = dict(zip(y_tan, res[k + ny:], strict=True))
    tangents = (*(tcar.get(j) for j in range(c)), *(tys.get(j) for j in range(c, c + ny)))
    return new, primal, tangents


def _branch_bodies(branches: Sequence[Graph], xs: Sequence[Tensor], extra: list[tuple[str, Meta]],
                   derive: Callable[[Graph, list[str], list[str]], tuple[Graph, dict[str, str], list[str]]]
                   ) -> list[Graph]:
    """Each branch's derivative graph, `derive(branch, input names, output names)` -> (the
    graph, which of its inputs are which of `extra`, its outputs to keep), as a body of inputs
    "in/i" (the operands) then `extra`: the branches of a derivative cond."""
    specs = [(f"in/{i}", x.node.meta) for i, x in enumerate(xs)] + extra
    out = []
    for br in branches:
        names, outs = list(br.inputs), list(br.outputs)
        D, more, keep = derive(br, names, outs)
        B, ins = _new_body(br.name, specs)
        bind = {names[i]: ins[f"in/{i}"] for i in range(len(xs))} | {k: ins[v] for k, v in more.items()}
        where = _inline(D, B, bind)
        out.append(_finish(B, [B[where[D.output_node(o)]] for o in keep]))
    return out


def _cond_jvp(ts: list[Any], _: Any, pred: Tensor, *xs: Tensor, then_branch: Graph, else_branch: Graph
              ) -> tuple[Tensor, tuple[Tensor, ...], tuple[Any, ...]]:
    act = [i for i, t in enumerate(ts[1:]) if t is not None]
    n = len(then_branch.outputs)
    fl = [j for j, o in enumerate(then_branch.outputs.values()) if o.dtype.kind == "f"]

    def derive(br: Graph, names: list[str], outs: list[str]) -> tuple[Graph, dict[str, str], list[str]]:
        return (jvp_graph(br, outs, [names[i] for i in act]), {TANGENT + names[i]: f"tangent/{i}" for i in act},
                [*outs, *(TANGENT + outs[j] for j in fl)])

    branches = _branch_bodies((then_branch, else_branch), xs, [(f"tangent/{i}", xs[i].node.meta) for i in act],
                              derive)
    new = _cond(pred, *xs, *(ts[1 + i] for i in act), then_branch=branches[0], else_branch=branches[1])
    res = results_of(new)
    tans = dict(zip(fl, res[n:], strict=True))
    return new, tuple(res[:n]), tuple(tans.get(j) for j in range(n))


def _while_jvp(ts: list[Any], _: Any, *xs: Tensor, cond: Graph, body: Graph, carries: int, max_trips: int
               ) -> tuple[Tensor, tuple[Tensor, ...], tuple[Any, ...]]:
    c = carries
    names = list(body.inputs)
    deps = _float_deps(body)
    given = {i for i, t in enumerate(ts) if t is not None}
    live = _carry_fixed_point(deps, c, {j for j in given if j < c}, {i for i in given if i >= c})
    act = sorted(live | {i for i in given if i >= c})
    specs = [(names[i], xs[i].node.meta) for i in range(c)]
    specs += [(TANGENT + names[j], xs[j].node.meta) for j in sorted(live)]
    specs += [(names[i], xs[i].node.meta) for i in range(c, len(names))]
    specs += [(TANGENT + names[i], xs[i].node.meta) for i in act if i >= c]
    C, cins = _new_body("cond", specs)
    where = _inline(cond, C, {cn: cins[names[i]] for i, cn in enumerate(cond.inputs)})
    _finish(C, [C[where[cond.output_node(o)]] for o in cond.outputs])
    J = jvp_graph(body, list(body.outputs), [names[i] for i in act])
    B, ins = _new_body("jvp_body", specs)
    where = _inline(J, B, {n: ins[n] for n in ins if n in J.nodes})
    outs = list(body.outputs)
    _finish(B, [*(B[where[J.output_node(o)]] for o in outs),
                *(B[where[J.output_node(TANGENT + outs[j])]] for j in sorted(live))])
    node_in = [*xs[:c], *(ts[j] if ts[j] is not None else zeros_like(xs[j]) for j in sorted(live)), *xs[c:],
               *(ts[i] for i in act if i >= c)]
    new = _while_loop(*node_in, cond=C, body=B, carries=c + len(live), max_trips=max_trips)
    res = results_of(new)
    tcar = dict(zip(sorted(live), res[c:], strict=True))
    return new, tuple(res[:c]), tuple(tcar.get(j) for j in range(c))


class _ScanVJP:
    """How reverse mode runs a scan's body, for one set of inputs that need cotangents: the
    forward body with the residuals it must stack added to its ys, and the backward body of a
    reverse scan that reads them (both made from the body's vjp_graph)."""

    def __init__(self, body: Graph, c: int, m: int, active: tuple[bool, ...], metas: Sequence[Meta]) -> None:
        names = list(body.inputs)
        outs = list(body.outputs)
        ny = len(outs) - c
        deps = _float_deps(body)
        given = {i for i, a in enumerate(active) if a}
        live = _carry_fixed_point(deps, c, {j for j in given if j < c}, {i for i in given if i >= c})
        wrt = sorted(live | {i for i in given if i >= c})
        self.live = sorted(live)  # carries whose cotangent flows from step to step
        self.wrt = wrt
        self.ys = [j for j in range(c, c + ny) if deps[j] & set(wrt) and body.outputs[outs[j]].dtype.kind == "f"]
        V = vjp_graph(body, outs, [names[i] for i in wrt], seed=Seed.INPUT)
        first = next(n.index for n in V.nodes.values() if n.name.startswith(COTANGENT))
        fwd = {n.name for n in V.nodes.values() if n.index < first}
        read = [s for n in V.nodes.values() if n.name not in fwd for s in n.inputs if s in fwd]
        read = sorted(set(read), key=lambda r: V.nodes[r].index)
        pos = {n: i for i, n in enumerate(names)}
        out_node = {V.output_node(o): j for j, o in enumerate(outs)}
        # each residual: a body input (carry-in: stacked; slice; closure), a constant (copied), the
        # carry-out of a carry (passed back along the reverse scan), a y (the forward's ys), or
        # another forward value (stacked as one more y)
        self.pass_along: list[int] = []
        self.stacked: list[int] = []
        self.slices_read: list[int] = []
        self.closures_read: list[int] = []
        self.ys_read: list[int] = []
        self.internal: list[str] = []
        kind: dict[str, tuple[str, int]] = {}
        for r in read:
            node = V.nodes[r]
            if node.op == "input":
                i = pos[r]
                if i < c:
                    kind[r] = ("stacked", i)
                    self.stacked.append(i)
                elif i < c + m:
                    kind[r] = ("slice", i)
                    self.slices_read.append(i)
                else:
                    kind[r] = ("closure", i)
                    self.closures_read.append(i)
            elif node.is_leaf:
                kind[r] = ("constant", 0)
            elif out_node.get(r, -1) >= c:
                kind[r] = ("y", out_node[r])
                self.ys_read.append(out_node[r])
            elif r in out_node:
                j = out_node[r]
                kind[r] = ("next", j)
                self.pass_along.append(j)
            else:
                kind[r] = ("internal", len(self.internal))
                self.internal.append(r)
        self.stacked = sorted(set(self.stacked) | set(self.pass_along))
        self.pass_along = sorted(set(self.pass_along))
        self.ys_read = sorted(set(self.ys_read))
        # the forward body: V's forward side, with the stacked carries and internal residuals as ys
        F, fins = _new_body("body", list(zip(names, _inner_metas(metas, c, m), strict=True)))
        where = _inline(V, F, fins, fwd)
        self.forward = _finish(F, [*(F[where[V.output_node(o)]] for o in outs), *(fins[names[j]] for j in self.stacked),
                                   *(F[where[r]] for r in self.internal)])
        fmeta = {n.name: n.meta for n in F.nodes.values()}
        # the backward body: carries (next carry-outs, carry cotangents, closure accumulators),
        # slices (stacked carries, internal residuals, ys read, xs read, ys cotangents), closures
        self.acc = [i for i in wrt if i >= c + m]
        self.grad_slices = [i for i in wrt if c <= i < c + m]
        self.closures_read = sorted(set(self.closures_read))
        self.slices_read = sorted(set(self.slices_read))
        cm = [V.nodes[V.output_node(o)].meta for o in outs]
        specs = [*((f"next/{j}", cm[j]) for j in self.pass_along), *((f"g/{j}", cm[j]) for j in self.live),
                 *((f"acc/{i}", metas[i]) for i in self.acc),
                 *((f"carry/{j}", cm[j]) for j in self.stacked),
                 *((f"r/{k}", fmeta[where[r]]) for k, r in enumerate(self.internal)),
                 *((f"y/{j}", cm[j]) for j in self.ys_read),
                 *((f"x/{i}", V.nodes[names[i]].meta) for i in self.slices_read),
                 *((f"gy/{j}", cm[j]) for j in self.ys),
                 *((f"closure/{i}", metas[i]) for i in self.closures_read)]
        B, ins = _new_body("vjp_body", specs)
        prefix = {"stacked": "carry", "slice": "x", "closure": "closure", "y": "y", "next": "next", "internal": "r"}
        bind = {r: ins[f"{prefix[k]}/{i}"] for r, (k, i) in kind.items() if k in prefix}
        for j in self.live:
            bind[COTANGENT + outs[j]] = ins[f"g/{j}"]
        for j in self.ys:
            bind[COTANGENT + outs[j]] = ins[f"gy/{j}"]
        backward = {n.name for n in V.nodes.values() if n.name not in fwd and not n.name.startswith(COTANGENT)}
        backward |= {r for r, (k, _) in kind.items() if k == "constant"}
        where = _inline(V, B, bind, backward)
        grad = {i: B[where[V.output_node(f"grad/{names[i]}")]] for i in wrt}
        self.backward = _finish(B, [*(ins[f"carry/{j}"] for j in self.pass_along), *(grad[j] for j in self.live),
                                    *(ins[f"acc/{i}"] + grad[i] for i in self.acc),
                                    *(grad[i] for i in self.grad_slices)])
        self._V, self._names, self._metas, self._c, self._m = V, names, metas, c, m
        self._adjoint: Graph | None = None
        _FORWARDS[self.forward] = (self, body)
        _BACKWARDS[self.backward] = self

    def adjoint(self) -> Graph:
        """The body's whole VJP as one step of a budgeted reverse sweep: (carries, slices, the
        values read whole, carry cotangents, ys' cotangents, accumulators) -> (carry
        cotangents, accumulators, slices' cotangents)."""
        if self._adjoint is None:
            V, names, c, m = self._V, self._names, self._c, self._m
            body_outs = [o for o in V.outputs if not o.startswith("grad/")]
            metas = _inner_metas(self._metas, c, m)
            cm = [V.nodes[V.output_node(o)].meta for o in body_outs]
            specs = [*zip(names, metas, strict=True), *((f"g/{j}", cm[j]) for j in self.live),
                     *((f"gy/{j}", cm[j]) for j in self.ys), *((f"acc/{i}", metas[i]) for i in self.acc)]
            A, ins = _new_body("adjoint", specs)
            bind = {n: ins[n] for n in names}
            bind.update({COTANGENT + body_outs[j]: ins[f"g/{j}"] for j in self.live})
            bind.update({COTANGENT + body_outs[j]: ins[f"gy/{j}"] for j in self.ys})
            where = _inline(V, A, bind)
            grad = {i: A[where[V.output_node(f"grad/{names[i]}")]] for i in self.wrt}
            self._adjoint = _finish(A, [*(grad[j] for j in self.live), *(ins[f"acc/{i}"] + grad[i] for i in self.acc),
                                        *(grad[i] for i in self.grad_slices)])
        return self._adjoint


_VJPS: weakref.WeakKeyDictionary[Graph, dict[tuple, _ScanVJP]] = weakref.WeakKeyDictionary()


def _scan_vjp_of(body: Graph, c: int, m: int, active: tuple[bool, ...], metas: Sequence[Meta]) -> _ScanVJP:
    table = _VJPS.setdefault(body, {})
    key = (c, m, active, tuple((x.shape, x.dtype.str) for x in metas))
    if key not in table:
        table[key] = _ScanVJP(body, c, m, active, metas)
    return table[key]


def _scan_save(active: Sequence[bool], *xs: Tensor, body: Graph, carries: int, slices: int, length: int,
               reverse: bool, checkpoints: int = 0) -> tuple[Tensor, tuple[Tensor, ...], Any]:
    c, m = carries, slices
    plan = _scan_vjp_of(body, c, m, tuple(active), [x.node.meta for x in xs])
    new = _scan(*xs, body=plan.forward, carries=c, slices=m, length=length, reverse=reverse)
    res = results_of(new)
    n = len(body.outputs)
    return new, tuple(res[:n]), (plan, res, length, reverse)


def _scan_vjp(cots: list[Any], saved: Any, *xs: Tensor, body: Graph, carries: int, slices: int, length: int,
              reverse: bool, checkpoints: int = 0) -> list[Any]:
    plan, res, length, reverse = saved
    n = len(body.outputs)
    stacks = dict(zip(plan.stacked, res[n:n + len(plan.stacked)], strict=True))
    internal = res[n + len(plan.stacked):]

    def cot(j: int) -> Tensor:
        return cots[j] if cots[j] is not None else zeros_like(res[j])

    ins = [*(res[j] for j in plan.pass_along), *(cot(j) for j in plan.live), *(zeros_like(xs[i]) for i in plan.acc),
           *(stacks[j] for j in plan.stacked), *internal, *(res[j] for j in plan.ys_read),
           *(xs[i] for i in plan.slices_read), *(cot(j) for j in plan.ys), *(xs[i] for i in plan.closures_read)]
    k = len(plan.pass_along) + len(plan.live) + len(plan.acc)
    back = _scan(*ins, body=plan.backward, carries=k,
                 slices=len(plan.stacked) + len(internal) + len(plan.ys_read) + len(plan.slices_read) + len(plan.ys),
                 length=length, reverse=not reverse)
    out = results_of(back)
    got: list[Any] = [None] * len(xs)
    p = len(plan.pass_along)
    for j, t in zip(plan.live, out[p:p + len(plan.live)], strict=True):
        got[j] = t
    for i, t in zip(plan.acc, out[p + len(plan.live):k], strict=True):
        got[i] = t
    for i, t in zip(plan.grad_slices, out[k:], strict=True):
        got[i] = t
    return got


def _cond_save(active: Sequence[bool], pred: Tensor, *xs: Tensor, then_branch: Graph, else_branch: Graph
               ) -> tuple[Tensor, tuple[Tensor, ...], Any]:
    new = _cond(pred, *xs, then_branch=then_branch, else_branch=else_branch)
    res = results_of(new)
    return new, tuple(res), (tuple(active), res)


def _cond_vjp(cots: list[Any], saved: Any, pred: Tensor, *xs: Tensor, then_branch: Graph, else_branch: Graph
              ) -> list[Any]:
    active, res = saved
    wrt = [i for i in range(len(xs)) if active[1 + i]]
    fl = [j for j, o in enumerate(then_branch.outputs.values()) if o.dtype.kind == "f"]

    def derive(br: Graph, names: list[str], outs: list[str]) -> tuple[Graph, dict[str, str], list[str]]:
        return (vjp_graph(br, outs, [names[i] for i in wrt], seed=Seed.INPUT),
                {COTANGENT + outs[j]: f"cot/{j}" for j in fl}, [f"grad/{names[i]}" for i in wrt])

    branches = _branch_bodies((then_branch, else_branch), xs, [(f"cot/{j}", res[j].node.meta) for j in fl], derive)
    ct = [cots[j] if cots[j] is not None else zeros_like(res[j]) for j in fl]
    back = results_of(_cond(pred, *xs, *ct, then_branch=branches[0], else_branch=branches[1]))
    got: list[Any] = [None] * (1 + len(xs))
    for i, t in zip(wrt, back, strict=True):
        got[1 + i] = t
    return got


def _while_as_scan(xs: Sequence[Tensor], cond: Graph, body: Graph, c: int, max_trips: int) -> list[Any]:
    """The inputs and attributes of the scan of `max_trips` steps that computes the while_loop:
    a done flag and the carries; each step runs the body (a cond) only while not done."""
    names = list(body.inputs)
    metas = [x.node.meta for x in xs]
    B, ins = _new_body("body", [("done", Meta((), np.dtype(bool))), *zip(names, metas, strict=True)])
    w = _inline(cond, B, {cn: ins[names[i]] for i, cn in enumerate(cond.inputs)})
    p = B[w[cond.output_node(next(iter(cond.outputs)))]]
    run = where(ins["done"], False, p)
    ident, iins = _new_body("keep", list(zip(names, metas, strict=True)))
    _finish(ident, [iins[n] for n in names[:c]])
    new = results_of(_cond(run, *(ins[n] for n in names), then_branch=body, else_branch=ident))
    _finish(B, [equal(run, False), *new])
    done = xs[0].graph.constant(None, np.array(False))
    return [[done, *xs], {"body": B, "carries": 1 + c, "slices": 0, "length": max_trips, "reverse": False}]


def _while_save(active: Sequence[bool], *xs: Tensor, cond: Graph, body: Graph, carries: int, max_trips: int
                ) -> tuple[Tensor, tuple[Tensor, ...], Any]:
    if max_trips < 0:
        raise DerivativeError("while_loop: reverse mode needs max_trips (a bound on the trip count, so that the "
                              "carries can be stored); forward mode needs none")
    ins, attrs = _while_as_scan(xs, cond, body, carries, max_trips)
    new, res, saved = _scan_save([False, *active], *ins, **attrs)
    return new, tuple(res[1:1 + carries]), (saved, ins, attrs)


def _while_vjp(cots: list[Any], saved: Any, *xs: Tensor, cond: Graph, body: Graph, carries: int, max_trips: int
               ) -> list[Any]:
    inner, ins, attrs = saved
    got = _scan_vjp([None, *cots], inner, *ins, **attrs)
    return got[1:]


for _op, _jvp, _save, _vjp in ((_scan, _scan_jvp, _scan_save, _scan_vjp), (_cond, _cond_jvp, _cond_save, _cond_vjp),
                               (_while_loop, _while_jvp, _while_save, _while_vjp)):
    _def = get_op(_op.__name__)
    object.__setattr__(_def, "jvp", _jvp)
    object.__setattr__(_def, "save", _save)
    object.__setattr__(_def, "vjp", _vjp)


# ---- reverse mode under a memory budget: binomial checkpointing --------------------------------
#
# Griewank's revolve: with s snapshots and each step advanced at most r times, C(s + r, s) steps
# can be reversed; `binomial_schedule` makes the schedule (its total of advances is Griewank's
# minimum, r * n - C(s + r, r - 1)). Reverse mode under a budget runs a scan's forward sweep
# with `checkpoints=s` (the first sweep's snapshots are its extra results) and, instead of the
# reverse scan over stacked carries and residuals, a `scan_revolve` node that follows the rest
# of the schedule: it restores snapshots, advances with the body, and at each step runs the
# body's whole VJP (the step's forward values recomputed, "taping"), storing new snapshots in the
# slots the schedule frees.

def _beta(s: int, r: int) -> int:
    return math.comb(s + r, s)


def binomial_schedule(n: int, s: int) -> list[tuple[Any, ...]]:
    """The actions that reverse n steps from the initial state with s snapshot slots:
    ("advance", a, b) steps a..b-1 from the current state, ("store", k) the current state (the
    carry entering step k) in a slot, ("restore", k) it (k = 0: the initial state), ("free", k)
    its slot, and ("turn", k): the adjoint of step k, from the current state (which enters it)."""
    acts: list[tuple[Any, ...]] = []
    stack: list[tuple[Any, ...]] = [(0, n, s, False)]
    while stack:  # (a, b, s, restore first): reverse steps a..b-1, the state entering a available
        a, b, k, restore = stack.pop()
        if isinstance(a, str):  # a deferred action
            acts.append((a, b))
            continue
        if restore:
            acts.append(("restore", a))
        length = b - a
        if length == 1:
            acts.append(("turn", a))
            continue
        if k == 0:
            for t in range(b - 1, a - 1, -1):
                if t < b - 1:
                    acts.append(("restore", a))
                if t > a:
                    acts.append(("advance", a, t))
                acts.append(("turn", t))
            continue
        r = 1
        while _beta(k, r) < length:
            r += 1
        lo, hi = max(1, length - _beta(k - 1, r)), min(length - 1, _beta(k, r - 1))
        m = a + max(lo, min(hi, _beta(k, r - 2) if r >= 2 else 1))
        acts += [("advance", a, m), ("store", m)]
        stack += [(a, m, k, True), ("free", m, 0, False), (m, b, k - 1, False)]
    return acts


def first_sweep(n: int, s: int) -> list[int]:
    """The steps whose entering carries the schedule stores before its first turn."""
    out = []
    for act in binomial_schedule(n, s):
        if act[0] == "turn":
            break
        if act[0] == "store":
            out.append(act[1])
    return out


def revolve_counts(n: int, s: int) -> tuple[int, int, int]:
    """For a scan of n steps reversed with s snapshots: (the most times a step's body is run
    forward, counting the forward sweep and not the VJP's own recomputation at its turn; the
    forward steps the reverse sweep adds, turns included; the snapshots it stores at most)."""
    runs = [1] * n  # the forward sweep
    extra = n  # each turn runs the body's whole VJP
    first = first_sweep(n, s)
    live = top = len(first)
    acts = binomial_schedule(n, s)
    start = next(i for i, a in enumerate(acts) if a[0] == "turn")
    begin = first[-1] if first else 0
    for t in range(begin, n - 1):  # from the last snapshot to the first turn
        runs[t] += 1
        extra += 1
    for act in acts[start:]:
        if act[0] == "advance":
            for t in range(act[1], act[2]):
                runs[t] += 1
            extra += act[2] - act[1]
        elif act[0] == "store":
            live += 1
            top = max(top, live)
        elif act[0] == "free":
            live -= 1
    return max(runs, default=0), extra, top


def _revolve_shape(*metas: Meta, advance: Graph, adjoint: Graph, carries: int, slices: int, cotangents: int,
                   ys: int, snapshots: int, length: int, reverse: bool) -> tuple[Meta, ...]:
    """The inputs: the initial carries (`carries`), the snapshots the forward scan stored (each
    carry stacked, (snapshots,) + its shape), the slices (`slices`, each scanned along axis 0),
    the values `advance` reads whole, the cotangents of the carries the adjoint carries back
    (`cotangents`), the stacked cotangents of the ys (`ys`), and the accumulators of the values
    read whole (the rest). `advance` (carries, slices, the rest) gives at least the carries
    unchanged; `adjoint` takes (carries, slices, the values read whole, cotangents, ys'
    cotangents, accumulators) and gives (cotangents, accumulators, the slices' cotangents).
    The results: the cotangents, the accumulators, and the slices' cotangents stacked, (n,) +
    each (n: the slices' length, or `length` when there are none)."""
    c, m = carries, slices
    k = len(advance.inputs) - c - m
    if 2 * c + m + k + cotangents + ys > len(metas):
        raise ShapeError("too few inputs")
    n = _scan_length(metas[2 * c:2 * c + m], length)
    for x, ck in zip(metas[:c], metas[c:2 * c], strict=True):
        if ck.dtype != x.dtype or ck.shape != (snapshots, *x.shape):
            raise ShapeError(f"snapshots {_describe_meta(ck)} for a carry {_describe_meta(x)}")
    inner = [*metas[:c], *(Meta(x.shape[1:], x.dtype) for x in metas[2 * c:2 * c + m])]
    rest = metas[2 * c + m:]
    outs = infer_body(advance, [*inner, *rest[:k]], "advance")
    _check_carry_metas(outs[:c], metas[:c], "advance")
    cy = rest[k + cotangents:k + cotangents + ys]
    adj = [*inner, *rest[:k + cotangents], *(Meta(y.shape[1:], y.dtype) for y in cy), *rest[k + cotangents + ys:]]
    got = infer_body(adjoint, adj, "adjoint")
    acc = len(rest) - k - cotangents - ys
    return (*got[:cotangents + acc], *(Meta((n, *g.shape), g.dtype) for g in got[cotangents + acc:]))


def _revolve_kernel(*args: Any, advance: Graph, adjoint: Graph, carries: int, slices: int, cotangents: int,
                    ys: int, snapshots: int, length: int, reverse: bool) -> Results:
    c, m, L, Y = carries, slices, cotangents, ys
    fa, fb = body_of(advance, c), body_of(adjoint)
    k = len(advance.inputs) - c - m
    init, stacks, xs = args[:c], args[c:2 * c], args[2 * c:2 * c + m]
    rest = args[2 * c + m:]
    closures, g, gys, acc = rest[:k], list(rest[k:k + L]), rest[k + L:k + L + Y], list(rest[k + L + Y:])
    n = len(xs[0]) if m else length
    order = list(range(n - 1, -1, -1)) if reverse else list(range(n))
    stacks = tuple(s if s.flags.writeable else s.copy() for s in stacks)  # the forward scan's own: written over
    slot = {t: j for j, t in enumerate(first_sweep(n, snapshots))}
    free = [j for j in range(snapshots) if j not in slot.values()]
    shapes = [*(np.shape(v) for v in init), *(x.shape[1:] for x in xs), *(np.shape(v) for v in closures),
              *(np.shape(v) for v in g), *(y.shape[1:] for y in gys), *(np.shape(v) for v in acc)]
    gx: list[Any] = []
    state, peaks = list(init), [0, 0]

    def step(t: int) -> None:
        outs, pk, end = fa.run([*state, *(x[order[t]] for x in xs), *closures])
        new, copied = _own(outs, fa.borrowed, range(c))
        peaks[0] = max(peaks[0], pk, end + copied)
        state[:] = new

    def restore(t: int) -> None:
        state[:] = [np.array(s[slot[t]], copy=True) for s in stacks] if t else list(init)

    acts = binomial_schedule(n, snapshots) if n else []
    start = next((i for i, a in enumerate(acts) if a[0] == "turn"), 0)
    if n:
        last = max(slot, default=0)
        restore(last)
        for t in range(last, n - 1):
            step(t)
    for act in acts[start:]:
        kind, t = act[0], act[1]
        if kind == "advance":
            for u in range(t, act[2]):
                step(u)
        elif kind == "restore":
            restore(t)
        elif kind == "store":
            slot[t] = free.pop()
            for s, v in zip(stacks, state, strict=True):
                s[slot[t]] = v
        elif kind == "free":
            free.append(slot.pop(t))
        else:  # turn
            i = order[t]
            outs, pk, end = fb.run([*state, *(x[i] for x in xs), *closures, *g, *(y[i] for y in gys), *acc])
            new, copied = _own(outs, fb.borrowed, range(L + len(acc)))
            peaks[1] = max(peaks[1], pk, end + copied)
            g, acc = new[:L], new[L:]
            if not gx:
                gx = [np.empty((n, *np.shape(v)), np.asarray(v).dtype) for v in outs[L + len(acc):]]
            for stack, v in zip(gx, outs[L + len(acc):], strict=True):
                stack[i] = v
    if not n:
        g, acc = [np.array(v, copy=True) for v in g], [np.array(v, copy=True) for v in acc]
        gx = [np.zeros((0, *mm.shape), mm.dtype) for mm in fb.predict(shapes)[2][L + len(acc):]]
    pa, pb = _revolve_parts(fa, fb, shapes, c, L, len(acc))
    peaks = [peaks[0] or pa, peaks[1] or pb]
    results = [*g, *acc, *gx]
    return Results.of(results, sum(v.nbytes for v in results) + sum(np.asarray(v).nbytes for v in init) + max(peaks))


def _revolve_parts(fa: _Body, fb: _Body, shapes: Shapes, c: int, L: int, A: int) -> tuple[int, int]:
    """The advance body's and the adjoint's peaks (or, if larger, their ends and copies), for
    the adjoint's input shapes (whose first ones are the advance body's)."""
    pa, ea, oa = fa.predict(shapes[:len(fa.names)])
    pb, eb, ob = fb.predict(shapes)
    return max(pa, ea + _borrowed_bytes(fa, oa, range(c))), max(pb, eb + _borrowed_bytes(fb, ob, range(L + A)))


def _revolve_peak(node: Node, metas: Sequence[Meta], out: Meta) -> int:
    a = node.attrs
    c, m, L, Y = a["carries"], a["slices"], a["cotangents"], a["ys"]
    fa, fb = body_of(a["advance"], c), body_of(a["adjoint"])
    rest = metas[2 * c + m:]
    k = len(a["advance"].inputs) - c - m
    inner = [*(x.shape for x in metas[:c]), *(x.shape[1:] for x in metas[2 * c:2 * c + m])]
    shapes = [*inner, *(x.shape for x in rest[:k + L]), *(y.shape[1:] for y in rest[k + L:k + L + Y]),
              *(x.shape for x in rest[k + L + Y:])]
    assert out.parts is not None
    pa, pb = _revolve_parts(fa, fb, shapes, c, L, len(rest) - k - L - Y)
    return sum(nbytes(p) for p in out.parts) + sum(nbytes(x) for x in metas[:c]) + max(pa, pb)


_scan_revolve = define(
    "scan_revolve", _revolve_kernel, inputs=("xs*",), shape=_revolve_shape, dtype=RESULTS, multi=True,
    attrs={"advance": Attr("graph", doc="the scan's body (its carries are what advancing needs)"),
           "adjoint": Attr("graph", doc="the body's whole VJP: a step's forward values, then its cotangents"),
           "carries": Attr("int", minimum=0, doc="how many carries"),
           "slices": Attr("int", minimum=0, doc="how many slices"),
           "cotangents": Attr("int", minimum=0, doc="how many carry cotangents flow from step to step"),
           "ys": Attr("int", minimum=0, doc="how many stacked cotangents of ys"),
           "snapshots": Attr("int", minimum=1, doc="the snapshot slots (the forward scan's checkpoints)"),
           "length": Attr("int", -1, minimum=-1, doc="the number of steps (-1: the slices' length)"),
           "reverse": Attr("bool", False, doc="the forward scan ran from the last slice")},
    peak=_revolve_peak,
    doc="the reverse sweep of a scan under a memory budget (binomial checkpointing, as Griewank's revolve): "
        "from the snapshots of the forward sweep, the carries are recomputed as the schedule says and each "
        "step's VJP runs once, in reverse order",
    grad_doc="none (it is itself a derivative, made only in a budgeted reverse-mode plan)")


class ScanBudget:
    """A scan's reverse sweep under a budget: its forward node, steps and snapshots."""

    def __init__(self, name: str, steps: int, snapshots: int, carry_bytes: int) -> None:
        self.name, self.steps, self.snapshots = name, steps, snapshots
        self.most_runs, self.extra_steps, self.stored = revolve_counts(steps, snapshots)
        self.stored_bytes = self.stored * carry_bytes

    def __str__(self) -> str:
        return (f"    {self.name}: {self.steps} steps, {self.stored} stored carries ({self.stored_bytes} B), each step "
                f"run forward at most {self.most_runs} times, {self.extra_steps} extra step evaluations")


_FORWARDS: weakref.WeakKeyDictionary[Graph, tuple[_ScanVJP, Graph]] = weakref.WeakKeyDictionary()
_BACKWARDS: weakref.WeakKeyDictionary[Graph, _ScanVJP] = weakref.WeakKeyDictionary()


def budgeted_scans(d: Graph) -> list[str]:
    """The forward scans of a reverse-mode graph that `with_snapshots` can rewrite."""
    return [n.name for n in d.nodes.values() if n.op == "scan" and n.attrs["body"] in _FORWARDS]


def with_snapshots(d: Graph, snapshots: int, steps: dict[str, int]) -> Graph:
    """`d` (a reverse-mode graph) with each scan's reverse sweep by binomial checkpointing in
    `snapshots` slots (at most the steps - 1 of each, given in `steps`) instead of stacked carries
    and residuals."""
    fwd: dict[str, tuple[Tensor, Node, _ScanVJP, Graph, int]] = {}
    src: dict[str, str] = {}  # a result of a forward scan -> that scan
    back: dict[str, tuple[Tensor, int]] = {}

    def rewrite(r: Graph, node: Node, inputs: list[str]) -> str | None:
        if node.op == "scan" and node.attrs["body"] in _FORWARDS:
            plan, body = _FORWARDS[node.attrs["body"]]
            s = max(1, min(snapshots, steps[node.name] - 1))
            a = node.attrs
            new = _scan(*(r[i] for i in inputs), body=body, carries=a["carries"], slices=a["slices"],
                        length=a["length"], reverse=a["reverse"], checkpoints=s)
            fwd[node.name] = (new, node, plan, body, s)
            return new.name
        if node.op == "result" and node.inputs[0] in fwd:
            new, old, plan, body, s = fwd[node.inputs[0]]
            src[node.name] = node.inputs[0]
            return results_of(new)[node.attrs["index"]].name if node.attrs["index"] < len(body.outputs) else new.name
        if node.op == "scan" and node.attrs["body"] in _BACKWARDS:
            plan = _BACKWARDS[node.attrs["body"]]
            new, old, _, body, s = fwd[next(src[i] for i in node.inputs if i in src)]
            c, m = old.attrs["carries"], old.attrs["slices"]
            P, L, A = len(plan.pass_along), len(plan.live), len(plan.acc)
            res = results_of(new)
            ins = [r[i] for i in inputs]
            gy_at = P + L + A + len(plan.stacked) + len(plan.internal) + len(plan.ys_read) + len(plan.slices_read)
            fins = [r[moved[x]] for x in old.inputs]
            rev = _scan_revolve(*fins[:c], *res[len(body.outputs):], *fins[c:], *ins[P:P + L],
                                *ins[gy_at:gy_at + len(plan.ys)], *ins[P + L:P + L + A],
                                advance=body, adjoint=plan.adjoint(), carries=c, slices=m, cotangents=L,
                                ys=len(plan.ys), snapshots=s, length=old.attrs["length"],
                                reverse=old.attrs["reverse"])
            back[node.name] = (rev, P)
            return rev.name
        if node.op == "result" and node.inputs[0] in back:
            rev, P = back[node.inputs[0]]
            j = node.attrs["index"]
            return results_of(rev)[j - P].name if j >= P else rev.name
        return None

    moved: dict[str, str] = {}  # where each node went

    def tracked(r: Graph, node: Node, inputs: list[str]) -> str | None:
        to = rewrite(r, node, inputs)
        moved[node.name] = to if to is not None else node.name
        return to

    return d.rebuild(tracked)[0]


# ---- batching (vmap) ---------------------------------------------------------------------------
#
# A batched control-flow node runs its bodies batched (`vmap` of each body, every input batched:
# the unbatched ones broadcast, read-only views), so that one loop serves every example. Its
# stacked results (ys, checkpoints, slices' cotangents) come out step-major, (steps, batch, ...):
# the `result` rule moves the batch axis first.

def _batch_all(xs: Sequence[Tensor], flags: Sequence[bool], stepped: set[int]) -> list[Tensor]:
    """Every input with a leading batch axis (the unbatched broadcast), and those in `stepped`
    (scanned along their first axis) step-major."""
    ref = next(x for x, f in zip(xs, flags, strict=True) if f)
    out = []
    for i, (x, f) in enumerate(zip(xs, flags, strict=True)):
        t = x if f else broadcast_batch(x, ref)
        out.append(transpose(t, (1, 0, *range(2, t.ndim))) if i in stepped else t)
    return out


def _batched(body: Graph) -> Graph:
    return vmap(body, in_axes={n: 0 for n in body.inputs}).freeze()


def _scan_batch(flags: Sequence[bool], *xs: Tensor, body: Graph, carries: int, slices: int, length: int,
                reverse: bool, checkpoints: int = 0) -> Tensor:
    """BODY: a scan of the body batched (vmap of every input), the slices step-major; the
    results' stacked parts come out step-major and `result` moves their batch axis first."""
    ins = _batch_all(xs, flags, set(range(carries, carries + slices)))
    return _scan(*ins, body=_batched(body), carries=carries, slices=slices, length=length, reverse=reverse,
                 checkpoints=checkpoints)


def _revolve_batch(flags: Sequence[bool], *xs: Tensor, advance: Graph, adjoint: Graph, carries: int, slices: int,
                   cotangents: int, ys: int, snapshots: int, length: int, reverse: bool) -> Tensor:
    """BODY: the same reverse sweep of the advance and adjoint bodies batched (vmap of every
    input), snapshots, slices and ys' cotangents step-major."""
    c, m = carries, slices
    k = len(advance.inputs) - c - m
    gy = 2 * c + m + k + cotangents
    stepped = {*range(c, 2 * c + m), *range(gy, gy + ys)}  # snapshots, slices, ys' cotangents
    return _scan_revolve(*_batch_all(xs, flags, stepped), advance=_batched(advance), adjoint=_batched(adjoint),
                         carries=c, slices=m, cotangents=cotangents, ys=ys, snapshots=snapshots, length=length,
                         reverse=reverse)


def _result_batch(flags: Sequence[bool], x: Tensor, *, index: int) -> Tensor:
    """the result of the batched tuple, its batch axis moved first where the control-flow
    node's batching made it step-major (a scan's stacked results)."""
    out = _result(x, index=index)
    node = x.node
    if node.op == "scan":
        stacked = index >= node.attrs["carries"]
    elif node.op == "scan_revolve":
        a = node.attrs
        c, m, L, Y = a["carries"], a["slices"], a["cotangents"], a["ys"]
        acc = len(node.inputs) - (2 * c + m + len(a["advance"].inputs) - c - m + L + Y)
        stacked = index >= L + acc
    else:
        stacked = False
    return transpose(out, (1, 0, *range(2, out.ndim))) if stacked else out


def _select(p: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """where(p, a, b) for a batch of bools p, (batch,), and batched a and b."""
    return where(reshape(p, (-1, *([1] * (a.ndim - 1)))) if a.ndim > 1 else p, a, b)


def _cond_batch(flags: Sequence[bool], pred: Tensor, *xs: Tensor, then_branch: Graph, else_branch: Graph) -> Tensor:
    """BODY: a cond of the branches batched (vmap of every input); with a predicate per example,
    both branches run and where() picks each example's results."""
    ins = _batch_all([pred, *xs], flags, set())
    if not flags[0]:
        return _cond(pred, *ins[1:], then_branch=_batched(then_branch), else_branch=_batched(else_branch))
    # a predicate per example: both branches run, and each example takes its own (as a branch
    # of a cond whose predicate is always true, so that the node is still a tuple of results)
    B, bins = _new_body("select", [(f"in/{i}", t.node.meta) for i, t in enumerate(ins)])
    outs = []
    for br in (then_branch, else_branch):
        vb = _batched(br)
        w = _inline(vb, B, {n: bins[f"in/{i + 1}"] for i, n in enumerate(vb.inputs)})
        outs.append([B[w[vb.output_node(o)]] for o in vb.outputs])
    sel = _finish(B, [_select(bins["in/0"], a, b) for a, b in zip(*outs, strict=True)])
    return _cond(pred.graph.constant(None, np.array(True)), *ins, then_branch=sel, else_branch=sel)


def _while_batch(flags: Sequence[bool], *xs: Tensor, cond: Graph, body: Graph, carries: int, max_trips: int
                 ) -> Tensor:
    """BODY: a while_loop of the batched body and cond that runs while some example's cond
    holds; an example whose cond fails keeps its carries (where())."""
    ins = _batch_all(xs, flags, set())
    vc, vb = _batched(cond), _batched(body)
    specs = [(f"in/{i}", t.node.meta) for i, t in enumerate(ins)]
    graphs = []
    for kind in ("cond", "body"):
        G, gins = _new_body(kind, specs)
        w = _inline(vc, G, {n: gins[f"in/{i}"] for i, n in enumerate(vc.inputs)})
        p = G[w[vc.output_node(next(iter(vc.outputs)))]]
        if kind == "cond":
            graphs.append(_finish(G, [reduce_sum(cast_op(p, "float64")) > 0.0]))
            continue
        w = _inline(vb, G, {n: gins[f"in/{i}"] for i, n in enumerate(vb.inputs)})
        new = [G[w[vb.output_node(o)]] for o in vb.outputs]
        graphs.append(_finish(G, [_select(p, a, gins[f"in/{j}"]) for j, a in enumerate(new)]))
    return _while_loop(*ins, cond=graphs[0], body=graphs[1], carries=carries, max_trips=max_trips)


for _op, _rule in ((_scan, _scan_batch), (_scan_revolve, _revolve_batch), (_result, _result_batch),
                   (_cond, _cond_batch), (_while_loop, _while_batch)):
    object.__setattr__(get_op(_op.__name__), "batch", _rule)


# ---- the functions users call -----------------------------------------------------------------

def _same_carries(op: str, outs: Sequence[Tensor], metas: Sequence[Meta], carries: Sequence[Tensor],
                  given: Sequence[Any]) -> None:
    """ShapeError naming the first carry whose shape or dtype the body changes."""
    for j, (o, m) in enumerate(zip(outs, metas, strict=False)):
        if o.shape != m.shape or o.dtype != m.dtype:
            what = f"carry {j}" + (f" (init {carries[j].name!r})" if isinstance(given[j], Operand) else "")
            raise ShapeError(f"{op}: the body changes {what} from {_describe_meta(m)} to "
                             f"{_describe_meta(o.node.meta)}")


def cond(pred: Any, true_fn: Callable[..., Any], false_fn: Callable[..., Any], *operands: Any) -> Any:
    """`true_fn(*operands)` if the bool scalar `pred` is true, else `false_fn(*operands)`, in the
    graph: both are traced (once) into the node, only the one taken runs. Both return the same
    structure (a Tensor or a tuple of them) of the same shapes and dtypes. The functions may
    use any tensor of the graph around them."""
    items, struct = _flatten(operands, "cond operands")
    home = _home("cond", [pred, *items])
    p, *ins = _tensors(home, [pred, *items])
    metas = [t.node.meta for t in ins]
    names = [f"x{i}" for i in range(len(ins))]
    traces: list[_Trace] = []
    outs, structs = [], []
    for label, fn in (("then", true_fn), ("else", false_fn)):
        tr = _Trace(home, f"{label}_branch", names, metas, traces)
        args = _unflatten(struct, tr.inputs)
        out = tr.call(fn, *args)
        o_items, o_struct = _flatten(out, f"cond's {label} branch")
        traces.append(tr)
        outs.append(o_items)
        structs.append(o_struct)
    if structs[0] != structs[1] or not outs[0]:
        raise GraphError(f"cond: the branches return {structs[0]!r} and {structs[1]!r}; they must return the same "
                         "structure of at least one tensor")
    like = [_dtype_of(v) for v in outs[0]]
    like = [a or _dtype_of(b) for a, b in zip(like, outs[1], strict=True)]
    for tr, o in zip(traces, outs, strict=True):
        tr.outputs(_names("out", len(o)), o, like)
    captured = traces[0].close()
    traces[1].close()
    node = _cond(p, *ins, *_tensors(home, captured), then_branch=traces[0].graph, else_branch=traces[1].graph)
    return _unflatten(structs[0], results_of(node))


def _dtype_of(v: Any) -> np.dtype | None:
    return v.dtype if isinstance(v, Operand) else None  # type: ignore[attr-defined]


def scan(f: Callable[[Any, Any], tuple[Any, Any]], init: Any, xs: Any = None, length: int | None = None,
         reverse: bool = False) -> tuple[Any, Any]:
    """`carry, ys = scan(f, init, xs)`: for each slice x of `xs` along axis 0 (from the last with
    `reverse`), `carry, y = f(carry, x)`; returns the final carry and the ys stacked along a new
    first axis, as jax.lax.scan. Carries and slices may be one Tensor or a tuple of them (and y
    may be None); `xs=None` needs `length`. `f` is traced once into the node's body; it may use
    any tensor of the graph around it (gradients reach those too). A body that changes a
    carry's shape or dtype is a ShapeError naming the carry."""
    c_items, c_struct = _flatten(init, "scan init")
    x_items, x_struct = _flatten(xs, "scan xs")
    if not c_items and not x_items and length is None:
        raise GraphError("scan: needs init, xs or a length")
    home = _home("scan", [*c_items, *x_items])
    carries = _tensors(home, c_items)
    slices = _tensors(home, x_items)
    if length is not None and (isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0):
        raise GraphError(f"scan: length must be a whole number >= 0, got {length!r}")
    for t in slices:
        if not t.shape:
            raise ShapeError(f"scan: slice input {t.name!r} is a scalar; xs are scanned along their first axis")
    tr = _Trace(home, "body", [*_names("carry", len(carries)), *_names("x", len(slices))],
                [*(t.node.meta for t in carries), *(Meta(t.shape[1:], t.dtype) for t in slices)])
    c_in, x_in = tr.inputs[:len(carries)], tr.inputs[len(carries):]
    out = tr.call(f, _unflatten(c_struct, c_in), _unflatten(x_struct, x_in))
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise GraphError("scan: f must return a pair (carry, y)")
    new, new_struct = _flatten(out[0], "scan carry")
    if new_struct != c_struct:
        raise GraphError(f"scan: f returns a carry of structure {new_struct!r}, init has {c_struct!r}")
    y_items, y_struct = _flatten(out[1], "scan y")
    outs = tr.outputs([*_names("carry", len(new)), *_names("y", len(y_items))], [*new, *y_items],
                      [t.dtype for t in carries] + [None] * len(y_items))
    _same_carries("scan", outs, [t.node.meta for t in c_in], carries, c_items)
    captured = tr.close()
    node = _scan(*carries, *slices, *_tensors(home, captured), body=tr.graph, carries=len(carries),
                 slices=len(slices), length=-1 if length is None else int(length), reverse=bool(reverse))
    res = results_of(node)
    return _unflatten(c_struct, res[:len(carries)]), _unflatten(y_struct, res[len(carries):])


def while_loop(cond_fn: Callable[[Any], Any], body_fn: Callable[[Any], Any], init: Any,
               max_trips: int | None = None) -> Any:
    """`carry = init; while cond_fn(carry): carry = body_fn(carry)`, in the graph (at most
    `max_trips` times when given); returns the final carry. `cond_fn` gives a bool scalar; the
    carry may be one Tensor or a tuple of them, and keeps its shapes and dtypes. Forward mode
    differentiates it always; reverse mode needs `max_trips` (the trip count bounded, so that
    the carries can be stored)."""
    c_items, c_struct = _flatten(init, "while_loop init")
    if not c_items:
        raise GraphError("while_loop: needs an init carry")
    if max_trips is not None and (isinstance(max_trips, bool) or not isinstance(max_trips, (int, np.integer))
                                  or max_trips < 0):
        raise GraphError(f"while_loop: max_trips must be a whole number >= 0, got {max_trips!r}")
    home = _home("while_loop", c_items)
    carries = _tensors(home, c_items)
    names = _names("carry", len(carries))
    metas = [t.node.meta for t in carries]
    tc = _Trace(home, "cond", names, metas)
    p = tc.call(cond_fn, _unflatten(c_struct, tc.inputs))
    tb = _Trace(home, "body", names, metas, [tc])
    new = tb.call(body_fn, _unflatten(c_struct, tb.inputs))
    new_items, new_struct = _flatten(new, "while_loop body")
    if new_struct != c_struct:
        raise GraphError(f"while_loop: body_fn returns a carry of structure {new_struct!r}, init has {c_struct!r}")
    p_items, p_struct = _flatten(p, "while_loop cond")
    if p_struct != "*":
        raise GraphError("while_loop: cond_fn must return one bool scalar")
    tc.outputs(["pred"], p_items, [None])
    outs = tb.outputs(names, new_items, [t.dtype for t in carries])
    _same_carries("while_loop", outs, metas, carries, c_items)
    captured = tc.close()
    tb.close()
    node = _while_loop(*carries, *_tensors(home, captured), cond=tc.graph, body=tb.graph, carries=len(carries),
                       max_trips=-1 if max_trips is None else int(max_trips))
    return _unflatten(c_struct, results_of(node))


__all__ = ["body_of", "cond", "infer_body", "results_of", "scan", "while_loop"]
