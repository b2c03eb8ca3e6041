"""Every node's value, tangent or adjoint for given feeds: the lecture's sweeps, written out.

`trace` builds the derivative graph of a mode with `intermediates=True` (so every node's value
and tangent or adjoint is an output) and runs it with an `Evaluator`, like any graph. It keeps
every intermediate alive, so it is for looking at a sweep (drawing it with `cg.render`,
checking it by hand), not for training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cgraph.autodiff import COTANGENT, NODE_ADJOINT, NODE_TANGENT, NODE_VALUE, TANGENT, Seed, jvp_graph, vjp_graph
from cgraph.errors import DerivativeError, FeedError
from cgraph.executors import Evaluator
from cgraph.executors.base import leaf_value
from cgraph.graph import Drawable, Graph

MODES = (None, "forward", "reverse")


@dataclass
class Trace(Drawable):
    """What one sweep computed, by node name.

    `values`: every node the graph's outputs need. `tangents` (mode "forward"): d node / d wrt
    along the given tangents, for every float node (zero where no wrt reaches it). `adjoints`
    (mode "reverse"): d of / d node for every float node on a path from wrt to `of`, and zero
    for the nodes `of` does not depend on. `graph`: the graph traced; in Jupyter a Trace shows
    itself as that graph's drawing labelled with these numbers."""

    values: dict[str, np.ndarray]
    tangents: dict[str, np.ndarray] = field(default_factory=dict)
    adjoints: dict[str, np.ndarray] = field(default_factory=dict)
    mode: str | None = None
    of: list[str] = field(default_factory=list)
    wrt: list[str] = field(default_factory=list)
    graph: Graph | None = field(default=None, repr=False, compare=False)


def _run(d: Graph, feeds: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, np.ndarray]:
    out = Evaluator(d).run({**feeds, **extra})
    return {k: np.asarray(v) for k, v in out.items()}


def _pick(out: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix):]: v for k, v in out.items() if k.startswith(prefix)}


def trace(g: Graph, feeds: Mapping[str, Any], mode: str | None = None, of: Sequence[str] | str | None = None,
          wrt: Sequence[str] | str | None = None, tangents: Mapping[str, Any] | None = None,
          cotangent: Any = None) -> Trace:
    """Run `g` on `feeds` and return every node's value, and in a mode its derivative.

    - `mode=None`: values only.
    - `mode="forward"`: tangents of every node along `tangents` (wrt name -> array; a wrt with
      none given has tangent zero; default: ones for every wrt), as the lecture seeds
      `a2dot = 1` for d/dw1. `of`: the outputs to follow (default: all).
    - `mode="reverse"`: adjoints d of / d node, seeded with `cotangent` at `of` (default ones
      of its shape: 1 for a scalar loss). `of`: one output (default: the only output). `wrt`
      (default: every float input and param) bounds the backward sweep.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be None, 'forward' or 'reverse', not {mode!r}")
    outputs = list(g.outputs)
    if not outputs:
        raise DerivativeError(f"graph {g.name!r} has no outputs to trace")
    wrt_list = [wrt] if isinstance(wrt, str) else list(wrt) if wrt is not None else None
    if mode == "reverse":
        return _reverse(g, feeds, of, wrt_list, cotangent, outputs)
    of_list = outputs if of is None else [of] if isinstance(of, str) else list(of)
    if mode is None:
        d = jvp_graph(g, of_list, [], intermediates=True)
        return Trace(_pick(_run(d, feeds, {}), NODE_VALUE), of=of_list, graph=g)
    if wrt_list is None:
        if tangents is None:
            raise DerivativeError("forward mode needs wrt or tangents: the leaves whose tangents are seeded")
        wrt_list = list(tangents)
    if tangents is None:
        tangents = {w: np.ones_like(leaf_value(g, feeds, w)) for w in wrt_list}
    unknown = [k for k in tangents if k not in wrt_list]
    if unknown:
        raise FeedError(f"tangent for {unknown[0]!r}, which is not among wrt {wrt_list}")
    d = jvp_graph(g, of_list, list(tangents), intermediates=True)
    out = _run(d, feeds, {TANGENT + k: v for k, v in tangents.items()})
    values = _pick(out, NODE_VALUE)
    tans = _pick(out, NODE_TANGENT)
    for name, v in values.items():  # no tangent was built: nothing in wrt reaches the node
        if name not in tans and v.dtype.kind == "f":
            tans[name] = np.zeros_like(v)
    return Trace(values, tangents=tans, mode="forward", of=of_list, wrt=wrt_list, graph=g)


def _reverse(g: Graph, feeds: Mapping[str, Any], of: Sequence[str] | str | None, wrt: list[str] | None,
             cotangent: Any, outputs: list[str]) -> Trace:
    if of is None:
        if len(outputs) != 1:
            raise DerivativeError(f"reverse mode needs `of`, one of the outputs {outputs}")
        of = outputs[0]
    if not isinstance(of, str):
        if len(of) != 1:
            raise DerivativeError("reverse mode differentiates one output: of must be one output name")
        of = of[0]
    if of not in g.outputs:
        raise DerivativeError(f"graph {g.name!r} has no output {of!r} (outputs: {', '.join(outputs)})")
    if wrt is None:
        wrt = [n.name for n in g.nodes.values() if n.op in ("input", "param") and n.dtype.kind == "f"]
    # Values of every node, including those `of` does not need (the lecture's y1 beside y2).
    values = trace(g, feeds).values
    target = g.outputs[of].name
    seed = np.ones_like(values[target]) if cotangent is None else cotangent
    d = vjp_graph(g, [of], wrt, seed=Seed.INPUT, intermediates=True)
    out = _run(d, feeds, {COTANGENT + of: seed})
    adjoints = _pick(out, NODE_ADJOINT)
    upstream = g.needed_by([target])
    for name, v in values.items():  # `of` does not depend on these: their adjoint is zero
        if name not in upstream and v.dtype.kind == "f":
            adjoints[name] = np.zeros_like(v)
    return Trace(values, adjoints=adjoints, mode="reverse", of=[of], wrt=wrt, graph=g)


__all__ = ["Trace", "trace"]
