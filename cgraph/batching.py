"""vmap: a graph in, the same computation for a batch of examples out.

`vmap(g, in_axes={"x": 0})` copies `g` node by node (`Graph.rebuild`, as the derivative
transforms do); a node none of whose inputs is batched is copied as it is (params, constants
and everything computed from them alone are shared by every example); a node with a batched
input is replaced by its op's batching rule (declared with the op, cgraph/ops/registry.py),
written with cgraph ops, so a batched graph runs, saves, draws and is differentiated like any
other. Inside, a batched value has its batch axis first; every output gets one, repeated (a
read-only view) where it does not depend on the batched inputs.

An op without a batching rule (a user op defined without `batch=`) is applied to each example
and the results stacked, which needs the batch size when vmap runs: give `size`, or batch an
input whose batch size is static. Otherwise BatchingError names the op. A result that is not
an array (a node holding a tuple of results) stays one node per example until the ops that read
arrays from it, which are then applied to each example too.

Batching a gradient graph gives per-example gradients (`cg.vmap(cg.gradient_graph(g, of="loss",
wrt=["W"]), in_axes={"x": 0, "y": 0})`), and batching the tangent (or cotangent) input of a
forward (reverse) mode graph pushes many directions through one sweep: `cg.jacobian` does so.
"""

from __future__ import annotations

from collections.abc import Mapping

from cgraph.errors import BatchingError
from cgraph.graph import Graph, Node, Tensor
from cgraph.ops.array import broadcast_batch, concat, expand_dims, getitem, transpose
from cgraph.ops.registry import Unbatched, apply, get_op
from cgraph.shapes import format_shape


def vmap(g: Graph, in_axes: Mapping[str, int], size: int | None = None) -> Graph:
    """A new graph computing `g` for a batch of examples: each input named in `in_axes` gains
    a batch axis at the position given (its feeds stack the examples there), every output
    gains a leading batch axis, and params are shared. `size` is the batch size (None: known
    at run time; every batched input must then have the same size at run time)."""
    if not isinstance(in_axes, Mapping) or not in_axes:
        raise BatchingError("vmap needs in_axes: a dict of input name to the position of its batch axis")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise BatchingError(f"vmap: size must be a non-negative int or None, got {size!r}")
    for name, axis in in_axes.items():
        node = g.nodes.get(name)
        if node is None or node.op != "input":
            raise BatchingError(f"vmap: {name!r} is not an input of graph {g.name!r} "
                                f"(inputs: {', '.join(g.inputs) or 'none'})")
        if not isinstance(axis, int) or isinstance(axis, bool) or not -len(node.shape) - 1 <= axis <= len(node.shape):
            raise BatchingError(f"vmap: in_axes[{name!r}] = {axis!r} is not a position in an input of "
                                f"{len(node.shape)} axes")
    scope = _free_scope(g)
    batched: set[str] = set()
    apart: dict[str, list[str]] = {}  # values kept as one node per example (a tuple of results)

    def batch_node(d: Graph, node: Node, inputs: list[str]) -> str | None:
        if node.name in in_axes:
            axis = in_axes[node.name] % (len(node.shape) + 1)
            t = d.input(node.name, (*node.shape[:axis], size, *node.shape[axis:]), node.dtype)
            if axis:
                with d.scope(scope):
                    t = transpose(t, (axis, *(i for i in range(t.ndim) if i != axis)))
            batched.add(t.name)
            return t.name
        flags = tuple(s in batched for s in inputs)
        if node.is_leaf or not any(flags):
            return None
        xs = [d[s] for s in inputs]
        opdef = get_op(node.op)
        with d.scope(scope):
            if opdef.batch is not None and not any(s in apart for s in inputs):
                out = opdef.batch(flags, *xs, **node.attrs)
            else:
                rows = _each_example(node, flags, xs, size, [apart.get(s) for s in inputs])
                if node.dtype.kind == "O":  # not an array (a control-flow node's tuple of results): kept apart
                    apart[rows[0].name] = [r.name for r in rows]
                    batched.add(rows[0].name)
                    return rows[0].name
                out = concat([expand_dims(r, 0) for r in rows], axis=0)
        if isinstance(out, Unbatched):
            return out.value.name
        _check(node, out)
        batched.add(out.name)
        return out.name

    d, where = g.rebuild(batch_node, nodes=list(g.nodes))
    d.name = f"{g.name}/vmap"
    d.state = dict(g.state)
    ref = next(d[where[n]] for n in in_axes)
    for o, out in g.outputs.items():
        t = d[where[out.name]]
        if t.name not in batched:
            with d.scope(scope):
                t = broadcast_batch(t, ref)
        d.output(o, t)
    return d


def _each_example(node: Node, flags: tuple[bool, ...], xs: list[Tensor], size: int | None,
                  apart: list[list[str] | None]) -> list[Tensor]:
    """The op applied to each example (for an op without a batching rule): needs the batch
    size now."""
    n = next((len(a) for a in apart if a is not None), None)
    if n is None:
        n = next(x.shape[0] for x, b in zip(xs, flags, strict=True) if b)
    n = size if n is None else n
    if n is None:
        raise BatchingError(f"{node.name} ({node.op}): the op has no batching rule, and applying it to each example "
                            "needs a batch size known when vmap runs (give vmap size=, or define the op with batch=)")
    if n == 0:
        raise BatchingError(f"{node.name} ({node.op}): the op has no batching rule, and a batch of 0 examples "
                            "cannot be stacked")
    g = xs[0].graph
    return [apply(node.op, *[g[a[i]] if a is not None else getitem(x, (i,)) if b else x
                             for x, b, a in zip(xs, flags, apart, strict=True)], **node.attrs) for i in range(n)]


def _check(node: Node, out: Tensor) -> None:
    """A batching rule's result has the node's dtype and a batch axis before its shape (a
    control-flow node's results are checked as `result` nodes take them)."""
    if node.parts is not None:
        return
    ok = out.dtype == node.dtype and out.ndim == len(node.shape) + 1 and all(
        a is None or b is None or a == b for a, b in zip(out.shape[1:], node.shape, strict=True))
    if not ok:
        raise BatchingError(f"{node.name} ({node.op}): the batching rule gave {format_shape(out.shape)} {out.dtype} "
                            f"for an example of {format_shape(node.shape)} {node.dtype}")


def _free_scope(g: Graph) -> str:
    """A scope name no node of `g` starts with, so that new nodes never take a name a later
    copied node needs."""
    scope, i = "vmap", 1
    while any(n.startswith(scope + "/") for n in g.nodes):
        i += 1
        scope = f"vmap{i}"
    return scope


__all__ = ["vmap"]
