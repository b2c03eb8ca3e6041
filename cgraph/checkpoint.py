"""Checkpointing: reverse mode under a memory budget.

A reverse-mode graph keeps every forward value that a backward step reads until that step has
run, so on an n-layer chain n activations are alive when the backward sweep starts. Under a
budget we keep only some of them (the *stored* values) and compute the others again during the
backward sweep from the nearest stored ones (Chen et al. 2016; Griewank and Walther's revolve
for chains). This is done by rewriting the derivative graph, so executors stay op-agnostic: a
forward value that is not stored gets a copy `recompute/<name>`, built just before the first
backward step that reads it (from stored values, leaves and other copies), and backward steps
read the copy. Liveness then frees the original after its last forward reader and the copy
after its last backward reader; each value is recomputed at most once.

Which values to store: the values backward steps read, in topological order, form a sequence
(a chain's activations). For a slot budget, a greedy pass makes each recomputed segment as long
as the values stored below it allow and stores the rest at the end; for a chain of equal-size
layers this is the cheapest schedule of that budget among those recomputing each value at most
once. One candidate per budget level forms a family fixed by the graph and the shapes; each
candidate's peak is simulated from shapes and liveness (the same accounting as
`Plan.predict_peak`) and its cost counted. For a byte budget the plan is the first candidate in
order of (cost, peak) that fits, its peak confirmed by `Plan.predict_peak` on the rewritten
graph. As the family does not depend on the budget, a larger budget never gives a higher cost
or a lower peak, and the smallest feasible budget is the family's lowest peak.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np

from cgraph.control import ScanBudget, budgeted_scans, with_snapshots
from cgraph.errors import MemoryBudgetError
from cgraph.graph import Drawable, Graph, Node, format_shape
from cgraph.memory import account
from cgraph.ops.registry import get_op
from cgraph.schedule import Plan, Step, concrete_shapes, get_eager, liveness, nbytes, order_keys

RECOMPUTE = "recompute/"  # prefix of the copies of forward nodes run in the backward sweep


@dataclass
class MemoryPlan(Drawable):
    """A budgeted reverse-mode schedule for one set of leaf shapes: what it stores, what it
    recomputes, when each is freed, its predicted peak and its recomputation cost. `print` it
    for the list; in Jupyter it shows itself as its graph, the recomputed nodes in orange."""

    budget: int
    leaf_shapes: dict[str, tuple[int, ...]]
    stored: tuple[str, ...]  # forward values kept from the forward sweep for the backward sweep
    recomputed: tuple[str, ...]  # forward nodes run again in the backward sweep (as recompute/...)
    predicted_peak: int  # bytes, = stats.peak_bytes of a run with these shapes
    unbudgeted_peak: int  # bytes, the same graph storing every value backward steps read
    extra_calls: int  # kernel calls added to the backward sweep
    forward_calls: int  # kernel calls of the forward sweep, for scale
    plan: Plan
    freed_after: dict[str, str] = field(default_factory=dict)  # value -> step after which freed
    scans: list[ScanBudget] = field(default_factory=list)  # scans reversed by binomial checkpointing

    @property
    def extra_sweeps(self) -> float:
        """Recomputation as a fraction of one forward sweep's kernel calls."""
        return self.extra_calls / max(1, self.forward_calls)

    def __str__(self) -> str:
        mib = 2.0**20
        lines = [
            f"MemoryPlan for {self.plan.graph.name!r}, leaf shapes "
            + ", ".join(f"{k} {format_shape(v)}" for k, v in self.leaf_shapes.items()),
            f"  budget {self.budget} B ({self.budget / mib:.2f} MiB); predicted peak "
            f"{self.predicted_peak} B ({self.predicted_peak / mib:.2f} MiB); "
            f"without a budget {self.unbudgeted_peak} B ({self.unbudgeted_peak / mib:.2f} MiB)",
            f"  recomputation: {self.extra_calls} extra kernel calls "
            f"({self.extra_sweeps:.2f} forward sweeps of {self.forward_calls} calls)",
            f"  stored ({len(self.stored)}):",
        ]
        for name in self.stored:
            lines.append(f"    {name}  freed after {self.freed_after.get(name, '(kept to the end)')}")
        if self.scans:
            lines.append(f"  scans reversed by binomial checkpointing ({len(self.scans)}):")
            lines += [str(sc) for sc in self.scans]
        lines.append(f"  recomputed ({len(self.recomputed)}):")
        for name in self.recomputed:
            copy = RECOMPUTE + name
            lines.append(f"    {name}  as {copy}, freed after {self.freed_after.get(copy, '(kept to the end)')}")
        return "\n".join(lines)


class _Graphinfo:
    """What planning needs of a derivative graph at given leaf shapes, computed once."""

    def __init__(self, d: Graph, forward: set[str], targets: Sequence[str],
                 leaf_shapes: Mapping[str, tuple[int, ...]]) -> None:
        self.d = d
        self.forward = forward
        self.targets = list(targets)
        nodes = d.nodes
        meta = concrete_shapes(d, leaf_shapes)
        self.nbytes = {n: nbytes(m) for n, m in meta.items()}
        self.scratch: dict[str, int] = {}  # the working bytes of the kernels that declare some
        for n in nodes.values():
            rule = None if n.is_leaf else get_op(n.op).scratch
            if rule is not None:
                self.scratch[n.name] = rule(*[meta[i] for i in n.inputs], **n.attrs)
        self.scalar = {n: not m.shape for n, m in meta.items()}
        self.leaf = {n.name: n.is_leaf for n in nodes.values()}
        self.eager = {n.name: not n.is_leaf and get_eager(n.op) for n in nodes.values()}
        self.view = {n.name: not n.is_leaf and get_op(n.op).view for n in nodes.values()}
        self.first_backward = min((n.index for n in nodes.values() if not n.is_leaf and n.name not in forward),
                                  default=len(nodes))
        read: set[str] = set()  # the forward values that backward steps read
        for n in nodes.values():
            if n.index >= self.first_backward and not n.is_leaf and not self.eager[n.name]:
                read.update(i for i in n.inputs if i in forward)
        self.read = sorted(read, key=lambda n: nodes[n].index)

    def recomputed(self, stored: frozenset[str]) -> set[str]:
        """The forward nodes that must run again when only `stored` is kept."""
        return self.unstored([r for r in self.read if r not in stored], stored)

    def unstored(self, wanted: list[str], stored: frozenset[str] | set[str]) -> set[str]:
        """`wanted` and the forward values outside `stored` that they are computed from."""
        nodes, forward = self.d.nodes, self.forward
        need: set[str] = set()
        stack = list(wanted)
        while stack:
            v = stack.pop()
            if v not in need:
                need.add(v)
                stack.extend(i for i in nodes[v].inputs if i in forward and i not in stored)
        return need

    def lower_bound(self, stored: frozenset[str]) -> int:
        """Bytes alive when the backward sweep starts, at least: every stored value that owns
        its buffer is alive then (a backward step reads it)."""
        return sum(self.nbytes[r] for r in self.read if r in stored and not self.view[r])


class _Program:
    """The derivative graph with the forward values outside `stored` recomputed, as a list of
    (name, original node name, inputs) in creation order, before it is built as a Graph."""

    def __init__(self, info: _Graphinfo, stored: frozenset[str]) -> None:
        d, forward = info.d, info.forward
        nodes = d.nodes
        self.items: list[tuple[str, str, tuple[str, ...]]] = []  # (name, original, inputs)
        self.before: dict[str, list[tuple[str, str, tuple[str, ...]]]] = {}  # copies made before a node
        self.inputs: dict[str, tuple[str, ...]] = {}  # each original node's inputs, some copies
        copies: dict[str, str] = {}
        for node in nodes.values():
            inputs = node.inputs
            if node.index >= info.first_backward and not node.is_leaf and not info.eager[node.name]:
                wanted = [i for i in inputs if i in forward and i not in stored and i not in copies]
                if wanted:
                    start = len(self.items)
                    self._recompute(info, wanted, stored, copies)
                    self.before[node.name] = self.items[start:]
                inputs = tuple(copies.get(i, i) for i in inputs)
            self.inputs[node.name] = inputs
            self.items.append((node.name, node.name, inputs))
        self.recomputed = tuple(copies)
        self.orig = {name: orig for name, orig, _ in self.items}

    def _recompute(self, info: _Graphinfo, wanted: list[str], stored: frozenset[str],
                   copies: dict[str, str]) -> None:
        """Append copies of `wanted` and of the unstored forward values they need (and that
        have no copy yet), in creation (topological) order."""
        nodes = info.d.nodes
        for v in sorted(info.unstored(wanted, stored | copies.keys()), key=lambda n: nodes[n].index):
            name = RECOMPUTE + v
            while name in nodes:
                name += "_"
            copies[v] = name
            self.items.append((name, v, tuple(copies.get(i, i) for i in nodes[v].inputs)))

    def build(self, d: Graph) -> Graph:
        """The derivative graph rewritten: each recomputed copy built just before the backward
        step that first reads it, and backward steps reading the copies."""
        nodes = d.nodes

        def rewrite(r: Graph, node: Node, inputs: list[str]) -> str | None:
            for name, orig, ins in self.before.get(node.name, ()):
                r.copy_node(nodes[orig], ins, name=name)
            return None if node.is_leaf else r.copy_node(node, self.inputs[node.name]).name

        return d.rebuild(rewrite)[0]

    def simulate(self, info: _Graphinfo) -> int:
        """The peak bytes `Plan.predict_peak` gives for the built program, from the same order
        (creation order, eager ops right after their inputs), liveness and accounting, without
        building the graph."""
        needed = set(info.targets)
        for name, _, inputs in reversed(self.items):
            if name in needed:
                needed.update(inputs)
        key = order_keys((name, inputs, info.eager[orig]) for name, orig, inputs in self.items)
        order = []
        nodes: dict[str, Node] = {}
        for name, orig, inputs in self.items:
            nodes[name] = dataclasses.replace(info.d.nodes[orig], name=name, inputs=inputs)
            if name in needed and not info.leaf[orig]:
                order.append(name)
        order.sort(key=key.__getitem__)
        frees, inplace = liveness(order, nodes, set(info.targets))
        steps = [Step(name, "", None, nodes[name].inputs, info.view[orig], frees[i], inplace[i])  # type: ignore[arg-type]
                 for i, name in enumerate(order) for orig in [self.orig[name]]]  # (no fn: counted, never run)
        return account(steps, {n: info.nbytes[self.orig[n]] for n in order},
                       {n for n in nodes if info.scalar[self.orig[n]]},
                       {n: info.nbytes[o] + info.scratch[o]  # a kernel's output and working bytes
                        for n in order for o in [self.orig[n]] if o in info.scratch})


def _candidates(info: _Graphinfo) -> list[frozenset[str]]:
    """The stored sets to choose from: one per slot budget (see the module docstring)."""
    seq = info.read
    if not seq:
        return [frozenset()]
    sizes = [info.nbytes[r] for r in seq]
    rest = np.cumsum(sizes[::-1])[::-1].tolist()
    unit = max(1.0, sum(sizes) / len(seq))
    out: dict[frozenset[str], None] = {frozenset(seq): None}
    # The segment rule may be off from the true peak by a layer or two (the adjoint and a
    # temporary live beside the recomputed values): the family tries each offset.
    for slots, offset in itertools.product(range(len(seq), 0, -1), (0, -1, 1, -2, 2)):
        limit, seg_limit = slots * unit, (slots + offset) * unit
        stored: set[str] = set()
        kept = segment = 0
        for i, (r, s) in enumerate(zip(seq, sizes, strict=True)):
            if kept + rest[i] <= limit:  # everything left fits: store it (no recomputation)
                stored.update(seq[i:])
                break
            if kept + segment + s <= seg_limit:  # recompute r from the last stored value
                segment += s
            else:
                stored.add(r)
                kept += s
                segment = 0
        out[frozenset(stored)] = None
    return list(out)


class _Candidate:
    """One stored set: its cost at once; its simulated peak, then the Plan's, when asked."""

    def __init__(self, info: _Graphinfo, stored: frozenset[str]) -> None:
        self.info = info
        self.stored = stored
        self.recomputed = info.recomputed(stored)
        self.cost = len(self.recomputed)
        self.bound = info.lower_bound(stored)
        self._peak: int | None = None
        self.program: _Program | None = None
        self.plan: Plan | None = None

    @property
    def peak(self) -> int:
        """The simulated peak, or once `confirm` ran, the larger of it and the Plan's."""
        if self._peak is None:
            self.program = _Program(self.info, self.stored)
            self._peak = self.program.simulate(self.info)
        return self._peak

    def confirm(self, leaf_shapes: Mapping[str, tuple[int, ...]]) -> int:
        if self.plan is None:
            peak = self.peak
            assert self.program is not None
            # already simplified; simplifying again would merge the copies with their originals
            self.plan = Plan(self.program.build(self.info.d), self.info.targets, passes=())
            self._peak = max(peak, self.plan.predict_peak(leaf_shapes))
        return self.peak


class Checkpointer:
    """Plans the derivative graph of `base` (an unbudgeted Plan; forward nodes `forward`, then
    the backward sweep) within a memory budget, one MemoryPlan per set of leaf shapes (see the
    module docstring)."""

    def __init__(self, base: Plan, forward: Iterable[str], budget: int) -> None:
        self.check_budget(budget)
        self.base = base
        d = base.graph
        self.forward = {f for f in forward if f in d.nodes and not d.nodes[f].is_leaf}
        self.budget = int(budget)
        self._plans: dict[tuple, MemoryPlan] = {}

    @staticmethod
    def check_budget(budget: object) -> None:
        if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget <= 0:
            raise ValueError(f"memory_budget must be a positive whole number of bytes, got {budget!r}")

    def plan_for(self, leaf_shapes: Mapping[str, tuple[int, ...]]) -> MemoryPlan:
        """The MemoryPlan for these input shapes (made once per shape signature)."""
        sig = tuple(sorted((k, tuple(v)) for k, v in leaf_shapes.items()))
        mp = self._plans.get(sig)
        if mp is None:
            mp = self._plans[sig] = self._make(dict(sig))
        return mp

    def _make(self, input_shapes: dict[str, tuple[int, ...]]) -> MemoryPlan:
        d, budget = self.base.graph, self.budget
        # params and constants have static shapes, the inputs' are the run's: all concrete
        shapes = cast(dict[str, tuple[int, ...]],
                      {n: tuple(input_shapes.get(n, d.nodes[n].shape)) for n in self.base.leaves})
        if budgeted_scans(d):
            return self._make_scans(input_shapes, shapes)
        info = _Graphinfo(d, self.forward, self.base.targets, shapes)
        # cheapest first; among equal costs, the one storing more first (a fixed order)
        family = sorted((_Candidate(info, s) for s in _candidates(info)), key=lambda c: (c.cost, -c.bound))
        chosen = next((c for c in family
                       if c.bound <= budget and c.peak <= budget and c.confirm(shapes) <= budget), None)
        if chosen is None:
            smallest = _smallest(family, shapes)
            raise MemoryBudgetError(
                f"graph {d.name!r}: no reverse-mode schedule fits a memory budget of {budget} bytes "
                f"with input shapes {', '.join(f'{k} {format_shape(v)}' for k, v in input_shapes.items())}; "
                f"the smallest budget that fits is {smallest} bytes", budget, smallest)
        assert chosen.plan is not None and chosen.program is not None
        freed: dict[str, str] = {}
        for step in chosen.plan.steps:
            for f in step.free:
                freed[f] = step.name
        fwd_calls = sum(1 for n in chosen.plan.steps if n.name in self.forward)
        stored = tuple(n for n in info.read if n in chosen.stored)
        return MemoryPlan(budget, input_shapes, stored, chosen.program.recomputed, chosen.peak,
                          self.base.predict_peak(shapes), chosen.cost, fwd_calls, chosen.plan, freed)


    def _make_scans(self, input_shapes: dict[str, tuple[int, ...]], shapes: dict[str, tuple[int, ...]]) -> MemoryPlan:
        """A graph with scans: the unbudgeted plan if it fits, else every scan's reverse sweep by
        binomial checkpointing with the most snapshots that fit (one count for all scans)."""
        d, budget = self.base.graph, self.budget
        full = self.base.predict_peak(shapes)
        calls = len(self.base.steps)
        if full <= budget:
            return MemoryPlan(budget, input_shapes, (), (), full, full, 0, calls, self.base)
        meta = concrete_shapes(d, shapes)
        steps: dict[str, int] = {}
        for name in budgeted_scans(d):
            node = d.nodes[name]
            c, m = node.attrs["carries"], node.attrs["slices"]
            steps[name] = cast(int, meta[node.inputs[c]].shape[0] if m else node.attrs["length"])
        plans: dict[int, tuple[int, Plan]] = {}

        def at(s: int) -> tuple[int, Plan]:
            if s not in plans:
                g = with_snapshots(d, s, steps)
                plan = Plan(g, [g.output_node(o) for o in d.outputs], passes=())
                plans[s] = (plan.predict_peak(shapes), plan)
            return plans[s]

        lo, hi = 1, max(1, max(steps.values()) - 1)
        if at(lo)[0] > budget:
            smallest = at(lo)[0]
            raise MemoryBudgetError(
                f"graph {d.name!r}: no reverse-mode schedule fits a memory budget of {budget} bytes with input "
                f"shapes {', '.join(f'{k} {format_shape(v)}' for k, v in input_shapes.items())} (one snapshot "
                f"per scan needs {smallest}); the smallest budget that fits is {smallest} bytes", budget, smallest)
        while lo < hi:  # the most snapshots that fit (the peak grows with them)
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if at(mid)[0] <= budget else (lo, mid - 1)
        peak, plan = at(lo)
        scans = [ScanBudget(name, n, max(1, min(lo, n - 1)),
                            sum(nbytes(meta[i]) for i in d.nodes[name].inputs[:d.nodes[name].attrs["carries"]]))
                 for name, n in steps.items()]
        freed = {f: step.name for step in plan.steps for f in step.free}
        return MemoryPlan(budget, input_shapes, (), (), peak, full, 0, calls, plan, freed, scans)


def _smallest(family: list[_Candidate], shapes: Mapping[str, tuple[int, ...]]) -> int:
    """The lowest confirmed peak in the family (candidates whose bound is no lower skipped)."""
    best = None
    for c in sorted(family, key=lambda c: c.bound):
        if best is not None and c.bound >= best:
            break
        if best is None or c.peak < best:
            peak = c.confirm(shapes)
            best = peak if best is None else min(best, peak)
    assert best is not None
    return best


__all__ = ["Checkpointer", "MemoryBudgetError", "MemoryPlan", "RECOMPUTE", "concrete_shapes"]
