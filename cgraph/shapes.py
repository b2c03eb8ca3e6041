"""Static shapes and dtypes: what shape rules see of a value, and the rules many ops share.

A static shape is a tuple of sizes, `None` for a size known only at run time (a batch size).
The supported dtypes are float64, float32, int64 and bool. This module sits below the op
registry and the graph, so both can use it without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from cgraph.errors import ShapeError

Shape = tuple[int | None, ...]
DTYPES = tuple(np.dtype(d) for d in ("float64", "float32", "int64", "bool"))


@dataclass(frozen=True, slots=True)
class Meta:
    """What shape rules see of an input: its static shape and dtype."""

    shape: Shape
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)


def as_dtype(dtype: Any) -> np.dtype:
    """The numpy dtype for `dtype`, if cgraph supports it (float64, float32, int64, bool)."""
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
    out = []
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


def static_with_sentinels(fn: Callable[[tuple[int, ...]], tuple[int, ...]], shape: Shape) -> Shape:
    """Run a shape computation on concrete sizes twice, with two different stand-ins for each
    None, and keep as static only the output sizes that do not depend on them."""
    # stand-ins divisible by every size up to 16, so that reshapes like (None, 6) -> (4, -1) work
    s1 = tuple(720_720 * 1009 if d is None else d for d in shape)
    s2 = tuple(720_720 * 1013 if d is None else d for d in shape)
    r1, r2 = fn(s1), fn(s2)
    return tuple(a if a == b else None for a, b in zip(r1, r2, strict=True))


__all__ = ["DTYPES", "Meta", "Shape", "as_dtype", "broadcast_shapes", "format_shape", "normalize_axes",
           "normalize_index", "static_with_sentinels"]
