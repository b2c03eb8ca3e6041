"""Graph simplification: small passes that every plan goes through before it is scheduled.

Derivative rules are written once per op and know nothing of their neighbours, so a derivative
graph repeats work (forward mode's `cos(a)` when `cos(a)` is already an output), multiplies by
ones and adds zeros. The passes run together in one `Graph.rebuild`, node by node in creation
order (each node meets its inputs already simplified), and say where each old node went:

- `fold`: an op whose inputs are all constants becomes a constant (small results only, so a
  broadcast zero is never materialised).
- `identities`: the rules each op declares with its definition (`identity` in the registry:
  `x * 1`, `x + 0`, `neg(neg(x))`, a transpose of a transpose, a cast or a reshape that changes
  nothing, stop_gradient): a node becomes the node its rule names when that has the node's
  shape and dtype.
- `cse`: two nodes with the same op, inputs and attributes become one; so do equal small
  constants.

Dead code needs no pass: a plan only schedules what its targets depend on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import numpy as np

from cgraph.graph import Graph, Node
from cgraph.ops.registry import Arg, Subgraph, get_op

FOLD_LIMIT = 1024  # the most elements a folded constant may have


def _same(d: Graph, name: str, node: Node) -> bool:
    """Can `name` stand for `node`: same static shape and dtype."""
    other = d.nodes[name]
    return other.shape == node.shape and other.dtype == node.dtype


class _Rewrite:
    """The chosen passes as one rewrite, applied node by node in one `Graph.rebuild`: a node is
    folded, else replaced by what its op's identity rule names, else merged with an equal one."""

    def __init__(self, g: Graph, passes: Sequence[str]) -> None:
        unknown = [p for p in passes if p not in PASSES]
        if unknown:
            raise ValueError(f"unknown pass {unknown[0]!r}; passes: {', '.join(PASSES)}")
        self.g = g
        self.passes = set(passes)
        self.seen: dict[Any, str] = {}

    def __call__(self, d: Graph, node: Node, inputs: list[str]) -> str | None:
        if node.is_leaf:
            return self._merge(d, node.name, self.g) if "cse" in self.passes and node.op == "constant" else None
        if "fold" in self.passes:
            to = self._fold(d, node, inputs)
            if to is not None:
                return self._merge(d, to, d) if "cse" in self.passes else to
        if "identities" in self.passes:
            to = self._identity(d, node, inputs)
            if to is not None:
                return to
        if "cse" in self.passes:
            key = (node.op, tuple(inputs),
                   repr(sorted((k, _attr_key(v)) for k, v in node.attrs.items())) if node.attrs else "")
            if key in self.seen:
                return self.seen[key]
            self.seen[key] = node.name
        return None

    def _fold(self, d: Graph, node: Node, inputs: list[str]) -> str | None:
        """An op whose inputs are all (small) constants becomes a constant."""
        if not inputs or None in node.shape or math.prod(cast(tuple[int, ...], node.shape)) > FOLD_LIMIT:
            return None
        if get_op(node.op).multi or get_op(node.op).project:
            return None  # a loop is never run while a plan is made
        nodes = d.nodes
        if any(nodes[s].op != "constant" for s in inputs):
            return None
        values = [d.value(s) for s in inputs]
        result = np.array(get_op(node.op).bind(node)(*values), dtype=node.dtype)
        return d.add_leaf("constant", d.fresh_name("folded"), result.shape, result.dtype, result).name

    def _identity(self, d: Graph, node: Node, inputs: list[str]) -> str | None:
        rule = get_op(node.op).identity
        if rule is None or not inputs:
            return None
        args = []
        nodes = d.nodes
        for name in inputs:
            n = nodes[name]
            value = d.value(name) if n.op == "constant" else None
            args.append(Arg(name, n.op, n.attrs, n.inputs, value if value is not None and value.size <= FOLD_LIMIT
                            else None))
        to = rule(node, args)
        return to if to is not None and _same(d, to, node) else None

    def _merge(self, d: Graph, name: str, where: Graph) -> str | None:
        """An equal small constant seen before stands for constant `name` (of graph `where`)."""
        v = where.value(name)
        if v.size > FOLD_LIMIT:
            return None
        key = ("constant", v.dtype.str, v.shape, v.tobytes())
        if key in self.seen:
            return self.seen[key]
        self.seen[key] = name
        return None if where is self.g else name


def _attr_key(value: Any) -> Any:
    """An attribute as a key: a body (a graph) by identity, as it has no value equality."""
    return ("graph", id(value)) if isinstance(value, Subgraph) else value


def _run(g: Graph, passes: Sequence[str]) -> tuple[Graph, dict[str, str]]:
    return g.rebuild(_Rewrite(g, passes))


def fold(g: Graph) -> tuple[Graph, dict[str, str]]:
    """Only the folding pass (`simplify` runs the chosen passes together)."""
    return _run(g, ("fold",))


def identities(g: Graph) -> tuple[Graph, dict[str, str]]:
    """Only the identities pass."""
    return _run(g, ("identities",))


def cse(g: Graph) -> tuple[Graph, dict[str, str]]:
    """Only common subexpression elimination."""
    return _run(g, ("cse",))


PASSES = ("fold", "identities", "cse")
DEFAULT = PASSES


def simplify(g: Graph, targets: Sequence[str], passes: Sequence[str] = DEFAULT
             ) -> tuple[Graph, list[str]]:
    """The graph with `passes` applied (together, in one rebuild), and where each target went."""
    d, where = _run(g, passes)
    return d, [where[t] for t in targets]
