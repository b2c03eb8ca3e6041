"""Jacobians in a few sweeps, against jax (jit-compiled jacfwd, jacrev) and torch (torch.func),
measured in one process; each row's ratios are to its baseline, in float64.

- The Jacobian of a 64 -> 64 tanh MLP (two layers, one example), dense: cgraph's prepared
  `Jacobian` (one batched forward sweep of 64 tangents) against hand-written numpy (the
  closed form diag(1 - y^2) W2^T diag(1 - h^2) W1^T, the baseline), jax's jacfwd and jacrev
  under jit, torch.func's jacrev and jacfwd. Aim: within 2x of jax, ahead of torch.
- The tridiagonal Jacobian of a 10,000-unknown 1-D PDE residual (examples/sparse_jacobian.py):
  cgraph's sparse `Jacobian` (three colours: three tangents in one sweep) against jax's dense
  jacfwd under jit (the baseline); also the one-time pattern, colouring and plan. Aim: at most
  4 sweeps, more than 100x ahead of jax's dense jacfwd.
- Per-example gradients of the lecture's Iris MLP over 150 rows: `cg.vmap` of its gradient
  graph against one batched gradient of the 150 rows (the baseline), with torch.func's
  vmap(grad) and jax's vmap(grad) under jit. Aim: within 2x of one batched gradient.

Each row's functions are sampled in turns, many short samples each (the best of 201 samples of
about 2 ms), so that on a busy machine the best sample of each ran undisturbed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from speed import _jax, _peer, best_times

import cgraph as cg

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from sparse_jacobian import bratu  # noqa: E402

# Small workloads on a shared machine: many short samples taken in turns (each well within a
# scheduler time slice, so that the best of them ran undisturbed).
REPEAT, SAMPLE = 201, 0.002


def _row(name: str, baseline: Callable[[], object], fns: list[tuple[str, Callable[[], object] | None]]) -> None:
    """One line: the baseline's time, then each function's as a ratio to it (all sampled in
    turns)."""
    present = [f for _, f in fns if f is not None]
    base, *times = best_times([baseline, *present], repeat=REPEAT, min_time=SAMPLE)
    cells = [f"{label} {times.pop(0) / base:6.2f}x" if f is not None else f"{label}    -   " for label, f in fns]
    print(f"  {name:10s} {base * 1e6:7.1f}us  " + "  ".join(cells))


def mlp_jacobian() -> None:
    rng = np.random.default_rng(0)
    W1, W2 = rng.normal(0, 0.2, (64, 64)), rng.normal(0, 0.2, (64, 64))
    b1, b2 = rng.normal(0, 0.1, 64), rng.normal(0, 0.1, 64)
    X = rng.normal(size=(1, 64))
    g = cg.Graph("mlp64")
    x = g.input("x", (1, 64))
    h = cg.tanh(x @ g.param("W1", W1) + g.param("b1", b1))
    g.output("y", cg.tanh(h @ g.param("W2", W2) + g.param("b2", b2)))
    feeds = {"x": X}
    fwd, rev = cg.Jacobian(g, "y", "x", mode="forward"), cg.Jacobian(g, "y", "x", mode="reverse")

    def numpy_jacobian():
        hh = np.tanh(X @ W1 + b1)
        y = np.tanh(hh @ W2 + b2)
        return ((1 - y[0] ** 2)[:, None] * W2.T) @ ((1 - hh[0] ** 2)[:, None] * W1.T)

    ref = numpy_jacobian()
    assert np.allclose(fwd(feeds).reshape(64, 64), ref) and np.allclose(rev(feeds).reshape(64, 64), ref)

    def jax_fns():
        jax, jnp = _jax()

        def f(x):
            return jnp.tanh(jnp.tanh(x @ W1 + b1) @ W2 + b2)
        xj = jnp.asarray(X)
        out = []
        for transform in (jax.jacfwd, jax.jacrev):
            jf = jax.jit(transform(f))
            assert np.allclose(np.asarray(jf(xj)).reshape(64, 64), ref)
            out.append(lambda jf=jf: jf(xj).block_until_ready())
        return out

    def torch_fns():
        import torch
        from torch.func import jacfwd, jacrev
        t = [torch.tensor(a) for a in (W1, W2, b1, b2, X)]

        def f(x):
            return torch.tanh(torch.tanh(x @ t[0] + t[2]) @ t[1] + t[3])
        assert np.allclose(jacrev(f)(t[4]).numpy().reshape(64, 64), ref)
        return [lambda: jacrev(f)(t[4]), lambda: jacfwd(f)(t[4])]

    jx = _peer(jax_fns) or [None, None]
    tc = _peer(torch_fns) or [None, None]
    print("the Jacobian of a 64 -> 64 tanh MLP (two layers, one example), dense, as a ratio to closed-form numpy")
    _row("64 x 64", numpy_jacobian, [("cgraph fwd", lambda: fwd(feeds)), ("cgraph rev", lambda: rev(feeds)),
                           ("jax jacfwd", jx[0]), ("jax jacrev", jx[1]),
                           ("torch jacrev", tc[0]), ("torch jacfwd", tc[1])])
    print(f"  cgraph: {fwd.sweeps} tangents in {fwd.chunks} batched sweep, {len(fwd._sweepers['forward'].plan(64))} "
          "kernel calls")


def tridiagonal() -> None:
    n = 10_000
    g = bratu(n)
    U = np.random.default_rng(1).uniform(0, 0.1, n)
    feeds = {"u": U}
    t0 = time.perf_counter()
    jac = cg.Jacobian(g, "F", "u", sparse=True)
    J = jac(feeds)
    setup = time.perf_counter() - t0

    def jax_jacfwd():
        jax, jnp = _jax()
        h2 = (1.0 / (n + 1)) ** 2

        def F(u):
            p = jnp.concatenate([jnp.zeros(1), u, jnp.zeros(1)])
            return (p[:-2] - 2.0 * u + p[2:]) / h2 + jnp.exp(u)
        jf = jax.jit(jax.jacfwd(F))
        uj = jnp.asarray(U)
        dense = np.asarray(jf(uj))
        assert np.allclose(dense[::97], J.toarray()[::97])
        return lambda: jf(uj).block_until_ready()

    jf = _peer(jax_jacfwd)
    print(f"the tridiagonal Jacobian of a {n:,}-unknown PDE residual (examples/sparse_jacobian.py)")
    if jf is None:
        t = best_times([lambda: jac(feeds)])[0]
        print(f"  cgraph sparse: {t * 1e3:.2f} ms ({jac.sweeps} sweeps); jax not installed")
    else:
        base, ours = best_times([jf, lambda: jac(feeds)], repeat=3, min_time=0.2)
        print(f"  jax jacfwd (jit, dense) {base * 1e3:8.1f} ms   cgraph sparse {ours * 1e3:6.2f} ms: "
              f"{base / ours:.0f}x ahead, {jac.sweeps} sweeps ({jac.mode} mode, {jac.chunks} batched run)")
    print(f"  cgraph's one-time pattern, colouring and plan: {setup * 1e3:.0f} ms")


def per_example_gradients() -> None:
    rng = np.random.default_rng(2)
    X = rng.normal(size=(150, 3))
    Y = np.eye(3)[rng.integers(0, 3, 150)]
    V0, W0 = rng.normal(0, 0.5, (3, 16)), rng.normal(0, 0.5, (16, 3))

    def iris(rows):
        g = cg.Graph("iris")
        x, y = g.input("x", (rows, 3)), g.input("y", (rows, 3))
        g.output("loss", cg.softmax_cross_entropy(cg.logistic(x @ g.param("V", V0)) @ g.param("W", W0), y))
        return g

    rm = cg.ReverseMode(iris(None), "loss", ["V", "W"])
    pe = cg.Evaluator(cg.vmap(cg.gradient_graph(iris(1), of="loss", wrt=["V", "W"]), in_axes={"x": 0, "y": 0}),
                      outputs=["grad/V", "grad/W"])
    feeds = {"x": X, "y": Y}
    pfeeds = {"x": X[:, None], "y": Y[:, None]}
    out = pe.run(pfeeds)
    assert np.allclose(out["grad/W"].mean(0), rm.grad(feeds)[1]["W"])

    def torch_fn():
        import torch
        from torch.func import grad, vmap
        t = [torch.tensor(a) for a in (V0, W0, X[:, None], Y[:, None])]

        def loss(V, W, x, y):
            return torch.nn.functional.cross_entropy(torch.sigmoid(x @ V) @ W, y)
        f = vmap(grad(loss, argnums=(0, 1)), in_dims=(None, None, 0, 0))
        return lambda: f(*t)

    def jax_fn():
        jax, jnp = _jax()

        def loss(V, W, x, y):
            U = jax.nn.sigmoid(x @ V) @ W
            return -jnp.mean(jnp.sum(U * y, 1) - jax.scipy.special.logsumexp(U, axis=1))
        f = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1)), in_axes=(None, None, 0, 0)))
        args = [jnp.asarray(a) for a in (V0, W0, X[:, None], Y[:, None])]
        return lambda: jax.block_until_ready(f(*args))

    print("per-example gradients of the Iris MLP over 150 rows, as a ratio to one batched gradient")
    _row("150 rows", lambda: rm.grad(feeds), [("cgraph vmap", lambda: pe.run(pfeeds)),
                                              ("torch vmap(grad)", _peer(torch_fn)),
                                              ("jax vmap(grad) jit", _peer(jax_fn))])


def main() -> None:
    mlp_jacobian()
    tridiagonal()
    per_example_gradients()


if __name__ == "__main__":
    main()
