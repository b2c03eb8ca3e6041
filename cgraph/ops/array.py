"""Ops that multiply matrices or move elements: matmul, transpose, reshape, broadcasting,
concat, basic indexing, and the shape-only helpers the derivative rules need.

Where a derivative rule needs a shape that is only known at run time (a batch size), it uses
`shape_like(x)`: the static shape when every size is known, else a `shape_of(x)` node, a tiny
int64 vector computed right after x so that x itself need not be kept for the backward sweep.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cgraph.errors import DerivativeError, ShapeError
from cgraph.graph import Meta, Shape, Tensor
from cgraph.ops.registry import (
    NONDIFF,
    apply,
    broadcast_shapes,
    define,
    normalize_axes,
    static_with_sentinels,
)

# ---- matmul -------------------------------------------------------------------------------

def _matmul_infer(a: Meta, b: Meta) -> tuple[Shape, np.dtype]:
    if a.ndim < 2 or b.ndim < 2:
        raise ShapeError("matmul needs 2-D (or batched) operands; reshape vectors to matrices")
    k1, k2 = a.shape[-1], b.shape[-2]
    if k1 is not None and k2 is not None and k1 != k2:
        raise ShapeError(f"inner sizes {k1} and {k2} differ")
    batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return (*batch, a.shape[-2], b.shape[-1]), np.result_type(a.dtype, b.dtype)


def matrix_transpose(x: Tensor) -> Tensor:
    """Swap the last two axes."""
    axes = list(range(x.ndim))
    axes[-2], axes[-1] = axes[-1], axes[-2]
    return transpose(x, axes)


define("matmul", np.matmul, _matmul_infer,
       jvp=(lambda t, out, a, b: matmul(t, b), lambda t, out, a, b: matmul(a, t)),
       vjp=(lambda g, out, a, b: matmul(g, matrix_transpose(b)),
            lambda g, out, a, b: matmul(matrix_transpose(a), g)))


# ---- transpose ----------------------------------------------------------------------------

def _transpose_infer(x: Meta, *, axes: tuple[int, ...]) -> tuple[Shape, np.dtype]:
    if sorted(axes) != list(range(x.ndim)):
        raise ShapeError(f"axes {tuple(axes)} are not a permutation of {x.ndim} dimensions")
    return tuple(x.shape[a] for a in axes), x.dtype


define("transpose", lambda x, *, axes: x.transpose(axes), _transpose_infer, view=True,
       jvp=(lambda t, out, x, *, axes: transpose(t, axes),),
       vjp=(lambda g, out, x, *, axes: transpose(g, tuple(np.argsort(axes).tolist())),))


# ---- shapes known at run time ------------------------------------------------------------

define("shape_of", lambda x: np.array(x.shape, dtype=np.int64),
       lambda x: ((x.ndim,), np.dtype(np.int64)), jvp=(NONDIFF,), vjp=(NONDIFF,), eager=True, gives_shape=True,
       doc="the run-time shape of x, for rules that need a size only known then")


def shape_like(x: Tensor) -> tuple[int, ...] | Tensor:
    """x's shape: static if every size is known, else a `shape_of(x)` node."""
    if None in x.shape:
        return apply("shape_of", x)
    return tuple(x.shape)  # type: ignore[arg-type]


def _with_shape(op: str, x: Tensor, shape: Any, **attrs: Any) -> Tensor:
    """Build an op that takes a target shape: static as an attribute, or a shape_of node (then
    the attribute keeps the static shape, with None, for shape inference)."""
    if isinstance(shape, Tensor):
        src = shape.graph[shape.node.inputs[0]] if shape.op == "shape_of" else None
        static = src.shape if src is not None else (None,) * (shape.shape[0] or 0)
        return apply(op, x, shape, shape=tuple(static), **attrs)
    return apply(op, x, shape=tuple(int(d) for d in shape), **attrs)


def _check_shape_input(s: Meta | None) -> None:
    if s is not None and (s.dtype != np.int64 or s.ndim != 1):
        raise ShapeError("a run-time shape must be a 1-D int64 tensor")


# ---- reshape ------------------------------------------------------------------------------

def _reshape_sizes(src: tuple[int, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    total = int(np.prod(src))
    if shape.count(-1) > 1 or any(d < -1 for d in shape):
        raise ShapeError(f"bad target shape {shape}")
    known = int(np.prod([d for d in shape if d != -1]))
    if -1 in shape:
        if known == 0 or total % known:
            raise ShapeError(f"cannot reshape {total} elements into {shape}")
        return tuple(total // known if d == -1 else d for d in shape)
    if known != total:
        raise ShapeError(f"cannot reshape {total} elements into {shape}")
    return shape


def _reshape_infer(x: Meta, s: Meta | None = None, *, shape: tuple) -> tuple[Shape, np.dtype]:
    _check_shape_input(s)
    if s is not None:
        return tuple(shape), x.dtype
    if None not in x.shape:
        return _reshape_sizes(x.shape, tuple(shape)), x.dtype  # type: ignore[arg-type]
    if -1 not in shape:  # sizes are given; run time checks the element count
        return tuple(shape), x.dtype
    return static_with_sentinels(lambda d: _reshape_sizes(d, tuple(shape)), x.shape), x.dtype


def _reshape_kernel(x: np.ndarray, s: np.ndarray | None = None, *, shape: tuple) -> np.ndarray:
    return np.reshape(x, shape if s is None else tuple(s.tolist()))


define("reshape", _reshape_kernel, _reshape_infer, view=True, shape_arg=True,
       jvp=(lambda t, out, x, *s, shape: apply("reshape", t, *s, shape=shape), NONDIFF),
       vjp=(lambda g, out, x, *s, shape: reshape(g, shape_like(x)), NONDIFF),
       doc="a view where numpy can make one, else a copy")


# ---- broadcasting and its transpose ------------------------------------------------------

def _broadcast_infer(x: Meta, s: Meta | None = None, *, shape: tuple) -> tuple[Shape, np.dtype]:
    _check_shape_input(s)
    if len(shape) < x.ndim:
        raise ShapeError(f"cannot broadcast to fewer dimensions ({len(shape)})")
    out = broadcast_shapes(x.shape, tuple(shape))
    if tuple(out) != tuple(shape) and s is None:
        raise ShapeError(f"cannot broadcast to {tuple(shape)}")
    return tuple(shape), x.dtype


def _broadcast_kernel(x: np.ndarray, s: np.ndarray | None = None, *, shape: tuple) -> np.ndarray:
    return np.broadcast_to(x, shape if s is None else tuple(s.tolist()))


def _sum_to_infer(x: Meta, s: Meta | None = None, *, shape: tuple) -> tuple[Shape, np.dtype]:
    _check_shape_input(s)
    lead = x.ndim - len(shape)
    if lead < 0:
        raise ShapeError(f"cannot sum to more dimensions ({len(shape)})")
    for d, t in zip(x.shape[lead:], shape, strict=True):
        if t not in (1, None) and d not in (t, None):
            raise ShapeError(f"cannot sum to {tuple(shape)}")
    if s is not None:  # the run-time shape decides; in a prediction `shape` is already concrete
        return tuple(shape), x.dtype
    # a None in the target is a size that is not summed: x's own (known once x's is)
    return tuple(d if t is None else t for d, t in zip(x.shape[lead:], shape, strict=True)), x.dtype


def _sum_to_kernel(x: np.ndarray, s: np.ndarray | None = None, *, shape: tuple) -> np.ndarray:
    if s is not None:
        shape = tuple(s.tolist())
    lead = x.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, d in enumerate(shape)
                                      if d == 1 and x.shape[lead + i] != 1)
    r = np.add.reduce(x, axis=axes, keepdims=True)
    return r.reshape(r.shape[lead:]) if lead else r


define("broadcast_to", _broadcast_kernel, _broadcast_infer, view=True, shape_arg=True,
       jvp=(lambda t, out, x, *s, shape: apply("broadcast_to", t, *s, shape=shape), NONDIFF),
       vjp=(lambda g, out, x, *s, shape: sum_to_like(g, x), NONDIFF),
       doc="a read-only view of x repeated to `shape`")
define("sum_to", _sum_to_kernel, _sum_to_infer, shape_arg=True,
       jvp=(lambda t, out, x, *s, shape: apply("sum_to", t, *s, shape=shape), NONDIFF),
       vjp=(lambda g, out, x, *s, shape: broadcast_to(g, shape_like(x)), NONDIFF),
       doc="sum over the axes that broadcasting to `shape` added (the VJP of broadcasting); "
           "with a run-time shape, also over a size that is 1 only at run time")


def _axes_infer(x: Meta, *, axes: tuple[int, ...], insert: bool) -> tuple[Shape, np.dtype]:
    shape = list(x.shape)
    if insert:
        for a in axes:
            shape.insert(a, 1)
    else:
        if any(x.shape[a] not in (1, None) for a in axes):
            raise ShapeError(f"cannot squeeze axes {axes}: sizes are not 1")
        shape = [d for i, d in enumerate(shape) if i not in axes]
    return tuple(shape), x.dtype


define("expand_dims", lambda x, *, axes: np.expand_dims(x, axes),
       lambda x, *, axes: _axes_infer(x, axes=axes, insert=True), view=True,
       jvp=(lambda t, out, x, *, axes: expand_dims(t, axes),),
       vjp=(lambda g, out, x, *, axes: squeeze(g, axes),))
define("squeeze", lambda x, *, axes: np.squeeze(x, axes),
       lambda x, *, axes: _axes_infer(x, axes=axes, insert=False), view=True,
       jvp=(lambda t, out, x, *, axes: squeeze(t, axes),),
       vjp=(lambda g, out, x, *, axes: expand_dims(g, axes),))


# ---- concat -------------------------------------------------------------------------------

def _concat_infer(*xs: Meta, axis: int) -> tuple[Shape, np.dtype]:
    if not xs:
        raise ShapeError("concat needs at least one tensor")
    ndim = xs[0].ndim
    if any(x.ndim != ndim for x in xs):
        raise ShapeError("concat needs tensors of the same number of dimensions")
    (ax,) = normalize_axes(axis, ndim)
    out: list[int | None] = []
    for i in range(ndim):
        dims = [x.shape[i] for x in xs]
        if i == ax:
            out.append(None if None in dims else sum(dims))  # type: ignore[arg-type]
        else:
            known = {d for d in dims if d is not None}
            if len(known) > 1:
                raise ShapeError(f"sizes {dims} differ along axis {i}")
            out.append(known.pop() if known else None)
    return tuple(out), np.result_type(*(x.dtype for x in xs))


def _concat_vjp(g: Tensor, out: Tensor, *xs: Tensor, index: int, axis: int) -> Tensor:
    (ax,) = normalize_axes(axis, out.ndim)
    sizes = [x.shape[ax] for x in xs]
    if None in sizes[: index + 1]:
        raise DerivativeError(f"{out.name} (concat): the derivative needs static sizes along "
                              f"axis {ax}, got {sizes}")
    start = sum(sizes[:index])  # type: ignore[arg-type]
    idx = (slice(None),) * ax + (slice(start, start + sizes[index]),)
    return getitem(g, idx)


def _concat_jvp(tangents: list, out: Tensor, *xs: Tensor, axis: int) -> Tensor:
    return concat([t if t is not None else zeros_like(x) for t, x in zip(tangents, xs, strict=True)],
                  axis=axis)


define("concat", lambda *xs, axis: np.concatenate(xs, axis=axis), _concat_infer, variadic=True,
       jvp=_concat_jvp, vjp=(_concat_vjp,))


# ---- basic indexing -----------------------------------------------------------------------

def normalize_index(index: Any) -> tuple:
    """`index` as a tuple of ints, slices (of ints), None and Ellipsis: basic slicing only."""
    items = index if isinstance(index, tuple) else (index,)
    out = []
    for it in items:
        if isinstance(it, (bool, np.bool_)) or isinstance(it, (Tensor, np.ndarray, list)):
            raise ShapeError(f"only basic indexing (ints, slices, None, ...) is supported, got {it!r}")
        if isinstance(it, (int, np.integer)):
            out.append(int(it))
        elif isinstance(it, slice):
            for v in (it.start, it.stop, it.step):
                if v is not None and not isinstance(v, (int, np.integer)):
                    raise ShapeError(f"slice bounds must be ints, got {it!r}")
            out.append(slice(*(None if v is None else int(v) for v in (it.start, it.stop, it.step))))
        elif it is None or it is Ellipsis:
            out.append(it)
        else:
            raise ShapeError(f"unsupported index {it!r}")
    return tuple(out)


def _index_shape(shape: tuple[int, ...], index: tuple) -> tuple[int, ...]:
    dummy = np.lib.stride_tricks.as_strided(np.zeros(1), shape=shape, strides=(0,) * len(shape))
    try:
        return dummy[index].shape
    except (IndexError, TypeError, ValueError) as e:
        raise ShapeError(f"index {index!r}: {e}") from None


def _getitem_infer(x: Meta, *, index: tuple) -> tuple[Shape, np.dtype]:
    return static_with_sentinels(lambda s: _index_shape(s, index), x.shape), x.dtype


def _scatter_infer(g: Meta, s: Meta | None = None, *, shape: tuple, index: tuple) -> tuple[Shape, np.dtype]:
    _check_shape_input(s)
    return tuple(shape), g.dtype


def _scatter_kernel(g: np.ndarray, s: np.ndarray | None = None, *, shape: tuple, index: tuple) -> np.ndarray:
    out = np.zeros(shape if s is None else tuple(s.tolist()), dtype=g.dtype)
    out[index] = g
    return out


define("getitem", lambda x, *, index: x[index], _getitem_infer, view=True,
       jvp=(lambda t, out, x, *, index: getitem(t, index),),
       vjp=(lambda g, out, x, *, index: _with_shape("scatter", g, shape_like(x), index=index),))
define("scatter", _scatter_kernel, _scatter_infer, shape_arg=True,
       jvp=(lambda t, out, g, *s, shape, index: apply("scatter", t, *s, shape=shape, index=index), NONDIFF),
       vjp=(lambda c, out, g, *s, shape, index: getitem(c, index), NONDIFF),
       doc="zeros of `shape` with `g` written at `index` (the VJP of getitem)")


# ---- the functions users call -------------------------------------------------------------

def matmul(a: Any, b: Any) -> Tensor:
    """a @ b for matrices, or stacks of them (batch axes broadcast)."""
    return apply("matmul", a, b)


def transpose(x: Tensor, axes: Any = None) -> Tensor:
    """Permute axes (default: reverse them), as numpy.transpose; a view."""
    axes = tuple(range(x.ndim))[::-1] if axes is None else tuple(int(a) for a in axes)
    return apply("transpose", x, axes=axes)


def reshape(x: Tensor, shape: Any) -> Tensor:
    """x with a new shape (one size may be -1); a view where numpy can make one."""
    return _with_shape("reshape", x, shape)


def broadcast_to(x: Any, shape: Any) -> Tensor:
    """x repeated along axes of size 1 (and new leading axes) to `shape`; a read-only view."""
    return _with_shape("broadcast_to", x, shape)


def sum_to(x: Tensor, shape: Shape | Tensor) -> Tensor:
    """Sum x down to `shape`, which x broadcasts from: static (None sizes are left alone), or
    a `shape_of` node, whose run-time sizes say which axes broadcasting stretched."""
    if not isinstance(shape, Tensor) and tuple(x.shape) == tuple(shape):
        return x
    return _with_shape("sum_to", x, shape)


def sum_to_like(g: Tensor, x: Tensor) -> Tensor:
    """g summed back to x's shape, which it was broadcast from: a cotangent to its input. A
    None size of x may be 1 at run time and stretched, so then the run-time shape decides."""
    if tuple(g.shape) == tuple(x.shape):
        return g
    return sum_to(g, shape_like(x) if None in x.shape else x.shape)


def expand_dims(x: Tensor, axes: Any) -> Tensor:
    """Insert axes of size 1 at the positions `axes` of the result."""
    axes = normalize_axes(axes, x.ndim + len(axes if isinstance(axes, tuple) else (axes,)))
    return apply("expand_dims", x, axes=axes)


def squeeze(x: Tensor, axes: Any) -> Tensor:
    """Remove axes of size 1."""
    return apply("squeeze", x, axes=normalize_axes(axes, x.ndim))


def concat(xs: Any, axis: int = 0) -> Tensor:
    """Join tensors along an existing axis."""
    xs = list(xs)
    if not xs:
        raise ShapeError("concat needs at least one tensor")
    return apply("concat", *xs, axis=int(axis))


def getitem(x: Tensor, index: Any) -> Tensor:
    """x[index] for basic indexing (ints, slices, None, ...); a view."""
    return apply("getitem", x, index=normalize_index(index))


def zeros_like(x: Tensor) -> Tensor:
    """Zeros of x's shape and dtype: a read-only broadcast of one stored zero."""
    zero = x.graph.constant(x.graph._fresh("zero").rsplit("/", 1)[-1], np.zeros((), x.dtype))
    return broadcast_to(zero, shape_like(x))
