"""Derivative transforms: a graph in, a derivative graph out (DESIGN.md decision 2).

`jvp_graph` copies the forward graph and, node by node in the same sweep, adds each value's
tangent (forward mode: the lecture's a4dot = a2dot*a3 + a2*a3dot). `vjp_graph` copies the
forward graph and then adds the backward sweep: from the seeds at the outputs back to the
leaves, each node's adjoint sent to its inputs by the op's VJP rules and summed where a value is
used several times. Both use only the rules in the op registry, written with cgraph ops, so a
derivative graph can be run, saved, drawn and differentiated again.

Only float values carry derivatives; rules never see broadcasting: a cotangent is summed back
to its input's shape here, and a tangent broadcast to its output's shape.
"""

from __future__ import annotations

from collections.abc import Sequence

import networkx as nx
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


def _needed(g: Graph, targets: Sequence[str]) -> list[Node]:
    """The nodes `targets` depend on, in creation order."""
    need = g.needed_by(targets)
    return [n for n in g.nodes.values() if n.name in need]


def _copy(g: Graph, d: Graph, node: Node, share_params: bool) -> None:
    if node.is_leaf:
        value = g._values.get(node.name)
        if value is not None and not share_params:
            value = value.copy()
        d._add_leaf(node.op, node.name, node.shape, node.dtype, value, node.attrs)
    else:
        d.add_node(node.op, node.inputs, node.attrs, name=node.name)


def check_wrt(g: Graph, wrt: Sequence[str]) -> None:
    for w in wrt:
        node = g.nodes.get(w)
        if node is None or node.op not in ("input", "param"):
            raise DerivativeError(f"wrt {w!r}: derivatives are taken wrt inputs and params of "
                                  f"graph {g.name!r}")
        if node.dtype.kind != "f":
            raise DerivativeError(f"wrt {w!r}: a {node.dtype} {node.op} has no derivative")


def output_nodes(g: Graph, of: Sequence[str]) -> list[str]:
    missing = [o for o in of if o not in g._outputs]
    if missing:
        raise DerivativeError(f"graph {g.name!r} has no output {missing[0]!r} "
                              f"(outputs: {', '.join(g._outputs) or 'none'})")
    return [g._outputs[o] for o in of]


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
    targets = output_nodes(g, of)
    d = Graph(f"{g.name}/jvp")
    d.metadata = dict(g.metadata)
    tangent: dict[str, Tensor] = {}
    for node in _needed(g, [*targets, *wrt]):
        _copy(g, d, node, share_params)
        if node.is_leaf:
            if node.name in wrt:
                tangent[node.name] = d.input(TANGENT + node.name, node.shape, node.dtype)
            continue
        if node.dtype.kind != "f":
            continue
        ts = [tangent.get(s) for s in node.inputs]
        if not any(t is not None for t in ts):
            continue
        out = d[node.name]
        xs = [d[s] for s in node.inputs]
        opdef = get_op(node.op)
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
    for o, t in zip(of, targets, strict=True):
        d.output(o, d[t])
    with d.scope("jvp"):
        for o, t in zip(of, targets, strict=True):
            tan = tangent.get(t)
            d.output(TANGENT + o, tan if tan is not None else zeros_like(d[t]))
    if intermediates:
        for node in _needed(g, targets):
            d.output(NODE_VALUE + node.name, d[node.name])
            if node.name in tangent:
                d.output(NODE_TANGENT + node.name, tangent[node.name])
    return d


def vjp_graph(g: Graph, of: Sequence[str], wrt: Sequence[str], seed: str = "input",
              share_params: bool = True, grad_prefix: str = "grad/", intermediates: bool = False) -> Graph:
    """A graph with outputs `of` and then `<grad_prefix><w>` for each wrt name, in that order
    (the prefix grows to `grad/grad/` when `of` already holds such names).

    `seed="input"`: inputs `cotangent:<o>` carry the output cotangents (a VJP);
    `seed="ones"`: the single output `of` must be a scalar, and its cotangent is 1 (a gradient).
    `intermediates=True` also outputs (after those) `node:value:<n>` for every forward node and
    `node:adjoint:<n>` for every node the backward sweep reaches (on a path from wrt to `of`).
    """
    check_wrt(g, wrt)
    targets = output_nodes(g, of)
    d = Graph(f"{g.name}/vjp")
    d.metadata = dict(g.metadata)
    forward = _needed(g, [*targets, *wrt])
    for node in forward:
        _copy(g, d, node, share_params)
    for o, t in zip(of, targets, strict=True):
        d.output(o, d[t])

    # Derivatives flow through float nodes from the wrt leaves to the targets.
    dag = g.dependencies()
    floats = dag.subgraph([n.name for n in forward if n.dtype.kind == "f"])
    reach = set(wrt)
    for w in wrt:
        if w in floats:
            reach |= nx.descendants(floats, w)
    active = reach & g.needed_by(targets, dag)

    cot: dict[str, Tensor] = {}
    for o, t in zip(of, targets, strict=True):
        node = g.nodes[t]
        if seed == "ones":
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
            out = d[node.name]
            xs = [d[s] for s in node.inputs]
            opdef = get_op(node.op)
            for i, src in enumerate(node.inputs):
                if src not in active:
                    continue
                rule = opdef.vjp_rule(i, node.name)
                if rule is NONDIFF or rule is ZERO:
                    continue
                c = _fit(rule(g_out, out, *xs, **node.attrs), xs[i], down=True)
                cot[src] = c if src not in cot else add(cot[src], c)
        grads = {w: cot[w] if w in cot else zeros_like(d[w]) for w in wrt}
    while any(grad_prefix + w in of for w in wrt):  # differentiating a gradient graph again
        grad_prefix = "grad/" + grad_prefix
    for w in wrt:
        d.output(grad_prefix + w, grads[w])
    if intermediates:
        for node in forward:
            d.output(NODE_VALUE + node.name, d[node.name])
            if node.name in cot:
                d.output(NODE_ADJOINT + node.name, cot[node.name])
    return d


def gradient_graph(g: Graph, of: str, wrt: Sequence[str] | str) -> Graph:
    """The gradient of the scalar output `of` as a new, independent graph (params copied) with
    outputs `of` and `grad/<w>` for each wrt name: it runs, saves, renders and differentiates
    like any graph (forward over it gives Hessian-vector products)."""
    wrt = [wrt] if isinstance(wrt, str) else list(wrt)
    d = vjp_graph(g, [of], wrt, seed="ones", share_params=False)
    d.name = f"{g.name}/grad"
    return d
