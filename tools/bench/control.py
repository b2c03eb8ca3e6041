"""Loops: a scan against the same recurrence as a numpy loop, unrolled in cgraph, in jax
(lax.scan under jit) and in torch (an eager loop); plan times against the step count; and
reverse mode through a long scan under memory budgets (binomial checkpointing).

Speed: a 1,000-step Elman RNN h_t = tanh(h_{t-1} W + x_t U + b), width 64, batch 32, float64,
loss the sum of the last state and 0.5 * the squares of all states; the forward value, and the
gradient wrt W, U, b. Ratios to the hand-written numpy loop (the gradient: the forward loop
storing the states, then backpropagation through time), the best of several samples taken in
turns.

Memory: 10,000 steps of a 256-wide tanh recurrence (batch 4) under budgets: the stored carries,
the most times a step's body runs forward, the extra step evaluations of the reverse sweep, the
peak (predicted = measured), and the time against the unbudgeted gradient.

Run: python tools/bench/run.py control     (or python tools/bench/control.py [--quick])
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import cgraph as cg
from cgraph.control import budgeted_scans, with_snapshots
from cgraph.schedule import Plan

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import _jax, _peer, best_times  # noqa: E402


def rnn_data(T: int, B: int, D: int, H: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(T, B, D)), "h0": np.zeros((B, H)), "W": rng.normal(size=(H, H)) / np.sqrt(H),
            "U": rng.normal(size=(D, H)) / np.sqrt(D), "b": np.zeros(H)}


def numpy_loop(d: dict[str, np.ndarray]) -> tuple[Callable[[], object], Callable[[], object]]:
    x, h0, W, U, b = d["x"], d["h0"], d["W"], d["U"], d["b"]

    def forward():
        h, total = h0, 0.0
        for xt in x:
            h = np.tanh(h @ W + xt @ U + b)
            total += 0.5 * np.sum(h * h)
        return total + h.sum()

    def grad():
        hs = [h0]
        for xt in x:
            hs.append(np.tanh(hs[-1] @ W + xt @ U + b))
        gW, gU, gb = np.zeros_like(W), np.zeros_like(U), np.zeros_like(b)
        g = np.ones_like(h0)
        for t in range(len(x), 0, -1):
            g = g + hs[t]  # d(0.5 h^2)/dh
            ga = g * (1 - hs[t] * hs[t])
            gW += hs[t - 1].T @ ga
            gU += x[t - 1].T @ ga
            gb += ga.sum(0)
            g = ga @ W.T
        return gW, gU, gb
    return forward, grad


def cgraph_rnn(d: dict[str, np.ndarray], unrolled: bool = False) -> tuple[cg.Graph, dict[str, np.ndarray]]:
    T, B, D = d["x"].shape
    g = cg.Graph("rnn")
    x = g.input("x", (T, B, D))
    h0 = g.input("h0", d["h0"].shape)
    W, U, b = g.param("W", d["W"]), g.param("U", d["U"]), g.param("b", d["b"])

    def step(h, xt):
        h = cg.tanh(h @ W + xt @ U + b)
        return h, h

    if unrolled:
        h, total = h0, None
        for t in range(T):
            h, _ = step(h, x[t])
            s = cg.sum(h * h)
            total = s if total is None else total + s
        loss = total * 0.5 + cg.sum(h)
    else:
        h, hs = cg.scan(step, h0, x)
        loss = cg.sum(hs * hs) * 0.5 + cg.sum(h)
    g.output("loss", loss)
    return g, {"x": d["x"], "h0": d["h0"]}


def speed_table(T: int = 1000) -> None:
    d = rnn_data(T, 32, 64, 64)
    np_fwd, np_grad = numpy_loop(d)
    rows: list[tuple[str, Callable[[], object] | None, Callable[[], object] | None, float | None]] = []
    for name, unrolled in (("cgraph scan", False), ("cgraph unrolled", True)):
        t0 = time.perf_counter()
        g, feeds = cgraph_rnn(d, unrolled)
        ev = cg.Evaluator(g)
        rm = cg.ReverseMode(g, "loss", ["W", "U", "b"])
        ev.run(feeds)
        rm.grad(feeds)
        setup = time.perf_counter() - t0
        rows.append((name, lambda ev=ev, feeds=feeds: ev.run(feeds), lambda rm=rm, feeds=feeds: rm.grad(feeds), setup))
    rows.append(("jax lax.scan (jit)", *_jax_rnn(d), None))
    rows.append(("torch (eager loop)", *_torch_rnn(d), None))
    value = float(np_fwd())
    ref = np_grad()
    _, got = cg.ReverseMode(*cgraph_rnn(d)[:1], "loss", ["W", "U", "b"]).grad(cgraph_rnn(d)[1])
    assert abs(float(cg.Evaluator(cgraph_rnn(d)[0]).run(cgraph_rnn(d)[1])["loss"]) - value) < 1e-8 * abs(value)
    assert all(np.allclose(got[k], r, rtol=1e-9) for k, r in zip(("W", "U", "b"), ref, strict=True))
    fwd = [np_fwd] + [r[1] for r in rows if r[1] is not None]
    grd = [np_grad] + [r[2] for r in rows if r[2] is not None]
    tf = iter(best_times(fwd, repeat=5, min_time=0.2))
    tg = iter(best_times(grd, repeat=5, min_time=0.2))
    base_f, base_g = next(tf), next(tg)
    print(f"RNN of {T} steps, width 64, batch 32, float64: times as ratios to a numpy loop "
          f"(forward {base_f * 1e3:.1f} ms, gradient {base_g * 1e3:.1f} ms)")
    print("| | forward | gradient | build + first runs |")
    print("|---|---|---|---|")
    print("| numpy loop | 1.00x | 1.00x | - |")
    for name, f, gr, setup in rows:
        a = f"{next(tf) / base_f:.2f}x" if f is not None else "not installed"
        b = f"{next(tg) / base_g:.2f}x" if gr is not None else "not installed"
        print(f"| {name} | {a} | {b} | {f'{setup:.2f} s' if setup is not None else 'jit: first call'} |")


def _jax_rnn(d: dict[str, np.ndarray]) -> tuple[Callable[[], object] | None, Callable[[], object] | None]:
    def make() -> tuple[Callable[[], object], Callable[[], object]]:
        jax, jnp = _jax()
        x, h0 = jnp.asarray(d["x"]), jnp.asarray(d["h0"])
        params = {k: jnp.asarray(d[k]) for k in ("W", "U", "b")}

        def loss(p):
            def step(h, xt):
                h = jnp.tanh(h @ p["W"] + xt @ p["U"] + p["b"])
                return h, 0.5 * jnp.sum(h * h)
            h, ys = jax.lax.scan(step, h0, x)
            return jnp.sum(ys) + jnp.sum(h)

        f, gr = jax.jit(loss), jax.jit(jax.grad(loss))
        f(params).block_until_ready()
        jax.block_until_ready(gr(params))
        return (lambda: f(params).block_until_ready()), (lambda: jax.block_until_ready(gr(params)))
    try:
        return make()
    except ImportError:
        return None, None


def _torch_rnn(d: dict[str, np.ndarray]) -> tuple[Callable[[], object] | None, Callable[[], object] | None]:
    def make() -> tuple[Callable[[], object], Callable[[], object]]:
        import torch
        x, h0 = torch.tensor(d["x"]), torch.tensor(d["h0"])
        p = {k: torch.tensor(d[k], requires_grad=True) for k in ("W", "U", "b")}

        def loss():
            h, total = h0, 0
            for xt in x:
                h = torch.tanh(h @ p["W"] + xt @ p["U"] + p["b"])
                total = total + 0.5 * (h * h).sum()
            return total + h.sum()

        torch.set_num_threads(1)  # as numpy here: one thread (a 2-core machine shared with other work)

        def forward():
            with torch.no_grad():
                return loss()
        return forward, lambda: torch.autograd.grad(loss(), list(p.values()))
    make_or_none = _peer(lambda: make())
    return make_or_none if make_or_none is not None else (None, None)


def plan_table() -> None:
    print("Plan time (building the graph, its gradient graph and both plans) against the step count:")
    print("| steps | scan | unrolled |")
    print("|---|---|---|")
    for T in (10, 100, 1000):
        d = rnn_data(T, 4, 8, 8)
        times = []
        for unrolled in (False, True):
            t0 = time.perf_counter()
            g, _ = cgraph_rnn(d, unrolled)
            cg.Evaluator(g).plan.runner  # noqa: B018  (compiled on first use)
            cg.ReverseMode(g, "loss", ["W"]).plan.runner  # noqa: B018
            times.append(time.perf_counter() - t0)
        print(f"| {T} | {times[0] * 1e3:.0f} ms | {times[1] * 1e3:.0f} ms |")


def memory_table(T: int = 10_000, H: int = 256, B: int = 4) -> None:
    rng = np.random.default_rng(0)
    g = cg.Graph("recurrence")
    h0 = g.input("h0", (B, H))
    W = g.param("W", rng.normal(size=(H, H)) / np.sqrt(H))
    hT, hs = cg.scan(lambda h, _: (cg.tanh(h @ W + 0.1), cg.sum(h)), h0, None, length=T)
    g.output("loss", cg.sum(hT) + cg.sum(hs))
    feeds = {"h0": rng.normal(size=(B, H))}
    rm = cg.ReverseMode(g, "loss", ["W"])
    _, ref = rm.grad(feeds)  # plans made and compiled: the times below are of later runs
    t0 = time.perf_counter()
    rm.grad(feeds)
    base = time.perf_counter() - t0
    full = rm.stats.peak_bytes
    carry = B * H * 8
    d = rm.plan.graph
    steps = {name: T for name in budgeted_scans(d)}
    print(f"Reverse mode through {T} steps of a {H}-wide recurrence (batch {B}; a carry is {carry} B): budgets as "
          f"stored carries; unbudgeted peak {full / 2**20:.1f} MiB, gradient {base:.2f} s")
    print("| budget | stored carries | most forward runs of a step | extra step evaluations | peak (predicted = "
          "measured) | time / unbudgeted |")
    print("|---|---|---|---|---|---|")
    for slots in (T // 10, 100, 32, 8):
        # the budget: the peak of the plan with this many snapshots (so that it is the one chosen)
        snap = with_snapshots(d, slots, steps)
        budget = Plan(snap, [snap.output_node(o) for o in d.outputs], passes=()).predict_peak(
            {"h0": (B, H), "W": (H, H)} | {n: d.nodes[n].shape for n in d.nodes if d.nodes[n].op == "constant"})
        rb = cg.ReverseMode(g, "loss", ["W"], memory_budget=int(budget))
        _, grads = rb.grad(feeds)
        t0 = time.perf_counter()
        rb.grad(feeds)
        took = time.perf_counter() - t0
        assert np.allclose(grads["W"], ref["W"], rtol=1e-10, atol=1e-12)
        assert rb.stats.peak_bytes == rb.stats.predicted_peak_bytes <= budget
        (sc,) = rb.memory_plan.scans or [None]
        stored, runs, extra = (sc.stored, sc.most_runs, sc.extra_steps) if sc else (T, 1, 0)
        print(f"| {budget / 2**20:.2f} MiB | {stored} | {runs} | {extra} | {rb.stats.peak_bytes / 2**20:.2f} MiB "
              f"| {took / base:.2f}x |")


def main() -> None:
    quick = "--quick" in sys.argv
    speed_table(200 if quick else 1000)
    print()
    plan_table()
    print()
    memory_table(1000 if quick else 10_000)


if __name__ == "__main__":
    main()
