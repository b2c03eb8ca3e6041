"""Static shapes and dtypes: what shape rules see of a value, and the rules many ops share.

A static shape is a tuple of sizes, `None` for a size known only at run time (a batch size).
The supported dtypes are float64, float32, float16, int64, int32, int16, int8, uint8 and bool
(bfloat16 is not one: numpy has no such dtype). This module sits below the op
registry and the graph, so both can use it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from cgraph.errors import ShapeError

Shape = tuple[int | None, ...]
DTYPES = tuple(np.dtype(d) for d in ("float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint8",
                                      "bool"))
TUPLE = np.dtype(object)  # the dtype of a node whose value is the tuple of its results (control flow)


@dataclass(frozen=True, slots=True)
class Meta:
    """What shape rules see of an input: its static shape and dtype; for the tuple of a
    control-flow node's results (dtype TUPLE, shape (number of results,)), each result's."""

    shape: Shape
    dtype: np.dtype
    parts: tuple[Meta, ...] | None = None

    @property
    def ndim(self) -> int:
        return len(self.shape)


def tuple_meta(parts: tuple[Meta, ...]) -> Meta:
    """The Meta of a tuple of results."""
    return Meta((len(parts),), TUPLE, tuple(parts))


def nbytes(meta: Meta) -> int:
    """The bytes of a value of these concrete shape and dtype (of all its results for a tuple)."""
    if meta.parts is not None:
        return sum(nbytes(p) for p in meta.parts)
    return int(np.prod(cast(tuple[int, ...], meta.shape), dtype=np.int64)) * meta.dtype.itemsize


def as_dtype(dtype: Any) -> np.dtype:
    """The numpy dtype for `dtype`, if cgraph supports it (one of DTYPES)."""
    try:
        dt = np.dtype(dtype)
    except TypeError as e:
        raise ShapeError(f"unknown dtype {dtype!r}") from e
    if dt not in DTYPES:
        raise ShapeError(f"unsupported dtype {dt}; cgraph supports {', '.join(map(str, DTYPES))}")
    return dt


def format_shape(shape: Shape) -> str:
    """A shape as users write it, with None for sizes known only at run time."""
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def broadcast_shapes(*shapes: Shape) -> Shape:
    """numpy broadcasting of static shapes; a None size stands for one that is never 1."""
    if len(shapes) == 2 and shapes[0] == shapes[1]:  # the common case, quickly
        return tuple(shapes[0])
    ndim = max((len(s) for s in shapes), default=0)
    out: list[int | None] = []
    for axis in range(ndim):
        dims = [s[axis - ndim + len(s)] for s in shapes if axis - ndim + len(s) >= 0]
        known = {d for d in dims if d is not None and d != 1}
        if len(known) > 1:
            raise ShapeError("shapes " + " and ".join(format_shape(s) for s in shapes)
                             + " do not broadcast")
        if known:
            out.append(known.pop())
        elif None in dims:
            out.append(None)
        else:
            out.append(1)
    return tuple(out)


def normalize_axes(axis: Any, ndim: int) -> tuple[int, ...]:
    """`axis` (None, int or tuple, negatives allowed) as a sorted tuple of non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = []
    for a in axes:
        if isinstance(a, (bool, np.bool_)) or not isinstance(a, (int, np.integer)) or not -ndim <= a < ndim:
            raise ShapeError(f"axis {a!r} is out of range for {ndim} dimensions")
        out.append(int(a) % ndim)
    if len(set(out)) != len(out):
        raise ShapeError(f"repeated axis in {axis!r}")
    return tuple(sorted(out))


def normalize_index(index: Any) -> tuple:
    """`index` as a tuple of ints, slices (of ints), None and Ellipsis: basic slicing only."""
    items = index if isinstance(index, tuple) else (index,)
    out: list[Any] = []  # ints, slices, None and Ellipsis
    for it in items:
        if isinstance(it, (bool, np.bool_)) or isinstance(it, (np.ndarray, list)) or hasattr(it, "graph"):
            raise ShapeError(f"only basic indexing (ints, slices, None, ...) is supported, got {it!r}")
        if isinstance(it, (int, np.integer)):
            out.append(int(it))
        elif isinstance(it, slice):
            for v in (it.start, it.stop, it.step):
                if v is not None and (not isinstance(v, (int, np.integer)) or isinstance(v, (bool, np.bool_))):
                    raise ShapeError(f"slice bounds must be ints, got {it!r}")
            out.append(slice(*(None if v is None else int(v) for v in (it.start, it.stop, it.step))))
        elif it is None or it is Ellipsis:
            out.append(it)
        else:
            raise ShapeError(f"unsupported index {it!r}")
    return tuple(out)


def index_shape(shape: Shape, index: tuple) -> Shape:
    """The shape of x[index] for numpy basic indexing of a static shape (`index` as
    `normalize_index` gives it). On an axis of unknown size n, a slice has the size it has for
    every large enough n, or None if that grows with n; an integer into such an axis is checked
    at run time."""
    used = sum(1 for it in index if it is not None and it is not Ellipsis)
    if used > len(shape):
        raise ShapeError(f"index {index!r}: too many indices for {len(shape)} dimensions")
    if sum(1 for it in index if it is Ellipsis) > 1:
        raise ShapeError(f"index {index!r}: more than one Ellipsis")
    items: list[Any] = []
    for it in index:
        items.extend([slice(None)] * (len(shape) - used) if it is Ellipsis else [it])
    if Ellipsis not in index:
        items.extend([slice(None)] * (len(shape) - used))
    out: list[int | None] = []
    axis = 0
    for it in items:
        if it is None:
            out.append(1)
            continue
        n = shape[axis]
        axis += 1
        if isinstance(it, slice):
            out.append(_slice_size(n, it))
        elif n is not None and not -n <= it < n:
            raise ShapeError(f"index {it} is out of range for an axis of size {n}")
    return tuple(out)


def _slice_size(n: int | None, s: slice) -> int | None:
    step = 1 if s.step is None else s.step
    if step == 0:
        raise ShapeError("slice step cannot be zero")
    if n is not None:
        return len(range(*s.indices(n)))
    # Each end as (from_end, offset): a position `offset`, or `n + offset` from the end.
    if step > 0:
        start = (False, 0) if s.start is None else (s.start < 0, s.start)
        stop = (True, 0) if s.stop is None else (s.stop < 0, s.stop)
        lo, hi = start, stop
    else:
        start = (True, -1) if s.start is None else (s.start < 0, s.start)
        stop = (False, -1) if s.stop is None else (s.stop < 0, s.stop)
        lo, hi = stop, start
    if lo[0] != hi[0]:  # one end moves with n: the slice grows with it, or is empty
        return None if hi[0] else 0
    return max(0, -(-(hi[1] - lo[1]) // abs(step)))


__all__ = ["DTYPES", "TUPLE", "Meta", "Shape", "nbytes", "tuple_meta",
           "as_dtype", "broadcast_shapes", "format_shape", "normalize_axes",
           "index_shape", "normalize_index"]
