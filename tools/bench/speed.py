"""Speed of cgraph against the lecture's hand-written numpy code, measured in one process.

One gradient descent step (gradients, then the update) of the lecture's Iris MLP (N=150, D=3,
M=16, C=3) and of a larger MLP (N=256, D=784, M=512, C=10), with ReverseMode, as a ratio to the
lecture's `gradients` plus the same update; and forward mode's JVP time on the lecture's
sin/cos graph over 10^6 points as a ratio to evaluating the same graph.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

import cgraph as cg


def median_time(fn: Callable[[], object], repeat: int = 7, min_time: float = 0.05) -> float:
    """Median seconds per call, each sample looping until it takes at least `min_time`."""
    fn()
    loops = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        if time.perf_counter() - t0 >= min_time:
            break
        loops *= 2
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        samples.append((time.perf_counter() - t0) / loops)
    return float(np.median(samples))


def _logistic(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def _softmax(u: np.ndarray) -> np.ndarray:
    e = np.exp(u - u.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def lecture_gradients(X, Y, W, V):
    """shared/lecture/README.md, section 2."""
    Z = _logistic(X @ V)
    N = X.shape[0]
    dY = _softmax(Z @ W) - Y
    dW = Z.T @ dY / N
    dZ = dY @ W.T
    dV = X.T @ (dZ * Z * (1 - Z)) / N
    return dW, dV


def mlp_step_ratio(N: int, D: int, M: int, C: int, lr: float = 0.1) -> tuple[float, float, float]:
    """(numpy seconds, cgraph seconds, ratio) for one gradient descent step."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, D))
    Y = np.eye(C)[rng.integers(0, C, N)]
    params = {"V": rng.normal(size=(D, M)) * 0.01, "W": rng.normal(size=(M, C)) * 0.01}

    def numpy_step():
        dW, dV = lecture_gradients(X, Y, params["W"], params["V"])
        params["W"] = params["W"] - lr * dW
        params["V"] = params["V"] - lr * dV

    g = cg.Graph("mlp")
    x, y = g.input("x", (None, D)), g.input("y", (None, C))
    V, W = g.param("V", params["V"]), g.param("W", params["W"])
    g.output("loss", cg.softmax_cross_entropy(cg.logistic(x @ V) @ W, y))
    rm = cg.ReverseMode(g, of="loss", wrt=["V", "W"])
    feeds = {"x": X, "y": Y}

    def cgraph_step():
        _, grads = rm.grad(feeds)
        for k, d in grads.items():
            g.set_param(k, g.params[k] - lr * d)

    t_np = median_time(numpy_step)
    t_cg = median_time(cgraph_step)
    return t_np, t_cg, t_cg / t_np


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
    t_ev = median_time(lambda: ev.run(feeds), repeat=5)
    t_jvp = median_time(lambda: fm.jvp(feeds, {"w1": 1.0}), repeat=5)
    return t_ev, t_jvp, t_jvp / t_ev


def main() -> None:
    print("speed: one gradient descent step, cgraph ReverseMode vs the lecture's numpy code")
    print(f"  {'workload':34s} {'numpy':>10s} {'cgraph':>10s} {'ratio':>7s}")
    for label, dims in (("Iris MLP N=150 D=3 M=16 C=3", (150, 3, 16, 3)),
                        ("MLP N=256 D=784 M=512 C=10", (256, 784, 512, 10))):
        t_np, t_cg, r = mlp_step_ratio(*dims)
        print(f"  {label:34s} {t_np * 1e6:8.1f}us {t_cg * 1e6:8.1f}us {r:6.2f}x")
    t_ev, t_jvp, r = jvp_ratio()
    print("forward mode: JVP vs evaluation, lecture's sin/cos graph on 10^6 points")
    print(f"  {'evaluation':34s} {t_ev * 1e3:8.2f}ms")
    print(f"  {'JVP (values and tangents)':34s} {t_jvp * 1e3:8.2f}ms {r:6.2f}x")


if __name__ == "__main__":
    main()
