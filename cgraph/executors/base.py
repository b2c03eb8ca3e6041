"""What every executor shares: feed checking, leaf values, and running a Plan with its stats.

Executors do not know ops: each compiles a Plan of some graph (the model, or a derivative graph
made from it) once, and runs it for many feeds. Params are read from the model graph at each
run, so `set_param` is seen by executors built before it. Feeds and params are never written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cgraph.errors import FeedError
from cgraph.graph import Graph, Node, format_shape
from cgraph.schedule import Plan, Stats, run_plan


def check_feed(node: Node, value: Any) -> np.ndarray:
    """`value` as a read-only array of input `node`'s dtype and shape, or FeedError saying why
    not."""
    arr = value if type(value) is np.ndarray else np.asarray(value)
    if arr.dtype != node.dtype:
        if not np.can_cast(arr.dtype, node.dtype, "same_kind"):
            raise FeedError(f"feed {node.name!r}: cannot cast {arr.dtype} to the input's {node.dtype}")
        arr = arr.astype(node.dtype)
    shape = arr.shape
    if len(shape) != len(node.shape) or any(d is not None and d != s for d, s in zip(node.shape, shape, strict=True)):
        raise FeedError(f"feed {node.name!r}: shape {format_shape(shape)} does not match the "
                        f"input's {format_shape(node.shape)}")
    if arr.flags.writeable:  # no step, whatever the graph, can write into the caller's array
        arr = arr.view()
        arr.flags.writeable = False
    return arr


def leaf_value(graph: Graph, feeds: Mapping[str, Any], name: str) -> np.ndarray:
    """The value leaf `name` of `graph` has in a run with `feeds`: an input's feed as the run
    takes it (checked and converted; FeedError if missing), a param's or constant's stored
    value."""
    node = graph.nodes[name]
    if node.op != "input":
        return graph.value(name)
    if name not in feeds:
        raise FeedError(f"missing feed for input {name!r} {format_shape(node.shape)} of graph {graph.name!r}")
    return check_feed(node, feeds[name])


class Executor:
    """Base of Evaluator, ForwardMode and ReverseMode: `graph` is the model; `stats` describes
    the last run."""

    def __init__(self, graph: Graph) -> None:
        if not isinstance(graph, Graph):
            raise TypeError(f"expected a cgraph Graph, got {type(graph).__name__}")
        self.graph = graph
        self.stats = Stats()
        self._seen: dict[str, tuple[Any, ...]] = {}  # feed name -> (array, (shape, dtype), checked)

    def _leaves(self, plan: Plan, feeds: Mapping[str, Any], extra: Mapping[str, Any] = (),  # type: ignore[assignment]
                params: Mapping[str, Any] | None = None) -> list[Any]:
        """The values of `plan.leaves`, in order: the model's feeds (every feed is checked, even
        one this plan ignores), `extra` leaves a derived graph adds (tangents, cotangents), and
        the model's current params, or `params` for those it names."""
        model, d = self.graph, plan.graph
        if not isinstance(feeds, Mapping):
            raise FeedError(f"feeds must be a dict of input name to array, got {type(feeds).__name__}")
        nodes = model.nodes
        checked = {}
        seen = self._seen
        for name, value in feeds.items():
            last = seen.get(name)
            if last is not None and last[0] is value and last[1] == (value.shape, value.dtype):
                checked[name] = last[2]  # the array checked last time (a full batch, every step)
                continue
            node = nodes.get(name)
            if node is None or node.op != "input":
                what = f"a {node.op}, not an input" if node is not None else "not an input"
                raise FeedError(f"feed {name!r} is {what} of graph {model.name!r} "
                                f"(inputs: {', '.join(model.inputs) or 'none'})")
            checked[name] = check_feed(node, value)
            if type(value) is np.ndarray:
                seen[name] = (value, (value.shape, value.dtype), checked[name])
        leaves = []
        for name, kind in zip(plan.leaves, plan.leaf_kinds, strict=True):
            if kind == "input":
                if name in extra:
                    leaves.append(check_feed(d.nodes[name], extra[name]))
                elif name in checked:
                    leaves.append(checked[name])
                else:
                    raise FeedError(f"missing feed for input {name!r} {format_shape(d.nodes[name].shape)} "
                                    f"of graph {model.name!r}")
            elif kind == "param" and name in nodes:
                leaves.append(model.value(name) if params is None or name not in params
                              else _param_value(nodes[name], params[name]))
            else:
                leaves.append(d.value(name))
        return leaves

    def _run(self, plan: Plan, leaves: list[Any], updates: Sequence[Any] = ()) -> tuple[Any, ...]:
        """Run `plan` with the values of its leaves (and its update callbacks), recording stats."""
        out = run_plan(plan, leaves, self.stats, updates)
        shapes = [v.shape for v in leaves]
        self.stats.predictor = lambda: plan.predict_peak(dict(zip(plan.leaves, shapes, strict=True)))
        return out


def _param_value(node: Node, value: Any) -> np.ndarray:
    """A value given for param `node` in one run, checked as a feed of its shape and dtype."""
    try:
        return check_feed(node, value)
    except FeedError as e:
        raise FeedError(str(e).replace("feed", "param value", 1)) from None
