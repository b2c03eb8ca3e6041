"""Evaluation: run a graph's outputs for many feeds, freeing each intermediate after its last
reader."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cgraph.executors.base import Executor
from cgraph.graph import Graph
from cgraph.schedule import Plan


class Evaluator(Executor):
    """`Evaluator(g)` computes every output of `g`; `Evaluator(g, outputs=[...])` some.

    >>> out = Evaluator(g).run({"x": X})      # {"loss": ..., "logits": ...}
    """

    def __init__(self, graph: Graph, outputs: Sequence[str] | None = None) -> None:
        super().__init__(graph)
        names = list(graph.outputs) if outputs is None else [outputs] if isinstance(outputs, str) else list(outputs)
        self.outputs = names
        self.plan = Plan(graph, [graph.output_node(o) for o in names])

    def run(self, feeds: Mapping[str, Any], params: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
        """The outputs for these feeds (a dict of input name to array). `params` gives values
        to use in this run instead of some params' current ones (a perturbation, as finite
        differences need), leaving the graph as it is."""
        vals = self._run(self.plan, self._leaves(self.plan, feeds, params=params))
        return {o: np.asarray(v) for o, v in zip(self.outputs, vals, strict=True)}
