"""cg.to_dot, cg.render and cg.trace: every node and edge drawn, valid files, big graphs fold,
annotations equal the executors' values and the lecture's closed forms."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

import cgraph as cg
from cgraph.autodiff import NODE_ADJOINT, NODE_TANGENT, NODE_VALUE, Seed, jvp_graph, vjp_graph
from cgraph.render import RenderError, RenderWarning, _pipe, summarize
from cgraph.render import svg as svg_of

pydot = pytest.importorskip("pydot")  # in the dev extra
ROOT = Path(__file__).resolve().parent.parent
W0, W1, X = 0.3, -1.2, 0.7
FEEDS = {"w0": W0, "w1": W1, "x": X}


def lecture() -> cg.Graph:
    g = cg.Graph("lecture-sin-cos")
    a1 = g.input("w0", shape=())
    a2 = g.input("w1", shape=())
    a3 = g.input("x", shape=())
    a5 = a2 * a3 + a1
    g.output("y1", cg.sin(a5))
    g.output("y2", cg.cos(a5))
    return g


def mlp() -> cg.Graph:
    rng = np.random.default_rng(0)
    g = cg.Graph("mlp")
    x = g.input("x", (None, 3))
    y = g.input("y", (None, 3))
    with g.scope("layer0"):
        h = cg.logistic(x @ g.param("V", rng.normal(size=(3, 4))) + g.param("b", np.zeros(4)))
    with g.scope("layer1"):
        logits = h @ g.param("W", rng.normal(size=(4, 3)))
    g.output("loss", cg.softmax_cross_entropy(logits, y))
    g.output("logits", logits)
    x2 = x * x  # an op reading one value twice: two edges
    g.output("sq", x2)
    return g


def _unq(text: str) -> str:
    """A DOT string's text: quotes off, escapes undone."""
    return text[1:-1].replace('\\"', '"').replace("\\\\", "\\") if text.startswith('"') else text


def parse(dot: str) -> nx.MultiDiGraph:
    """The DOT parsed back by pydot, as networkx with the cgraph names (the `id` attribute),
    clusters included."""
    (pd,) = pydot.graph_from_dot_data(dot)
    graphs = [pd, *_all_subgraphs(pd)]
    names = {n.get_name(): _unq(n.get("id")) for n in _all_nodes(pd)}
    G = nx.MultiDiGraph()
    G.add_nodes_from(names.values())
    for sub in graphs:
        for e in sub.get_edges():
            G.add_edge(names[e.get_source()], names[e.get_destination()])
    return G


@pytest.mark.parametrize("make", [lecture, mlp])
def test_dot_names_every_node_and_edge(make):
    g = make()
    G = parse(cg.to_dot(g))
    assert set(G.nodes) == set(g.nodes)
    drawn = Counter((a, b) for a, b, _ in G.edges)
    expected = Counter((s, n.name) for n in g.nodes.values() for s in n.inputs)
    assert drawn == expected


def test_labels_styles_outputs_and_clusters():
    g = mlp()
    dot = cg.to_dot(g, rankdir="LR")
    (pd,) = pydot.graph_from_dot_data(dot)
    assert "rankdir=LR" in dot
    attrs = {_unq(n.get("id")): n.get_attributes() for n in _all_nodes(pd)}
    assert "layer0/V\\nparam (3, 4) float64" in attrs["layer0/V"]["label"]
    assert "\\ninput (None, 3) float64" in attrs["x"]["label"]
    shapes = {k: a["shape"] for k, a in attrs.items()}
    assert shapes["x"] == "ellipse" and shapes["layer0/V"] == "box"
    assert len({attrs["x"]["fillcolor"], attrs["layer0/V"]["fillcolor"], attrs["layer1/matmul"]["fillcolor"]}) == 3
    logits = g.outputs["logits"].name
    assert attrs[logits].get("peripheries") == "2" and "output: logits" in attrs[logits]["label"]
    assert "peripheries" not in attrs["layer0/V"]
    clusters = {s.get_label().strip('"'): s for s in _all_subgraphs(pd)}
    assert set(clusters) == {"layer0", "layer1"}
    in_layer0 = {_unq(n.get("id")) for n in clusters["layer0"].get_nodes()}
    assert in_layer0 == {n for n in g.nodes if n.startswith("layer0/")}


def _all_subgraphs(pd):
    out = []
    stack = list(pd.get_subgraphs())
    while stack:
        s = stack.pop()
        out.append(s)
        stack.extend(s.get_subgraphs())
    return out


def _all_nodes(pd):
    return [n for s in [pd, *_all_subgraphs(pd)] for n in s.get_nodes() if n.get("id")]


def test_awkward_names_are_escaped():
    g = cg.Graph('we"ird {graph}')
    a = g.input('a "quoted" <b> \\ name', shape=(2,))
    with g.scope("s:1"):
        b = g.input("x:y", shape=(2,))
    g.output("o", a + b)
    G = parse(cg.to_dot(g))
    assert set(G.nodes) == set(g.nodes)
    assert set((u, v) for u, v, _ in G.edges) == {('a "quoted" <b> \\ name', "add"), ("s:1/x:y", "add")}


def _children() -> list[int]:
    """This process's child processes, zombies included (Linux /proc)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid():
                out.append(int(d.name))
    return out


ODD = ["\x00", "a\x00b", "a\nb", "\\", "a\\", "\\N", "\\G", '"', "<b>x</b>", "<<b>x</b>>", "\u202e", "\x7f\x1f",
       "{", "]", "->", ";", "\U0001F600", "\ufeff", "&amp;", "é" * 9000, "x" * 10**6]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="lists child processes from /proc")
@pytest.mark.parametrize("name", ODD, ids=[repr(n[:12]) + (f"-{len(n)}" if len(n) > 12 else "") for n in ODD])
def test_odd_and_long_names_draw_and_leave_no_process_behind(tmp_path, name):
    """Every name draws: control characters shown as escapes, long ones cut in the label (the
    full name, up to 4000 characters, in the tooltip), never a crash or a `dot` left running."""
    g = cg.Graph(name)
    x = g.input(name, (2,))
    with g.scope("s" + name.replace("/", "")):
        y = cg.exp(x)
    g.output(name, y)
    before = _children()
    svg = cg.render(g, tmp_path / "g.svg")
    assert _children() == before
    root = ET.parse(svg).getroot()
    texts = [t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert max(map(len, texts)) <= 80
    shown = name.replace("\x00", "\\x00").replace("\n", "\\n").replace("\x7f", "\\x7f").replace("\x1f", "\\x1f")
    if len(shown) <= 80:
        assert shown in texts
    else:
        assert any(t == shown[:40] + "…" + shown[-39:] for t in texts)
        titles = [a.get("{http://www.w3.org/1999/xlink}title") for a in root.iter("{http://www.w3.org/2000/svg}a")]
        assert any(t and len(t) == 4000 and t.startswith(shown[:1999]) for t in titles)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="lists child processes from /proc")
def test_dot_failing_midway_leaves_no_process_behind():
    before = _children()
    with pytest.raises(RenderError, match="Graphviz 'dot' failed on graph 'g': .*syntax error"):
        _pipe(b"digraph { a [label=\"" + b"x" * 2**24, "svg", "g")  # dot stops reading early
    assert _children() == before


def test_svg_png_pdf_and_dot_files(tmp_path):
    g = mlp()
    svg = cg.render(g, tmp_path / "m.svg")
    root = ET.parse(svg).getroot()
    text = " ".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text"))
    for name in g.nodes:
        assert name in text
    assert (tmp_path / "m.png").exists() is False
    png = cg.render(g, tmp_path / "m.png")
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert cg.render(g, tmp_path / "m.pdf").read_bytes().startswith(b"%PDF")
    assert cg.render(g, tmp_path / "m.dot").read_text() == cg.to_dot(g)
    assert cg.render(g, tmp_path / "noext", format="svg").read_bytes().lstrip().startswith(b"<?xml")
    assert not list(tmp_path.glob("*.tmp"))


def test_bad_options(tmp_path):
    g = lecture()
    with pytest.raises(RenderError, match="unknown output format.*svg, png, pdf, dot"):
        cg.render(g, tmp_path / "m.jpeg")
    with pytest.raises(RenderError, match="rankdir"):
        cg.to_dot(g, rankdir="up")
    with pytest.raises(RenderError, match="collapse"):
        cg.to_dot(g, collapse=0)
    with pytest.raises(RenderError, match="needs feeds"):
        cg.to_dot(g, mode="reverse", of="y2")


def test_without_dot_program_dot_works_and_others_say_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no `dot` on it
    g = lecture()
    assert "digraph" in cg.render(g, tmp_path / "m.dot").read_text()
    with pytest.raises(cg.CgraphError, match="apt-get install graphviz") as e:
        cg.render(g, tmp_path / "m.png")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "m.png").exists()


def test_gradient_graph_renders_like_any_graph(tmp_path):
    gg = cg.gradient_graph(mlp(), of="loss", wrt=["layer0/V", "layer1/W"])
    G = parse(cg.to_dot(gg))
    assert set(G.nodes) == set(gg.nodes)
    assert Counter((a, b) for a, b, _ in G.edges) == Counter((s, n.name) for n in gg.nodes.values() for s in n.inputs)
    root = ET.parse(cg.render(gg, tmp_path / "gg.svg")).getroot()
    text = " ".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text"))
    assert "output: grad/layer0/V" in text and "cotangent:loss" in text


def test_collapse_folds_scopes_with_node_counts():
    g = mlp()
    G = parse(cg.to_dot(g, collapse=1))
    boxes = {n for n in G.nodes if n.startswith("fold:")}
    assert boxes == {"fold:layer0", "fold:layer1"}
    assert not any(n.startswith("layer") for n in G.nodes)
    dot = cg.to_dot(g, collapse=1)
    n0 = sum(1 for n in g.nodes if n.startswith("layer0/"))
    assert f"layer0\\n{n0} nodes" in dot
    assert ("fold:layer0", "fold:layer1") in {(a, b) for a, b, _ in G.edges}
    assert ("x", "fold:layer0") in {(a, b) for a, b, _ in G.edges}


def _chain(n: int) -> cg.Graph:
    g = cg.Graph("chain")
    x = g.input("x", shape=(None, 4))
    h = x
    for i in range(n):
        with g.scope(f"block{i // 50}"):
            h = cg.tanh(h) + x  # x read by every layer: long edges, dot's slow case
    g.output("y", h)
    return g


def test_graph_too_big_folds_itself_with_a_message():
    g = _chain(300)
    with pytest.warns(RenderWarning, match="exceed max_nodes=100: name scopes folded at depth 1"):
        dot = cg.to_dot(g, max_nodes=100)
    assert "folded: 601 nodes exceed" in dot
    G = parse(dot)
    assert len(G) == 1 + 6  # x and six blocks
    g2 = _chain(60)  # few nodes, but long edges: fold into runs
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cg.to_dot(g2, max_nodes=1000)
    assert not caught
    with pytest.warns(RenderWarning, match="edges cross"):
        cg.to_dot(g2, max_nodes=130)


def test_ten_thousand_nodes_render_without_hanging(tmp_path):
    script = textwrap.dedent(f"""
        import warnings, cgraph as cg
        g = cg.Graph("big")
        x = g.input("x", shape=(None, 4))
        h = x
        for i in range(5000):
            with g.scope(f"b{{i // 1000}}"), g.scope(f"l{{i // 10}}"):
                h = cg.tanh(h) + x
        g.output("y", h)
        assert len(g) == 10001
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            cg.render(g, {str(tmp_path / 'big.svg')!r})
            cg.render(g, {str(tmp_path / 'big_runs.svg')!r}, collapse=1)
        print(len(w), w[0].message)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("1 ") and "10001 nodes exceed max_nodes=400" in out.stdout
    ET.parse(tmp_path / "big.svg")
    ET.parse(tmp_path / "big_runs.svg")


# ---- tracing and annotations ---------------------------------------------------------------

def test_intermediates_in_jvp_and_vjp_graphs_match_the_lecture():
    g = lecture()
    u = W1 * X + W0
    d = jvp_graph(g, ["y1", "y2"], ["w1"], intermediates=True)
    out = cg.Evaluator(d).run({**FEEDS, "tangent:w1": 1.0})
    assert out[NODE_VALUE + "add"] == pytest.approx(u)
    assert out[NODE_TANGENT + "mul"] == pytest.approx(X)  # a4dot = a2dot a3
    assert out[NODE_TANGENT + "add"] == pytest.approx(X)  # tangent of a5 wrt w1 is x
    assert out[NODE_TANGENT + "cos"] == pytest.approx(-X * np.sin(u))
    assert NODE_TANGENT + "w0" not in out and NODE_TANGENT + "x" not in out
    d = vjp_graph(g, ["y2"], ["w0", "w1", "x"], seed=Seed.ONES, intermediates=True)
    out = cg.Evaluator(d).run(FEEDS)
    assert out[NODE_ADJOINT + "add"] == pytest.approx(-np.sin(u))  # a5bar = -sin(a5) for y2
    assert out[NODE_ADJOINT + "mul"] == pytest.approx(-np.sin(u))
    assert out[NODE_ADJOINT + "w1"] == pytest.approx(-X * np.sin(u))
    assert out[NODE_ADJOINT + "x"] == pytest.approx(-W1 * np.sin(u))
    assert "sin" not in {k[len(NODE_VALUE):] for k in out if k.startswith(NODE_VALUE)}  # y2 needs no sin
    plain = jvp_graph(g, ["y1", "y2"], ["w1"])
    assert list(plain.outputs) == ["y1", "y2", "tangent:y1", "tangent:y2"]


def test_trace_equals_the_executors_on_an_mlp():
    g = mlp()
    rng = np.random.default_rng(1)
    feeds = {"x": rng.normal(size=(5, 3)), "y": np.eye(3)[[0, 1, 2, 1, 0]]}
    t = cg.trace(g, feeds)
    ev = cg.Evaluator(g).run(feeds)
    for o, tensor in g.outputs.items():
        np.testing.assert_array_equal(t.values[tensor.name], ev[o])
    assert set(t.values) == set(g.nodes) and not t.tangents and not t.adjoints
    wrt = ["layer0/V", "layer1/W"]
    t = cg.trace(g, feeds, mode="reverse", of="loss", wrt=wrt)
    loss, grads = cg.ReverseMode(g, of="loss", wrt=wrt).grad(feeds)
    for w in wrt:
        np.testing.assert_allclose(t.adjoints[w], grads[w], rtol=1e-12)
    assert t.adjoints[g.outputs["loss"].name] == 1.0
    assert np.all(t.adjoints[g.outputs["sq"].name] == 0)  # loss does not depend on it
    dV = rng.normal(size=(3, 4))
    t = cg.trace(g, feeds, mode="forward", wrt=["layer0/V"], tangents={"layer0/V": dV})
    _, tans = cg.ForwardMode(g, of=["loss", "logits"], wrt=["layer0/V"]).jvp(feeds, {"layer0/V": dV})
    np.testing.assert_allclose(t.tangents[g.outputs["logits"].name], tans["logits"], rtol=1e-12)
    np.testing.assert_allclose(t.tangents[g.outputs["loss"].name], tans["loss"], rtol=1e-12)
    assert np.all(t.tangents["layer1/W"] == 0)


def test_trace_errors():
    g = lecture()
    with pytest.raises(cg.DerivativeError, match="needs `of`"):
        cg.trace(g, FEEDS, mode="reverse")
    with pytest.raises(cg.DerivativeError, match="no output 'nope'"):
        cg.trace(g, FEEDS, mode="reverse", of="nope")
    with pytest.raises(cg.FeedError, match="missing feed"):
        cg.trace(g, {"w0": 1.0, "w1": 2.0}, mode="forward", wrt=["x"])
    with pytest.raises(ValueError, match="mode"):
        cg.trace(g, FEEDS, mode="sideways")


def test_annotated_labels_show_the_lecture_numbers():
    g = lecture()
    u = W1 * X + W0
    t = cg.trace(g, FEEDS, mode="reverse", of="y2")
    dot = cg.to_dot(g, feeds=FEEDS, mode="reverse", of="y2")
    labels = _labels(dot)
    for name in g.nodes:
        assert f"value {summarize(t.values[name])}" in labels[name]
        assert f"adjoint {summarize(t.adjoints[name])}" in labels[name]
    assert f"adjoint {-np.sin(u):.4g}" in labels["add"]
    assert "adjoint 0\\n" in labels["sin"] + "\\n" and "adjoint 1" in labels["cos"]
    assert "reverse mode: adjoints of y2" in dot
    labels = _labels(cg.to_dot(g, feeds=FEEDS, mode="forward", wrt=["w1"]))
    assert f"tangent {X:.4g}" in labels["add"] and "tangent 1" in labels["w1"] and "tangent 0" in labels["w0"]
    assert f"tangent {-X * np.sin(u):.4g}" in labels["cos"]


def _labels(dot: str) -> dict[str, str]:
    (pd,) = pydot.graph_from_dot_data(dot)
    return {_unq(n.get("id")): n.get("label").strip('"') for n in _all_nodes(pd)}


def test_array_summaries():
    assert summarize(np.float64(0.5)) == "0.5"
    assert summarize(np.array([[1.0, 2.0], [3.0, 6.0]])) == "(2, 2) min 1 mean 3 max 6"
    assert summarize(np.array([1.0, np.nan, 3.0])) == "(3,) min 1 mean 2 max 3 (1 nan/inf)"
    assert summarize(np.array([True, False, True])) == "(3,) 2 true"
    labels = _labels(cg.to_dot(mlp(), feeds={"x": np.ones((2, 3)), "y": np.eye(3)[:2]}))
    assert "value (2, 3) min 1 mean 1 max 1" in labels["x"]


def test_plan_states_after_step_k():
    g = lecture()
    rm = cg.ReverseMode(g, of="y2", wrt=["w0", "w1", "x"])
    plan = rm.plan
    d = plan.graph
    names = [s.name for s in plan.steps]
    k = names.index("add")
    (pd,) = pydot.graph_from_dot_data(cg.to_dot(d, plan=plan, step=k))
    fill = {_unq(n.get("id")): n.get("fillcolor").strip('"') for n in _all_nodes(pd)}
    freed = {f for s in plan.steps[:k + 1] for f in s.free}
    for i, name in enumerate(names):
        want = "#f3f4f6" if name in freed else "#bbf7d0" if i <= k else "#ffffff"
        assert fill[name] == want, name
    assert "mul" in freed and fill["mul"] == "#f3f4f6"
    for leaf in plan.leaves:  # a plan drops its reference to a feed after its last reader too
        assert fill[leaf] == ("#f3f4f6" if leaf in freed else "#bbf7d0"), leaf
    current = [n for n in _all_nodes(pd) if n.get("penwidth") == "3"]
    assert [_unq(n.get("id")) for n in current] == ["add"]
    with pytest.raises(RenderError, match="not a step"):
        cg.to_dot(d, plan=plan, step=len(names))


def test_memory_plan_shows_recomputed_values():
    g = cg.Graph("chain")
    h = g.input("x", shape=(64,))
    for i in range(8):
        with g.scope(f"layer{i}"):
            h = cg.tanh(h * 1.5)
    g.output("loss", cg.sum(h))
    rm = cg.ReverseMode(g, of="loss", wrt=["x"], memory_budget=2056)
    rm.grad({"x": np.ones(64)})
    mp = rm.memory_plan
    assert mp.recomputed
    k = max(i for i, s in enumerate(mp.plan.steps) if s.name.startswith("recompute/"))
    (pd,) = pydot.graph_from_dot_data(cg.to_dot(mp.plan.graph, plan=mp, step=k))
    fill = {_unq(n.get("id")): n.get("fillcolor").strip('"') for n in _all_nodes(pd)}
    last = mp.plan.steps[k].name
    assert fill[last] == "#fed7aa"  # recomputed, alive


def _svg_ids(svg: str) -> set[str]:
    """The ids of the node groups in an SVG drawing (each node's name, as to_dot sets it)."""
    root = ET.fromstring(svg)
    return {e.get("id") for e in root.iter("{http://www.w3.org/2000/svg}g") if e.get("class") == "node"}


def test_jupyter_shows_graphs_plans_memory_plans_and_traces_as_svg(tmp_path, monkeypatch):
    g = lecture()
    assert _svg_ids(g._repr_svg_()) == set(g.nodes)
    assert g._repr_svg_() == svg_of(g) == cg.render(g, tmp_path / "g.svg").read_text()
    t = cg.trace(g, FEEDS, mode="reverse", of="y2")
    svg = t._repr_svg_()
    assert svg == svg_of(g, feeds=FEEDS, mode="reverse", of="y2")  # the trace's numbers, not a new run
    assert f"adjoint {-np.sin(W1 * X + W0):.4g}" in svg and "reverse mode: adjoints of y2" in svg
    rm = cg.ReverseMode(g, of="y2", wrt=["w0", "w1", "x"])
    assert rm.plan._repr_svg_() == svg_of(rm.plan.graph, plan=rm.plan)
    chain = cg.Graph("chain")
    h = chain.input("x", shape=(64,))
    for _ in range(8):
        h = cg.tanh(h * 1.5)
    chain.output("loss", cg.sum(h))
    rb = cg.ReverseMode(chain, of="loss", wrt=["x"], memory_budget=2056)
    rb.grad({"x": np.ones(64)})
    svg = rb.memory_plan._repr_svg_()
    assert svg == svg_of(rb.memory_plan.plan.graph, plan=rb.memory_plan) and "#fed7aa" in svg
    assert _svg_ids(svg) == set(rb.memory_plan.plan.graph.nodes)
    with pytest.raises(RenderError, match="not both"):
        cg.to_dot(g, feeds=FEEDS, trace=t)
    monkeypatch.setenv("PATH", str(tmp_path))  # no `dot`: Jupyter falls back to the text repr
    assert g._repr_svg_() is None and t._repr_svg_() is None
