"""Convolution speed: cgraph against torch (eager, CPU) and jax (jit), side by side in one
process, in float32 and float64.

Workloads: conv2d's forward pass, and its gradient (the forward pass and the VJP to the image and
the kernel, as reverse mode runs them), for the digits CNN's two layers (64 x 1 x 8 x 8 to 16
channels, then 64 x 16 x 4 x 4 to 32, 3x3, "same" padding) and a CIFAR-sized layer (64 x 3 x 32
x 32 to 32 channels, 3x3, padding 1); then one training step of examples/digits_cnn.py's CNN
(gradients of the loss and a gradient descent update, batch 64). Times are the best of 11
samples taken in turns; every framework gets the same number of threads (`--threads`, default 1:
numpy's BLAS through threadpoolctl, torch.set_num_threads, XLA's CPU flags when jax is first
imported here), as a machine shared with other work makes multi-threaded timings meaningless.

Run: python tools/bench/run.py conv [--threads 1]   (or python tools/bench/conv.py)
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from speed import best_times

import cgraph as cg

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import digits_cnn  # noqa: E402  (the example's model)

LAYERS = [  # (name, x shape, output channels, padding)
    ("digits conv1 64x1x8x8 -> 16", (64, 1, 8, 8), 16, 1),
    ("digits conv2 64x16x4x4 -> 32", (64, 16, 4, 4), 32, 1),
    ("CIFAR 64x3x32x32 -> 32", (64, 3, 32, 32), 32, 1),
]


def limit_threads(n: int) -> str:
    """Give every framework n threads; returns what was set, for the table's header."""
    said = []
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(n)
        said.append(f"numpy BLAS {n}")
    except ImportError:
        said.append("numpy BLAS as started (pip install threadpoolctl to limit it)")
    if "jax" not in sys.modules:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen="
                                   f"{'true' if n > 1 else 'false'} intra_op_parallelism_threads={n}")
        said.append(f"jax {n}")
    else:
        said.append("jax as already started")
    try:
        import torch
        torch.set_num_threads(n)
        said.append(f"torch {n}")
    except ImportError:
        pass
    return ", ".join(said)


def _jax():
    import jax
    import jax.numpy as jnp
    jax.config.update("jax_enable_x64", True)
    return jax, jnp


def conv_cases(dtype: str, shape: tuple, cout: int, pad: int) -> dict[str, dict[str, Callable[[], object] | None]]:
    """{"forward": {framework: fn}, "gradient": {...}} for one layer."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=shape).astype(dtype)
    W = (rng.normal(size=(cout, shape[1], 3, 3)) / np.sqrt(9 * shape[1])).astype(dtype)
    U = rng.normal(size=(shape[0], cout, shape[2] + 2 * pad - 2, shape[3] + 2 * pad - 2)).astype(dtype)
    g = cg.Graph("conv")
    x, w = g.input("x", shape, dtype), g.param("w", W)
    y = cg.conv2d(x, w, padding=pad)
    g.output("y", y)
    g.output("loss", cg.sum(y * g.constant("u", U)))
    ev = cg.Evaluator(g, outputs=["y"])
    rm = cg.ReverseMode(g, "loss", ["x", "w"])
    out = {"forward": {"cgraph": lambda: ev.run({"x": X})}, "gradient": {"cgraph": lambda: rm.grad({"x": X})}}
    try:
        import torch
        F = torch.nn.functional
        tx, tw, tu = (torch.tensor(a, requires_grad=True) for a in (X, W, U))

        def t_fwd():
            with torch.no_grad():
                return F.conv2d(tx, tw, padding=pad)
        out["forward"]["torch"] = t_fwd
        out["gradient"]["torch"] = lambda: torch.autograd.grad((F.conv2d(tx, tw, padding=pad) * tu).sum(), (tx, tw))
    except ImportError:
        pass
    try:
        jax, jnp = _jax()
        jx, jw, ju = jnp.asarray(X), jnp.asarray(W), jnp.asarray(U)

        def conv(a, b):
            return jax.lax.conv_general_dilated(a, b, (1, 1), [(pad, pad), (pad, pad)])
        fwd = jax.jit(conv)
        grad = jax.jit(jax.grad(lambda a, b: jnp.sum(conv(a, b) * ju), argnums=(0, 1)))
        out["forward"]["jax"] = lambda: fwd(jx, jw).block_until_ready()
        out["gradient"]["jax"] = lambda: [r.block_until_ready() for r in grad(jx, jw)]
    except ImportError:
        pass
    return out


def train_step(dtype: str) -> dict[str, Callable[[], object]]:
    """One step of the digits CNN (gradients and an update, lr 0.01), batch 64, each framework."""
    rng = np.random.default_rng(0)
    X = rng.random((64, 1, 8, 8)).astype(dtype)
    Y = np.eye(10, dtype=dtype)[rng.integers(0, 10, 64)]
    g = digits_cnn.build(dtype)
    rm = cg.ReverseMode(g, "loss", g.trainable)
    p0 = {k: v.copy() for k, v in g.params.items()}

    def cg_step() -> None:
        _, grads = rm.grad({"x": X, "y": Y})
        for k, d in grads.items():
            g.set_param(k, g.params[k] - 0.01 * d)
    steps = {"cgraph": cg_step}
    try:
        import torch
        F = torch.nn.functional
        tp = {k: torch.tensor(v, requires_grad=True) for k, v in p0.items()}
        tx, ty = torch.tensor(X), torch.tensor(Y)

        def t_step() -> None:
            h = F.max_pool2d(F.relu(F.conv2d(tx, tp["conv0/W"], padding=1) + tp["conv0/b"]), 2)
            h = F.max_pool2d(F.relu(F.conv2d(h, tp["conv1/W"], padding=1) + tp["conv1/b"]), 2)
            loss = F.cross_entropy(h.reshape(64, -1) @ tp["dense0/W"] + tp["dense0/b"], ty)
            grads = torch.autograd.grad(loss, list(tp.values()))
            with torch.no_grad():
                for p, d in zip(tp.values(), grads, strict=True):
                    p.sub_(0.01 * d)
        steps["torch"] = t_step
    except ImportError:
        pass
    try:
        jax, jnp = _jax()

        def pool(h):
            return jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")

        def conv(a, b):
            return jax.lax.conv_general_dilated(a, b, (1, 1), [(1, 1), (1, 1)])

        def loss(p, x, y):
            h = pool(jax.nn.relu(conv(x, p["conv0/W"]) + p["conv0/b"]))
            h = pool(jax.nn.relu(conv(h, p["conv1/W"]) + p["conv1/b"]))
            logits = h.reshape(64, -1) @ p["dense0/W"] + p["dense0/b"]
            return -jnp.mean(jnp.sum(y * jax.nn.log_softmax(logits), axis=1))

        @jax.jit
        def update(p, x, y):
            return jax.tree_util.tree_map(lambda a, d: a - 0.01 * d, p, jax.grad(loss)(p, x, y))
        jp, jx, jy = {k: jnp.asarray(v) for k, v in p0.items()}, jnp.asarray(X), jnp.asarray(Y)
        state = [jp]

        def j_step() -> None:
            state[0] = update(state[0], jx, jy)
            state[0]["dense0/b"].block_until_ready()
        steps["jax"] = j_step
    except ImportError:
        pass
    return steps


def row(name: str, fns: dict[str, Callable[[], object] | None]) -> None:
    names = [k for k in ("cgraph", "torch", "jax") if fns.get(k) is not None]
    times = dict(zip(names, best_times([fns[k] for k in names]), strict=True))  # type: ignore[misc]
    cells = [f"{times[k] * 1e3:9.3f} ms" if k in times else f"{'-':>12s}" for k in ("cgraph", "torch", "jax")]
    ratios = [f"{times['cgraph'] / times[k]:6.2f}x" if k in times else f"{'-':>7s}" for k in ("torch", "jax")]
    print(f"  {name:44s} {' '.join(cells)}   {' '.join(ratios)}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="conv2d and the digits CNN: cgraph, torch, jax")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args([] if argv is None else argv)
    threads = limit_threads(args.threads)
    print(f"convolution: milliseconds per call (best of 11, in turns) and cgraph's ratio to torch and jax; "
          f"threads: {threads}")
    print(f"  {'':44s} {'cgraph':>12s} {'torch':>12s} {'jax jit':>12s}   {'/torch':>7s} {'/jax':>7s}")
    for dtype in ("float32", "float64"):
        for name, shape, cout, pad in LAYERS:
            cases = conv_cases(dtype, shape, cout, pad)
            for what in ("forward", "gradient"):
                row(f"{name}, {what}, {dtype}", cases[what])
        row(f"digits CNN training step, batch 64, {dtype}", train_step(dtype))


if __name__ == "__main__":
    main(sys.argv[1:])
