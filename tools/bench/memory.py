"""Reverse mode under a memory budget, measured in one process.

Chains of 16, 64 and 256 layers h = tanh(h @ W_i) (width 256, batch 128, float64), loss =
sum of the last layer, gradient with respect to the input x (so the memory is activations, not
the returned weight gradients, which alone would take two layers' worth per layer). For each
chain: the unbudgeted run, then budgets of 1/2 and 1/4 of its peak and the smallest budget the
planner can meet (the sqrt-n point). Peak bytes (measured, equal to the plan's prediction) and
the median time of a gradient are given as ratios to the unbudgeted run, with the peak also in
layers (one activation, 128 x 256 float64 = 256 KiB) and the recomputation in forward sweeps.
"""

from __future__ import annotations

import time

import numpy as np

import cgraph as cg

WIDTH, BATCH, REPEAT = 256, 128, 5


def chain(n: int) -> cg.Graph:
    rng = np.random.default_rng(0)
    g = cg.Graph(f"chain{n}")
    h = g.input("x", (None, WIDTH))
    for i in range(n):
        h = cg.tanh(h @ g.param(f"W{i}", rng.normal(0, 1 / np.sqrt(WIDTH), (WIDTH, WIDTH))))
    g.output("loss", cg.sum(h))
    return g


def median_time(rm: cg.ReverseMode, feeds: dict) -> float:
    samples = []
    for _ in range(REPEAT):
        t0 = time.perf_counter()
        rm.grad(feeds)
        samples.append(time.perf_counter() - t0)
    return float(np.median(samples))


def main() -> None:
    layer = WIDTH * BATCH * 8
    feeds = {"x": np.random.default_rng(1).normal(size=(BATCH, WIDTH))}
    print(f"memory: gradient of tanh chains (width {WIDTH}, batch {BATCH}, float64) wrt x; "
          f"ratios to the unbudgeted run, medians of {REPEAT} runs")
    print(f"{'layers':>6} {'budget':>8} {'peak MiB':>9} {'peak/layer':>10} {'peak ratio':>10} "
          f"{'time ratio':>10} {'recompute sweeps':>16}")
    for n in (16, 64, 256):
        g = chain(n)
        base = cg.ReverseMode(g, "loss", ["x"])
        _, ref = base.grad(feeds)
        full = base.stats.peak_bytes
        try:
            cg.ReverseMode(g, "loss", ["x"], memory_budget=1).grad(feeds)
        except cg.MemoryBudgetError as e:
            sqrt_point = e.smallest
        rows = [("none", base), *[(label, cg.ReverseMode(g, "loss", ["x"], memory_budget=b))
                                  for label, b in (("1/2", full // 2), ("1/4", full // 4),
                                                   ("sqrt-n", sqrt_point))]]
        t_full = None
        for label, rm in rows:
            try:
                _, grads = rm.grad(feeds)  # plans (once per shape) before timing
            except cg.MemoryBudgetError as e:
                print(f"{n:>6} {label:>8}  no schedule fits; the smallest budget is "
                      f"{e.smallest / layer:.1f} layers")
                continue
            assert np.array_equal(grads["x"], ref["x"]), "a budget changed the gradient"
            t = median_time(rm, feeds)
            t_full = t if t_full is None else t_full
            peak = rm.stats.peak_bytes
            sweeps = rm.memory_plan.extra_sweeps if rm.memory_plan is not None else 0.0
            print(f"{n:>6} {label:>8} {peak / 2**20:>9.2f} {peak / layer:>10.1f} {peak / full:>10.3f} "
                  f"{t / t_full:>10.2f} {sweeps:>16.2f}")


if __name__ == "__main__":
    main()
