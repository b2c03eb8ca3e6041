"""Schedules: the order in which a graph's nodes run, and after each step what can be freed.

A `Plan` is compiled once per graph and set of targets. Its order is the creation order (a
topological order, as nodes can only read earlier ones), so a graph built in one sweep (the
forward-mode graph builds each value and then its tangent) runs in that sweep, and the
reverse-mode graph runs all forward steps, then the backward steps in the order the backward
sweep made them. Ops marked `eager` (a shape, a count: tiny outputs) run right after their
inputs, so that a big input need not live on just for its size. Liveness analysis gives, for
each step, the values whose last reader it is; `run_plan` drops them there.

An elementwise step whose input dies at that step, and is nobody's view, writes its result over
that input (`out=`), so the buffer is reused instead of a new one allocated.

A plan runs as straight-line Python code compiled for it (cgraph.codegen), or step by step
(`interpret_run`, the reference the code is tested against). Compiling costs about as much as
ten to thirty interpreted runs, so a large plan (over `COMPILE_AT_ONCE` steps) is interpreted
for its first `INTERPRETED_RUNS` runs and compiled only if it keeps running: a gradient of a
100,000-node model gives its first result without waiting tens of seconds for Python's compiler.

Memory is accounted, never guessed: a step's output adds its bytes unless it is a view of a
buffer already counted or written over a dying input (a view of a 0-d value counts as its own:
numpy often returns scalars there, which cannot be viewed); a kernel's declared working memory
(`OpDef.scratch`) counts while its step runs; feeds, params and constants are not counted
(they live anyway).
`Plan.predict_peak` gives the same number from shapes alone, before any run; the one case it
cannot see is a reshape that must copy a non-contiguous value (the run counts that copy).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from cgraph.codegen import Runner, compile_plan
from cgraph.errors import CgraphError, FeedError, ShapeError
from cgraph.graph import Drawable, Graph, Meta, Node, format_shape
from cgraph.memory import Ledger, account, tally
from cgraph.ops.registry import LEAF_OPS, get_op
from cgraph.shapes import nbytes
from cgraph.simplify import DEFAULT, simplify


class Step(NamedTuple):
    """One kernel call: `name = fn(*args)`, then drop the values in `free`. An update step
    (`update` >= 0) has no result: it hands its two args, a param and its gradient, to the
    run's update callback number `update`, which may change the param in place."""

    name: str
    op: str
    fn: Callable[..., Any]
    args: tuple[str, ...]
    view: bool
    free: tuple[str, ...]
    inplace: int = -1  # which input the result is written over (`out=`), or -1
    update: int = -1  # an update step: which callback of the run it calls, or -1
    part: int = -1  # a `result` step: which result of its input (a tuple) it is, or -1
    multi: bool = False  # a control-flow step: its value is `Results`, with its kernel's peak
    scratch: Callable[..., int] | None = None  # the kernel's working bytes, from its inputs


@dataclass
class Stats:
    """What an executor measured in its last run."""

    peak_bytes: int = 0  # intermediate bytes alive at once, at the peak (feeds, params excluded)
    steps: int = 0
    predictor: Callable[[], int] | None = None

    @property
    def predicted_peak_bytes(self) -> int | None:
        """What the plan predicts for the last run's shapes (computed when asked)."""
        return None if self.predictor is None else self.predictor()

    def __repr__(self) -> str:
        return f"Stats(peak_bytes={self.peak_bytes}, steps={self.steps})"


def schedule_order(graph: Graph, targets: Sequence[str]) -> list[str]:
    """The nodes `targets` need, in the order they should run (see the module docstring)."""
    needed = graph.needed_by(targets)
    key = order_keys((n.name, n.inputs, get_eager(n.op)) for n in graph.nodes.values() if n.name in needed)
    return sorted(key, key=key.__getitem__)  # each key exceeds its inputs': a topological order


def order_keys(nodes: Iterable[tuple[str, Sequence[str], bool]]) -> dict[str, float]:
    """Sort keys for (name, inputs, eager) in creation order: the position, or for an eager op
    just after its last input (so a big input need not live on for its size alone)."""
    key: dict[str, float] = {}
    for i, (name, inputs, eager) in enumerate(nodes):
        key[name] = max(key[j] for j in inputs) + 0.5 if eager and inputs else float(i)
    return key


def get_eager(op: str) -> bool:
    return op not in LEAF_OPS and get_op(op).eager


class Plan(Drawable):
    """An executable schedule of `graph` for the nodes `targets` (kept to the end). In Jupyter
    it shows itself as its graph, each node coloured by whether it is kept or freed at the end.

    `updates` are (param, gradient node) pairs: each gradient is handed with its param to an
    update callback of the run (an optimizer's step) as soon as the gradient is complete and
    no later step reads the param or a view of it, so that the callback may change the param
    in place; the gradient is freed right after (it is no target)."""

    def __init__(self, graph: Graph, targets: Sequence[str], passes: Sequence[str] = DEFAULT,
                 updates: Sequence[tuple[str, str]] = ()) -> None:
        self.source = graph  # the graph as built; `graph` is what runs, after `passes`
        grads = [u[1] for u in updates]
        if passes:
            graph, moved = simplify(graph, [*targets, *grads], passes)
            targets, grads = moved[:len(targets)], moved[len(targets):]
        self.graph = graph
        self.targets = tuple(targets)
        order = schedule_order(graph, [*self.targets, *grads])
        nodes = graph.nodes
        self.leaves = tuple(n for n in order if nodes[n].is_leaf)
        self.leaf_kinds = tuple(nodes[n].op for n in self.leaves)
        ops = [n for n in order if not nodes[n].is_leaf]
        sinks = {f"update:{p}": (p, gr) for (p, _), gr in zip(updates, grads, strict=True)}
        ops = _place_updates(ops, nodes, sinks, set(self.targets))
        frees, inplace = liveness(ops, nodes, set(self.targets), sinks)
        callback = {name: k for k, name in enumerate(sinks)}
        steps = []
        for i, name in enumerate(ops):
            if name in sinks:
                steps.append(Step(name, "update", _no_kernel, sinks[name], False, frees[i], -1, callback[name]))
                continue
            node = nodes[name]
            opdef = get_op(node.op)
            steps.append(Step(name, node.op, opdef.bind(node), node.inputs, opdef.view, frees[i], inplace[i],
                              part=node.attrs["index"] if opdef.project else -1, multi=opdef.multi,
                              scratch=opdef.bind_scratch(node)))
        self.steps = tuple(steps)
        self.updates = tuple(sinks.values())  # (param, gradient) of each update step, in callback order

    runs = 0  # how many times run_plan has run it

    @functools.cached_property
    def runner(self) -> Runner:
        """The plan as straight-line code, compiled when first run."""
        return compile_plan(self)

    def __len__(self) -> int:
        return len(self.steps)

    def __repr__(self) -> str:
        return f"Plan({self.graph.name!r}, {len(self.steps)} steps, targets={list(self.targets)})"

    def predict_peak(self, leaf_shapes: Mapping[str, tuple[int, ...]]) -> int:
        """The peak bytes a run will measure when the leaves have these concrete shapes, from
        shape inference and liveness alone."""
        return self.predict(leaf_shapes)[0]

    def predict(self, leaf_shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, int]:
        """The peak bytes (as `predict_peak`) and the bytes still alive at the end (the targets'
        own buffers)."""
        meta = concrete_shapes(self.graph, leaf_shapes, {s.name for s in self.steps} | set(self.leaves))
        return tally(self.steps, {n: step_size(m) for n, m in meta.items()},
                     {n for n, m in meta.items() if not m.shape}, transients(self.graph, self.steps, meta))


def step_size(meta: Meta) -> int | tuple[int, ...]:
    """What the books record for a value of this Meta: its bytes, or each result's."""
    return tuple(nbytes(p) for p in meta.parts) if meta.parts is not None else nbytes(meta)


def transients(graph: Graph, steps: Sequence[Step], meta: Mapping[str, Meta]) -> dict[str, int]:
    """What each step's kernel holds at once beyond what was alive before it, where that is more
    than its output: a control-flow step's (its op's `peak` rule at these Metas), or a kernel's
    with declared scratch (its output and the scratch)."""
    out = {}
    for s in steps:
        if s.multi:
            node = graph.nodes[s.name]
            rule = get_op(node.op).peak
            assert rule is not None
            out[s.name] = rule(node, [meta[i] for i in node.inputs], meta[s.name])
        elif s.scratch is not None:  # its output and its working bytes
            out[s.name] = nbytes(meta[s.name]) + s.scratch(*[meta[a] for a in s.args])
    return out


def concrete_shapes(graph: Graph, leaf_shapes: Mapping[str, tuple[int, ...]],
                    only: set[str] | None = None) -> dict[str, Meta]:
    """Every node's shape and dtype (or those in `only`, which must hold their inputs) when
    the leaves have these shapes (leaves not given keep their static shape), by shape
    inference: run-time shapes are followed (`shape_of`, and int64 vectors computed from
    them and from constants: a batch size joined to an example's shape). Leaf shapes may keep
    a None (a control-flow body inferred for static shapes): a run-time shape that follows from
    one is then taken as the attribute says (with its None)."""
    meta: dict[str, Meta] = {}
    shape_value: dict[str, np.ndarray] = {}
    for node in graph.nodes.values():
        if only is not None and node.name not in only:
            continue
        if node.is_leaf:
            meta[node.name] = Meta(tuple(leaf_shapes.get(node.name, node.shape)), node.dtype)
            if node.op == "constant" and node.dtype == np.int64 and len(node.shape) <= 1:
                shape_value[node.name] = graph.value(node.name)
            continue
        opdef = get_op(node.op)
        attrs = dict(node.attrs)
        if opdef.shape_arg and len(node.inputs) > 1 and node.inputs[1] in shape_value:
            attrs["shape"] = tuple(shape_value[node.inputs[1]].tolist())
        meta[node.name] = opdef.meta(*[meta[i] for i in node.inputs], **attrs)
        if opdef.gives_shape:
            if None not in meta[node.inputs[0]].shape:
                shape_value[node.name] = np.array(meta[node.inputs[0]].shape, np.int64)
        elif node.dtype == np.int64 and len(node.shape) <= 1 and all(i in shape_value for i in node.inputs):
            shape_value[node.name] = np.asarray(opdef.bind(node)(*[shape_value[i] for i in node.inputs]))
    return meta


def liveness(ops: Sequence[str], nodes: Mapping[str, Node], keep: set[str],
             updates: Mapping[str, tuple[str, ...]] | None = None) -> tuple[list[tuple[str, ...]], list[int]]:
    """For op nodes (and update steps, named in `updates` with what they read) run in the
    order `ops`: after each, the values whose last reader it was (never those in `keep`), and
    which input its result may be written over (-1: none): one that dies there, is no leaf, no
    view, no result of a tuple and viewed by nobody, with the result's static shape and dtype,
    for an op whose kernel takes `out=`."""
    updates = updates or {}
    last_use: dict[str, int] = {}
    for i, name in enumerate(ops):
        for src in updates[name] if name in updates else nodes[name].inputs:
            last_use[src] = i
    frees: list[list[str]] = [[] for _ in ops]
    for name, i in last_use.items():
        if name not in keep:
            frees[i].append(name)
    viewed = {nodes[n].inputs[0] for n in ops if n not in updates and get_op(nodes[n].op).view}
    inplace = [-1] * len(ops)
    for i, name in enumerate(ops):
        if name in updates:
            continue
        node = nodes[name]
        if not (get_op(node.op).inplace and node.shape):
            continue
        for k, src in enumerate(node.inputs):
            arg = nodes[src]
            shared = arg.is_leaf or get_op(arg.op).view or get_op(arg.op).project  # a result: the tuple's too
            if (src in frees[i] and not shared and src not in viewed
                    and arg.shape == node.shape and arg.dtype == node.dtype):
                inplace[i] = k
                break
    return [tuple(sorted(f)) for f in frees], inplace


def _counted(update: Callable[[Any, Any], None], ran: list[int], param: Any, grad: Any) -> None:
    update(param, grad)
    ran.append(1)


def _no_kernel(*args: Any) -> None:
    raise AssertionError("an update step calls the run's callback, not a kernel")


def _place_updates(ops: list[str], nodes: Mapping[str, Node], sinks: Mapping[str, tuple[str, str]],
                   targets: set[str]) -> list[str]:
    """`ops` with each update step right after its gradient's step and the last step that reads
    its param or a view of it (a view would see the param change)."""
    if not sinks:
        return ops
    position = {name: i for i, name in enumerate(ops)}
    after: dict[int, list[str]] = {}
    for sink, (param, grad) in sinks.items():
        shows = {param}  # the param and the values that may be views of it
        last = position.get(grad, -1)
        for i, name in enumerate(ops):
            node = nodes[name]
            if any(a in shows for a in node.inputs):
                last = max(last, i)
                if get_op(node.op).view and node.inputs[0] in shows:
                    shows.add(name)
        if shows & targets:
            last = len(ops) - 1  # an output shows the param: update it after everything
        after.setdefault(last, []).append(sink)
    out = after.get(-1, [])
    for i, name in enumerate(ops):
        out.append(name)
        out += after.get(i, [])
    return out


COMPILE_AT_ONCE = 2_000  # steps: a plan this small is compiled on its first run
INTERPRETED_RUNS = 16  # runs of a larger plan interpreted before it is compiled


def run_plan(plan: Plan, leaves: Sequence[Any], stats: Stats,
             updates: Sequence[Callable[[Any, Any], None]] = ()) -> tuple[Any, ...]:
    """Run `plan` with the values of `plan.leaves`, in order, and `updates` (one callback per
    update step, see Plan); returns the targets' values in order and measures the peak bytes.
    Runs the plan's compiled straight-line code (cgraph.codegen), or interprets it while a large
    plan is young (see the module docstring); if a kernel fails before any update ran, runs the
    plan step by step to name the failing node."""
    plan.runs += 1
    if plan.runs <= INTERPRETED_RUNS and len(plan.steps) > COMPILE_AT_ONCE and "runner" not in plan.__dict__:
        return interpret_plan(plan, dict(zip(plan.leaves, leaves, strict=True)), stats, updates)
    ran: list[int] = []
    if updates:
        updates = [functools.partial(_counted, u, ran) for u in updates]
    try:
        outs, peak, _ = plan.runner(leaves, updates)
    except Exception as e:
        if ran:  # a param has changed already: the step cannot be run again to name the node
            if isinstance(e, (CgraphError, FloatingPointError)):  # (a numeric error under np.seterr)
                raise
            raise ShapeError(f"{plan.graph.name}: a step after an update failed: {type(e).__name__}: {e}") from e
        return interpret_plan(plan, dict(zip(plan.leaves, leaves, strict=True)), stats, updates)
    stats.peak_bytes = peak
    stats.steps = len(plan.steps)
    return outs


def interpret_plan(plan: Plan, values: dict[str, Any], stats: Stats,
                   updates: Sequence[Callable[[Any, Any], None]] = ()) -> tuple[Any, ...]:
    """`run_plan` one step at a time, in a loop over the plan: the reference the generated code
    is tested against, and the path that names a failing node."""
    outs, peak, _ = interpret_run(plan, values, updates)
    stats.peak_bytes = peak
    stats.steps = len(plan.steps)
    return outs


def interpret_run(plan: Plan, values: dict[str, Any], updates: Sequence[Callable[[Any, Any], None]] = ()
                  ) -> tuple[tuple[Any, ...], int, int]:
    """Run `plan` step by step on `values` (the leaves'), as the runner does: (the targets'
    values, the peak bytes, the bytes alive at the end)."""
    books = Ledger()
    live = peak = 0
    leaf_values = dict(values)  # (the values dict drops leaves once read: kept to name feeds in errors)
    for step in plan.steps:
        name, op, fn, args, view, free, inplace, update, _, multi, scratch = step
        ins = [values[a] for a in args]
        if update >= 0:
            updates[update](*ins)
            for f in free:
                del values[f]
                live -= books.release(f)
            continue
        try:
            out = fn(*ins) if inplace < 0 else fn(*ins, out=ins[inplace])
        except CgraphError:
            raise
        except Exception as e:  # a size known only at run time disagrees, or numpy refused
            fed = {n: np.shape(v) for n, v in leaf_values.items() if plan.graph.nodes[n].op == "input"}
            raise _failure(plan, step, ins, e, fed) from None
        values[name] = out
        shares = bool(view and ins[0].ndim and np.may_share_memory(out, ins[0]))
        added = books.record(step, out.sizes if multi else out.nbytes, shares)
        held = out.peak if multi else 0 if scratch is None else added + scratch(*ins)  # while the kernel ran
        peak = max(peak, live + held, live + added)
        live += added
        for f in free:
            del values[f]
            live -= books.release(f)
    return tuple(values[t] for t in plan.targets), peak, live


def _failure(plan: Plan, step: Step, ins: list[Any], e: Exception, fed: Mapping[str, tuple[int, ...]]) -> Exception:
    """What a kernel's failure means, naming the node: a numeric error stays what it is (under
    np.seterr(all="raise")); the op's shape rule refusing the run-time shapes of its inputs is
    a FeedError naming the feeds of run-time sizes that lead there (`fed`: each input leaf's
    shape); anything else a ShapeError."""
    where = f"{step.name} ({step.op})"
    shapes = ", ".join(f"{a} {format_shape(np.shape(v))}" for a, v in zip(step.args, ins, strict=True))
    if isinstance(e, FloatingPointError):
        return FloatingPointError(f"{where}: {e} [inputs: {shapes}]")
    graph = plan.graph
    opdef = get_op(step.op)
    attrs = dict(graph.nodes[step.name].attrs)
    if opdef.shape_arg and len(ins) > 1:
        attrs["shape"] = tuple(int(d) for d in np.asarray(ins[1]).reshape(-1))
    try:
        opdef.infer(*[Meta(np.shape(v), np.asarray(v).dtype) for v in ins], **attrs)
        refused = ""
    except Exception as err:  # noqa: BLE001  (the rule's own words, whatever it raised)
        refused = str(err) or type(err).__name__
    ancestors = graph.needed_by([step.name])
    feeds = [f"{n!r} {format_shape(s)}" for n, s in fed.items()
             if n in ancestors and None in graph.nodes[n].shape]
    if not refused or not feeds:
        return ShapeError(f"{where}: {type(e).__name__}: {e} [inputs: {shapes}]")
    if len(feeds) == 1:
        return FeedError(f"feed {feeds[0]} does not fit {where}: {refused} [inputs: {shapes}]")
    listed = ", ".join(feeds[:-1]) + f" and {feeds[-1]}"
    return FeedError(f"the run-time sizes of feeds {listed} do not fit together: {where}: {refused} "
                     f"[inputs: {shapes}]")


__all__ = ["Plan", "Stats", "Step", "account", "tally", "concrete_shapes", "interpret_plan", "interpret_run",
           "liveness", "nbytes", "run_plan", "schedule_order", "step_size", "transients"]
