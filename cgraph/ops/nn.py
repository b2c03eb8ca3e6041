"""The ops of neural networks: softmax, log_softmax, logsumexp (stable, with the max trick),
the losses (a scalar: the mean over rows, axis 0, of a per-row sum) and batch normalisation.

softmax_cross_entropy is a primitive so that its gradient is the lecture's `softmax(u) - y`
in one rule; binary_cross_entropy, mse and batch_norm are built from other ops.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cgraph.errors import ShapeError
from cgraph.graph import Meta, Shape, Tensor
from cgraph.ops.elementwise import add, div, exp, mul, neg, softplus, sqrt, square, sub
from cgraph.ops.reduce import count, reduce_keep, sum, unreduce
from cgraph.ops.reduce import mean as _mean
from cgraph.ops.registry import apply, check_float, define, lift, normalize_axes


def _shifted(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """x minus its max over `axes`, so that exp cannot overflow (the max trick)."""
    return x - reduce_keep(x, axes, np.maximum)


def _softmax(x: np.ndarray, *, axes: tuple[int, ...]) -> np.ndarray:
    e = np.exp(_shifted(x, axes))
    e /= reduce_keep(e, axes, np.add)
    return e


def _log_softmax(x: np.ndarray, *, axes: tuple[int, ...]) -> np.ndarray:
    s = _shifted(x, axes)
    s -= np.log(reduce_keep(np.exp(s), axes, np.add))
    return s


def _logsumexp(x: np.ndarray, *, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
    m = reduce_keep(x, axes, np.maximum)
    r = np.log(reduce_keep(np.exp(x - m), axes, np.add)) + m
    return r if keepdims else np.squeeze(r, axis=axes)


def _same_float(x: Meta, **_: Any) -> tuple[Shape, np.dtype]:
    check_float(x)
    return x.shape, x.dtype


def _lse_infer(x: Meta, *, axes: tuple[int, ...], keepdims: bool) -> tuple[Shape, np.dtype]:
    check_float(x)
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(x.shape)), x.dtype
    return tuple(d for i, d in enumerate(x.shape) if i not in axes), x.dtype


define("softmax", _softmax, _same_float,
       jvp=(lambda t, out, x, *, axes: mul(out, sub(t, sum(mul(t, out), axes, keepdims=True))),),
       vjp=(lambda g, out, x, *, axes: mul(out, sub(g, sum(mul(g, out), axes, keepdims=True))),))
define("log_softmax", _log_softmax, _same_float,
       jvp=(lambda t, out, x, *, axes: sub(t, sum(mul(exp(out), t), axes, keepdims=True)),),
       vjp=(lambda g, out, x, *, axes: sub(g, mul(exp(out), sum(g, axes, keepdims=True))),))
define("logsumexp", _logsumexp, _lse_infer,
       jvp=(lambda t, out, x, *, axes, keepdims: sum(mul(t, softmax(x, axes)), axes, keepdims),),
       vjp=(lambda g, out, x, *, axes, keepdims: mul(unreduce(g, x, axes, keepdims), softmax(x, axes)),))


# ---- softmax cross-entropy: -sum(y * log_softmax(u)) / rows --------------------------------

def _rows_infer(u: Meta, y: Meta) -> tuple[Shape, np.dtype]:
    check_float(u)
    if u.ndim < 2:
        raise ShapeError("logits need a batch axis and a class axis (N, C)")
    if y.ndim != u.ndim or any(a is not None and b is not None and a != b
                               for a, b in zip(u.shape, y.shape, strict=True)):
        raise ShapeError("targets must have the shape of the logits")
    return (), u.dtype


def _sce(u: np.ndarray, y: np.ndarray) -> np.ndarray:
    # -sum(y * log_softmax(u)) = sum over rows of rowsum(y) * logsumexp(u) - sum(y * u)
    last = (u.ndim - 1,)
    lse = _logsumexp(u, axes=last, keepdims=True)
    total = np.vdot(reduce_keep(y, last, np.add), lse) - np.vdot(y, u)
    return u.dtype.type(total / u.shape[0])


def _sce_grad(u: np.ndarray, y: np.ndarray) -> np.ndarray:
    last = (u.ndim - 1,)
    s = _softmax(u, axes=last)
    s *= reduce_keep(y, last, np.add)
    s -= y
    return s


def _sce_grad_rules() -> tuple[tuple, tuple]:
    """softmax(u) r - y with r the row sums of y: its derivative is softmax's times r in u,
    and softmax(u) sum(t) - t in y (linear; its transpose sums g * softmax(u) over the row)."""
    def du(t: Tensor, u: Tensor, y: Tensor) -> Tensor:
        last = (u.ndim - 1,)
        s = softmax(u, last)
        return mul(mul(s, sub(t, sum(mul(t, s), last, keepdims=True))), sum(y, last, keepdims=True))

    def dy(t: Tensor, u: Tensor) -> Tensor:
        last = (u.ndim - 1,)
        return sub(mul(softmax(u, last), sum(t, last, keepdims=True)), t)

    def dy_transposed(g: Tensor, u: Tensor) -> Tensor:
        last = (u.ndim - 1,)
        return sub(sum(mul(g, softmax(u, last)), last, keepdims=True), g)

    # softmax's Jacobian is symmetric and r is constant along a row, so `du` is its own transpose.
    return ((lambda t, out, u, y: du(t, u, y), lambda t, out, u, y: dy(t, u)),
            (lambda g, out, u, y: du(g, u, y), lambda g, out, u, y: dy_transposed(g, u)))


_jvp, _vjp = _sce_grad_rules()
define("softmax_cross_entropy_grad", _sce_grad, lambda u, y: (u.shape, u.dtype), jvp=_jvp, vjp=_vjp,
       doc="rows * d softmax_cross_entropy / d u = softmax(u) * rowsum(y) - y, in one kernel: "
           "the lecture's softmax(u) - y for one-hot (or any probability) rows")


def _sce_du(u: Tensor, y: Tensor) -> Tensor:
    return apply("softmax_cross_entropy_grad", u, y)


def _sce_dy(u: Tensor) -> Tensor:
    return neg(log_softmax(u, (u.ndim - 1,)))


define("softmax_cross_entropy", _sce, _rows_infer,
       jvp=(lambda t, out, u, y: div(sum(mul(t, _sce_du(u, y))), count(u, (0,))),
            lambda t, out, u, y: div(sum(mul(t, _sce_dy(u))), count(u, (0,)))),
       vjp=(lambda g, out, u, y: mul(_sce_du(u, y), div(g, count(u, (0,)))),
            lambda g, out, u, y: mul(_sce_dy(u), div(g, count(u, (0,))))),
       doc="mean over rows of -sum_c y_c log softmax(u)_c, i.e. -y.u + logsumexp(u)")


# ---- the functions users call -------------------------------------------------------------

def softmax(x: Tensor, axis: Any = -1) -> Tensor:
    """exp(x) / sum(exp(x)) over `axis`, computed with the max trick."""
    return apply("softmax", x, axes=normalize_axes(axis, x.ndim))


def log_softmax(x: Tensor, axis: Any = -1) -> Tensor:
    """x - logsumexp(x) over `axis`, computed stably."""
    return apply("log_softmax", x, axes=normalize_axes(axis, x.ndim))


def logsumexp(x: Tensor, axis: Any = -1, keepdims: bool = False) -> Tensor:
    """log(sum(exp(x))) over `axis`, with the max trick."""
    return apply("logsumexp", x, axes=normalize_axes(axis, x.ndim), keepdims=bool(keepdims))


def softmax_cross_entropy(logits: Tensor, onehot: Any) -> Tensor:
    """Mean over rows of the cross-entropy between softmax(logits) and the target rows."""
    return apply("softmax_cross_entropy", logits, onehot)


def _per_row_mean(per_element: Tensor) -> Tensor:
    """Sum of every element divided by the number of rows (axis 0)."""
    if per_element.ndim == 0:
        raise ShapeError(f"{per_element.name}: losses need a batch axis (axis 0)")
    return div(sum(per_element), count(per_element, (0,)))


def binary_cross_entropy(logits: Tensor, y: Any) -> Tensor:
    """Mean over rows of sum over columns of y log(1+e^-u) + (1-y) log(1+e^u), from logits:
    written softplus(u) - y u, which never overflows."""
    return _per_row_mean(sub(softplus(logits), mul(y, logits)))


def mse(pred: Tensor, y: Any) -> Tensor:
    """Mean over rows of 0.5 * the row's sum of (pred - y)^2 (the lecture's L)."""
    return mul(0.5, _per_row_mean(square(sub(pred, y))))


def batch_norm(x: Tensor, gamma: Any, beta: Any, training: bool = True, eps: float = 1e-5,
               mean: Any = None, var: Any = None) -> Tensor:
    """gamma * (x - mu) / sqrt(var + eps) + beta over axis 0. Training: mu and the biased var
    are the batch's (and gradients flow through them); else the given `mean` and `var`."""
    if training:
        mu = _mean(x, 0, keepdims=True)
        centred = sub(x, mu)
        var = _mean(square(centred), 0, keepdims=True)
    else:
        if mean is None or var is None:
            raise ShapeError(f"{x.name}: batch_norm with training=False needs mean= and var=")
        centred = sub(x, mean)
        var = lift(x.graph, var, x.dtype)
    return add(mul(gamma, div(centred, sqrt(add(var, float(eps))))), beta)
