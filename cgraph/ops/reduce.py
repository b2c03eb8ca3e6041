"""Reductions: sum, mean, max, min, prod over axes (None, an int or a tuple), with numpy's
keepdims; argmax; cumsum along an axis."""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from cgraph.ops.array import batch_axes, broadcast_to, expand_dims, reshape, shape_like, shift_axes
from cgraph.ops.elementwise import cast, div, equal, mul, where
from cgraph.ops.registry import INT64, MEAN, NONDIFF, SAME, SAME_NUMERIC, ZERO, Attr, Unbatched, define, rule
from cgraph.patterns import Dims, Pattern, union
from cgraph.shapes import Meta, Shape, normalize_axes

if TYPE_CHECKING:
    from cgraph.graph import Tensor

SMALL = 8  # up to this many elements along the last axis, a max loops over the columns


def reduce_keep(x: np.ndarray, axes: tuple[int, ...], ufunc: np.ufunc) -> np.ndarray:
    """`ufunc.reduce` over `axes`, keeping them. numpy reduces along a short contiguous last
    axis slowly (several us for 3 classes), so there a float sum is a product with ones (BLAS)
    and a max a few elementwise calls over the columns."""
    if axes == (x.ndim - 1,) and x.shape[-1] > 1 and x.dtype.kind == "f":
        if ufunc is np.add:
            return x @ _ones(x.shape[-1], x.dtype)
        if x.shape[-1] <= SMALL and x.ndim > 1:
            r = ufunc(x[..., 0], x[..., 1])
            for c in range(2, x.shape[-1]):
                ufunc(r, x[..., c], out=r)
            return r[..., None]
    return ufunc.reduce(x, axis=axes, keepdims=True)


@functools.lru_cache(maxsize=64)
def _ones(n: int, dtype: np.dtype) -> np.ndarray:
    ones = np.ones((n, 1), dtype)
    ones.flags.writeable = False
    return ones


def _reduce_kernel(ufunc: np.ufunc) -> Any:
    def kernel(x: np.ndarray, *, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
        r = reduce_keep(x, axes, ufunc) if x.ndim else ufunc.reduce(x, axis=axes, keepdims=True)
        return r if keepdims else np.squeeze(r, axis=axes)
    return kernel


def reduce_shape(x: Meta, *, axes: tuple[int, ...], keepdims: bool = False) -> Shape:
    """REDUCE of x's shape over `axes`."""
    axes = normalize_axes(axes, x.ndim)
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(x.shape))
    return tuple(d for i, d in enumerate(x.shape) if i not in axes)


REDUCE_ATTRS = {"axes": Attr("ints", doc="the axes reduced"), "keepdims": Attr("bool", False)}


def reduce_pattern(out: Dims, x: Pattern, *, axes: tuple[int, ...], keepdims: bool) -> Pattern:
    """each output element depends on the input elements reduced into it"""
    return x.reduce(axes, keepdims)


def unreduce(g: Tensor, x: Tensor, axes: tuple[int, ...], keepdims: bool) -> Tensor:
    """g, the result of reducing x over `axes`, with the reduced axes put back as size 1."""
    return g if keepdims or not axes else expand_dims(g, axes)


def count(x: Tensor, axes: tuple[int, ...]) -> float | Tensor:
    """How many elements of x each reduction over `axes` sees: a number when the sizes are
    static, else a `dim_size` node computed at run time."""
    sizes = [x.shape[a] for a in axes]
    if None in sizes:
        return _dim_size(x, axes=axes)
    return float(np.prod(sizes))  # type: ignore[arg-type]  # no None: checked above


def _scalar_shape(x: Meta, **attrs: Any) -> Shape:
    """() (a scalar); every entry of `axes` is in [-ndim, ndim), with no repeats."""
    normalize_axes(attrs["axes"], x.ndim)
    return ()


_dim_size = define(
    "dim_size", lambda x, *, axes: x.dtype.type(math.prod([x.shape[a] for a in axes])), inputs=("x",),
    shape=_scalar_shape, dtype=SAME, attrs={"axes": Attr("ints", doc="the axes whose sizes multiply")},
    jvp=(ZERO,), vjp=(ZERO,), eager=True, grad_doc="zero",
    batch=rule("the count of one example (the same for all), its `axes` moved past the batch axis",
               lambda batched, x, *, axes: Unbatched(_dim_size(x, axes=shift_axes(axes, x.ndim - 1)))),
    doc="the number of elements along `axes` at run time, as a scalar of x's dtype")

_sum_kernel = _reduce_kernel(np.add)
_sum = define("sum", _sum_kernel, inputs=("x",), shape=reduce_shape, dtype=SAME_NUMERIC, attrs=REDUCE_ATTRS,
              batch=batch_axes("sum"), pattern=reduce_pattern,
              jvp=(lambda t, out, x, *, axes, keepdims: sum(t, axes, keepdims),),
              vjp=(lambda g, out, x, *, axes, keepdims:
                   broadcast_to(unreduce(g, x, axes, keepdims), shape_like(x)),),
              doc="the sum over `axes` (numpy.sum); a bool x is summed by `cg.sum` after a cast to int64",
              grad_doc="JVP: the sum of the tangent; VJP: the cotangent broadcast back over the reduced axes")


def _mean_kernel(x: np.ndarray, *, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
    if x.dtype.kind != "f":  # ints and bools average as float64, as numpy's mean
        x = x.astype(np.float64)
    return _sum_kernel(x, axes=axes, keepdims=keepdims) / math.prod(x.shape[a] for a in axes)


_mean = define("mean", _mean_kernel, inputs=("x",), shape=reduce_shape, dtype=MEAN, attrs=REDUCE_ATTRS,
               batch=batch_axes("mean"), pattern=reduce_pattern,
               jvp=(lambda t, out, x, *, axes, keepdims: mean(t, axes, keepdims),),
               vjp=(lambda g, out, x, *, axes, keepdims:
                    broadcast_to(unreduce(div(g, count(x, axes)), x, axes, keepdims), shape_like(x)),),
               doc="the mean over `axes` (numpy.mean; ints and bools average as float64)",
               grad_doc="JVP: the mean of the tangent; VJP: the cotangent / count, broadcast back")


def _share(out: Tensor, x: Tensor, axes: tuple[int, ...], keepdims: bool) -> Tensor:
    """1/k at each of the k elements that reach the extremum `out` (ties share), 0 elsewhere."""
    hit = cast(equal(x, unreduce(out, x, axes, keepdims)), x.dtype)
    return div(hit, sum(hit, axes, keepdims=True))


def _extremum(name: str, ufunc: np.ufunc, word: str) -> Any:
    return define(
        name, _reduce_kernel(ufunc), inputs=("x",), shape=reduce_shape, dtype=SAME, attrs=REDUCE_ATTRS,
        batch=batch_axes(name), pattern=reduce_pattern,
        jvp=(lambda t, out, x, *, axes, keepdims: sum(mul(t, _share(out, x, axes, keepdims)), axes, keepdims),),
        vjp=(lambda g, out, x, *, axes, keepdims: mul(unreduce(g, x, axes, keepdims), _share(out, x, axes, keepdims)),),
        doc=f"the {word} element over `axes` (numpy.{name})",
        grad_doc=f"to the elements that reach the {name}; where k of them tie, each gets 1/k")


_max = _extremum("max", np.maximum, "largest")
_min = _extremum("min", np.minimum, "smallest")


# ---- prod: a gradient that is right where elements are zero ---------------------------------

def _prod_others(x: Tensor, axes: tuple[int, ...]) -> Tensor:
    """For each element of x, the product of the other elements of its reduction (x's shape),
    without dividing by zero: with p the product of the nonzero elements and n the number of
    zeros, it is p / x where n = 0; p at the zero where n = 1, 0 at the others; 0 where n > 1.
    Written as where(zero, [n = 1] p, p / x' * q), x' = x with zeros as 1 and q the product of
    the zero elements (1 or 0), so its own derivatives are right too wherever n <= 1."""
    zero = equal(x, 0)
    nonzero = where(zero, 1, x)
    p = prod(nonzero, axes, keepdims=True)
    n = sum(zero, axes, keepdims=True)
    q = prod(where(zero, x, 1), axes, keepdims=True)
    return where(zero, where(equal(n, 1), p, 0), mul(div(p, nonzero), q))


_prod = define(
    "prod", _reduce_kernel(np.multiply), inputs=("x",), shape=reduce_shape, dtype=SAME_NUMERIC, attrs=REDUCE_ATTRS,
    batch=batch_axes("prod"), pattern=reduce_pattern,
    jvp=(lambda t, out, x, *, axes, keepdims: sum(mul(t, _prod_others(x, axes)), axes, keepdims),),
    vjp=(lambda g, out, x, *, axes, keepdims: mul(unreduce(g, x, axes, keepdims), _prod_others(x, axes)),),
    doc="the product over `axes` (numpy.prod); a bool x is multiplied by `cg.prod` after a cast to int64",
    grad_doc="each element's partial is the product of the others in its reduction, computed without division "
             "where elements are zero (second derivatives too, where at most one element of a reduction is zero)")


# ---- argmax, cumsum ---------------------------------------------------------------------------

def reduce_one_axis(out: Dims, x: Pattern, *, axis: int, keepdims: bool) -> Pattern:
    """each output element depends on the input elements along `axis` at its position"""
    return x.reduce((axis,), keepdims)


def _argmax_shape(x: Meta, *, axis: int, keepdims: bool) -> Shape:
    """REDUCE of x's shape over (`axis`,)."""
    return reduce_shape(x, axes=(axis,), keepdims=keepdims)


def _argmax_kernel(x: np.ndarray, *, axis: int, keepdims: bool) -> np.ndarray:
    return np.asarray(np.argmax(x, axis=axis, keepdims=keepdims), dtype=np.int64)


_argmax = define(
    "argmax", _argmax_kernel, inputs=("x",), shape=_argmax_shape, dtype=INT64,
    attrs={"axis": Attr("int", doc="the axis searched"), "keepdims": Attr("bool", False)},
    jvp=(NONDIFF,), vjp=(NONDIFF,), pattern=reduce_one_axis,
    batch=rule("the op itself, its `axis` moved past the batch axis",
               lambda batched, x, *, axis, keepdims: _argmax(x, axis=shift_axes(axis, x.ndim - 1)[0],
                                                             keepdims=keepdims)),
    doc="the index of the largest element along `axis` (numpy.argmax: the first one where several tie); int64")


def _cumsum_shape(x: Meta, *, axis: int, reverse: bool) -> Shape:
    """x's shape; `axis` is in [-ndim, ndim) (x has at least one dimension)."""
    normalize_axes(axis, x.ndim)
    return x.shape


def _cumsum_pattern(out: Dims, x: Pattern, *, axis: int, reverse: bool) -> Pattern:
    """each output element depends on the input elements summed into it: those at or before it
    along `axis` (at or after it, `reverse`) (exact)"""
    index = np.moveaxis(x.index(), axis, -1)
    n = index.shape[-1]
    parts = []
    for k in range(n):  # the input element k places before (after) each output element
        src = np.full(index.shape, -1, np.int64)
        if reverse:
            src[..., :n - k] = index[..., k:]
        else:
            src[..., k:] = index[..., :n - k]
        parts.append(x.gather(np.moveaxis(src, -1, axis)))
    return union(*parts) if parts else x


def _cumsum_kernel(x: np.ndarray, *, axis: int, reverse: bool) -> np.ndarray:
    if not reverse:
        return np.cumsum(x, axis=axis)
    flip = (slice(None),) * (axis % x.ndim) + (slice(None, None, -1),)
    out = np.empty_like(x, order="C")
    np.cumsum(x[flip], axis=axis, out=out[flip])
    return out


_cumsum = define(
    "cumsum", _cumsum_kernel, inputs=("x",), shape=_cumsum_shape, dtype=SAME_NUMERIC,
    attrs={"axis": Attr("int", doc="the axis summed along"),
           "reverse": Attr("bool", False, doc="sum from the end: out[i] = x[i] + x[i+1] + ...")},
    batch=rule("the op itself, its `axis` moved past the batch axis",
               lambda batched, x, *, axis, reverse: _cumsum(x, axis=shift_axes(axis, x.ndim - 1)[0], reverse=reverse)),
    pattern=_cumsum_pattern,
    jvp=(lambda t, out, x, *, axis, reverse: _cumsum(t, axis=axis, reverse=reverse),),
    vjp=(lambda g, out, x, *, axis, reverse: _cumsum(g, axis=axis, reverse=not reverse),),
    doc="the running sum along `axis` (numpy.cumsum), from the start or (`reverse`) from the end",
    grad_doc="JVP: the running sum of the tangent; VJP: the running sum of the cotangent the other way")


def _reduction(op: Any, x: Tensor, axis: Any, keepdims: bool) -> Tensor:
    return op(x, axes=normalize_axes(axis, x.ndim), keepdims=bool(keepdims))


def sum(x: Tensor, axis: Any = None, keepdims: bool = False) -> Tensor:  # noqa: A001
    """Sum over `axis` (None: all), as numpy.sum (bools are counted as int64)."""
    if x.dtype == np.bool_:
        x = cast(x, np.int64)
    return _reduction(_sum, x, axis, keepdims)


def mean(x: Tensor, axis: Any = None, keepdims: bool = False) -> Tensor:
    """Mean over `axis` (None: all), as numpy.mean."""
    return _reduction(_mean, x, axis, keepdims)


def max(x: Tensor, axis: Any = None, keepdims: bool = False) -> Tensor:  # noqa: A001
    """Max over `axis` (None: all), as numpy.max; ties share the derivative."""
    return _reduction(_max, x, axis, keepdims)


def min(x: Tensor, axis: Any = None, keepdims: bool = False) -> Tensor:  # noqa: A001
    """Min over `axis` (None: all), as numpy.min; ties share the derivative."""
    return _reduction(_min, x, axis, keepdims)


def prod(x: Tensor, axis: Any = None, keepdims: bool = False) -> Tensor:
    """Product over `axis` (None: all), as numpy.prod (bools are multiplied as int64); its
    gradient is right where elements are zero."""
    if x.dtype == np.bool_:
        x = cast(x, np.int64)
    return _reduction(_prod, x, axis, keepdims)


def argmax(x: Tensor, axis: int | None = -1, keepdims: bool = False) -> Tensor:
    """The int64 index of the largest element along `axis` (None: of the flattened x), as
    numpy.argmax (the first of ties); no derivative."""
    if axis is None:
        return _argmax(reshape(x, (-1,)), axis=0, keepdims=False)
    (ax,) = normalize_axes(axis, x.ndim)
    return _argmax(x, axis=ax, keepdims=bool(keepdims))


def cumsum(x: Tensor, axis: int | None = None, reverse: bool = False) -> Tensor:
    """The running sum along `axis` (None: of the flattened x), as numpy.cumsum (bools are
    summed as int64); `reverse` sums from the end."""
    if x.dtype == np.bool_:
        x = cast(x, np.int64)
    if axis is None:
        x, axis = reshape(x, (-1,)), 0
    (ax,) = normalize_axes(axis, x.ndim)
    return _cumsum(x, axis=ax, reverse=bool(reverse))
