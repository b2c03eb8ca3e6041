"""Derivative transforms: a graph in, a derivative graph out.

`jvp_graph` copies the forward graph and, node by node in the same sweep, adds each value's
tangent (forward mode: the lecture's a4dot = a2dot*a3 + a2*a3dot). `vjp_graph` copies the
forward graph and then adds the backward sweep: from the seeds at the outputs back to the
leaves, each node's adjoint sent to its inputs by the op's VJP rules and summed where a value is
used several times. Both use only the rules in the op registry, written with cgraph ops, so a
derivative graph can be run, saved, drawn and differentiated again.

Only float values carry derivatives; rules never see broadcasting: a cotangent is summed back
to its input's shape here, and a tangent broadcast to its output's shape.

A control-flow node (an op with `multi`) has a tuple of results, read by `result` nodes
(`project`). Its rules build a new node in its place: `jvp(tangents, None, *xs, **attrs)`
gives (the new tuple, its results standing for the node's, their tangents), where the new node
computes values and tangents together; `save(active, *xs, **attrs)` gives (the new tuple, its
results, residuals) for reverse mode's forward sweep, `active[i]` saying whether input i needs
a cotangent, and `vjp(cotangents, residuals, *xs, **attrs)` the cotangent of each input (None
for none) from those of the results (None for zero).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any

import numpy as np

from cgraph.errors import DerivativeError
from cgraph.graph import Graph, Node, Tensor
from cgraph.ops.array import broadcast_to, shape_like, sum_to_like, zeros_like
from cgraph.ops.elementwise import add, cast
from cgraph.ops.registry import NONDIFF, ZERO, get_op

TANGENT = "tangent:"  # prefix of the inputs that carry tangents in a jvp graph
COTANGENT = "cotangent:"  # prefix of the inputs that carry output cotangents in a vjp graph
# With `intermediates=True`, the prefixes of the extra outputs that expose every node's value,
# tangent (jvp) or adjoint (vjp), keyed by the forward node's name (for tracing and drawing).
NODE_VALUE = "node:value:"
NODE_TANGENT = "node:tangent:"
NODE_ADJOINT = "node:adjoint:"


class Seed(enum.Enum):
    """Where the reverse sweep starts: a cotangent input for each output (a VJP), or 1 for one
    scalar output (a gradient)."""

    INPUT = "input"
    ONES = "ones"


def _needed(g: Graph, targets: Sequence[str]) -> list[Node]:
    """The nodes `targets` depend on, in creation order."""
    need = g.needed_by(targets)
    return [n for n in g.nodes.values() if n.name in need]


def check_wrt(g: Graph, wrt: Sequence[str]) -> None:
    seen = set()
    for w in wrt:
        if w in seen:
            raise DerivativeError(f"wrt {w!r} is given twice")
        seen.add(w)
        node = g.nodes.get(w)
        if node is None or node.op not in ("input", "param"):
            raise DerivativeError(f"wrt {w!r}: derivatives are taken wrt inputs and params of "
                                  f"graph {g.name!r}")
        if node.dtype.kind != "f":
            raise DerivativeError(f"wrt {w!r}: a {node.dtype} {node.op} has no derivative")


def differentiable(node: Node) -> bool:
    """Whether a node carries derivatives: a float value, or a tuple with a float result."""
    if node.parts is not None:
        return any(p.dtype.kind == "f" for p in node.parts)
    return node.dtype.kind == "f"


def _fit(x: Tensor, like: Tensor, down: bool) -> Tensor:
    """x made to have like's dtype and shape: summed down (cotangents) or broadcast up
    (tangents) where broadcasting made them differ."""
    if x.dtype != like.dtype:
        x = cast(x, like.dtype)
    if tuple(x.shape) != tuple(like.shape):
        x = sum_to_like(x, like) if down else broadcast_to(x, shape_like(like))
    return x


def jvp_graph(g: Graph, of: Sequence[str], wrt: Sequence[str], share_params: bool = True,
              intermediates: bool = False) -> Graph:
    """A graph with outputs `of` and then `tangent:<o>` for each, in that order, taking
    inputs `tangent:<w>`.

    Values and tangents are built in one sweep, so the schedule interleaves them.
    `intermediates=True` also outputs (after those) `node:value:<n>` for every node `of` needs
    and `node:tangent:<n>` for every node that has a tangent (the others' tangents are zero);
    this keeps every value alive, so it is for looking at a sweep, not for running one cheaply."""
    check_wrt(g, wrt)
    targets = [g.output_node(o) for o in of]
    tangent: dict[str, Any] = {}  # a tuple's tangent: a tuple of its results' (None: zero)
    parts: dict[str, tuple[Tensor, ...]] = {}  # a control-flow node's results, where a new node stands for it

    def stand_in(d: Graph, node: Node, inputs: list[str]) -> str | None:
        """A control-flow node with a tangent: the node of its JVP rule, which computes values
        and tangents together, stands for it; a result of it, that node's result."""
        if node.is_leaf:
            return None
        opdef = get_op(node.op)
        if opdef.project and node.inputs[0] in parts:
            return parts[node.inputs[0]][node.attrs["index"]].name
        ts = [tangent.get(s) for s in node.inputs]
        if opdef.multi and differentiable(node) and any(t is not None for t in ts):
            with d.scope("jvp"):
                new, parts[node.name], tangent[node.name] = opdef.jvp(ts, None, *[d[s] for s in inputs],
                                                                     **node.attrs)
            return new.name
        return None

    def add_tangent(d: Graph, node: Node, name: str) -> None:
        """Build `node`'s tangent right after its copy (values and tangents in one sweep)."""
        if node.is_leaf:
            if node.name in wrt:
                tangent[node.name] = d.input(TANGENT + node.name, node.shape, node.dtype)
            return
        opdef = get_op(node.op)
        ts = [tangent.get(s) for s in node.inputs]
        if opdef.project:  # its tuple's tangent is a tuple
            t = ts[0][node.attrs["index"]] if ts[0] is not None else None
            if t is not None:
                tangent[node.name] = t
            return
        if opdef.multi or not differentiable(node) or all(t is None for t in ts):
            return
        out = d[name]
        xs = [d[s] for s in d.nodes[name].inputs]
        with d.scope("jvp"):
            if callable(opdef.jvp):
                total = opdef.jvp(ts, out, *xs, **node.attrs)
            else:
                total = None
                for i, t in enumerate(ts):
                    if t is None:
                        continue
                    rule = opdef.jvp_rule(i, node.name)
                    if rule is NONDIFF or rule is ZERO:
                        continue
                    c = rule(t, out, *xs, **node.attrs)
                    total = c if total is None else add(total, c)
            if total is not None:
                tangent[node.name] = _fit(total, out, down=False)

    d, where = g.rebuild(stand_in, nodes=g.needed_by([*targets, *wrt]), copy_values=not share_params,
                         then=add_tangent)
    d.name = f"{g.name}/jvp"
    for o, t in zip(of, targets, strict=True):
        d.output(o, d[where[t]])
    with d.scope("jvp"):
        for o, t in zip(of, targets, strict=True):
            tan = tangent.get(t)
            d.output(TANGENT + o, tan if tan is not None else zeros_like(d[where[t]]))
    if intermediates:
        for node in _needed(g, targets):
            if node.parts is not None:
                continue
            d.output(NODE_VALUE + node.name, d[where[node.name]])
            if node.name in tangent:
                d.output(NODE_TANGENT + node.name, tangent[node.name])
    return d


def vjp_graph(g: Graph, of: Sequence[str], wrt: Sequence[str], seed: Seed = Seed.INPUT,
              share_params: bool = True, grad_prefix: str = "grad/", intermediates: bool = False) -> Graph:
    """A graph with outputs `of` and then `<grad_prefix><w>` for each wrt name, in that order
    (the prefix grows to `grad/grad/` when `of` already holds such names).

    `Seed.INPUT`: inputs `cotangent:<o>` carry the output cotangents (a VJP); `Seed.ONES`: the
    single output `of` must be a scalar, and its cotangent is 1 (a gradient).
    `intermediates=True` also outputs (after those) `node:value:<n>` for every forward node and
    `node:adjoint:<n>` for every node the backward sweep reaches (on a path from wrt to `of`).
    """
    seed = Seed(seed)
    check_wrt(g, wrt)
    targets = [g.output_node(o) for o in of]
    forward = _needed(g, [*targets, *wrt])

    # Derivatives flow through float nodes from the wrt leaves to the targets: a sweep forward.
    reach = set(wrt)
    for node in forward:
        if differentiable(node) and not node.is_leaf and any(i in reach for i in node.inputs):
            reach.add(node.name)
    active = reach & {n.name for n in forward}

    parts: dict[str, tuple[Tensor, ...]] = {}  # an active control-flow node's results (its saving form's)
    residuals: dict[str, Any] = {}

    def save(d: Graph, node: Node, inputs: list[str]) -> str | None:
        """An active control-flow node in the form that keeps what its VJP reads; a result of
        one, that form's result."""
        if node.is_leaf:
            return None
        opdef = get_op(node.op)
        if opdef.project and node.inputs[0] in parts:
            return parts[node.inputs[0]][node.attrs["index"]].name
        if opdef.multi and node.name in active:
            needs = [s in active for s in node.inputs]
            assert opdef.save is not None, node.op
            new, parts[node.name], residuals[node.name] = opdef.save(needs, *[d[s] for s in inputs], **node.attrs)
            return new.name
        return None

    d, where = g.rebuild(save, nodes={n.name for n in forward}, copy_values=not share_params)
    d.name = f"{g.name}/vjp"
    for o, t in zip(of, targets, strict=True):
        d.output(o, d[where[t]])

    cot: dict[str, Any] = {}  # a tuple's cotangent: a list of its results' (None: zero)
    for o, t in zip(of, targets, strict=True):
        node = g.nodes[t]
        if seed is Seed.ONES:
            if node.shape != ():
                raise DerivativeError(f"output {o!r} has shape {node.shape}: a gradient needs a "
                                      "scalar output (use vjp for others)")
            s = d.constant(COTANGENT + o, np.ones((), node.dtype))
        else:
            s = d.input(COTANGENT + o, node.shape, node.dtype)
        if t in active:
            cot[t] = s if t not in cot else add(cot[t], s)
    with d.scope("vjp"):
        for node in reversed(forward):
            if node.is_leaf or node.name not in cot:
                continue
            g_out = cot[node.name]
            xs = [d[where[s]] for s in node.inputs]
            opdef = get_op(node.op)
            if opdef.project:
                src, i = node.inputs[0], node.attrs["index"]
                got = cot.setdefault(src, [None] * len(g.nodes[src].parts))  # type: ignore[arg-type]
                got[i] = g_out if got[i] is None else add(got[i], g_out)
                continue
            if opdef.multi:
                cs = opdef.vjp(g_out, residuals[node.name], *xs, **node.attrs)
            else:
                out = d[where[node.name]]
                cs = [None] * len(xs)
                for i, src in enumerate(node.inputs):
                    if src not in active:
                        continue
                    rule = opdef.vjp_rule(i, node.name)
                    if rule is NONDIFF or rule is ZERO:
                        continue
                    cs[i] = rule(g_out, out, *xs, **node.attrs)
            for i, src in enumerate(node.inputs):
                if src not in active or cs[i] is None:
                    continue
                c = _fit(cs[i], xs[i], down=True)
                cot[src] = c if src not in cot else add(cot[src], c)
        grads = {w: cot[w] if w in cot else zeros_like(d[w]) for w in wrt}
    while any(grad_prefix + w in of for w in wrt):  # differentiating a gradient graph again
        grad_prefix = "grad/" + grad_prefix
    for w in wrt:
        d.output(grad_prefix + w, grads[w])
    if intermediates:
        for node in forward:
            if node.parts is not None:
                continue
            d.output(NODE_VALUE + node.name, d[where[node.name]])
            if node.name in cot:
                d.output(NODE_ADJOINT + node.name, cot[node.name])
    return d


def gradient_graph(g: Graph, of: str, wrt: Sequence[str] | str) -> Graph:
    """The gradient of the scalar output `of` as a new, independent graph (params copied) with
    outputs `of` and `grad/<w>` for each wrt name: it runs, saves, renders and differentiates
    like any graph (forward over it gives Hessian-vector products)."""
    wrt = [wrt] if isinstance(wrt, str) else list(wrt)
    d = vjp_graph(g, [of], wrt, seed=Seed.ONES, share_params=False)
    d.name = f"{g.name}/grad"
    return d
