"""Graph simplification: small passes that every plan goes through before it is scheduled.

Derivative rules are written once per op and know nothing of their neighbours, so a derivative
graph repeats work (forward mode's `cos(a)` when `cos(a)` is already an output), multiplies by
ones and adds zeros. Each pass rebuilds the graph node by node with `Graph.rebuild` (so shapes
are re-inferred and checked) and returns where each old node went:

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

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from cgraph.graph import Graph, Node
from cgraph.ops.registry import Arg, get_op

FOLD_LIMIT = 1024  # the most elements a folded constant may have


def _const(d: Graph, name: str) -> np.ndarray | None:
    return d.value(name) if d.nodes[name].op == "constant" else None


def _same(d: Graph, name: str, node: Node) -> bool:
    """Can `name` stand for `node`: same static shape and dtype."""
    other = d.nodes[name]
    return other.shape == node.shape and other.dtype == node.dtype


def fold(g: Graph) -> tuple[Graph, dict[str, str]]:
    def rewrite(d: Graph, node: Node, inputs: list[str]) -> str | None:
        if node.is_leaf or not inputs or None in node.shape:
            return None
        if int(np.prod(node.shape)) > FOLD_LIMIT:
            return None
        values = [_const(d, s) for s in inputs]
        if any(v is None for v in values):
            return None
        result = np.array(get_op(node.op).bind(node)(*values), dtype=node.dtype)
        return d.add_leaf("constant", d.fresh_name("folded"), result.shape, result.dtype, result).name

    return g.rebuild(rewrite)


def identities(g: Graph) -> tuple[Graph, dict[str, str]]:
    def arg(d: Graph, name: str) -> Arg:
        node = d.nodes[name]
        value = _const(d, name)
        small = value if value is not None and value.size <= FOLD_LIMIT else None
        return Arg(name, node.op, node.attrs, node.inputs, small)

    def rewrite(d: Graph, node: Node, inputs: list[str]) -> str | None:
        if node.is_leaf:
            return None
        rule = get_op(node.op).identity
        if rule is None or not inputs:
            return None
        to = rule(node, [arg(d, s) for s in inputs])
        return to if to is not None and _same(d, to, node) else None

    return g.rebuild(rewrite)


def cse(g: Graph) -> tuple[Graph, dict[str, str]]:
    seen: dict[Any, str] = {}

    def rewrite(d: Graph, node: Node, inputs: list[str]) -> str | None:
        if node.op in ("input", "param"):
            return None
        if node.op == "constant":
            v = g.value(node.name)
            if v.size > FOLD_LIMIT:
                return None
            key: Any = ("constant", v.dtype.str, v.shape, v.tobytes())
        else:
            key = (node.op, tuple(inputs), repr(sorted(node.attrs.items())))
        if key in seen:
            return seen[key]
        seen[key] = node.name
        return None

    return g.rebuild(rewrite)


PASSES: dict[str, Callable[[Graph], tuple[Graph, dict[str, str]]]] = {
    "fold": fold, "identities": identities, "cse": cse}
DEFAULT = ("fold", "identities", "cse")


def simplify(g: Graph, targets: Sequence[str], passes: Sequence[str] = DEFAULT
             ) -> tuple[Graph, list[str]]:
    """Run `passes` in order; returns the new graph and where each target went."""
    where = {t: t for t in targets}
    for name in passes:
        if name not in PASSES:
            raise ValueError(f"unknown pass {name!r}; passes: {', '.join(PASSES)}")
        g, moved = PASSES[name](g)
        where = {t: moved[w] for t, w in where.items()}
    return g, [where[t] for t in targets]
