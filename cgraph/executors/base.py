"""What every executor shares: feed checking, leaf values, and running a Plan with its stats.

Executors do not know ops: each compiles a Plan of some graph (the model, or a derivative graph
made from it) once, and runs it for many feeds. Params are read from the model graph at each
run, so `set_param` is seen by executors built before it. Feeds and params are never written.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from cgraph.errors import FeedError
from cgraph.graph import Graph, format_shape
from cgraph.schedule import Plan, Stats, run_plan


def check_feed(graph: Graph, name: str, value: Any) -> np.ndarray:
    """`value` as an array of input `name`'s dtype and shape, or FeedError saying why not."""
    node = graph.nodes[name]
    arr = np.asarray(value)
    if arr.dtype != node.dtype:
        if not np.can_cast(arr.dtype, node.dtype, "same_kind"):
            raise FeedError(f"feed {name!r}: cannot cast {arr.dtype} to the input's {node.dtype}")
        arr = arr.astype(node.dtype)
    if arr.ndim != len(node.shape) or any(d is not None and d != s for d, s in zip(node.shape, arr.shape, strict=True)):
        raise FeedError(f"feed {name!r}: shape {format_shape(arr.shape)} does not match the "
                        f"input's {format_shape(node.shape)}")
    return arr


class Executor:
    """Base of Evaluator, ForwardMode and ReverseMode: `graph` is the model; `stats` describes
    the last run."""

    def __init__(self, graph: Graph) -> None:
        if not isinstance(graph, Graph):
            raise TypeError(f"expected a cgraph Graph, got {type(graph).__name__}")
        self.graph = graph
        self.stats = Stats()

    def _run(self, plan: Plan, feeds: Mapping[str, Any], extra: Mapping[str, Any] = (),
             params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Run `plan` (of the model or a graph derived from it) with the model's feeds, `extra`
        leaves the derived graph adds (tangents, cotangents), and the model's current params
        (or `params`, for gradcheck's perturbations)."""
        model, d = self.graph, plan.graph
        if not isinstance(feeds, Mapping):
            raise FeedError(f"feeds must be a dict of input name to array, got {type(feeds).__name__}")
        for name in feeds:
            node = model.nodes.get(name)
            if node is None or node.op != "input":
                what = f"a {node.op}, not an input" if node is not None else "not an input"
                raise FeedError(f"feed {name!r} is {what} of graph {model.name!r} "
                                f"(inputs: {', '.join(model.inputs) or 'none'})")
        checked = {name: check_feed(model, name, v) for name, v in feeds.items()}  # even unused ones
        values: dict[str, Any] = {}
        for name in plan.leaves:
            node = d.nodes[name]
            if node.op == "input":
                if name in extra:
                    values[name] = check_feed(d, name, extra[name])
                elif name in checked:
                    values[name] = checked[name]
                else:
                    raise FeedError(f"missing feed for input {name!r} {format_shape(node.shape)} "
                                    f"of graph {model.name!r}")
            elif node.op == "param" and name in model.nodes:
                values[name] = model._values[name] if params is None or name not in params else params[name]
            else:
                values[name] = d._values[name]
        shapes = {n: np.shape(values[n]) for n in plan.leaves}
        out = run_plan(plan, values, self.stats)
        self.stats.predictor = lambda: plan.predict_peak(shapes)
        return out
