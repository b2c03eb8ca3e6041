"""Straight-line code for a Plan: one Python statement per kernel call, no interpreter loop.

An interpreted run pays, at every step, for a loop iteration, dict lookups of the arguments,
a dict store of the result and the bookkeeping of freed values. A plan is fixed once compiled,
so all of that can be decided once: `compile_plan` writes a function whose locals are the
values (`v3 = f3(v1, a0)`), that drops each value with `del` right after its last reader, and
that keeps the memory books of `cgraph.memory` (each buffer counted once; a view's bytes
counted only if the kernel had to copy; a kernel's declared working bytes at its step): values
that take part in views are recorded in a `Ledger`, the others own their buffer alone and need
one addition and one subtraction each.

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
    """A compiled plan: `runner(leaf_values, updates) -> (target_values, peak_bytes, bytes alive
    at the end)`."""

    def __init__(self, fn: Callable[..., Any], source: str) -> None:
        self.fn = fn
        self.source = source

    def __call__(self, leaves: Sequence[Any], updates: Sequence[Any] = ()) -> tuple[tuple[Any, ...], int, int]:
        return self.fn(leaves, updates)


def compile_plan(plan: Plan) -> Runner:
    """Generate and compile the straight-line function of `plan`. Few statements per step (the
    compile time of a large plan is in proportion to them): a step written over its dying input
    takes over that input's variable and byte count; the values a step frees are dropped and
    taken off the books in one statement each."""
    var: dict[str, str] = {n: f"a{j}" for j, n in enumerate(plan.leaves)}
    # Values whose buffer may be shared: view steps and the values they view, tuples of results
    # and the results taken from them.
    shared = {s.name for s in plan.steps if s.view or s.multi or s.part >= 0}
    shared |= {s.args[0] for s in plan.steps if s.view}
    shared -= set(plan.leaves)
    ns: dict[str, Any] = {"_share": np.may_share_memory, "_Ledger": Ledger}
    body = ["def run(leaves, updates):"]
    if plan.leaves:
        body.append(f"    {', '.join(var[n] for n in plan.leaves)}, = leaves")
    if plan.updates:
        body.append(f"    {', '.join(f'u{k}' for k in range(len(plan.updates)))}, = updates")
    body.append("    live = peak = 0")
    if shared:
        body.append("    L = _Ledger()")
    size: dict[str, str] = {}  # counted value (owning its buffer alone) -> the local with its bytes
    for i, step in enumerate(plan.steps):
        ns[f"f{i}"] = step.fn
        args = ", ".join(var[a] for a in step.args)
        if step.update >= 0:
            body.append(f"    u{step.update}({args})  # {step.name}")
            body += _frees(step, var, size, shared)
            continue
        if step.inplace >= 0:
            src = step.args[step.inplace]
            v = var[step.name] = var[src]  # the same buffer, under the same variable
            body.append(f"    {v} = f{i}({args}, out={v})  # {step.name} ({step.op}, in place)")
            if step.name in shared:  # the input was counted inline: its bytes are live already
                body.append(f"    L.new({step.name!r}, {size.pop(src)})")
            else:
                size[step.name] = size.pop(src)
            body += _frees(step, var, size, shared, keep=v)
            continue
        v = var[step.name] = f"v{i}"
        body.append(f"    {v} = f{i}({args})  # {step.name} ({step.op})")
        if step.multi:  # a tuple of new buffers; the kernel's own peak counts on top of live
            body += [f"    n{i} = L.results({step.name!r}, {v}.sizes)",
                     f"    if live + {v}.peak > peak: peak = live + {v}.peak",
                     f"    live += n{i}",
                     "    if live > peak: peak = live"]
        elif step.part >= 0:
            body.append(f"    L.part({step.name!r}, {step.args[0]!r}, {step.part})")
        elif step.view:
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
            size[step.name] = f"n{i}"
            body += [f"    live += (n{i} := {v}.nbytes)",
                     "    if live > peak: peak = live"]
        if step.scratch is not None:  # the kernel's working bytes, beside its output, at this step only
            ns[f"s{i}"] = step.scratch
            body += [f"    w = live + s{i}({args})", "    if w > peak: peak = w"]
        body += _frees(step, var, size, shared)
    targets = ", ".join(var[t] for t in plan.targets)
    body.append(f"    return ({targets}{',' if len(plan.targets) == 1 else ''}), peak, live")
    source = "\n".join(body) + "\n"
    exec(compile(source, f"<cgraph plan {plan.graph.name}>", "exec"), ns)  # noqa: S102  (our own code)
    return Runner(ns["run"], source)


def _frees(step: Any, var: dict[str, str], size: dict[str, str], shared: set[str], keep: str = "") -> list[str]:
    """The statements that drop the values `step` frees (but variable `keep`, which an in-place
    result took over) and take their bytes off the books."""
    names = [var[f] for f in step.free if var[f] != keep]
    counted = [size.pop(f) for f in step.free if f in size]
    lines = [f"    del {', '.join(names)}"] if names else []
    if counted:
        lines.append(f"    live -= {' + '.join(counted)}")
    lines += [f"    live -= L.release({f!r})" for f in step.free if f in shared]
    return lines
