"""Reverse mode: a forward sweep, then a backward sweep (gradients, VJPs)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from cgraph.autodiff import COTANGENT, Seed, check_wrt, vjp_graph
from cgraph.checkpoint import Checkpointer, MemoryPlan
from cgraph.errors import DerivativeError, FeedError
from cgraph.executors.base import Executor
from cgraph.graph import Graph
from cgraph.schedule import Plan


class ReverseMode(Executor):
    """`ReverseMode(g, of="loss", wrt=["V", "W"])`: `grad(feeds)` for a scalar output,
    `vjp(feeds, {"loss": ct})` for any. The forward sweep keeps only the values that backward
    steps read; the backward sweep frees each value and adjoint after its last reader.

    With `memory_budget` (bytes), it stores fewer forward values and recomputes the others in
    the backward sweep so that `stats.peak_bytes` stays within the budget, with the least
    recomputation it finds (see cgraph.checkpoint); a plan is made for each set of input shapes
    at its first run, and `memory_plan` describes the last one used. MemoryBudgetError if no
    schedule fits, giving the smallest budget that would."""

    def __init__(self, graph: Graph, of: str, wrt: Sequence[str] | str,
                 memory_budget: int | None = None) -> None:
        super().__init__(graph)
        if not isinstance(of, str):
            raise TypeError("ReverseMode differentiates one output: of must be an output name")
        self.of = of
        self.wrt = [wrt] if isinstance(wrt, str) else list(wrt)
        graph.output_node(of)
        check_wrt(graph, self.wrt)
        self._plans: dict[Seed, Plan] = {}
        self._update_plans: dict[tuple[str, ...], Plan] = {}
        self.memory_budget = memory_budget
        self._checkpointers: dict[Seed, Checkpointer] = {}
        self.memory_plan: MemoryPlan | None = None  # the budgeted plan of the last run
        if memory_budget is not None:
            Checkpointer.check_budget(memory_budget)

    def _plan(self, seed: Seed) -> Plan:
        plan = self._plans.get(seed)
        if plan is None:
            d = vjp_graph(self.graph, [self.of], self.wrt, seed=seed)
            plan = Plan(d, [d.output_node(o) for o in d.outputs])  # the output, then a gradient per wrt
            self._plans[seed] = plan
        return plan

    def _budgeted(self, seed: Seed, feeds: Mapping[str, Any], extra: Mapping[str, Any] = ()  # type: ignore[assignment]
                  ) -> tuple[Any, ...]:
        """Run the plan for `seed`, or under a budget the checkpointed plan for these shapes."""
        plan = self._plan(seed)
        leaves = self._leaves(plan, feeds, extra)
        if self.memory_budget is not None:
            values = dict(zip(plan.leaves, leaves, strict=True))
            cp = self._checkpointers.get(seed)
            if cp is None:
                cp = Checkpointer(plan, self.graph.nodes, self.memory_budget)
                self._checkpointers[seed] = cp
            self.memory_plan = cp.plan_for({n: np.shape(v) for n, v in values.items()
                                            if plan.graph.nodes[n].op == "input"})
            plan = self.memory_plan.plan
            leaves = [values[n] for n in plan.leaves]
        return self._run(plan, leaves)

    @property
    def plan(self) -> Plan:
        """The gradient's plan (compiled when first asked for)."""
        return self._plan(Seed.ONES)

    def grad(self, feeds: Mapping[str, Any]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(value of the scalar output, {wrt name: gradient})."""
        vals = self._budgeted(Seed.ONES, feeds)
        value, *grads = (np.asarray(v) for v in vals)
        return value, dict(zip(self.wrt, grads, strict=True))

    def apply(self, feeds: Mapping[str, Any], updates: Mapping[str, Callable[[np.ndarray, np.ndarray], None]]
              ) -> np.ndarray:
        """Run both sweeps and hand each param named in `updates` (wrt params) to its callback
        with its gradient, `updates[name](param, grad)`, as soon as the gradient is complete and
        nothing later in the sweep reads the param: the callback may change the param's array
        in place (an optimizer's step does, see `cg.optim.TrainStep`), and the gradient is freed
        right after it, so gradients never pile up. Returns the scalar output's value.

        The gradient handed over is the plan's own array, alive only during the call: copy it
        to keep it. Under a memory budget the sweeps run as for `grad` and the callbacks after."""
        for name in updates:
            if name not in self.wrt or self.graph.nodes[name].op != "param":
                raise DerivativeError(f"apply: {name!r} is not a param among wrt {self.wrt}")
        if self.memory_budget is not None:
            value, grads = self.grad(feeds)
            for name, update in updates.items():
                update(self.graph.value(name), grads[name])
            return value
        names = tuple(updates)
        plan = self._update_plans.get(names)
        if plan is None:
            d = vjp_graph(self.graph, [self.of], self.wrt, seed=Seed.ONES)
            grad = {w: d.output_node(o) for w, o in zip(self.wrt, list(d.outputs)[1:], strict=True)}
            plan = Plan(d, [d.output_node(self.of)], updates=[(w, grad[w]) for w in names])
            self._update_plans[names] = plan
        (value,) = self._run(plan, self._leaves(plan, feeds), [updates[w] for w, _ in plan.updates])
        return np.asarray(value)

    def vjp(self, feeds: Mapping[str, Any], cotangents: Mapping[str, Any]
            ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """({of: value}, {wrt name: cotangent}) for the output cotangent `cotangents[of]`."""
        if set(cotangents) != {self.of}:
            raise FeedError(f"vjp needs exactly one cotangent, for {self.of!r}; got {sorted(cotangents)}")
        vals = self._budgeted(Seed.INPUT, feeds, {COTANGENT + self.of: cotangents[self.of]})
        value, *cots = (np.asarray(v) for v in vals)
        return {self.of: value}, dict(zip(self.wrt, cots, strict=True))
