"""Straight-line code for a Plan: one Python statement per kernel call, no interpreter loop.

An interpreted run pays, at every step, for a loop iteration, dict lookups of the arguments,
a dict store of the result and the bookkeeping of freed values. A plan is fixed once compiled,
so all of that can be decided once: `compile_plan` writes a function whose locals are the
values (`v3 = f3(v1, a0)`), that drops each value with `del` right after its last reader, and
that keeps the memory books of `cgraph.memory` (each buffer counted once; a view's bytes
counted only if the kernel had to copy): values that take part in views are recorded in a
`Ledger`, the others own their buffer alone and need one addition and one subtraction each.

The generated source is kept on the runner (`runner.source`) for reading and debugging.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from cgraph.memory import Ledger

if TYPE_CHECKING:
    from cgraph.schedule import Plan


class Runner:
    """A compiled plan: `runner(leaf_values) -> (target_values, peak_bytes)`."""

    def __init__(self, fn: Callable[..., Any], source: str) -> None:
        self.fn = fn
        self.source = source

    def __call__(self, leaves: Sequence[Any]) -> tuple[tuple[Any, ...], int]:
        return self.fn(leaves)


def compile_plan(plan: Plan) -> Runner:
    """Generate and compile the straight-line function of `plan`."""
    var: dict[str, str] = {n: f"a{j}" for j, n in enumerate(plan.leaves)}
    for i, step in enumerate(plan.steps):
        var[step.name] = f"v{i}"
    # Values whose buffer may be shared: view steps and the values they view.
    shared = {s.name for s in plan.steps if s.view} | {s.args[0] for s in plan.steps if s.view}
    shared -= set(plan.leaves)
    ns: dict[str, Any] = {"_share": np.may_share_memory, "_Ledger": Ledger}
    body = ["def run(leaves):"]
    if plan.leaves:
        body.append(f"    {', '.join(var[n] for n in plan.leaves)}, = leaves")
    body.append("    live = peak = 0")
    if shared:
        body.append("    L = _Ledger()")
    counted = set()
    for i, step in enumerate(plan.steps):
        ns[f"f{i}"] = step.fn
        v = var[step.name]
        args = ", ".join(var[a] for a in step.args)
        if step.inplace >= 0:
            src = step.args[step.inplace]
            body.append(f"    {v} = f{i}({args}, out={var[src]})  # {step.name} ({step.op}, in place)")
            # the result owns the dying input's buffer: no new bytes, none freed with the input
            if step.name in shared:  # the input was counted inline: its bytes are live already
                body.append(f"    L.new({step.name!r}, n{var[src][1:]})")
            else:
                body.append(f"    n{i} = n{var[src][1:]}")
                counted.add(step.name)
            counted.discard(src)
            body += _frees(step.free, var, counted, shared)
            continue
        body.append(f"    {v} = f{i}({args})  # {step.name} ({step.op})")
        if step.view:
            src = step.args[0]
            body += [f"    if {var[src]}.ndim and _share({v}, {var[src]}):",
                     f"        L.view({step.name!r}, {src!r})",
                     "    else:",
                     f"        live += L.new({step.name!r}, {v}.nbytes)",
                     "        if live > peak: peak = live"]
        elif step.name in shared:
            body += [f"    live += L.new({step.name!r}, {v}.nbytes)",
                     "    if live > peak: peak = live"]
        else:
            body += [f"    n{i} = {v}.nbytes; live += n{i}",
                     "    if live > peak: peak = live"]
            counted.add(step.name)
        body += _frees(step.free, var, counted, shared)
    targets = ", ".join(var[t] for t in plan.targets)
    body.append(f"    return ({targets}{',' if len(plan.targets) == 1 else ''}), peak")
    source = "\n".join(body) + "\n"
    exec(compile(source, f"<cgraph plan {plan.graph.name}>", "exec"), ns)  # noqa: S102  (our own code)
    return Runner(ns["run"], source)


def _frees(free: Sequence[str], var: dict[str, str], counted: set[str], shared: set[str]) -> list[str]:
    """The lines that drop `free` and take their bytes off the books."""
    lines = []
    for f in free:
        lines.append(f"    del {var[f]}")
        if f in counted:
            lines.append(f"    live -= n{var[f][1:]}")
        elif f in shared:
            lines.append(f"    live -= L.release({f!r})")
    return lines
