"""Drawing graphs with Graphviz: structure, the sweeps' numbers, and a memory plan's state.

`to_dot(g)` gives Graphviz source, built with the `graphviz` package (it quotes and escapes);
`render(g, path)` writes svg, png or pdf through the `dot` program, or the source as .dot
without it. Leaves and ops are styled apart, outputs have a double border, and name scopes
(`layer0/W`) are clusters. Big graphs stay fast: scopes deeper than `collapse` fold into one
box each, and a graph with more than `max_nodes` boxes folds itself (and says so), because
`dot`'s layout time grows much faster than the node count.

With `feeds`, each node shows its value (and, in a mode, its tangent or adjoint) from
`cg.trace`; with a `plan` (`Evaluator(g).plan`, `ReverseMode(...).plan`), each node is
coloured by whether it is kept, freed or not yet computed after step `step`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import re
import subprocess
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import graphviz
import networkx as nx
import numpy as np

from cgraph.checkpoint import RECOMPUTE, MemoryPlan
from cgraph.errors import RenderError, RenderWarning
from cgraph.files import replace_file
from cgraph.graph import Drawable, Graph, Node, format_shape
from cgraph.schedule import Plan
from cgraph.tracing import Trace, trace

FORMATS = ("svg", "png", "pdf", "dot")
RANKDIRS = ("TB", "LR", "BT", "RL")
MAX_NODES = 400  # boxes drawn before a graph folds itself
LONG_EDGE_RANKS = 25  # ranks crossed by all edges together, per allowed box, before a graph folds
STRAIGHT_EDGES_FROM = 2_000  # ranks crossed beyond which edges are drawn straight (routing
#                              curves around thousands of virtual nodes takes dot minutes)
INSTALL_HINT = "install Graphviz (apt-get install graphviz, brew install graphviz)"
LABEL_CHARS = 80  # characters of a label's line; the full name is in the tooltip
TOOLTIP_CHARS = 4000  # characters of a tooltip or id: dot refuses strings past 16 KiB
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

_STYLE: dict[str, dict[str, str]] = {
    "input": {"shape": "ellipse", "style": "filled", "fillcolor": "#dbeafe", "color": "#1d4ed8"},
    "param": {"shape": "box", "style": "filled", "fillcolor": "#fde68a", "color": "#b45309"},
    "constant": {"shape": "box", "style": "filled,dashed", "fillcolor": "#f3f4f6", "color": "#6b7280",
                 "fontsize": "10"},
    "op": {"shape": "box", "style": "rounded,filled", "fillcolor": "#ffffff", "color": "#374151"},
    "fold": {"shape": "box3d", "style": "filled", "fillcolor": "#e5e7eb", "color": "#4b5563"},
}
_PLAN_STYLE: dict[str, dict[str, str]] = {
    "kept": {"fillcolor": "#bbf7d0"},
    "freed": {"fillcolor": "#f3f4f6", "fontcolor": "#9ca3af", "color": "#9ca3af"},
    "recomputed": {"fillcolor": "#fed7aa"},
    "pending": {"fillcolor": "#ffffff", "fontcolor": "#6b7280"},
}


def _shown(text: str, limit: int = LABEL_CHARS) -> str:
    """`text` as DOT can carry it: control characters as escapes (`\\x00`, `\\n`), at most
    `limit` characters (the middle cut out: names differ at their ends as often as at their
    starts), backslashes escaped, `&` kept from starting an entity and `<...>` from being HTML."""
    text = _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)
    if len(text) > limit:
        head = (limit - 1) - (limit - 1) // 2
        text = text[:head] + "…" + text[len(text) - (limit - 1) // 2:]
    return graphviz.escape(text.replace("&", "&amp;"))


def _label(*lines: str) -> str:
    """A multi-line label: each line as `_shown`, joined by DOT's `\\n`."""
    return graphviz.nohtml("\\n".join(_shown(line) for line in lines))


def summarize(value: Any) -> str:
    """A number for a scalar; shape and min/mean/max for an array."""
    v = np.asarray(value)
    if v.size == 1 and v.ndim == 0:
        x = v.item()
        return str(x) if isinstance(x, bool) else f"{x:.4g}"
    shape = format_shape(v.shape)
    if v.size == 0:
        return f"{shape} empty"
    if v.dtype == bool:
        return f"{shape} {int(v.sum())} true"
    finite = v[np.isfinite(v)] if v.dtype.kind == "f" else v
    bad = v.size - finite.size
    if finite.size == 0:
        return f"{shape} all nan/inf"
    text = f"{shape} min {finite.min():.3g} mean {finite.mean():.3g} max {finite.max():.3g}"
    return text + (f" ({bad} nan/inf)" if bad else "")


def _scope(name: str) -> tuple[str, ...]:
    return tuple(name.split("/")[:-1])


def _candidates(g: Graph, collapse: int | None, max_nodes: int) -> Iterator[tuple[dict[str, str], str]]:
    """Foldings of `g`, finest first: node name -> fold key for the nodes drawn inside a folded
    box, and how. Scopes deeper than `collapse` fold; then ever shallower scopes; then runs of
    nodes in creation order, ever longer, down to one box."""
    nodes = list(g.nodes.values())
    scopes = {n.name: _scope(n.name) for n in nodes}

    def at(depth: int) -> dict[str, str]:
        return {n: "/".join(s[:depth]) for n, s in scopes.items() if len(s) >= depth}

    yield (at(collapse) if collapse is not None else {}), ""
    deepest = max(map(len, scopes.values()), default=0)
    for depth in range(deepest if collapse is None else collapse - 1, 0, -1):
        yield at(depth), f"name scopes folded at depth {depth}"
    count = min(max_nodes, len(nodes))
    while True:
        size = math.ceil(len(nodes) / count)
        keys = {}
        for i in range(0, len(nodes), size):
            run = nodes[i:i + size]
            for n in run:
                keys[n.name] = f"#{i}-{i + len(run) - 1}"
        yield keys, f"folded into runs of {size} nodes in creation order"
        if count == 1:
            return
        count = max(1, count // 2)


def _long_edge_cost(edges: Iterable[tuple[str, str]]) -> int:
    """How many ranks the drawn edges cross in all, ranks being longest paths from the sources.

    dot adds a virtual node per rank an edge crosses, and its layout time grows quickly with
    them: one input read by every layer of a 200-layer chain costs it minutes."""
    dag = nx.DiGraph(edges)
    if not nx.is_directed_acyclic_graph(dag):  # folding can make cycles; rank their condensation
        cond = nx.condensation(dag)
        members = cond.graph["mapping"]
        dag = nx.DiGraph((members[a], members[b]) for a, b in dag.edges if members[a] != members[b])
    rank: dict[Any, int] = {}
    for v in nx.topological_sort(dag):
        rank[v] = max((rank[u] + 1 for u in dag.predecessors(v)), default=0)
    return sum(rank[b] - rank[a] for a, b in dag.edges)


def _fold(g: Graph, collapse: int | None, max_nodes: int) -> tuple[dict[str, str], str | None, int]:
    """The finest folding with at most `max_nodes` boxes and edges that dot lays out in seconds,
    why it folded, if it had to fold beyond `collapse`, and its long-edge cost."""
    why = ""
    for keys, how in _candidates(g, collapse, max_nodes):
        item = {name: keys.get(name, name) for name in g.nodes}
        boxes = len(set(item.values()))
        if boxes > max_nodes:
            why = f"{len(g.nodes)} nodes exceed max_nodes={max_nodes}"
            continue
        edges = {(item[s], item[n.name]) for n in g.nodes.values() for s in n.inputs if item[s] != item[n.name]}
        cost = _long_edge_cost(edges)
        if cost > LONG_EDGE_RANKS * max_nodes:
            why = why or (f"its edges cross {cost} ranks (more than {LONG_EDGE_RANKS} * max_nodes={max_nodes} "
                          "make dot slow)")
            continue
        return keys, (f"{why}: {how}" if why else None), cost
    raise AssertionError("one box always fits")


def _plan_states(plan: Plan, step: int | None) -> tuple[dict[str, str], str, str]:
    """Each node's state after step `step` of `plan` (kept, freed, pending), the step's node,
    and a legend."""
    n = len(plan.steps)
    if n == 0:
        raise RenderError(f"{plan!r} has no steps to show")
    k = n - 1 if step is None else step
    if not isinstance(k, (int, np.integer)) or not 0 <= k < n:
        raise RenderError(f"step {step!r} is not a step of {plan!r} (0 to {n - 1})")
    states = {leaf: "kept" for leaf in plan.leaves}
    for i, s in enumerate(plan.steps):
        states[s.name] = "pending" if i > k else "recomputed" if s.name.startswith(RECOMPUTE) else "kept"
    for s in plan.steps[:k + 1]:
        for f in s.free:
            states[f] = "freed"
    current = plan.steps[k].name
    legend = (f"after step {k} of {n} ({current}): green kept, orange recomputed and kept, grey freed, "
              "white not yet computed; red border: this step")
    return states, current, legend


def _memory_plan_states(mp: MemoryPlan) -> tuple[dict[str, str], None, str]:
    """The whole of a budgeted schedule at a glance: the values it stores and those it
    recomputes, and a legend with its peak."""
    states = {name: "kept" for name in mp.stored}
    states.update({s.name: "recomputed" for s in mp.plan.steps if s.name.startswith(RECOMPUTE)})
    legend = (f"memory plan: green stored by the forward sweep, orange recomputed in the backward sweep; "
              f"predicted peak {mp.predicted_peak:,} B (budget {mp.budget:,} B, "
              f"{mp.unbudgeted_peak:,} B without), {mp.extra_calls} extra kernel calls")
    return states, None, legend


def _node_lines(g: Graph, node: Node, outputs: Mapping[str, list[str]], tr: Trace | None) -> list[str]:
    lines = [node.name]
    if node.op == "constant" and g.value(node.name).size == 1:
        lines.append(f"constant = {summarize(g.value(node.name).reshape(()))} {node.dtype}")
    elif node.parts is not None:
        lines.append(f"{node.op}: {len(node.parts)} results")
    else:
        lines.append(f"{node.op} {format_shape(node.shape)} {node.dtype}")
    lines += [f"output: {o}" for o in outputs.get(node.name, ())]
    if tr is not None:
        for what, table in (("value", tr.values), ("tangent", tr.tangents), ("adjoint", tr.adjoints)):
            if node.name in table:
                lines.append(f"{what} {summarize(table[node.name])}")
    return lines


@dataclass(frozen=True)
class RenderOptions:
    """How a graph is drawn, for `to_dot`, `render`, `digraph` and the `cgraph render` command
    (each takes these as keywords, or an `options=` to start from).

    - `rankdir`: "TB" (top-down), "LR" (left-to-right), "BT" or "RL".
    - `collapse`: fold name scopes deeper than this depth into one box each (1: every
      top-level scope is a box). Beyond `max_nodes` boxes, or long edges crossing more than
      25 * `max_nodes` ranks in all (what makes dot slow), the graph folds itself further
      (shallower scopes, then runs of nodes), with a `RenderWarning` and a note in the drawing.
    - `feeds`: label each node with its value; `mode="forward"` (with `wrt`, and `tangents`,
      default ones) adds tangents, `mode="reverse"` (with `of`) adjoints; see `cg.trace`.
    - `plan`, `step`: colour the nodes kept, freed, recomputed or not yet computed after that
      step of the plan (default its last): `ReverseMode(g, ...).plan` drawn over `plan.graph`,
      or under a memory budget `rm.memory_plan` drawn over `rm.memory_plan.plan.graph`
      (without `step`, a memory plan shows what it stores and what it recomputes).
    - `trace`: label each node with the numbers of a `cg.trace` of this graph already run
      (instead of `feeds`, which runs one).
    """

    rankdir: str = "TB"
    collapse: int | None = None
    max_nodes: int = MAX_NODES
    feeds: Mapping[str, Any] | None = None
    mode: str | None = None
    of: Sequence[str] | str | None = None
    wrt: Sequence[str] | str | None = None
    tangents: Mapping[str, Any] | None = None
    plan: Plan | MemoryPlan | None = None
    step: int | None = None
    trace: Trace | None = None

    def __post_init__(self) -> None:
        if self.rankdir not in RANKDIRS:
            raise RenderError(f"rankdir must be one of {', '.join(RANKDIRS)}, not {self.rankdir!r}")
        if self.collapse is not None and (not isinstance(self.collapse, int) or self.collapse < 1):
            raise RenderError(f"collapse must be a depth of at least 1, not {self.collapse!r}")
        if not isinstance(self.max_nodes, int) or self.max_nodes < 1:
            raise RenderError(f"max_nodes must be a positive number, not {self.max_nodes!r}")
        if self.feeds is None and self.mode is not None:
            raise RenderError(f"mode={self.mode!r} needs feeds: the values the sweep starts from")
        if self.feeds is not None and self.trace is not None:
            raise RenderError("give feeds (to run a trace) or trace (one already run), not both")

    @classmethod
    def of_call(cls, options: RenderOptions | None, changes: Mapping[str, Any]) -> RenderOptions:
        """`options` (or the defaults) with the keyword `changes` a function was called with."""
        return dataclasses.replace(options or cls(), **changes)


def digraph(g: Graph, options: RenderOptions | None = None, **changes: Any) -> graphviz.Digraph:
    """The drawing as a `graphviz.Digraph` (the options are `RenderOptions`')."""
    if not isinstance(g, Graph):
        raise TypeError(f"expected a cgraph Graph, got {type(g).__name__}")
    o = RenderOptions.of_call(options, changes)
    plan = o.plan.plan if isinstance(o.plan, MemoryPlan) else o.plan
    rankdir, max_nodes = o.rankdir, o.max_nodes
    keys, why, cost = _fold(g, o.collapse, max_nodes)
    if why:
        warnings.warn(f"graph {g.name!r}: {why} (choose with collapse=/--collapse, max_nodes=/--max-nodes)",
                      RenderWarning, stacklevel=3)
    tr = trace(g, o.feeds, mode=o.mode, of=o.of, wrt=o.wrt, tangents=o.tangents) if o.feeds is not None else o.trace
    states: dict[str, str]
    current: str | None
    legend: str | None
    if isinstance(o.plan, MemoryPlan) and o.step is None:
        states, current, legend = _memory_plan_states(o.plan)
    else:
        states, current, legend = _plan_states(plan, o.step) if plan is not None else ({}, None, None)

    outputs: dict[str, list[str]] = defaultdict(list)
    for out, t in g.outputs.items():
        outputs[t.name].append(out)
    title = [g.name]
    if tr is not None and tr.mode == "forward":
        title.append(f"forward mode: tangents along d/d{', '.join(tr.wrt)}")
    elif tr is not None and tr.mode == "reverse":
        title.append(f"reverse mode: adjoints of {tr.of[0]}")
    if legend:
        title.append(legend)
    if why:
        title.append(f"folded: {why}")

    # nslimit bounds dot's network simplex (its x placement runs for minutes on a few hundred
    # nodes with long edges otherwise); the drawing of small graphs is the same.
    layout = {"nslimit": "3", "nslimit1": "3"}
    if cost > STRAIGHT_EDGES_FROM:
        layout["splines"] = "line"
    dot = graphviz.Digraph(name=_shown(g.name), graph_attr={"rankdir": rankdir, "label": _label(*title),
                                                            "labelloc": "t", "fontname": "Helvetica", **layout},
                           node_attr={"fontname": "Helvetica", "fontsize": "11"},
                           edge_attr={"color": "#6b7280", "arrowsize": "0.7"})
    # Each drawn box: its DOT id, its scope (the cluster it sits in), label and attributes.
    members: dict[tuple[str, ...], list[tuple[str, str, dict[str, str]]]] = defaultdict(list)
    bodies: dict[str, Node] = {}  # a control-flow node's box -> the node, whose bodies it draws
    item: dict[str, str] = {}
    folded: dict[str, list[Node]] = defaultdict(list)
    for node in g.nodes.values():
        key = keys.get(node.name)
        if key is not None:
            folded[key].append(node)
            continue
        item[node.name] = ident = f"n{node.index}"
        full = _shown(node.name, TOOLTIP_CHARS)
        attrs = dict(_STYLE[node.op if node.is_leaf else "op"], id=full, tooltip=full)
        if node.name in outputs:
            attrs.update(peripheries="2", penwidth="1.5")
        if node.name in states:
            attrs.update(_PLAN_STYLE[states[node.name]])
            if node.name == current:
                attrs.update(penwidth="3", color="#dc2626")
        members[_scope(node.name)].append((ident, _label(*_node_lines(g, node, outputs, tr)), attrs))
        if node.parts is not None:
            bodies[ident] = node
    for i, (key, nodes) in enumerate(folded.items()):
        ident = f"fold{i}"
        for n in nodes:
            item[n.name] = ident
        ops = Counter(n.op for n in nodes).most_common()
        top = ", ".join(f"{c} {op}" for op, c in ops[:4]) + (", ..." if len(ops) > 4 else "")
        label = _label(key, f"{len(nodes)} nodes", top)
        scope = () if key.startswith("#") else _scope(key)
        members[scope].append((ident, label, dict(_STYLE["fold"], id=_shown(f"fold:{key}", TOOLTIP_CHARS))))

    children: dict[tuple[str, ...], set[tuple[str, ...]]] = defaultdict(set)
    for scope in list(members):
        for d in range(len(scope), 0, -1):
            children[scope[:d - 1]].add(scope[:d])
    counter = itertools.count()

    def emit(sub: graphviz.Digraph, scope: tuple[str, ...]) -> None:
        for ident, label, attrs in members.get(scope, ()):
            node = bodies.get(ident)
            if node is None:
                sub.node(ident, label, **attrs)
                continue
            with sub.subgraph(name=f"cluster_{next(counter)}") as c:  # the loop, its bodies inside
                c.attr(label=_label(node.op if node.op == node.name else f"{node.op} {node.name}"), style="rounded",
                       color="#7c3aed",
                       fontcolor="#5b21b6", labeljust="l")
                c.node(ident, label, **attrs)
                for key, body in node.attrs.items():
                    if isinstance(body, Graph):
                        _draw_body(c, body, f"{ident}.{key}", key, _carries(node, key), counter, max_nodes)
        for child in sorted(children.get(scope, ())):
            with sub.subgraph(name=f"cluster_{next(counter)}") as c:
                c.attr(label=_label("/".join(child)), style="rounded,dashed", color="#9ca3af",
                       fontcolor="#4b5563", labeljust="l")
                emit(c, child)

    emit(dot, ())
    bundled: Counter[tuple[str, str]] = Counter()
    for node in g.nodes.values():
        for i, src in enumerate(node.inputs):
            a, b = item[src], item[node.name]
            if a == b:
                continue
            if src in keys or node.name in keys:
                bundled[a, b] += 1
            else:
                dot.edge(a, b, tooltip=_shown(f"{src} -> {node.name} (input {i})", TOOLTIP_CHARS))
    for (a, b), count in bundled.items():
        dot.edge(a, b, **({"label": str(count), "penwidth": "1.5"} if count > 1 else {}))
    return dot


def _carries(node: Node, key: str) -> int:
    """How many of a body's first inputs and outputs are carries (0 for a branch)."""
    if node.op == "scan" or (node.op == "while_loop" and key == "body"):
        return int(node.attrs["carries"])
    if node.op == "while_loop":
        return int(node.attrs["carries"])  # cond reads the carries
    return 0


def _draw_body(parent: graphviz.Digraph, body: Graph, prefix: str, key: str, carries: int,
               counter: Iterator[int], max_nodes: int) -> None:
    """A body as a cluster inside its loop's: carries marked (bold, "carry"), outputs with a
    double border; nested bodies inside their nodes' clusters; a body of more than `max_nodes`
    nodes as one box with its op counts."""
    with parent.subgraph(name=f"cluster_{next(counter)}") as c:
        c.attr(label=_label(f"{key}: {len(body.nodes)} nodes"), style="rounded,dashed", color="#a78bfa",
               fontcolor="#5b21b6", labeljust="l")
        if len(body.nodes) > max_nodes:
            ops = Counter(n.op for n in body.nodes.values()).most_common(4)
            c.node(f"{prefix}.fold", _label(f"{len(body.nodes)} nodes", ", ".join(f"{k} {op}" for op, k in ops)),
                   **_STYLE["fold"])
            return
        inputs = list(body.inputs)
        outs: dict[str, list[str]] = defaultdict(list)
        for i, (o, t) in enumerate(body.outputs.items()):
            outs[t.name].append(f"{o} (carry)" if i < carries and key != "cond" else o)
        for node in body.nodes.values():
            ident = f"{prefix}.n{node.index}"
            lines = [node.name, f"{node.op}: {len(node.parts)} results" if node.parts is not None
                     else f"{node.op} {format_shape(node.shape)} {node.dtype}"]
            attrs = dict(_STYLE[node.op if node.is_leaf else "op"], id=graphviz.escape(f"{prefix}:{node.name}"))
            if node.op == "input" and inputs.index(node.name) < carries:
                lines[1] = f"carry {format_shape(node.shape)} {node.dtype}"
                attrs.update(penwidth="2.5", color="#7c3aed")
            if node.name in outs:
                lines += [f"output: {o}" for o in outs[node.name]]
                attrs.update(peripheries="2", penwidth="1.5")
            if node.parts is not None:
                with c.subgraph(name=f"cluster_{next(counter)}") as inner:
                    inner.attr(label=_label(f"{node.op} {node.name}"), style="rounded", color="#7c3aed")
                    inner.node(ident, _label(*lines), **attrs)
                    for k, b in node.attrs.items():
                        if isinstance(b, Graph):
                            _draw_body(inner, b, f"{ident}.{k}", k, _carries(node, k), counter, max_nodes)
            else:
                c.node(ident, _label(*lines), **attrs)
            for src in node.inputs:
                c.edge(f"{prefix}.n{body.nodes[src].index}", ident)


def to_dot(g: Graph, options: RenderOptions | None = None, **changes: Any) -> str:
    """Graphviz source for `g`; the options are `RenderOptions`' (rankdir, collapse, max_nodes,
    feeds, mode, of, wrt, tangents, plan, step), as keywords."""
    return digraph(g, options, **changes).source


def svg(obj: Graph | Plan | MemoryPlan | Trace, options: RenderOptions | None = None, **changes: Any) -> str:
    """The drawing as SVG text, of a graph, a plan (its graph coloured by what it keeps and
    frees), a memory plan (the recomputed nodes too) or a trace (its graph labelled with the
    trace's values and tangents or adjoints): what Jupyter shows for each of them. Needs
    Graphviz's `dot` program."""
    if isinstance(obj, Trace):
        if obj.graph is None:
            raise RenderError("this Trace does not know its graph: make it with cg.trace")
        g, changes = obj.graph, {"trace": obj, **changes}
    elif isinstance(obj, (Plan, MemoryPlan)):
        g = obj.plan.graph if isinstance(obj, MemoryPlan) else obj.graph
        changes = {"plan": obj, **changes}
    else:
        g = obj
    dot = digraph(g, options, **changes)
    return _pipe(_source(dot), "svg", g.name).decode()


def _source(dot: graphviz.Digraph) -> bytes:
    return dot.source.encode("utf-8", "replace")  # (a graph's own name may hold lone surrogates)


def _pipe(source: bytes, fmt: str, name: str) -> bytes:
    """What Graphviz's `dot -T<fmt>` makes of `source`, or RenderError. subprocess.run waits for
    the process whatever happens (an error, a closed pipe, Ctrl-C): none is left behind."""
    try:
        proc = subprocess.run(["dot", f"-T{fmt}"], input=source, capture_output=True, check=False)
    except FileNotFoundError:
        raise RenderError(f"writing {fmt} needs the Graphviz 'dot' program, which was not found: "
                          f"{INSTALL_HINT}; or write .dot") from None
    except OSError as e:
        raise RenderError(f"cannot run Graphviz 'dot' for graph {name!r:.80}: {e}") from None
    if proc.returncode:
        lines = proc.stderr.decode(errors="replace").strip().splitlines() or [f"exit status {proc.returncode}"]
        err = next((line for line in lines if line.startswith("Error")), lines[-1])
        raise RenderError(f"Graphviz 'dot' failed on graph {name!r:.80}: {err[:300]}")
    return proc.stdout


Drawable._drawer = svg  # Jupyter's picture of graphs, plans and traces (see Drawable)


def format_of(path: str | os.PathLike[str], format: str | None = None) -> str:  # noqa: A002
    """The output format: `format` if given, else the path's suffix (svg, png, pdf, dot)."""
    fmt = (format or Path(path).suffix.lstrip(".")).lower()
    if fmt == "gv":
        fmt = "dot"
    if fmt not in FORMATS:
        got = f"format {format!r}" if format else f"suffix of {os.fspath(path)!r}"
        raise RenderError(f"unknown output format from the {got}; use one of {', '.join(FORMATS)}")
    return fmt


def render(g: Graph, path: str | os.PathLike[str], *, format: str | None = None,  # noqa: A002 (as graphviz)
           options: RenderOptions | None = None, **changes: Any) -> Path:
    """Draw `g` to `path`, in the format of its suffix (svg, png, pdf, dot) or `format`.

    The options are `RenderOptions`' (as keywords, as for `to_dot`). svg, png and pdf need
    Graphviz's `dot` program; .dot does not. Returns the path written."""
    fmt = format_of(path, format)
    dot = digraph(g, options, **changes)
    data = _source(dot) if fmt == "dot" else _pipe(_source(dot), fmt, g.name)
    replace_file(path, lambda f: f.write(data))
    return Path(path)


__all__ = ["FORMATS", "RenderError", "RenderOptions", "RenderWarning", "digraph", "format_of", "render", "summarize",
           "svg", "to_dot"]
