"""Whole Jacobians and gradient checks, built on the executors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cgraph.autodiff import check_wrt
from cgraph.executors import Evaluator, ForwardMode, ReverseMode
from cgraph.executors.base import leaf_value
from cgraph.graph import Graph


def jacobian(g: Graph, feeds: Mapping[str, Any], of: str, wrt: str, mode: str = "auto") -> np.ndarray:
    """d of / d wrt as an array of shape out.shape + wrt.shape.

    "forward" takes one JVP per element of wrt (column by column), "reverse" one VJP per
    element of the output (row by row); "auto" takes the mode with fewer sweeps, forward on a tie.
    """
    if mode not in ("auto", "forward", "reverse"):
        raise ValueError(f"mode must be 'auto', 'forward' or 'reverse', not {mode!r}")
    check_wrt(g, [wrt])
    x = leaf_value(g, feeds, wrt)
    out = Evaluator(g, outputs=[of]).run(feeds)[of]
    if mode == "auto":
        mode = "forward" if x.size <= out.size else "reverse"
    J = np.empty((out.size, x.size), dtype=np.result_type(out.dtype, x.dtype))
    if mode == "forward":
        fm = ForwardMode(g, of=[of], wrt=[wrt])
        for j in range(x.size):
            t = np.zeros(x.size, x.dtype)
            t[j] = 1
            J[:, j] = fm.jvp(feeds, {wrt: t.reshape(x.shape)})[1][of].ravel()
    else:
        rm = ReverseMode(g, of=of, wrt=[wrt])
        for i in range(out.size):
            c = np.zeros(out.size, out.dtype)
            c[i] = 1
            J[i, :] = rm.vjp(feeds, {of: c.reshape(out.shape)})[1][wrt].ravel()
    return J.reshape(out.shape + x.shape)


def gradcheck(g: Graph, feeds: Mapping[str, Any], of: str, wrt: Sequence[str] | str,
              eps: float | None = None) -> float:
    """Max relative error of ReverseMode's gradient of the scalar `of` against central
    differences: max |analytic - numeric| / max(1, |analytic|, |numeric|) over all entries."""
    wrt = [wrt] if isinstance(wrt, str) else list(wrt)
    check_wrt(g, wrt)
    _, grads = ReverseMode(g, of=of, wrt=wrt).grad(feeds)
    ev = Evaluator(g, outputs=[of])
    worst = 0.0
    for w in wrt:
        base = leaf_value(g, feeds, w)
        h = eps if eps is not None else (1e-6 if base.dtype == np.float64 else 1e-3)
        numeric = np.empty(base.size)
        for k in range(base.size):
            f = []
            for sign in (1, -1):
                x = base.astype(np.float64).ravel()
                x[k] += sign * h
                x = x.reshape(base.shape).astype(base.dtype)
                if g.nodes[w].op == "param":
                    f.append(float(ev.run(feeds, params={w: x})[of]))
                else:
                    f.append(float(ev.run({**feeds, w: x})[of]))
            numeric[k] = (f[0] - f[1]) / (2 * h)
        analytic = np.asarray(grads[w], dtype=np.float64).ravel()
        scale = np.maximum(1.0, np.maximum(np.abs(analytic), np.abs(numeric)))
        if analytic.size:
            worst = max(worst, float(np.max(np.abs(analytic - numeric) / scale)))
    return worst
