"""Reductions: sum, mean, max over axes (None, an int or a tuple), with numpy's keepdims."""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from cgraph.ops.array import batch_axes, broadcast_to, expand_dims, shape_like, shift_axes
from cgraph.ops.elementwise import cast, div, equal, mul
from cgraph.ops.registry import MEAN, SAME, SAME_NUMERIC, ZERO, Attr, Unbatched, define, rule
from cgraph.patterns import Dims, Pattern
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


def _max_share(out: Tensor, x: Tensor, axes: tuple[int, ...], keepdims: bool) -> Tensor:
    """1/k at each of the k elements that reach the max (ties share), 0 elsewhere."""
    hit = cast(equal(x, unreduce(out, x, axes, keepdims)), x.dtype)
    return div(hit, sum(hit, axes, keepdims=True))


_max = define("max", _reduce_kernel(np.maximum), inputs=("x",), shape=reduce_shape, dtype=SAME, attrs=REDUCE_ATTRS,
              batch=batch_axes("max"), pattern=reduce_pattern,
              jvp=(lambda t, out, x, *, axes, keepdims:
                   sum(mul(t, _max_share(out, x, axes, keepdims)), axes, keepdims),),
              vjp=(lambda g, out, x, *, axes, keepdims: mul(unreduce(g, x, axes, keepdims),
                                                            _max_share(out, x, axes, keepdims)),),
              doc="the largest element over `axes` (numpy.max)",
              grad_doc="to the elements that reach the max; where k of them tie, each gets 1/k")


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
