"""The ops of neural networks: softmax, log_softmax, logsumexp (stable, with the max trick),
the losses (a scalar: the mean over rows, axis 0, of a per-row sum), batch normalisation and
dropout (convolution and pooling are in cgraph.ops.conv).

softmax_cross_entropy is `nll(log_softmax(u), y)`, so that its gradient reuses the forward's
log-probabilities; binary_cross_entropy, mse and batch_norm are built from other ops.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

import numpy as np

from cgraph.errors import BatchingError, ShapeError
from cgraph.ops.array import batch_axes, broadcast_batch
from cgraph.ops.elementwise import add, cast, div, exp, mul, neg, softplus, sqrt, square, sub
from cgraph.ops.reduce import REDUCE_ATTRS, count, reduce_keep, reduce_pattern, reduce_shape, sum, unreduce
from cgraph.ops.reduce import mean as _mean
from cgraph.ops.registry import NONDIFF, SAME_FLOAT, Attr, DtypeRule, Operand, define, graph_of, lift, lift_all, rule
from cgraph.patterns import Dims, Pattern, union
from cgraph.shapes import Meta, Shape, normalize_axes

if TYPE_CHECKING:
    from cgraph.graph import Tensor


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


def _over_axes(x: Meta, *, axes: tuple[int, ...]) -> Shape:
    """x's shape; every entry of `axes` is in [-ndim, ndim), with no repeats."""
    normalize_axes(axes, x.ndim)
    return x.shape


AXES = {"axes": Attr("ints", doc="the axes normalised over")}


def _group_pattern(out: Dims, x: Pattern, *, axes: tuple[int, ...]) -> Pattern:
    """each output element depends on every input element of its group along `axes`"""
    return x.reduce(axes, keepdims=True).broadcast(out)

_softmax_op = define(
    "softmax", _softmax, inputs=("x",), shape=_over_axes, dtype=SAME_FLOAT, attrs=AXES,
    batch=batch_axes("softmax"), pattern=_group_pattern,
    jvp=(lambda t, out, x, *, axes: mul(out, sub(t, sum(mul(t, out), axes, keepdims=True))),),
    vjp=(lambda g, out, x, *, axes: mul(out, sub(g, sum(mul(g, out), axes, keepdims=True))),),
    doc="exp(x) / sum(exp(x)) over `axes`, computed with the max trick",
    grad_doc="out * (t - sum(t * out)) over `axes`, for a tangent or a cotangent t")
_log_softmax_op = define(
    "log_softmax", _log_softmax, inputs=("x",), shape=_over_axes, dtype=SAME_FLOAT, attrs=AXES,
    batch=batch_axes("log_softmax"), pattern=_group_pattern,
    jvp=(lambda t, out, x, *, axes: sub(t, sum(mul(exp(out), t), axes, keepdims=True)),),
    vjp=(lambda g, out, x, *, axes: sub(g, mul(exp(out), sum(g, axes, keepdims=True))),),
    doc="x - logsumexp(x) over `axes`, computed stably",
    grad_doc="JVP: t - sum(exp(out) t); VJP: g - exp(out) sum(g), sums over `axes`")
_logsumexp_op = define(
    "logsumexp", _logsumexp, inputs=("x",), shape=reduce_shape, dtype=SAME_FLOAT, attrs=REDUCE_ATTRS,
    batch=batch_axes("logsumexp"), pattern=reduce_pattern,
    jvp=(lambda t, out, x, *, axes, keepdims: sum(mul(t, softmax(x, axes)), axes, keepdims),),
    vjp=(lambda g, out, x, *, axes, keepdims: mul(unreduce(g, x, axes, keepdims), softmax(x, axes)),),
    doc="log(sum(exp(x))) over `axes`, with the max trick",
    grad_doc="softmax(x) over `axes`: JVP sum(t softmax(x)); VJP g softmax(x)")


# ---- cross-entropy from log-probabilities: -sum(y * logp) / rows ----------------------------

def _rows_shape(logp: Meta, y: Meta) -> Shape:
    """() (a scalar); logp has at least 2 dimensions (rows, classes...) and y has logp's
    number of dimensions, with sizes that agree where both are known."""
    if logp.ndim < 2:
        raise ShapeError("logits need a batch axis and a class axis (N, C)")
    if y.ndim != logp.ndim or any(a is not None and b is not None and a != b
                                  for a, b in zip(logp.shape, y.shape, strict=True)):
        raise ShapeError("targets must have the shape of the logits")
    return ()


def _nll_dtype(dtypes: Any, attrs: Any) -> np.dtype:
    if dtypes[0].kind != "f":
        raise ShapeError(f"needs float log-probabilities, got {dtypes[0]}")
    if dtypes[1] == np.bool_:
        raise ShapeError("needs number targets, got bool")
    return dtypes[0]


def _nll(logp: np.ndarray, y: np.ndarray) -> np.ndarray:
    return logp.dtype.type(-np.vdot(y, logp) / logp.shape[0])


def _per_row(t: Tensor, other: Tensor, logp: Tensor) -> Tensor:
    """The tangent of -sum(t * other) / rows."""
    return neg(div(sum(mul(t, other)), count(logp, (0,))))


def _scaled(other: Tensor, g: Tensor, logp: Tensor) -> Tensor:
    """other * -g / rows: the cotangent of the factor that `other` multiplies."""
    return mul(other, neg(div(g, count(logp, (0,)))))


def _nll_batch(batched: tuple[bool, ...], logp: Tensor, y: Tensor) -> Tensor:
    """-sum(y * logp) over each example's axes, divided by its rows: built from mul, sum and div"""
    rows = logp.shape[1] if batched[0] else logp.shape[0]
    ref = logp if batched[0] else y
    total = sum(mul(y, logp), tuple(range(1, ref.ndim)))
    n = float(rows) if rows is not None else count(logp, (1,) if batched[0] else (0,))
    out = neg(div(total, n))
    return out if out.dtype == logp.dtype else cast(out, logp.dtype)


def _nll_pattern(out: Dims, logp: Pattern, y: Pattern) -> Pattern:
    """the scalar depends on every element of both inputs"""
    return union(logp.reduce(range(len(logp.shape))), y.reduce(range(len(y.shape))))


_nll_op = define(
    "nll", _nll, inputs=("logp", "y"), shape=_rows_shape, batch=_nll_batch, pattern=_nll_pattern,
    dtype=DtypeRule("logp's dtype, which MUST be a float; y MUST NOT be bool", _nll_dtype),
    jvp=(lambda t, out, logp, y: _per_row(t, y, logp), lambda t, out, logp, y: _per_row(t, logp, logp)),
    vjp=(lambda g, out, logp, y: _scaled(y, g, logp), lambda g, out, logp, y: _scaled(logp, g, logp)),
    doc="the mean over rows (axis 0) of -sum(y * logp): cross-entropy from log-probabilities",
    grad_doc="d/dlogp = -y / rows, d/dy = -logp / rows")


# ---- dropout: a mask that is a function of the seed ----------------------------------------

def _dropout_shape(x: Meta, seed: Meta, *, rate: float) -> Shape:
    """x's shape; the seed is a scalar (shape ()), or a vector of a seed per row (axis 0) of x;
    0 <= `rate` < 1."""
    if seed.ndim > 1 or (seed.ndim == 1 and (x.ndim == 0 or None not in (x.shape[0], seed.shape[0])
                                            and x.shape[0] != seed.shape[0])):
        raise ShapeError(f"the seed must be a scalar or one per row of x, got shape {seed.shape}")
    if not 0.0 <= rate < 1.0:
        raise ShapeError(f"rate must be in [0, 1), got {rate}")
    return x.shape


def _dropout_dtype(dtypes: Any, attrs: Any) -> np.dtype:
    if dtypes[0].kind != "f":
        raise ShapeError(f"needs a float input, got {dtypes[0]}")
    if dtypes[1] != np.int64:
        raise ShapeError(f"the seed must be int64, got {dtypes[1]}")
    return dtypes[0]


def _dropout_kernel(x: np.ndarray, seed: np.ndarray, *, rate: float) -> np.ndarray:
    out = np.empty_like(x)
    np.multiply(x, x.dtype.type(1.0 / (1.0 - rate)), out=out)
    if seed.ndim:  # a seed per row: each row's mask as a row alone with that seed would get
        for i, s in enumerate(seed):
            out[i, ...][_drop(s, x.shape[1:], rate)] = 0  # (out[i, ...]: a view, also of a 0-d row)
        return out
    out[_drop(seed, x.shape, rate)] = 0
    return out


def _drop(seed: np.ndarray, shape: tuple[int, ...], rate: float) -> np.ndarray:
    """Where the mask zeroes: uniform float64 draws of default_rng(seed) below `rate`."""
    return np.random.default_rng(int(seed) % 2**64).random(shape) < rate


def _dropout_batch(batched: tuple[bool, ...], x: Tensor, seed: Tensor, *, rate: float) -> Tensor:
    """the op itself with a seed per example (the one seed repeated, if it is not batched)"""
    if seed.ndim - batched[1] > 0:
        raise BatchingError("dropout: a seed per row of each example cannot be batched")
    if not batched[0]:
        x = broadcast_batch(x, seed)
    return _dropout(x, seed if batched[1] else broadcast_batch(seed, x), rate=rate)


_dropout = define(
    "dropout", _dropout_kernel, inputs=("x", "seed"), shape=_dropout_shape,
    dtype=DtypeRule("the first input's dtype, which MUST be float64 or float32; the seed MUST be int64",
                    _dropout_dtype),
    attrs={"rate": Attr("float", doc="the probability that an element is zeroed, in [0, 1)")},
    scratch=lambda x, seed, *, rate: int(np.prod(x.shape[1:] if seed.shape else x.shape)) * 9,  # the uniform
    #                                                              draws (float64) and the mask, of x or of a row
    batch=_dropout_batch, pattern=rule("each output element depends on its element of x (exact where kept)",
                                       lambda out, x, seed, *, rate: x),
    jvp=(lambda t, out, x, seed, *, rate: _dropout(t, seed, rate=rate), NONDIFF),
    vjp=(lambda g, out, x, seed, *, rate: _dropout(g, seed, rate=rate), NONDIFF),
    doc="x with each element zeroed with probability `rate` and the others divided by 1 - rate; the "
        "elements zeroed are those where numpy's default_rng(seed mod 2 ** 64) draws uniform numbers "
        "(random(), float64, one per element in C order) below `rate`: the same seed and shape give the same mask; "
        "with a seed per row (axis 0), each row is masked as that row alone with its seed",
    grad_doc="linear in x: the same op, with the same seed (hence the same mask), on the tangent or cotangent")


def dropout(x: Tensor, rate: float, seed: Any, training: bool = True) -> Tensor:
    """x with each element zeroed with probability `rate` and the others scaled by 1 / (1 - rate)
    when `training`, else x itself. `seed` (an int64 scalar input, or an int made a constant)
    fixes the mask: the same seed gives the same mask, in the forward sweep, the backward sweep
    and every run; use different seeds for different layers and steps."""
    if not training:
        return x
    if not isinstance(seed, Operand):
        seed = x.graph.constant(None, np.int64(operator.index(seed)))
    return _dropout(x, seed, rate=float(rate))


# ---- the functions users call -------------------------------------------------------------

def softmax(x: Tensor, axis: Any = -1) -> Tensor:
    """exp(x) / sum(exp(x)) over `axis`, computed with the max trick."""
    return _softmax_op(x, axes=normalize_axes(axis, x.ndim))


def log_softmax(x: Tensor, axis: Any = -1) -> Tensor:
    """x - logsumexp(x) over `axis`, computed stably."""
    return _log_softmax_op(x, axes=normalize_axes(axis, x.ndim))


def logsumexp(x: Tensor, axis: Any = -1, keepdims: bool = False) -> Tensor:
    """log(sum(exp(x))) over `axis`, with the max trick."""
    return _logsumexp_op(x, axes=normalize_axes(axis, x.ndim), keepdims=bool(keepdims))


def softmax_cross_entropy(logits: Tensor, onehot: Any) -> Tensor:
    """Mean over rows of the cross-entropy between softmax(logits) and the target rows:
    -sum(y * log_softmax(u)) / rows, i.e. -y.u + logsumexp(u) for rows of y that sum to one.

    Built as `nll(log_softmax(u), y)`, a node named softmax_cross_entropy: the backward sweep
    reuses the forward's log-probabilities (softmax(u) = exp(log_softmax(u))), so the gradient
    wrt the logits, the lecture's softmax(u) - y for one-hot rows, costs a few elementwise steps.
    """
    g = graph_of("softmax_cross_entropy", (logits, onehot))
    logits, y = lift_all(g, (logits, onehot))
    logp = log_softmax(logits, -1)
    return g.add_node("nll", [logp.name, y.name], name=g.fresh_name("softmax_cross_entropy"))


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
