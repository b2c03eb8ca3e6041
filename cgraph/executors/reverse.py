"""Reverse mode: a forward sweep, then a backward sweep (gradients, VJPs)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cgraph.autodiff import COTANGENT, check_wrt, output_nodes, vjp_graph
from cgraph.errors import FeedError
from cgraph.executors.base import Executor
from cgraph.graph import Graph
from cgraph.schedule import Plan


class ReverseMode(Executor):
    """`ReverseMode(g, of="loss", wrt=["V", "W"])`: `grad(feeds)` for a scalar output,
    `vjp(feeds, {"loss": ct})` for any. The forward sweep keeps only the values that backward
    steps read; the backward sweep frees each value and adjoint after its last reader."""

    def __init__(self, graph: Graph, of: str, wrt: Sequence[str] | str) -> None:
        super().__init__(graph)
        if not isinstance(of, str):
            raise TypeError("ReverseMode differentiates one output: of must be an output name")
        self.of = of
        self.wrt = [wrt] if isinstance(wrt, str) else list(wrt)
        output_nodes(graph, [of])
        check_wrt(graph, self.wrt)
        self._plans: dict[str, Plan] = {}

    def _plan(self, seed: str) -> Plan:
        plan = self._plans.get(seed)
        if plan is None:
            d = vjp_graph(self.graph, [self.of], self.wrt, seed=seed)
            plan = Plan(d, list(d._outputs.values()))  # the output, then a gradient per wrt
            self._plans[seed] = plan
        return plan

    @property
    def plan(self) -> Plan:
        """The gradient's plan (compiled when first asked for)."""
        return self._plan("ones")

    def grad(self, feeds: Mapping[str, Any]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(value of the scalar output, {wrt name: gradient})."""
        plan = self._plan("ones")
        vals = self._run(plan, feeds)
        value, *grads = (np.asarray(v) for v in vals)
        return value, dict(zip(self.wrt, grads, strict=True))

    def vjp(self, feeds: Mapping[str, Any], cotangents: Mapping[str, Any]
            ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """({of: value}, {wrt name: cotangent}) for the output cotangent `cotangents[of]`."""
        if set(cotangents) != {self.of}:
            raise FeedError(f"vjp needs exactly one cotangent, for {self.of!r}; got {sorted(cotangents)}")
        plan = self._plan("input")
        vals = self._run(plan, feeds, {COTANGENT + self.of: cotangents[self.of]})
        value, *cots = (np.asarray(v) for v in vals)
        return {self.of: value}, dict(zip(self.wrt, cots, strict=True))
