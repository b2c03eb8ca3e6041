"""Speed of cgraph against the lecture's hand-written numpy code (and, when installed, HIPS
autograd, torch and jax), measured in one process, as ratios to the numpy baseline.

Workloads, one gradient descent step each (gradients, then the update): the lecture's Iris MLP
(N=150, D=3, M=16, C=3; the numpy baseline is the lecture's `gradients`), a larger MLP
(N=256, D=784, M=512, C=10), and a chain of 32 tanh layers of width 256 (batch 128; the baseline
is hand-written backpropagation). Peers (the `bench` extra) run the same step: autograd and
torch eagerly, jax jit-compiled, all in float64; cgraph's step is one plan (cg.optim.TrainStep),
shown beside its unfused form (all gradients, then the update). Then forward mode's JVP against
evaluation on the lecture's sin/cos graph over 10^6 points, the time to derive, plan and compile
the gradients of models of 10^3, 10^4 and 10^5 nodes, and the overhead per step on 10^4 scalar
nodes. Times are the best of several repeats,
the figure least disturbed by other work on the machine.
"""

from __future__ import annotations

import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np

import cgraph as cg


def best_times(fns: list[Callable[[], object]], repeat: int = 11, min_time: float = 0.05) -> list[float]:
    """Seconds per call of each function, sampled in turns (so a machine that speeds up or
    slows down during the run affects all of them alike): the best of `repeat` samples each."""
    loops = []
    for fn in fns:
        fn()
        n = 1
        while True:
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            if time.perf_counter() - t0 >= min_time:
                break
            n *= 2
        loops.append(n)
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, (fn, n) in enumerate(zip(fns, loops, strict=True)):
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            best[i] = min(best[i], (time.perf_counter() - t0) / n)
    return best


def best_time(fn: Callable[[], object], repeat: int = 7) -> float:
    """Seconds per call of `fn`: the best of `repeat` samples."""
    return best_times([fn], repeat=repeat)[0]


def traced_peak(fn: Callable[[], object]) -> int:
    """Peak bytes numpy allocated during one call (tracemalloc)."""
    fn()
    tracemalloc.start()
    tracemalloc.reset_peak()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from lecture_iris import gradients as lecture_gradients  # noqa: E402  (the lecture's code, the baseline)


class Workload:
    """One gradient descent step of a model, written for each framework."""

    name = ""
    lr = 0.1

    def numpy_step(self) -> Callable[[], None]:
        raise NotImplementedError

    def cgraph_graph(self) -> tuple[cg.Graph, dict[str, np.ndarray]]:
        raise NotImplementedError

    def cgraph_step(self) -> tuple[Callable[[], None], cg.ReverseMode]:
        """The step as one plan: gradients and the in-place update fused (cg.optim.TrainStep)."""
        g, feeds = self.cgraph_graph()
        step = cg.optim.TrainStep(g, cg.optim.GD(lr=self.lr))
        return (lambda: step(feeds)), step.rm

    def cgraph_unfused_step(self) -> Callable[[], None]:
        """All the gradients first (ReverseMode.grad), then the update (GD.step)."""
        g, feeds = self.cgraph_graph()
        rm = cg.ReverseMode(g, of="loss", wrt=g.trainable)
        opt = cg.optim.GD(lr=self.lr)
        return lambda: opt.step(g, rm.grad(feeds)[1])

    def torch_step(self) -> Callable[[], None]:
        raise NotImplementedError

    def autograd_step(self) -> Callable[[], None]:
        raise NotImplementedError

    def jax_step(self) -> Callable[[], None]:
        raise NotImplementedError


class MLP(Workload):
    def __init__(self, name: str, N: int, D: int, M: int, C: int) -> None:
        self.name = name
        rng = np.random.default_rng(0)
        self.X = rng.normal(size=(N, D))
        self.Y = np.eye(C)[rng.integers(0, C, N)]
        self.V0, self.W0 = rng.normal(size=(D, M)) * 0.01, rng.normal(size=(M, C)) * 0.01

    def numpy_step(self):
        p = {"V": self.V0.copy(), "W": self.W0.copy()}

        def step():
            dW, dV = lecture_gradients(self.X, self.Y, p["W"], p["V"])
            p["W"] = p["W"] - self.lr * dW
            p["V"] = p["V"] - self.lr * dV
        return step

    def cgraph_graph(self):
        g = cg.Graph(self.name)
        x, y = g.input("x", (None, self.X.shape[1])), g.input("y", (None, self.Y.shape[1]))
        V, W = g.param("V", self.V0), g.param("W", self.W0)
        g.output("loss", cg.softmax_cross_entropy(cg.logistic(x @ V) @ W, y))
        return g, {"x": self.X, "y": self.Y}

    def torch_step(self):
        import torch
        X, Y = torch.tensor(self.X), torch.tensor(self.Y)
        V = torch.tensor(self.V0, requires_grad=True)
        W = torch.tensor(self.W0, requires_grad=True)

        def step():
            loss = torch.nn.functional.cross_entropy(torch.sigmoid(X @ V) @ W, Y)
            dV, dW = torch.autograd.grad(loss, (V, W))
            with torch.no_grad():
                V.sub_(self.lr * dV)
                W.sub_(self.lr * dW)
        return step

    def jax_step(self):
        jax, jnp = _jax()

        def cost(params, X, Y):
            V, W = params
            U = jax.nn.sigmoid(X @ V) @ W
            return -jnp.mean(jnp.sum(U * Y, 1) - jax.scipy.special.logsumexp(U, axis=1))

        @jax.jit
        def update(params, X, Y):
            grads = jax.grad(cost)(params, X, Y)
            return [p - self.lr * d for p, d in zip(params, grads, strict=True)]
        X, Y = jnp.asarray(self.X), jnp.asarray(self.Y)
        p = [jnp.asarray(self.V0), jnp.asarray(self.W0)]

        def step():
            p[:] = update(p, X, Y)
            p[0].block_until_ready()
        return step

    def autograd_step(self):
        import autograd
        import autograd.numpy as anp
        from autograd.scipy.special import logsumexp

        def cost(params, X, Y):
            V, W = params
            U = (1 / (1 + anp.exp(-(X @ V)))) @ W
            return -anp.mean(anp.sum(U * Y, 1) - logsumexp(U, axis=1))
        grad = autograd.grad(cost)
        p = [self.V0.copy(), self.W0.copy()]

        def step():
            dV, dW = grad(p, self.X, self.Y)
            p[0], p[1] = p[0] - self.lr * dV, p[1] - self.lr * dW
        return step


class Chain(Workload):
    """h_{k+1} = tanh(h_k W_k), loss = mean(h_L)."""

    def __init__(self, layers: int = 32, width: int = 256, batch: int = 128) -> None:
        self.name = f"{layers} tanh layers, width {width}, batch {batch}"
        rng = np.random.default_rng(0)
        self.X = rng.normal(size=(batch, width))
        self.Ws = [rng.normal(0, 1 / np.sqrt(width), (width, width)) for _ in range(layers)]

    def numpy_step(self):
        Ws = [W.copy() for W in self.Ws]

        def step():
            hs = [self.X]
            for W in Ws:
                hs.append(np.tanh(hs[-1] @ W))
            g = np.full_like(hs[-1], 1.0 / hs[-1].size)
            for k in reversed(range(len(Ws))):
                g = g * (1 - hs[k + 1] ** 2)
                dW = hs[k].T @ g
                g = g @ Ws[k].T
                Ws[k] = Ws[k] - self.lr * dW
        return step

    def cgraph_graph(self):
        g = cg.Graph("chain")
        h = g.input("x", (None, self.X.shape[1]))
        for i, W in enumerate(self.Ws):
            with g.scope(f"layer{i}"):
                h = cg.tanh(h @ g.param("W", W))
        g.output("loss", cg.mean(h))
        return g, {"x": self.X}

    def torch_step(self):
        import torch
        X = torch.tensor(self.X)
        Ws = [torch.tensor(W, requires_grad=True) for W in self.Ws]

        def step():
            h = X
            for W in Ws:
                h = torch.tanh(h @ W)
            grads = torch.autograd.grad(h.mean(), Ws)
            with torch.no_grad():
                for W, d in zip(Ws, grads, strict=True):
                    W.sub_(self.lr * d)
        return step

    def jax_step(self):
        jax, jnp = _jax()

        def cost(Ws, X):
            h = X
            for W in Ws:
                h = jnp.tanh(h @ W)
            return jnp.mean(h)

        @jax.jit
        def update(Ws, X):
            return [W - self.lr * d for W, d in zip(Ws, jax.grad(cost)(Ws, X), strict=True)]
        X = jnp.asarray(self.X)
        Ws = [jnp.asarray(W) for W in self.Ws]

        def step():
            Ws[:] = update(Ws, X)
            Ws[0].block_until_ready()
        return step

    def autograd_step(self):
        import autograd
        import autograd.numpy as anp

        def cost(Ws, X):
            h = X
            for W in Ws:
                h = anp.tanh(h @ W)
            return anp.mean(h)
        grad = autograd.grad(cost)
        Ws = [W.copy() for W in self.Ws]

        def step():
            for k, d in enumerate(grad(Ws, self.X)):
                Ws[k] = Ws[k] - self.lr * d
        return step


def _jax():
    """jax and jax.numpy in float64, as the other workloads (imported only if asked for)."""
    import jax
    import jax.numpy as jnp
    jax.config.update("jax_enable_x64", True)
    return jax, jnp


def _peer(make: Callable[[], Callable[[], None]]) -> Callable[[], None] | None:
    try:
        return make()
    except ImportError:
        return None


def steps_table() -> None:
    print("one gradient descent step, as a ratio to hand-written numpy (best of 11, taken in turns); "
          "cgraph: the fused step (TrainStep), and grad then step")
    print(f"  {'workload':40s} {'numpy':>10s} {'cgraph':>8s} {'unfused':>8s} {'autograd':>9s} {'torch':>8s} "
          f"{'jax jit':>8s}")
    for w in (MLP("Iris MLP N=150 D=3 M=16 C=3", 150, 3, 16, 3),
              MLP("MLP N=256 D=784 M=512 C=10", 256, 784, 512, 10), Chain()):
        cg_step, _ = w.cgraph_step()
        peers = [_peer(make) for make in (w.autograd_step, w.torch_step, w.jax_step)]
        base, ours, unfused, *theirs = best_times([w.numpy_step(), cg_step, w.cgraph_unfused_step(),
                                                   *[p for p in peers if p]])
        cells = [f"{ours / base:7.2f}x", f"{unfused / base:7.2f}x"]
        for p in peers:
            cells.append(f"{theirs.pop(0) / base:8.2f}x" if p else f"{'-':>8s} ")
        print(f"  {w.name:40s} {base * 1e6:8.0f}us {' '.join(cells)}")
    chain = Chain()
    cg_step, rm = chain.cgraph_step()
    cg_step()
    print(f"  memory of a whole step, {chain.name}: cgraph fused {traced_peak(cg_step) / 2**20:.1f} MiB "
          f"(its own books {rm.stats.peak_bytes / 2**20:.1f} MiB), unfused "
          f"{traced_peak(chain.cgraph_unfused_step()) / 2**20:.1f} MiB, hand-written numpy "
          f"{traced_peak(chain.numpy_step()) / 2**20:.1f} MiB (tracemalloc)")


def jvp_ratio(n: int = 10**6) -> tuple[float, float, float]:
    """(evaluation seconds, JVP seconds, ratio) for y1 = sin(w1 x + w0), y2 = cos(w1 x + w0)."""
    g = cg.Graph("sin-cos")
    w0, w1, x = g.input("w0", ()), g.input("w1", ()), g.input("x", (None,))
    a5 = w1 * x + w0
    g.output("y1", cg.sin(a5))
    g.output("y2", cg.cos(a5))
    feeds = {"w0": 0.3, "w1": -1.2, "x": np.linspace(-3, 3, n)}
    ev = cg.Evaluator(g)
    fm = cg.ForwardMode(g, of=["y1", "y2"], wrt=["w1"])
    t_ev, t_jvp = best_times([lambda: ev.run(feeds), lambda: fm.jvp(feeds, {"w1": 1.0})], repeat=7)
    return t_ev, t_jvp, t_jvp / t_ev


def scalar_chain(n: int) -> cg.Graph:
    g = cg.Graph(f"scalars{n}")
    h = g.input("x", ())
    for _ in range(n - 1):
        h = cg.sin(h)
    g.output("y", h)
    return g


def _gradient_of_chain(n: int) -> cg.Graph:
    """A model of n nodes (a chain of small tanh layers) whose gradient graph is planned."""
    g = cg.Graph(f"chain{n}")
    h = g.input("x", (None, 4))
    w = g.param("w", np.eye(4))
    while len(g) < n - 2:
        h = cg.tanh(h * w[0]) + 0.5
    g.output("loss", cg.mean(h))
    return g


def overhead_table() -> None:
    print("plans: time to derive and plan (simplify, schedule) a gradient and run it once (a large plan is")
    print("interpreted while young), and to compile it (straight-line code) when it keeps running")
    for n in (10**3, 10**4, 10**5):
        g = _gradient_of_chain(n)
        feeds = {"x": np.ones((2, 4))}
        t0 = time.perf_counter()
        gg = cg.gradient_graph(g, "loss", ["w"])
        t1 = time.perf_counter()
        ev = cg.Evaluator(gg)
        t2 = time.perf_counter()
        ev.run(feeds)
        t3 = time.perf_counter()
        ev.plan.runner  # noqa: B018  (compiled by its first run if small, else on its 17th)
        t4 = time.perf_counter()
        print(f"  model of {len(g):>6d} nodes, gradient graph {len(gg):>6d} nodes, {len(ev.plan):>6d} steps: "
              f"{t3 - t0:6.2f} s to the first gradient (derive {t1 - t0:.2f}, plan {t2 - t1:.2f}, run {t3 - t2:.2f}; "
              f"{(t3 - t0) / len(gg) * 1e6:.0f} us per gradient node); compile {t4 - t3:.2f}")
    g = scalar_chain(10**4)
    ev = cg.Evaluator(g)
    ev.plan.runner  # noqa: B018  (the compiled code's overhead: a plan this large would be interpreted at first)
    x = np.array(0.5)
    t_run = best_time(lambda: ev.run({"x": x}), repeat=5)

    def bare() -> None:
        v = x
        for _ in range(10**4 - 1):
            v = np.sin(v)
    t_bare = best_time(bare, repeat=5)
    print(f"  run 10^4 scalar sin nodes: {t_run / 1e4 * 1e6:.2f} us per node, numpy alone "
          f"{t_bare / 1e4 * 1e6:.2f} us: overhead {(t_run - t_bare) / 1e4 * 1e6:.2f} us per node")


def main() -> None:
    steps_table()
    t_ev, t_jvp, r = jvp_ratio()
    print("forward mode on the lecture's sin/cos graph, 10^6 points")
    print(f"  evaluation {t_ev * 1e3:.2f} ms, JVP (values and tangents) {t_jvp * 1e3:.2f} ms: {r:.2f}x")
    overhead_table()


if __name__ == "__main__":
    main()
