"""Forward mode: values and tangents in one sweep (JVPs; Jacobians column by column)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cgraph.autodiff import TANGENT, jvp_graph
from cgraph.errors import FeedError
from cgraph.executors.base import Executor
from cgraph.graph import Graph
from cgraph.schedule import Plan


class ForwardMode(Executor):
    """`ForwardMode(g, of=["logits"], wrt=["V"]).jvp(feeds, {"V": dV})` gives the outputs and
    their tangents along dV. Each value and tangent is dropped once its last reader has run, so
    on a chain the memory does not grow with its length."""

    def __init__(self, graph: Graph, of: Sequence[str] | str, wrt: Sequence[str] | str) -> None:
        super().__init__(graph)
        self.of = [of] if isinstance(of, str) else list(of)
        self.wrt = [wrt] if isinstance(wrt, str) else list(wrt)
        for o in self.of:
            graph.output_node(o)
        self._plans: dict[frozenset[str], Plan] = {}
        self.plan = self._plan(frozenset(self.wrt))

    def _plan(self, given: frozenset[str]) -> Plan:
        """The plan for this set of nonzero tangents (a wrt with no tangent is a zero)."""
        plan = self._plans.get(given)
        if plan is None:
            d = jvp_graph(self.graph, self.of, [w for w in self.wrt if w in given])
            plan = Plan(d, [d.output_node(o) for o in d.outputs])  # the outputs, then their tangents
            self._plans[given] = plan
        return plan

    def jvp(self, feeds: Mapping[str, Any], tangents: Mapping[str, Any]
            ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(outputs, tangents of the outputs) for these feeds and wrt tangents."""
        unknown = [k for k in tangents if k not in self.wrt]
        if unknown:
            raise FeedError(f"tangent for {unknown[0]!r}, which is not among wrt {self.wrt}")
        plan = self._plan(frozenset(tangents))
        vals = self._run(plan, self._leaves(plan, feeds, {TANGENT + k: v for k, v in tangents.items()}))
        arrays = [np.asarray(v) for v in vals]
        n = len(self.of)
        return dict(zip(self.of, arrays[:n], strict=True)), dict(zip(self.of, arrays[n:], strict=True))
