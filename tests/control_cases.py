"""Graphs with control flow (cond, scan, while_loop), each with feeds and the same computation
written as a plain numpy loop, shared by the tests of values, derivatives, files, drawings and
ONNX."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

import cgraph as cg


@dataclass
class Case:
    name: str
    graph: cg.Graph
    feeds: dict[str, np.ndarray]
    ref: Callable[..., dict[str, np.ndarray]]  # (feeds, params) -> the outputs, by a numpy loop
    wrt: list[str]  # what the derivative tests differentiate "loss" by


def rnn(T: int = 6, B: int = 3, D: int = 2, H: int = 4, dtype: str = "float64", reverse: bool = False) -> Case:
    """An Elman RNN as a scan: the carry is the hidden state, the ys per-step sums; the body
    reads params W, U, b from the graph around it."""
    rng = np.random.default_rng(0)
    g = cg.Graph("rnn")
    x = g.input("x", (T, None, D), dtype)
    h0 = g.input("h0", (None, H), dtype)
    W = g.param("W", rng.normal(size=(H, H)) * 0.4, dtype)
    U = g.param("U", rng.normal(size=(D, H)), dtype)
    b = g.param("b", rng.normal(size=(H,)) * 0.1, dtype)

    def step(h, xt):
        h2 = cg.tanh(h @ W + xt @ U + b)
        return h2, cg.sum(h2 * h2, axis=1)

    hT, ys = cg.scan(step, h0, x, reverse=reverse)
    g.output("loss", cg.sum(ys) * 0.5 + cg.sum(hT))
    g.output("ys", ys)

    def ref(f, p):
        h, out = f["h0"], []
        order = range(T - 1, -1, -1) if reverse else range(T)
        ys = np.zeros((T, f["x"].shape[1]))
        for t in order:
            h = np.tanh(h @ p["W"] + f["x"][t] @ p["U"] + p["b"])
            ys[t] = (h * h).sum(1)
        del out
        return {"loss": ys.sum() * 0.5 + h.sum(), "ys": ys}

    feeds = {"x": rng.normal(size=(T, B, D)).astype(dtype), "h0": rng.normal(size=(B, H)).astype(dtype)}
    return Case("rnn-reverse" if reverse else "rnn", g, feeds, ref, ["W", "U", "b", "x", "h0"])


def tuple_scan() -> Case:
    """A scan with a tuple carry (a float and an int counter), two slices, no ys from one part,
    and a length check; the body uses a constant and a closure over an input."""
    rng = np.random.default_rng(1)
    g = cg.Graph("tuple-scan")
    a = g.input("a", (5, 3))
    c = g.input("c", (5,))
    k = g.param("k", rng.normal(size=(3,)))
    s = g.input("s", ())

    def step(carry, xs):
        v, n = carry
        at, ct = xs
        v2 = v * cg.cos(at * k) + ct * s + 0.1
        return (v2, n + 1), (v2, cg.cast(n, "float64") * ct)

    (v, n), (vs, ns) = cg.scan(step, (g.constant("v0", np.ones(3)), g.constant("n0", 0)), (a, c))
    g.output("loss", cg.sum(v) + cg.sum(vs * vs) + cg.sum(ns))
    g.output("n", n)

    def ref(f, p):
        v, n, vs, ns = np.ones(3), 0, [], []
        for t in range(5):
            v = v * np.cos(f["a"][t] * p["k"]) + f["c"][t] * f["s"] + 0.1
            vs.append(v)
            ns.append(n * f["c"][t])
            n += 1
        return {"loss": v.sum() + (np.array(vs) ** 2).sum() + sum(ns), "n": np.array(n)}

    feeds = {"a": rng.normal(size=(5, 3)), "c": rng.normal(size=(5,)), "s": np.array(0.3)}
    return Case("tuple-scan", g, feeds, ref, ["k", "a", "c", "s"])


def branch() -> Case:
    """A cond on a data-dependent condition, each branch reading a param of the graph."""
    rng = np.random.default_rng(2)
    g = cg.Graph("branch")
    a = g.input("a", (4,))
    b = g.input("b", (4,))
    W = g.param("W", rng.normal(size=(4,)))
    y = cg.cond(cg.sum(a) > 0, lambda u, v: u * v * W, lambda u, v: cg.sin(u) - v, a, b)
    g.output("loss", cg.sum(y * y))
    g.output("y", y)

    def ref(f, p):
        y = f["a"] * f["b"] * p["W"] if f["a"].sum() > 0 else np.sin(f["a"]) - f["b"]
        return {"loss": (y * y).sum(), "y": y}

    feeds = {"a": rng.normal(size=4) + 0.5, "b": rng.normal(size=4)}
    return Case("cond", g, feeds, ref, ["a", "b", "W"])


def newton(max_trips: int | None = 20) -> Case:
    """Newton's method for sqrt(a) as a while_loop with a tolerance (a trip count that depends on
    the data) and a counter; the body reads a param."""
    g = cg.Graph("newton")
    a = g.input("a", (3,))
    w = g.param("w", np.array(1.0))

    def body(c):
        x, i = c
        return 0.5 * (x + a * w / x), i + 1

    x, i = cg.while_loop(lambda c: cg.max(cg.abs(c[0] * c[0] - a * w)) > 1e-10, body,
                         (a + 1.0, g.constant("i0", 0)), max_trips=max_trips)
    g.output("loss", cg.sum(x))
    g.output("trips", i)

    def ref(f, p):
        x, i = f["a"] + 1.0, 0
        while np.max(np.abs(x * x - f["a"] * p["w"])) > 1e-10 and (max_trips is None or i < max_trips):
            x, i = 0.5 * (x + f["a"] * p["w"] / x), i + 1
        return {"loss": x.sum(), "trips": np.array(i)}

    return Case("while", g, {"a": np.array([2.0, 3.0, 0.5])}, ref, ["a", "w"])


def nested() -> Case:
    """A scan inside a cond inside a scan, the inner body reading params two graphs out."""
    rng = np.random.default_rng(3)
    g = cg.Graph("nested")
    x = g.input("x", (4, 3))
    W = g.param("W", rng.normal(size=(3, 3)) * 0.5)
    s = g.param("s", np.array(0.7))

    def outer(h, xt):
        def inner(h2, _):
            return cg.tanh(h2 @ W) * s, None
        h3 = cg.cond(cg.sum(xt) > 0, lambda hh: cg.scan(inner, hh, None, length=2)[0], lambda hh: hh * s + xt, h)
        return h3, cg.sum(h3)

    hT, ys = cg.scan(outer, g.constant("h0", np.ones((1, 3))), x)
    g.output("loss", cg.sum(ys) + cg.sum(hT * hT))

    def ref(f, p):
        h, ys = np.ones((1, 3)), []
        for t in range(4):
            if f["x"][t].sum() > 0:
                for _ in range(2):
                    h = np.tanh(h @ p["W"]) * p["s"]
            else:
                h = h * p["s"] + f["x"][t]
            ys.append(h.sum())
        return {"loss": sum(ys) + (h * h).sum()}

    return Case("nested", g, {"x": rng.normal(size=(4, 3))}, ref, ["W", "s", "x"])


def scalars() -> Case:
    """Control flow on 0-d values only: a scan of a 0-d carry over a vector (0-d slices), a cond
    of 0-d operands, a while_loop of a 0-d carry and counter."""
    g = cg.Graph("scalars")
    u, xs = g.input("u", ()), g.input("xs", (5,))
    w = g.param("w", np.array(0.8))

    def step(c, xt):
        c2 = cg.tanh(c * w + xt)
        return c2, c2 * xt

    cT, ys = cg.scan(step, u, xs)
    y = cg.cond(cT > 0.0, lambda a, b: a * b * w, lambda a, b: cg.sin(a) - b, cT, u)
    r, i = cg.while_loop(lambda c: c[1] < 3, lambda c: (c[0] * 0.5 + w * u, c[1] + 1), (y, g.constant("i0", 0)),
                         max_trips=5)
    g.output("loss", r + cg.sum(ys) * cT)
    g.output("trips", i)

    def ref(f, p):
        c, ys = f["u"], []
        for t in range(5):
            c = np.tanh(c * p["w"] + f["xs"][t])
            ys.append(c * f["xs"][t])
        y = c * f["u"] * p["w"] if c > 0 else np.sin(c) - f["u"]
        for _ in range(3):
            y = y * 0.5 + p["w"] * f["u"]
        return {"loss": y + np.sum(ys) * c, "trips": np.array(3)}

    feeds = {"u": np.array(0.3), "xs": np.random.default_rng(4).normal(size=5)}
    return Case("scalars", g, feeds, ref, ["u", "xs", "w"])


def all_cases() -> list[Case]:
    return [rnn(), rnn(reverse=True), tuple_scan(), branch(), newton(), nested(), scalars()]


def params_of(g: cg.Graph) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in g.params.items()}


def comparable(attrs: dict) -> dict:
    """A node's attributes with each body (a Graph, equal only to itself) as a description of
    its nodes, values and outputs, so that a graph and its reloaded copy compare equal."""
    return {k: graph_key(v) if isinstance(v, cg.Graph) else v for k, v in attrs.items()}


def graph_key(g: cg.Graph) -> tuple:
    nodes = tuple((n.name, n.op, n.inputs, tuple(comparable(dict(n.attrs)).items()), n.shape, str(n.dtype),
                   g.value(n.name).tobytes() if n.op in ("param", "constant") else None) for n in g.nodes.values())
    return g.name, nodes, tuple((k, t.name) for k, t in g.outputs.items())
