"""A sparse Jacobian from the graph: Newton's method on a discretised 1-D PDE.

The Bratu problem u'' + lam * e^u = 0 on (0, 1), u(0) = u(1) = 0, on n interior points, is the
residual F(u)_i = (u_{i-1} - 2 u_i + u_{i+1}) / h^2 + lam * e^{u_i}: each F_i depends on three
unknowns, so its Jacobian is tridiagonal. cgraph reads that pattern from the graph (the slices
and the elementwise ops say which outputs depend on which inputs), colours the columns that
share no row (three colours, whatever n is), and computes the whole Jacobian from three
tangents pushed through one batched forward sweep. Newton's method then solves each step with
scipy's sparse solver. The dense way pushes n tangents.

    python examples/sparse_jacobian.py [--n 10000] [--no-dense]

Needs scipy (`pip install 'cgraph-ad[sparse]'`).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.sparse.linalg import spsolve

import cgraph as cg


def bratu(n: int, lam: float = 1.0) -> cg.Graph:
    g = cg.Graph("bratu")
    u = g.input("u", (n,))
    h = 1.0 / (n + 1)
    edge = g.constant("boundary", np.zeros(1))  # u(0) = u(1) = 0
    padded = cg.concat([edge, u, edge], axis=0)
    laplacian = (padded[:-2] - 2.0 * u + padded[2:]) / (h * h)
    g.output("F", laplacian + lam * cg.exp(u))
    return g


def best_time(fn, repeat: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="unknowns (default 10,000)")
    parser.add_argument("--no-dense", action="store_true", help="skip timing the dense Jacobian")
    args = parser.parse_args()

    g = bratu(args.n)
    S = cg.jacobian_sparsity(g, {"u": np.zeros(args.n)}, of="F", wrt="u")
    print(f"{args.n} unknowns; the pattern from the graph has {int(S.sum())} entries")
    jac = cg.Jacobian(g, of="F", wrt="u", sparse=True)  # pattern and colouring made at the first call
    evaluate = cg.Evaluator(g)

    u = np.zeros(args.n)
    t0 = time.perf_counter()
    jac({"u": u})
    print(f"pattern, colouring and plan: {time.perf_counter() - t0:.2f} s (once)")
    t0 = time.perf_counter()
    for step in range(1, 21):
        F = evaluate.run({"u": u})["F"]
        du = spsolve(jac({"u": u}).tocsc(), F)
        u = u - du
        print(f"  Newton step {step}: max |F| = {np.abs(F).max():.3e}, max |step| = {np.abs(du).max():.3e}")
        if np.abs(du).max() < 1e-12:
            break
    newton = time.perf_counter() - t0
    state = "converged" if np.abs(du).max() < 1e-12 else "did not converge"
    print(f"Newton {state} in {step} steps ({newton:.2f} s); max u = {u.max():.6f} (Bratu, lam = 1: 0.140539)")
    print(f"{jac.sweeps} colours: the Jacobian costs {jac.sweeps} tangents in {jac.chunks} batched sweep(s), "
          f"mode {jac.mode}")

    sparse_time = best_time(lambda: jac({"u": u}))
    print(f"sparse Jacobian: {sparse_time * 1e3:.2f} ms")
    if not args.no_dense:
        dense = cg.Jacobian(g, of="F", wrt="u")
        dense_time = best_time(lambda: dense({"u": u}), repeat=1)
        print(f"dense Jacobian:  {dense_time * 1e3:.1f} ms ({dense.sweeps} tangents in {dense.chunks} batched sweeps): "
              f"{dense_time / sparse_time:.0f}x the sparse one")


if __name__ == "__main__":
    main()
