"""The lecture's Iris run, in one process: cgraph's `fit` (each step one plan: gradients and
the in-place update), the lecture's hand-written numpy loop, and, when jax is installed, a loop
of jit-compiled jax steps, from the same initial weights, with the same stopping rule
(||dW|| < 1e-9 or max_iters). Prints steps, time, loss and train accuracy of each, and how far
apart they end. Timings are of this machine and run; no claim is asserted.

Run: python tools/bench/iris_training.py [--max-iters 100000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import cgraph as cg

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from lecture_iris import GD, cost, lecture_data, logistic  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Iris training: cgraph fit vs the lecture's numpy loop")
    ap.add_argument("--max-iters", type=int, default=100_000)
    args = ap.parse_args([] if argv is None else argv)  # run.py calls main() with its own argv
    X, Y, labels = lecture_data()

    g = cg.nn.mlp([3, 16, 3], hidden="logistic", loss="softmax_cross_entropy", bias=False, seed=0)
    V0, W0 = g.params["layer0/W"].copy(), g.params["layer1/W"].copy()
    h = cg.fit(g, {"x": X, "y": Y}, cg.optim.GD(lr=0.1), epochs=args.max_iters, progress=False,
               stop=lambda e: np.linalg.norm(e.grads["layer1/W"]) < 1e-9)
    acc_cg = float(np.mean(np.argmax(cg.predict(g, X), 1) == labels))

    t0 = time.perf_counter()
    W, V, steps_np, _ = GD(X, Y, W0, V0, lr=0.1, eps=1e-9, max_iters=args.max_iters)
    t_np = time.perf_counter() - t0
    acc_np = float(np.mean(np.argmax(logistic(X @ V) @ W, 1) == labels))

    print("Iris, D=3 (2 standardised petal features + bias), M=16 logistic, C=3; "
          f"GD lr=0.1, max_iters={args.max_iters}")
    print(f"  cgraph fit:        {h.steps:6d} steps  {h.seconds:7.2f} s  {1e6 * h.seconds / h.steps:6.1f} us/step"
          f"  loss {cost(X, Y, g.params['layer1/W'], g.params['layer0/W']):.8f}  train accuracy {acc_cg:.3f}")
    print(f"  numpy (lecture):   {steps_np:6d} steps  {t_np:7.2f} s  {1e6 * t_np / steps_np:6.1f} us/step"
          f"  loss {cost(X, Y, W, V):.8f}  train accuracy {acc_np:.3f}")
    print(f"  time ratio cgraph / numpy: {h.seconds / t_np:.2f}")
    jax_run = _jax_loop(X, Y, W0, V0, args.max_iters)
    if jax_run is not None:
        W_j, V_j, steps_j, t_j = jax_run
        print(f"  jax (jit steps):   {steps_j:6d} steps  {t_j:7.2f} s  {1e6 * t_j / steps_j:6.1f} us/step"
              f"  loss {cost(X, Y, W_j, V_j):.8f}; time ratio cgraph / jax: {h.seconds / t_j:.2f}")
    print(f"  max |difference| of the final weights: "
          f"{max(np.abs(g.params['layer1/W'] - W).max(), np.abs(g.params['layer0/W'] - V).max()):.2e}")


def _jax_loop(X: np.ndarray, Y: np.ndarray, W: np.ndarray, V: np.ndarray, max_iters: int
              ) -> tuple[np.ndarray, np.ndarray, int, float] | None:
    """The lecture's loop with each step (gradients by jax.grad, the update, ||dW||) one
    jit-compiled call, in float64; None without jax."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    jax.config.update("jax_enable_x64", True)

    def cost_j(W, V, X, Y):
        U = jax.nn.sigmoid(X @ V) @ W
        return -jnp.mean(jnp.sum(U * Y, 1) - jax.nn.logsumexp(U, axis=1))

    @jax.jit
    def step(W, V, X, Y):
        dW, dV = jax.grad(cost_j, argnums=(0, 1))(W, V, X, Y)
        return W - 0.1 * dW, V - 0.1 * dV, jnp.linalg.norm(dW)

    Xj, Yj, Wj, Vj = (jnp.asarray(a) for a in (X, Y, W, V))
    step(Wj, Vj, Xj, Yj)[2].block_until_ready()  # compile outside the timing
    t0 = time.perf_counter()
    t, norm = 0, np.inf
    while norm > 1e-9 and t < max_iters:
        Wj, Vj, n = step(Wj, Vj, Xj, Yj)
        norm = float(n)
        t += 1
    return np.asarray(Wj), np.asarray(Vj), t, time.perf_counter() - t0


if __name__ == "__main__":
    main(sys.argv[1:])
