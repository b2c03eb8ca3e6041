"""Reverse mode under a memory budget: the peak stays within it, gradients do not change, the
prediction is what a run measures, and a larger budget never costs more recomputation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import cgraph as cg
from cgraph.checkpoint import RECOMPUTE, _Candidate, _Graphinfo

RNG = np.random.default_rng(0)


def chain(n: int, width: int = 16) -> cg.Graph:
    """h = tanh(h @ W_i), n times; loss = sum of the last layer."""
    g = cg.Graph(f"chain{n}")
    h = g.input("x", (None, width))
    for i in range(n):
        h = cg.tanh(h @ g.param(f"W{i}", RNG.normal(0, 1 / np.sqrt(width), (width, width))))
    g.output("loss", cg.sum(h))
    return g


def skips(n: int, width: int = 12) -> cg.Graph:
    """Residual-style skip connections: h_{i+1} = tanh(h_i @ W_i) + h_{i-1}."""
    g = cg.Graph("skips")
    prev = h = g.input("x", (None, width))
    for i in range(n):
        prev, h = h, cg.tanh(h @ g.param(f"W{i}", RNG.normal(0, 0.3, (width, width)))) + prev
    g.output("loss", cg.mean(h * h))
    return g


def shared(n: int, width: int = 10) -> cg.Graph:
    """One value (a gate from the input) used by every layer."""
    g = cg.Graph("shared")
    x = g.input("x", (None, width))
    gate = cg.logistic(x @ g.param("A", RNG.normal(0, 0.3, (width, width))))
    h = x
    for i in range(n):
        h = cg.tanh(h @ g.param(f"W{i}", RNG.normal(0, 0.4, (width, width)))) * gate
    g.output("loss", cg.sum(h))
    return g


def iris() -> cg.Graph:
    """The lecture's Iris MLP: x(N,3) @ V(3,16) -> logistic -> @ W(16,3) -> softmax_cross_entropy."""
    g = cg.Graph("iris-mlp")
    x = g.input("x", (None, 3))
    y = g.input("y", (None, 3))
    logits = cg.logistic(x @ g.param("V", RNG.normal(0, 0.5, (3, 16)))) @ g.param("W", RNG.normal(0, 0.5, (16, 3)))
    g.output("loss", cg.softmax_cross_entropy(logits, y))
    return g


def feeds_for(g: cg.Graph, batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch)
    out = {}
    for name, t in g.inputs.items():
        shape = (batch, *t.shape[1:])
        out[name] = np.eye(shape[1])[rng.integers(0, shape[1], batch)] if name == "y" else rng.normal(size=shape)
    return out


GRAPHS = {"chain": lambda: chain(12), "skips": lambda: skips(8), "shared": lambda: shared(8), "iris": iris}


def smallest_budget(g: cg.Graph, wrt: list[str], feeds: dict) -> int:
    with pytest.raises(cg.MemoryBudgetError) as e:
        cg.ReverseMode(g, "loss", wrt, memory_budget=1).grad(feeds)
    return e.value.smallest


@pytest.mark.parametrize("name", list(GRAPHS))
def test_budgets_bound_peak_keep_gradients_and_are_monotone(name: str) -> None:
    g = GRAPHS[name]()
    wrt = ["x"] if name != "iris" else ["V", "W"]
    feeds = feeds_for(g, 20)
    rm0 = cg.ReverseMode(g, "loss", wrt)
    value0, grads0 = rm0.grad(feeds)
    full = rm0.stats.peak_bytes
    low = smallest_budget(g, wrt, feeds)
    assert low <= full
    previous_peak, previous_cost = 0, None
    for budget in sorted({low, *np.linspace(low, full, 7).astype(int).tolist(), full, 2 * full}):
        rm = cg.ReverseMode(g, "loss", wrt, memory_budget=budget)
        value, grads = rm.grad(feeds)
        mp = rm.memory_plan
        assert mp is not None and mp.budget == budget
        assert rm.stats.peak_bytes <= budget
        assert rm.stats.peak_bytes == mp.predicted_peak == rm.stats.predicted_peak_bytes
        assert mp.unbudgeted_peak == full
        np.testing.assert_allclose(value, value0, rtol=0, atol=1e-12)
        for w in wrt:
            np.testing.assert_allclose(grads[w], grads0[w], rtol=0, atol=1e-12)
        assert mp.predicted_peak >= previous_peak  # monotone: more budget, never less memory used,
        assert previous_cost is None or mp.extra_calls <= previous_cost  # and never more recomputation
        previous_peak, previous_cost = mp.predicted_peak, mp.extra_calls
        assert mp.extra_calls == len(mp.recomputed)
        assert all(RECOMPUTE + r in {s.name for s in mp.plan.steps} for r in mp.recomputed)
    assert previous_cost == 0 and previous_peak == full  # a budget of the full peak recomputes nothing


def test_infeasible_budget_names_the_smallest_that_fits() -> None:
    g = chain(16)
    feeds = feeds_for(g, 8)
    low = smallest_budget(g, ["x"], feeds)
    with pytest.raises(cg.MemoryBudgetError) as e:
        cg.ReverseMode(g, "loss", ["x"], memory_budget=low - 1).grad(feeds)
    msg = str(e.value)
    assert isinstance(e.value, cg.CgraphError) and "\n" not in msg
    assert f"budget of {low - 1} bytes" in msg and f"smallest budget that fits is {low} bytes" in msg
    assert "x (8, 16)" in msg
    rm = cg.ReverseMode(g, "loss", ["x"], memory_budget=low)
    rm.grad(feeds)
    assert rm.stats.peak_bytes == low


def test_long_chain_reaches_sqrt_memory_for_one_extra_sweep() -> None:
    n, width, batch = 64, 8, 4
    g = chain(n, width)
    feeds = feeds_for(g, batch)
    low = smallest_budget(g, ["x"], feeds)
    layer = width * batch * 8
    rm = cg.ReverseMode(g, "loss", ["x"], memory_budget=int(4 * np.sqrt(n)) * layer)
    rm.grad(feeds)
    mp = rm.memory_plan
    assert rm.stats.peak_bytes <= 4 * np.sqrt(n) * layer
    assert mp.extra_calls <= mp.forward_calls  # at most one extra forward sweep
    assert low <= 2 * np.sqrt(2 * n) * layer  # O(sqrt n) layers at the tightest
    full = cg.ReverseMode(g, "loss", ["x"])
    full.grad(feeds)
    assert full.stats.peak_bytes > (n - 1) * layer


def test_chain_schedule_is_cheapest_among_single_recomputation_schedules() -> None:
    """Brute force over every stored subset of a short chain's activations: no schedule that
    recomputes each value at most once fits a budget with fewer extra calls than the plan."""
    g = chain(8)
    feeds = feeds_for(g, 5)
    base = cg.ReverseMode(g, "loss", ["x"]).plan
    shapes = {n: np.shape(feeds[n]) if n in feeds else base.graph.nodes[n].shape for n in base.leaves}
    info = _Graphinfo(base.graph, {n for n in g.nodes if not g.nodes[n].is_leaf}, base.targets, shapes)
    options = []
    for k in range(len(info.read) + 1):
        for stored in itertools.combinations(info.read, k):
            c = _Candidate(info, frozenset(stored))
            options.append((c.peak, c.cost))
    for budget in sorted({p for p, _ in options}):
        best = min(cost for peak, cost in options if peak <= budget)
        rm = cg.ReverseMode(g, "loss", ["x"], memory_budget=budget)
        rm.grad(feeds)
        assert rm.memory_plan.extra_calls == best, budget


def test_plan_per_batch_size_vjp_and_readable_description() -> None:
    g = skips(6)
    rm = cg.ReverseMode(g, "loss", ["x", "W0"], memory_budget=40_000)
    for batch in (30, 60):
        feeds = feeds_for(g, batch)
        _, grads = rm.grad(feeds)
        _, ref = cg.ReverseMode(g, "loss", ["x", "W0"]).grad(feeds)
        assert rm.memory_plan.leaf_shapes == {"x": (batch, 12)}
        assert rm.stats.peak_bytes <= 40_000 and rm.stats.peak_bytes == rm.memory_plan.predicted_peak
        np.testing.assert_allclose(grads["x"], ref["x"], rtol=0, atol=1e-12)
    assert rm.memory_plan.extra_calls > 0  # batch 60 does not fit without recomputation
    outs, cots = rm.vjp(feeds, {"loss": 2.0})
    np.testing.assert_allclose(cots["W0"], 2 * ref["W0"], rtol=1e-12, atol=1e-12)
    text = str(rm.memory_plan)
    assert "predicted peak" in text and "stored (" in text and "recomputed (" in text
    assert "freed after" in text and f"{rm.memory_plan.extra_calls} extra kernel calls" in text
    assert all(name in text for name in rm.memory_plan.recomputed)


@pytest.mark.parametrize("budget", [0, -5, 1.5, "1MB", True])
def test_bad_budget(budget: object) -> None:
    with pytest.raises(ValueError, match="memory_budget"):
        cg.ReverseMode(chain(2), "loss", ["x"], memory_budget=budget)
