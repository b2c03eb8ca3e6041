"""Ops that multiply matrices or move elements: matmul, transpose, reshape, broadcasting,
concat, basic indexing, gathering along an axis (take, one_hot), and the shape-only helpers the
derivative rules need.

Where a derivative rule needs a shape that is only known at run time (a batch size), it uses
`shape_like(x)`: the static shape when every size is known, else a `shape_of(x)` node, a tiny
int64 vector computed right after x so that x itself need not be kept for the backward sweep.

The helpers that batching rules share (`batch_elementwise`, `batch_axes`, `batched_shape`,
`broadcast_batch`) live here too, beside the ops they build with: a batched value has its
batch axis first, and a shape with the batch size known only at run time is an int64 vector
built from `shape_of`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from cgraph.errors import BatchingError, DerivativeError, ShapeError
from cgraph.ops.registry import (
    DTYPES,
    INT64,
    NONDIFF,
    NUMERIC,
    PROMOTE,
    SAME,
    SAME_NUMERIC,
    Arg,
    Attr,
    DtypeRule,
    Operand,
    Unbatched,
    apply,
    define,
    passthrough,
    rule,
)
from cgraph.patterns import Dims, Pattern, union
from cgraph.shapes import (
    Meta,
    Shape,
    as_dtype,
    broadcast_shapes,
    index_shape,
    normalize_axes,
    normalize_index,
)

if TYPE_CHECKING:
    from cgraph.graph import Tensor

# ---- batching helpers (cg.vmap): a batched value has its batch axis first -----------------

def lift_rank(x: Tensor, rank: int) -> Tensor:
    """Batched x with axes of size 1 inserted after the batch axis, so that each example has
    `rank` axes (numpy broadcasting then pairs it with unbatched values as the example was)."""
    extra = rank - (x.ndim - 1)
    return _expand_dims(x, axes=tuple(range(1, 1 + extra))) if extra > 0 else x


def batch_elementwise(op: str) -> Any:
    """The batching rule of an elementwise op."""
    def rule(batched: tuple[bool, ...], *xs: Tensor, **attrs: Any) -> Tensor:
        rank = max(x.ndim - b for x, b in zip(xs, batched, strict=True))
        return apply(op, *[lift_rank(x, rank) if b else x for x, b in zip(xs, batched, strict=True)], **attrs)
    rule.__doc__ = ("ELEMENTWISE: the op itself, each batched input given axes of size 1 after its batch axis "
                    "up to the output's rank")
    return rule


def batch_axes(op: str) -> Any:
    """The batching rule of an op of one input with an `axes` attribute (reductions, softmax)."""
    def rule(batched: tuple[bool, ...], x: Tensor, **attrs: Any) -> Tensor:
        return apply(op, x, **{**attrs, "axes": shift_axes(attrs["axes"], x.ndim - 1)})
    rule.__doc__ = "the op itself, its `axes` moved past the batch axis"
    return rule


def shift_axes(axes: Any, ndim: int) -> tuple[int, ...]:
    """Axes of an example of `ndim` axes, as axes of the batch."""
    return tuple(a + 1 for a in normalize_axes(axes, ndim))


def batched_shape(ref: Tensor, per_example: Any, static: Shape) -> tuple[Tensor | None, Shape]:
    """(batch size of ref,) + per_example, as an op with a `sizes` input takes it: (None, the
    static shape) when every size is known, else (an int64 vector computed at run time, the
    static sizes). `per_example` is a shape or an int64 vector (whose static sizes are
    `static`)."""
    size = ref.shape[0]
    full = (size, *static)
    if not isinstance(per_example, Operand) and None not in full:
        return None, full
    g = ref.graph
    head = g.constant(None, np.array([size], np.int64)) if size is not None else \
        getitem(_shape_of(ref), (slice(0, 1),))
    tail = per_example if isinstance(per_example, Operand) else g.constant(None, np.array(per_example, np.int64))
    return _concat(head, tail, axis=0), full


def shaped(op: str, x: Tensor, sizes: Tensor | None, static: Shape, **attrs: Any) -> Tensor:
    """An op with a target shape: static, or the run-time `sizes` (the attribute keeping the
    static sizes)."""
    if sizes is None:
        return apply(op, x, shape=tuple(static), **attrs)
    return apply(op, x, sizes, shape=tuple(static), **attrs)


def broadcast_batch(u: Tensor, ref: Tensor) -> Tensor:
    """u, the same for every example, repeated along a leading batch axis of ref's batch size
    (a read-only view)."""
    per = _shape_of(u) if None in u.shape else tuple(u.shape)
    sizes, static = batched_shape(ref, per, u.shape)
    return shaped("broadcast_to", _expand_dims(u, axes=(0,)), sizes, static)


def sizes_of(t: Tensor, axes: Sequence[int]) -> int | Tensor:
    """The product of t's sizes along `axes`: an int, or an int64 vector of one entry computed
    at run time where a size is known only then."""
    if None not in (known := [t.shape[a] for a in axes]):
        return math.prod(known)  # type: ignore[arg-type]
    dims, out = _shape_of(t), None
    for a in axes:
        piece = getitem(dims, (slice(a, a + 1),))
        out = piece if out is None else apply("mul", out, piece)
    return out  # type: ignore[return-value]


def reshaped(x: Tensor, sizes: Sequence[int | Tensor]) -> Tensor:
    """x reshaped to `sizes` (ints, or run-time int64 vectors of one entry)."""
    if all(isinstance(d, int) for d in sizes):
        return _reshape(x, shape=tuple(sizes))
    parts = [d if isinstance(d, Operand) else x.graph.constant(None, np.array([d], np.int64)) for d in sizes]
    return _reshape(x, _concat(*parts, axis=0), shape=tuple(d if isinstance(d, int) else None for d in sizes))


def _sizes_unbatched(batched: tuple[bool, ...], op: str) -> None:
    if len(batched) > 1 and batched[1]:
        raise BatchingError(f"{op}: a target shape that differs from example to example cannot be batched")


def moves(kernel: Any) -> Any:
    """The pattern rule of an op that moves elements: its kernel applied to element indices."""
    def rule(out: Dims, x: Pattern, **attrs: Any) -> Pattern:
        return x.moved(lambda i: kernel(i, **attrs))
    rule.__doc__ = "MOVES: each output element is the input element the kernel puts there (exact)"
    return rule


# ---- matmul -------------------------------------------------------------------------------

def _matmul_shape(a: Meta, b: Meta) -> Shape:
    """Both inputs have at least 2 dimensions; a's last size and b's second-to-last agree
    (where both are known); the leading (batch) axes BROADCAST; the result is batch + (a's
    second-to-last size, b's last size)."""
    if a.ndim < 2 or b.ndim < 2:
        raise ShapeError("matmul needs 2-D (or batched) operands; reshape vectors to matrices")
    k1, k2 = a.shape[-1], b.shape[-2]
    if k1 is not None and k2 is not None and k1 != k2:
        raise ShapeError(f"inner sizes {k1} and {k2} differ")
    batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return (*batch, a.shape[-2], b.shape[-1])


def matrix_transpose(x: Tensor) -> Tensor:
    """Swap the last two axes."""
    axes = list(range(x.ndim))
    axes[-2], axes[-1] = axes[-1], axes[-2]
    return transpose(x, axes)


def _matmul_batch(batched: tuple[bool, ...], a: Tensor, b: Tensor) -> Tensor:
    """matmul of the stacks, batch axis first; a batch times one matrix is one product with the
    batch folded into the rows (when the example's sizes are static), and a product over an
    inner size of 1 is a broadcast multiplication (along the longer of the result's last two axes)"""
    ba, bb = batched
    if ba and not bb and b.ndim == 2 and None not in a.shape[1:] and b.shape[-1] is not None \
            and math.prod(a.shape[1:]) > 0:  # type: ignore[arg-type]
        flat = matmul(reshape(a, (-1, a.shape[-1])), b)
        return reshape(flat, (-1, *a.shape[1:-1], b.shape[-1]))
    rank = max(a.ndim - ba, b.ndim - bb)
    a = lift_rank(a, rank) if ba else a
    b = lift_rank(b, rank) if bb else b
    if a.shape[-1] == 1 and b.shape[-2] == 1:
        m, n = a.shape[-2], b.shape[-1]
        if m is not None and n is not None and m > n:  # numpy multiplies fastest along a long last axis
            return matrix_transpose(apply("mul", matrix_transpose(b), matrix_transpose(a)))
        return apply("mul", a, b)
    return matmul(a, b)


def _matmul_pattern(out: Dims, a: Pattern, b: Pattern) -> Pattern:
    """each output element depends on its row of a and its column of b"""
    return union(a.reduce((-1,), keepdims=True).broadcast(out), b.reduce((-2,), keepdims=True).broadcast(out))


matmul = define(
    "matmul", np.matmul, inputs=("a", "b"), shape=_matmul_shape, dtype=NUMERIC,
    batch=_matmul_batch, pattern=_matmul_pattern,
    jvp=(lambda t, out, a, b: matmul(t, b), lambda t, out, a, b: matmul(a, t)),
    vjp=(lambda g, out, a, b: matmul(g, matrix_transpose(b)), lambda g, out, a, b: matmul(matrix_transpose(a), g)),
    doc="a @ b for matrices, or stacks of them (numpy.matmul; the batch axes broadcast)",
    grad_doc="JVP: t_a @ b + a @ t_b; VJP: g @ b^T to a, a^T @ g to b (transposing the last two axes)")


# ---- transpose ----------------------------------------------------------------------------

def _transpose_shape(x: Meta, *, axes: tuple[int, ...]) -> Shape:
    """`axes` is a permutation of 0 .. ndim-1; output axis i is x's axis axes[i]."""
    if sorted(axes) != list(range(x.ndim)):
        raise ShapeError(f"axes {tuple(axes)} are not a permutation of {x.ndim} dimensions")
    return tuple(x.shape[a] for a in axes)


def _transpose_identity(node: Any, args: list[Arg]) -> str | None:
    """A transpose of a transpose that together permute nothing is the inner input."""
    src = args[0]
    if src.op == "transpose":
        perm = tuple(src.attrs["axes"][i] for i in node.attrs["axes"])
        if perm == tuple(range(len(perm))):
            return src.inputs[0]
    return None


def _transpose_batch(batched: tuple[bool, ...], x: Tensor, *, axes: tuple[int, ...]) -> Tensor:
    """the batch axis stays first, the others are permuted as in an example"""
    return _transpose(x, axes=(0, *(a + 1 for a in axes)))


_transpose = define(
    "transpose", lambda x, *, axes: x.transpose(axes), inputs=("x",), shape=_transpose_shape, dtype=SAME,
    attrs={"axes": Attr("ints", doc="a permutation of the axes")}, view=True,
    jvp=(lambda t, out, x, *, axes: transpose(t, axes),),
    vjp=(lambda g, out, x, *, axes: transpose(g, tuple(np.argsort(axes).tolist())),),
    identity=_transpose_identity, doc="the axes permuted (numpy.transpose); a view",
    batch=_transpose_batch, pattern=moves(lambda x, *, axes: x.transpose(axes)),
    grad_doc="JVP: the tangent permuted alike; VJP: the cotangent by the inverse permutation")


# ---- shapes known at run time ------------------------------------------------------------

def _shape_of_shape(x: Meta) -> Shape:
    """(ndim,): one entry per axis of x."""
    return (x.ndim,)


def _shape_of_batch(batched: tuple[bool, ...], x: Tensor) -> Unbatched:
    """the shape of one example (the same for all): a constant, or the run-time shape without
    its first entry"""
    if None not in x.shape[1:]:
        return Unbatched(x.graph.constant(None, np.array(x.shape[1:], np.int64)))
    return Unbatched(getitem(_shape_of(x), (slice(1, None),)))


_shape_of = define("shape_of", lambda x: np.array(x.shape, dtype=np.int64), inputs=("x",), shape=_shape_of_shape,
                   dtype=INT64, jvp=(NONDIFF,), vjp=(NONDIFF,), eager=True, gives_shape=True, batch=_shape_of_batch,
                   doc="the run-time shape of x, for rules that need a size only known then")


def shape_like(x: Tensor) -> tuple[int, ...] | Tensor:
    """x's shape: static if every size is known, else a `shape_of(x)` node."""
    if None in x.shape:
        return _shape_of(x)
    return tuple(x.shape)  # type: ignore[arg-type]


def _with_shape(op: str, x: Tensor, shape: Any, **attrs: Any) -> Tensor:
    """Build an op that takes a target shape: static as an attribute, or a shape_of node (then
    the attribute keeps the static shape, with None, for shape inference)."""
    if isinstance(shape, Operand):
        shape = cast("Tensor", shape)  # the only Operand there is
        src = shape.graph[shape.node.inputs[0]] if shape.op == "shape_of" else None
        static = src.shape if src is not None else (None,) * (shape.shape[0] or 0)
        return apply(op, x, shape, shape=tuple(static), **attrs)
    return apply(op, x, shape=tuple(int(d) for d in shape), **attrs)


SHAPE_INPUT = ("x", "sizes?")  # sizes: the target shape computed at run time (shape_of)
SHAPE_ATTR = {"shape": Attr("dims", doc="the target shape (with a `sizes` input: its static sizes, None where "
                                        "known only at run time)")}


def _check_shape_input(s: Meta | None, shape: tuple) -> None:
    if s is not None and (s.dtype != np.int64 or s.ndim != 1):
        raise ShapeError("a run-time shape must be a 1-D int64 tensor")
    if s is not None and s.shape[0] is not None and s.shape[0] != len(shape):
        raise ShapeError(f"the shape input has {s.shape[0]} entries, the attribute shape {len(shape)}")
    if s is not None and any(d is not None and d < 0 for d in shape):
        raise ShapeError(f"bad target shape {tuple(shape)}: with a shape input, its static sizes are >= 0 or None")


# ---- reshape ------------------------------------------------------------------------------

def _reshape_shape(x: Meta, s: Meta | None = None, *, shape: tuple) -> Shape:
    """With a `sizes` input, `shape`, whose element count MUST equal x's when neither has a None.
    Else every entry of `shape` is an integer >= -1, at most one
    is -1, and none is None. Let K be the product of x's known sizes and k the product of
    `shape`'s entries other than -1. When x's sizes are all known, K is its element count: with
    a -1, k MUST NOT be 0 and MUST divide K, and the -1 becomes K / k; without, k MUST equal K.
    When some size of x is None: with a -1, k MUST NOT be 0, and the -1 becomes 0 if K is 0,
    else None; without, k MUST be a multiple of K (0 if K is 0).
    The `sizes` input, when given, MUST be a 1-D int64 tensor of len(`shape`) entries (where
    its size is known), and `shape` then has no negative size."""
    _check_shape_input(s, shape)
    if s is not None:
        if None not in shape and None not in x.shape and \
                math.prod(cast(tuple[int, ...], shape)) != math.prod(cast(tuple[int, ...], x.shape)):
            raise ShapeError(f"cannot reshape {_elements(x)} into {tuple(shape)}")
        return tuple(shape)
    if None in shape or shape.count(-1) > 1 or any(d < -1 for d in shape):
        raise ShapeError(f"bad target shape {tuple(shape)}")
    K = math.prod(d for d in x.shape if d is not None)
    k = math.prod(d for d in shape if d != -1)
    known = None not in x.shape
    if -1 in shape:
        if k == 0 or (known and K % k):
            raise ShapeError(f"cannot reshape {_elements(x)} into {tuple(shape)}")
        rest = K // k if known else (0 if K == 0 else None)
        return tuple(rest if d == -1 else d for d in shape)
    if (known and k != K) or (not known and (k != 0 if K == 0 else k % K)):
        raise ShapeError(f"cannot reshape {_elements(x)} into {tuple(shape)}")
    return tuple(shape)


def _elements(x: Meta) -> str:
    if None in x.shape:
        known = math.prod(d for d in x.shape if d is not None)
        return f"a multiple of {known} elements"
    return f"{math.prod(x.shape)} elements"  # type: ignore[arg-type]


def _reshape_kernel(x: np.ndarray, s: np.ndarray | None = None, *, shape: tuple) -> np.ndarray:
    return np.reshape(x, shape if s is None else tuple(s.tolist()))


def _reshape_batch(batched: tuple[bool, ...], x: Tensor, *s: Tensor, shape: tuple) -> Tensor:
    """the batched input reshaped to (batch size,) + an example's target shape"""
    _sizes_unbatched(batched, "reshape")
    if s:
        return shaped("reshape", x, *batched_shape(x, s[0], shape))
    per = _reshape_shape(Meta(x.shape[1:], x.dtype), shape=shape)
    if None not in per and math.prod(per) > 0:  # type: ignore[arg-type]
        return _reshape(x, shape=(-1, *per))
    # an example's size known only at run time: the target shape of the first example
    sizes = _shape_of(reshape(getitem(x, (0,)), shape)) if None in per else per
    return shaped("reshape", x, *batched_shape(x, sizes, per))


_reshape = define(
    "reshape", _reshape_kernel, inputs=SHAPE_INPUT, shape=_reshape_shape, dtype=SAME, attrs=SHAPE_ATTR, view=True,
    batch=_reshape_batch, pattern=rule("MOVES: each output element is the input element at its position in C order "
                                       "(exact)", lambda out, x, *s, shape: x.moved(lambda i: i.reshape(out))),
    shape_arg=True, jvp=(lambda t, out, x, *s, shape: _reshape(t, *s, shape=shape), NONDIFF),
    vjp=(lambda g, out, x, *s, shape: reshape(g, shape_like(x)), NONDIFF), identity=passthrough(static=True),
    doc="x with a new shape (numpy.reshape, C order): a view where numpy can make one, else a copy",
    grad_doc="JVP: the tangent reshaped alike; VJP: the cotangent reshaped back to x's shape")


# ---- broadcasting and its transpose ------------------------------------------------------

def _broadcast_shape(x: Meta, s: Meta | None = None, *, shape: tuple) -> Shape:
    """`shape`, which has at least x's number of dimensions, and x's shape and `shape` MUST
    BROADCAST. Without a `sizes` input, `shape` has no None and no negative size, and BROADCAST
    of x's shape and `shape` MUST be `shape`.
    The `sizes` input, when given, MUST be a 1-D int64 tensor of len(`shape`) entries (where
    its size is known), and `shape` then has no negative size."""
    _check_shape_input(s, shape)
    if len(shape) < x.ndim:
        raise ShapeError(f"cannot broadcast to fewer dimensions ({len(shape)})")
    if s is None and (None in shape or any(d < 0 for d in shape)):
        raise ShapeError(f"bad target shape {tuple(shape)}")
    out = broadcast_shapes(x.shape, tuple(shape))
    if tuple(out) != tuple(shape) and s is None:
        raise ShapeError(f"cannot broadcast to {tuple(shape)}")
    return tuple(shape)


def _broadcast_kernel(x: np.ndarray, s: np.ndarray | None = None, *, shape: tuple) -> np.ndarray:
    return np.broadcast_to(x, shape if s is None else tuple(s.tolist()))


def _sum_to_shape(x: Meta, s: Meta | None = None, *, shape: tuple) -> Shape:
    """`shape` has no negative size and at most x's number of dimensions; aligned at the right,
    each of its sizes is 1, None, or x's size (where known). The result is `shape`, where a None
    takes x's size (a size that is not summed); with a `sizes` input, `shape` itself.
    The `sizes` input, when given, MUST be a 1-D int64 tensor of len(`shape`) entries (where
    its size is known)."""
    _check_shape_input(s, shape)
    lead = x.ndim - len(shape)
    if lead < 0:
        raise ShapeError(f"cannot sum to more dimensions ({len(shape)})")
    if any(t is not None and t < 0 for t in shape):
        raise ShapeError(f"bad target shape {tuple(shape)}")
    for d, t in zip(x.shape[lead:], shape, strict=True):
        if t not in (1, None) and d not in (t, None):
            raise ShapeError(f"cannot sum to {tuple(shape)}")
    if s is not None:  # the run-time shape decides; in a prediction `shape` is already concrete
        return tuple(shape)
    # a None in the target is a size that is not summed: x's own (known once x's is)
    return tuple(d if t is None else t for d, t in zip(x.shape[lead:], shape, strict=True))


def _sum_to_kernel(x: np.ndarray, s: np.ndarray | None = None, *, shape: tuple) -> np.ndarray:
    if s is not None:
        shape = tuple(s.tolist())
    lead = x.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, d in enumerate(shape)
                                      if d == 1 and x.shape[lead + i] != 1)
    r = np.add.reduce(x, axis=axes, keepdims=True)
    return r.reshape(r.shape[lead:]) if lead else r


def _broadcast_batch(batched: tuple[bool, ...], x: Tensor, *s: Tensor, shape: tuple) -> Tensor:
    """the batched input, given axes of size 1 after its batch axis up to the target's rank,
    broadcast to (batch size,) + the target shape"""
    _sizes_unbatched(batched, "broadcast_to")
    x = lift_rank(x, len(shape))
    return shaped("broadcast_to", x, *batched_shape(x, s[0] if s else shape, shape))


def _sum_to_batch(batched: tuple[bool, ...], x: Tensor, *s: Tensor, shape: tuple) -> Tensor:
    """the batched input summed to (batch size,) + (1,) * (the example's leading axes that the
    sum removes) + the target shape; those axes are then squeezed"""
    _sizes_unbatched(batched, "sum_to")
    lead = (x.ndim - 1) - len(shape)
    ones = (1,) * lead
    if s:
        per = _concat(x.graph.constant(None, np.ones(lead, np.int64)), s[0], axis=0) if lead else s[0]
        out = shaped("sum_to", x, *batched_shape(x, per, ones + tuple(shape)))
    else:
        out = _sum_to(x, shape=(x.shape[0], *ones, *shape))
    return squeeze(out, tuple(range(1, 1 + lead))) if lead else out


def _sum_to_pattern(out: Dims, x: Pattern, *s: Pattern, shape: tuple) -> Pattern:
    """each output element depends on the input elements summed into it"""
    return x.group(np.broadcast_to(np.arange(math.prod(out)).reshape(out), x.shape), out)


_broadcast_to = define(
    "broadcast_to", _broadcast_kernel, inputs=SHAPE_INPUT, shape=_broadcast_shape, dtype=SAME, attrs=SHAPE_ATTR,
    view=True, shape_arg=True, batch=_broadcast_batch,
    pattern=rule("MOVES: each output element is the input element broadcasting repeats there (exact)",
                 lambda out, x, *s, shape: x.broadcast(out)),
    jvp=(lambda t, out, x, *s, shape: _broadcast_to(t, *s, shape=shape), NONDIFF),
    vjp=(lambda g, out, x, *s, shape: sum_to_like(g, x), NONDIFF),
    doc="x repeated along axes of size 1 (and new leading axes) to `shape` (numpy.broadcast_to); a read-only view",
    grad_doc="JVP: the tangent broadcast alike; VJP: the cotangent summed back to x's shape (sum_to)")
_sum_to = define(
    "sum_to", _sum_to_kernel, inputs=SHAPE_INPUT, shape=_sum_to_shape, dtype=SAME_NUMERIC, attrs=SHAPE_ATTR,
    shape_arg=True, batch=_sum_to_batch, pattern=_sum_to_pattern,
    jvp=(lambda t, out, x, *s, shape: _sum_to(t, *s, shape=shape), NONDIFF),
    vjp=(lambda g, out, x, *s, shape: broadcast_to(g, shape_like(x)), NONDIFF),
    doc="x summed over the axes that broadcasting to `shape` added or stretched (the VJP of broadcast_to); "
        "with a shape input, also over a size that is 1 only at run time",
    grad_doc="JVP: the tangent summed alike; VJP: the cotangent broadcast back to x's shape")


def _expand_dims_shape(x: Meta, *, axes: tuple[int, ...]) -> Shape:
    """Each entry of `axes` is in [-(ndim + k), ndim + k) for k = len(axes), with no repeats;
    the result has ndim + k axes, size 1 at those positions and x's sizes, in order, elsewhere."""
    new = normalize_axes(axes, x.ndim + len(axes))
    sizes = iter(x.shape)
    return tuple(1 if i in new else next(sizes) for i in range(x.ndim + len(axes)))


def _squeeze_shape(x: Meta, *, axes: tuple[int, ...]) -> Shape:
    """Each entry of `axes` is in [-ndim, ndim), with no repeats, and x's size there is 1 (or
    None: it must be 1 at run time); the result is x's shape without those axes."""
    gone = normalize_axes(axes, x.ndim)
    if any(x.shape[a] not in (1, None) for a in gone):
        raise ShapeError(f"cannot squeeze axes {tuple(axes)}: sizes are not 1")
    return tuple(d for i, d in enumerate(x.shape) if i not in gone)


AXES = {"axes": Attr("ints", doc="the axes")}
def _expand_dims_batch(batched: tuple[bool, ...], x: Tensor, *, axes: tuple[int, ...]) -> Tensor:
    """the op itself, its `axes` (positions in an example's result) moved past the batch axis"""
    return _expand_dims(x, axes=shift_axes(axes, x.ndim - 1 + len(axes)))


_expand_dims = define(
    "expand_dims", lambda x, *, axes: np.expand_dims(x, axes), inputs=("x",), shape=_expand_dims_shape,
    dtype=SAME, attrs=AXES, view=True, batch=_expand_dims_batch,
    pattern=moves(lambda x, *, axes: np.expand_dims(x, axes)),
    jvp=(lambda t, out, x, *, axes: expand_dims(t, axes),), vjp=(lambda g, out, x, *, axes: squeeze(g, axes),),
    doc="x with axes of size 1 inserted at the positions `axes` of the result (numpy.expand_dims); a view",
    grad_doc="JVP: the tangent expanded alike; VJP: the cotangent squeezed back")
_squeeze = define(
    "squeeze", lambda x, *, axes: np.squeeze(x, axes), inputs=("x",), shape=_squeeze_shape, dtype=SAME, attrs=AXES,
    view=True, batch=rule("the op itself, its `axes` moved past the batch axis",
                          lambda batched, x, *, axes: _squeeze(x, axes=shift_axes(axes, x.ndim - 1))),
    pattern=moves(lambda x, *, axes: np.squeeze(x, axes)), jvp=(lambda t, out, x, *, axes: squeeze(t, axes),),
    vjp=(lambda g, out, x, *, axes: expand_dims(g, axes),),
    doc="x without its axes `axes`, each of size 1 (numpy.squeeze); a view",
    grad_doc="JVP: the tangent squeezed alike; VJP: the cotangent expanded back")


# ---- concat -------------------------------------------------------------------------------

def _concat_shape(*xs: Meta, axis: int) -> Shape:
    """The inputs have the same number of dimensions, `axis` is in [-ndim, ndim); along `axis`
    the size is the sum of the inputs' (None if any is None); along every other axis the known
    sizes agree and give the size (None if none is known)."""
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
    return tuple(out)


def _concat_vjp(g: Tensor, out: Tensor, *xs: Tensor, index: int, axis: int) -> Tensor:
    (ax,) = normalize_axes(axis, out.ndim)
    sizes = [x.shape[ax] for x in xs]
    if None in sizes[: index + 1]:
        raise DerivativeError(f"{out.name} (concat): the derivative needs static sizes along "
                              f"axis {ax}, got {sizes}")
    start = sum(sizes[:index])  # type: ignore[arg-type]
    idx = (slice(None),) * ax + (slice(start, start + cast(int, sizes[index])),)
    return getitem(g, idx)


def _concat_jvp(tangents: list, out: Tensor, *xs: Tensor, axis: int) -> Tensor:
    return concat([t if t is not None else zeros_like(x) for t, x in zip(tangents, xs, strict=True)],
                  axis=axis)


def _concat_batch(batched: tuple[bool, ...], *xs: Tensor, axis: int) -> Tensor:
    """the inputs joined along the axis after the batch axis; an input that is the same for
    every example is repeated along the batch first (a view)"""
    ref = next(x for x, b in zip(xs, batched, strict=True) if b)
    (ax,) = normalize_axes(axis, ref.ndim - 1)
    return _concat(*[x if b else broadcast_batch(x, ref) for x, b in zip(xs, batched, strict=True)], axis=ax + 1)


def _concat_pattern(out: Dims, *xs: Pattern, axis: int) -> Pattern:
    """each output element is the one input element it was copied from (exact)"""
    ax = axis % len(out)
    where = np.split(np.arange(math.prod(out)).reshape(out), np.cumsum([x.shape[ax] for x in xs])[:-1], axis=ax)
    return union(*(x.group(w, out) for x, w in zip(xs, where, strict=True)))


_concat = define(
    "concat", lambda *xs, axis: np.concatenate(xs, axis=axis), inputs=("xs+",), shape=_concat_shape, dtype=PROMOTE,
    batch=_concat_batch, pattern=_concat_pattern,
    attrs={"axis": Attr("int", doc="the axis joined along")}, jvp=_concat_jvp, vjp=(_concat_vjp,),
    doc="the inputs joined along `axis` (numpy.concatenate)",
    grad_doc="JVP: the tangents joined alike; VJP: the cotangent's slice of each input's extent along `axis`")


# ---- basic indexing -----------------------------------------------------------------------

def _getitem_shape(x: Meta, *, index: tuple) -> Shape:
    """numpy's basic indexing x[index]: at most ndim integers and slices, at most one Ellipsis
    (standing for as many full slices as the other entries leave); an integer drops its axis
    and MUST be in [-n, n) for a known size n; a slice start:stop:step keeps its axis with
    Python's slice length for a known size; None inserts an axis of size 1; axes after the
    last entry are kept. For an axis of unknown size, a slice's size is the one it has for
    every large enough size, or None if it grows with the size. (Each end is a fixed position
    p, or n + p from the end for a size n: a bound >= 0 is fixed, a negative bound is from the
    end; an omitted start is 0 for a positive step and n - 1 for a negative one, an omitted
    stop n for a positive step and -1, fixed, for a negative one. The upper end is the stop for
    a positive step and the start for a negative one. With both ends fixed or both from the
    end, the size is what Python gives for any n larger than the absolute value of every bound;
    when only the upper end is from the end, None (the slice grows with n: `2:`, `::-1`); when
    only the lower end is, 0 (`-2:5`, `5:-2:-1`).)"""
    return index_shape(x.shape, index)


def _scatter_shape(g: Meta, s: Meta | None = None, *, shape: tuple, index: tuple) -> Shape:
    """`shape`. Without a `sizes` input, `shape` has no None and no negative size. g's shape
    MUST be the shape getitem gives for an input of shape `shape` and `index` (its rule applies
    in full: `index` MUST be valid for `shape`), where both sizes are known.
    The `sizes` input, when given, MUST be a 1-D int64 tensor of len(`shape`) entries (where
    its size is known), and `shape` then has no negative size."""
    _check_shape_input(s, shape)
    if s is None and (None in shape or any(d < 0 for d in shape)):
        raise ShapeError(f"bad target shape {tuple(shape)}")
    want = index_shape(tuple(shape), index)
    if len(want) != g.ndim or any(None not in (d, w) and d != w for d, w in zip(g.shape, want, strict=True)):
        raise ShapeError(f"values of shape {g.shape} do not fit {tuple(shape)}[{index!r}]")
    return tuple(shape)


def _scatter_kernel(g: np.ndarray, s: np.ndarray | None = None, *, shape: tuple, index: tuple) -> np.ndarray:
    out = np.zeros(shape if s is None else tuple(s.tolist()), dtype=g.dtype)
    out[index] = g
    return out


INDEX = Attr("index", doc="a basic index")
def _scatter_batch(batched: tuple[bool, ...], g: Tensor, *s: Tensor, shape: tuple, index: tuple) -> Tensor:
    """zeros of (batch size,) + the target shape, each example's values written at the index"""
    _sizes_unbatched(batched, "scatter")
    return shaped("scatter", g, *batched_shape(g, s[0] if s else shape, shape), index=(slice(None), *index))


def _scatter_pattern(out: Dims, g: Pattern, *s: Pattern, shape: tuple, index: tuple) -> Pattern:
    """each output element is the element of g written there, or nothing (exact)"""
    return g.group(np.arange(math.prod(out)).reshape(out)[index], out)


_getitem = define(
    "getitem", lambda x, *, index: x[index], inputs=("x",), shape=_getitem_shape, dtype=SAME,
    attrs={"index": INDEX}, view=True, pattern=moves(lambda x, *, index: x[index]),
    batch=rule("the op itself, a full slice for the batch axis put before the index",
               lambda batched, x, *, index: _getitem(x, index=(slice(None), *index))),
    jvp=(lambda t, out, x, *, index: getitem(t, index),),
    vjp=(lambda g, out, x, *, index: _with_shape("scatter", g, shape_like(x), index=index),),
    doc="x[index] for numpy basic indexing; a view",
    grad_doc="JVP: the tangent indexed alike; VJP: zeros of x's shape with the cotangent at `index` (scatter)")
_scatter = define(
    "scatter", _scatter_kernel, inputs=("g", "sizes?"), shape=_scatter_shape, dtype=SAME,
    attrs={**SHAPE_ATTR, "index": INDEX}, shape_arg=True, batch=_scatter_batch, pattern=_scatter_pattern,
    jvp=(lambda t, out, g, *s, shape, index: _scatter(t, *s, shape=shape, index=index), NONDIFF),
    vjp=(lambda c, out, g, *s, shape, index: getitem(c, index), NONDIFF),
    doc="zeros of `shape` with g written at `index` (the VJP of getitem)",
    grad_doc="JVP: the tangent scattered alike; VJP: the cotangent indexed by `index`")


# ---- gathering along an axis: take, its VJP scatter_add, one_hot ----------------------------

def _indexed_dtype(dtypes: Any, attrs: Any) -> np.dtype:
    if dtypes[1] != np.int64:
        raise ShapeError(f"indices must be int64, got {dtypes[1]}")
    return dtypes[0]


INDEXED = DtypeRule("the first input's dtype; the indices MUST be int64", _indexed_dtype)


def _take_shape(a: Meta, indices: Meta, *, axis: int) -> Shape:
    """a has at least one dimension and `axis` is in [-ndim, ndim); the result is a's shape with
    that axis replaced by the indices' shape."""
    (ax,) = normalize_axes(axis, a.ndim)
    return (*a.shape[:ax], *indices.shape, *a.shape[ax + 1:])


def _take_kernel(a: np.ndarray, indices: np.ndarray, *, axis: int) -> np.ndarray:
    return np.take(a, indices, axis=axis)


def _take_vjp(g: Tensor, out: Tensor, a: Tensor, indices: Tensor, *, axis: int) -> Tensor:
    (ax,) = normalize_axes(axis, a.ndim)
    if a.shape[ax] is None:
        raise DerivativeError(f"{out.name} (take): the derivative needs the size of axis {ax} of {a.name} "
                              f"known when the graph is built, got {a.shape}")
    return _scatter_add(g, indices, axis=ax, size=a.shape[ax])


def _scatter_add_shape(g: Meta, indices: Meta, *, axis: int, size: int) -> Shape:
    """g has the indices' shape at axes `axis` .. `axis` + indices.ndim - 1 (where known), with
    0 <= `axis` <= g.ndim - indices.ndim; the result is g's shape with those axes replaced by
    one of `size`."""
    k = indices.ndim
    if not 0 <= axis <= g.ndim - k:
        raise ShapeError(f"axis {axis} does not fit indices of {k} dimensions in {g.ndim} dimensions")
    for a, b in zip(g.shape[axis:axis + k], indices.shape, strict=True):
        if a is not None and b is not None and a != b:
            raise ShapeError(f"values of shape {g.shape} do not match indices of shape {indices.shape} at axis {axis}")
    return (*g.shape[:axis], size, *g.shape[axis + k:])


def _scatter_add_kernel(g: np.ndarray, indices: np.ndarray, *, axis: int, size: int) -> np.ndarray:
    out = np.zeros((*g.shape[:axis], size, *g.shape[axis + indices.ndim:]), g.dtype)
    where: Any = (*(slice(None),) * axis, indices)  # the slices of g's leading axes, then the indices
    np.add.at(out, where, g)
    return out


def _per_example_gather(a: Tensor, hot: Tensor, axis: int, op: str) -> Tensor:
    """For each example b: a[b] contracted along its axis `axis` with hot[b] (B, K..., n), the
    one-hot rows of example b's indices: (B, pre, K..., post) by one batched matmul. Needs the
    sizes of an example known."""
    k = hot.ndim - 2
    if None in a.shape[1:] or None in hot.shape[1:]:
        raise BatchingError(f"{op}: batching both the values and the indices needs an example's sizes known, got "
                            f"{a.shape} and {hot.shape}")
    if a.dtype == np.bool_:
        raise BatchingError(f"{op}: batching both a bool table and its indices is not supported")
    ax = axis + 1
    shape = cast(tuple[int, ...], a.shape)  # an example's sizes: known (checked above)
    pre, n, post, idx = shape[1:ax], shape[ax], shape[ax + 1:], cast(tuple[int, ...], hot.shape[1:-1])
    rest = (*pre, *post)
    b = sizes_of(a, (0,))
    flat = reshaped(transpose(a, (0, *range(1, ax), *range(ax + 1, a.ndim), ax)), [b, math.prod(rest), n])
    rows = reshaped(hot, [b, math.prod(idx), n])
    out = matmul(flat, transpose(rows, (0, 2, 1)))                                     # (B, pre post, K)
    out = reshaped(out, [b, *rest, *idx])
    p = len(pre)
    return transpose(out, (0, *range(1, 1 + p), *range(1 + len(rest), 1 + len(rest) + k), *range(1 + p, 1 + len(rest))))


def _take_batch(batched: tuple[bool, ...], a: Tensor, indices: Tensor, *, axis: int) -> Tensor:
    """the op itself over the batched table (its `axis` moved past the batch axis), or over the
    batched indices (the batch axis then moved first); both batched: one_hot of each example's
    indices contracted with its table (one batched matmul)"""
    ax = normalize_axes(axis, a.ndim - batched[0])[0]
    if not batched[1]:
        return _take(a, indices, axis=ax + 1)
    if not batched[0]:
        out = _take(a, indices, axis=ax)
        return out if ax == 0 else transpose(out, (ax, *(i for i in range(out.ndim) if i != ax)))
    n = a.shape[ax + 1]
    if n is None:
        raise BatchingError(f"take: batching both the values and the indices needs the size of the axis, got {a.shape}")
    return _per_example_gather(a, _one_hot(indices, depth=n, dtype=str(a.dtype)), ax, "take")


def _take_pattern(out: Dims, a: Pattern, indices: Pattern, *, axis: int) -> Pattern:
    """each output element may depend on every element of a's axis at its position (the
    indices are values: not known from the graph)"""
    ax = normalize_axes(axis, len(a.shape))[0]
    whole = a.reduce((ax,), keepdims=True)
    k = len(out) - len(a.shape) + 1
    return whole.gather(np.broadcast_to(whole.index().reshape(a.shape[:ax] + (1,) * k + a.shape[ax + 1:]), out))


def _scatter_add_batch(batched: tuple[bool, ...], g: Tensor, indices: Tensor, *, axis: int, size: int) -> Tensor:
    """the op itself over the batched values (`axis` moved past the batch axis); with batched
    indices, one_hot of each example's indices contracted with its values (one batched matmul)"""
    if not batched[1]:
        return _scatter_add(g, indices, axis=axis + 1, size=size)
    if not batched[0]:
        g = broadcast_batch(g, indices)
    k = indices.ndim - 1
    if None in g.shape[1:] or None in indices.shape[1:]:
        raise BatchingError(f"scatter_add: batching the indices needs an example's sizes known, got {g.shape} and "
                            f"{indices.shape}")
    ax = axis + 1
    pre, idx, post = g.shape[1:ax], g.shape[ax:ax + k], g.shape[ax + k:]
    rest = (*pre, *post)
    moved = transpose(g, (0, *range(1, ax), *range(ax + k, g.ndim), *range(ax, ax + k)))
    b = sizes_of(g, (0,))
    flat = reshaped(moved, [b, math.prod(rest), math.prod(idx)])  # type: ignore[arg-type]
    hot = reshaped(_one_hot(indices, depth=size, dtype=str(g.dtype)), [b, math.prod(idx), size])  # type: ignore
    out = reshaped(matmul(flat, hot), [b, *rest, size])  # type: ignore[list-item]   # (B, pre, post, size)
    p = len(pre)
    return transpose(out, (0, *range(1, 1 + p), 1 + len(rest), *range(1 + p, 1 + len(rest))))


def _scatter_add_pattern(out: Dims, g: Pattern, indices: Pattern, *, axis: int, size: int) -> Pattern:
    """each output element may depend on every element of g at its position along the indices'
    axes (the indices are values: not known from the graph)"""
    k = len(g.shape) - len(out) + 1
    whole = g.reduce(range(axis, axis + k), keepdims=True)
    return whole.gather(np.broadcast_to(whole.index().reshape(out[:axis] + (1,) + out[axis + 1:]), out))


_take = define(
    "take", _take_kernel, inputs=("a", "indices"), shape=_take_shape, dtype=INDEXED,
    batch=_take_batch, pattern=_take_pattern,
    attrs={"axis": Attr("int", doc="the axis gathered along")},
    jvp=(lambda t, out, a, i, *, axis: _take(t, i, axis=axis), NONDIFF), vjp=(_take_vjp, NONDIFF),
    doc="the slices of a at `indices` along `axis` (numpy.take, negative indices from the end; an index "
        "out of range is an error when the graph runs); an embedding lookup is take(table, ids)",
    grad_doc="JVP: the tangent taken alike; VJP: scatter_add of the cotangent (summed where indices repeat)")
_scatter_add = define(
    "scatter_add", _scatter_add_kernel, inputs=("g", "indices"), shape=_scatter_add_shape, dtype=INDEXED,
    batch=_scatter_add_batch, pattern=_scatter_add_pattern,
    attrs={"axis": Attr("int", minimum=0, doc="where the indices' axes start in g"),
           "size": Attr("int", minimum=0, doc="the size of the result's axis `axis`")},
    jvp=(lambda t, out, g, i, *, axis, size: _scatter_add(t, i, axis=axis, size=size), NONDIFF),
    vjp=(lambda c, out, g, i, *, axis, size: _take(c, i, axis=axis), NONDIFF),
    doc="zeros with `size` along `axis`, g's slices added at `indices` along it (summed where indices "
        "repeat): the VJP of take",
    grad_doc="linear in g: JVP the same op on the tangent; VJP take")


def _one_hot_dtype(dtypes: Any, attrs: Any) -> np.dtype:
    if dtypes[0] != np.int64:
        raise ShapeError(f"indices must be int64, got {dtypes[0]}")
    return as_dtype(attrs["dtype"])


def _one_hot_shape(indices: Meta, *, depth: int, dtype: str) -> Shape:
    """The indices' shape and then (`depth`,)."""
    return (*indices.shape, depth)


def _one_hot_kernel(indices: np.ndarray, *, depth: int, dtype: str) -> np.ndarray:
    if indices.size and not (-depth <= indices.min() and indices.max() < depth):
        bad = indices.min() if indices.min() < -depth else indices.max()
        raise IndexError(f"index {bad} is out of range for depth {depth}")
    return np.equal(np.mod(indices, depth)[..., None], np.arange(depth)).astype(dtype)


_one_hot = define(
    "one_hot", _one_hot_kernel, inputs=("indices",), shape=_one_hot_shape,
    dtype=DtypeRule("the dtype named by the attribute `dtype`; the indices MUST be int64", _one_hot_dtype),
    attrs={"depth": Attr("int", minimum=1, doc="the number of classes"),
           "dtype": Attr("str", "float64", allowed=tuple(map(str, DTYPES)), doc="the result's dtype")},
    jvp=(NONDIFF,), vjp=(NONDIFF,),
    batch=rule("the op itself (its new axis is the last)",
               lambda batched, indices, *, depth, dtype: _one_hot(indices, depth=depth, dtype=dtype)),
    pattern=rule("each output element depends on the index it encodes (which carries no derivative)",
                 lambda out, indices, **a: indices.gather(np.broadcast_to(indices.index()[..., None], out))),
    doc="1 at each index along a new last axis of `depth` entries, 0 elsewhere (indices in [-depth, depth), "
        "negative ones from the end; others are an error when the graph runs)")


# ---- the functions users call -------------------------------------------------------------

def transpose(x: Tensor, axes: Any = None) -> Tensor:
    """Permute axes (default: reverse them), as numpy.transpose; a view."""
    axes = tuple(range(x.ndim))[::-1] if axes is None else tuple(int(a) for a in axes)
    return _transpose(x, axes=axes)


def reshape(x: Tensor, shape: Any) -> Tensor:
    """x with a new shape (one size may be -1); a view where numpy can make one."""
    return _with_shape("reshape", x, shape)


def broadcast_to(x: Any, shape: Any) -> Tensor:
    """x repeated along axes of size 1 (and new leading axes) to `shape`; a read-only view."""
    return _with_shape("broadcast_to", x, shape)


def sum_to(x: Tensor, shape: Shape | Tensor) -> Tensor:
    """Sum x down to `shape`, which x broadcasts from: static (None sizes are left alone), or
    a `shape_of` node, whose run-time sizes say which axes broadcasting stretched."""
    if not isinstance(shape, Operand) and tuple(x.shape) == tuple(shape):
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
    return _expand_dims(x, axes=axes)


def squeeze(x: Tensor, axes: Any) -> Tensor:
    """Remove axes of size 1."""
    return _squeeze(x, axes=normalize_axes(axes, x.ndim))


def concat(xs: Any, axis: int = 0) -> Tensor:
    """Join tensors along an existing axis."""
    xs = list(xs)
    if not xs:
        raise ShapeError("concat needs at least one tensor")
    return _concat(*xs, axis=int(axis))


def getitem(x: Tensor, index: Any) -> Tensor:
    """x[index] for basic indexing (ints, slices, None, ...); a view."""
    return _getitem(x, index=normalize_index(index))


def take(a: Any, indices: Any, axis: int = 0) -> Tensor:
    """The slices of a at `indices` (int64) along `axis`, as numpy.take: an embedding lookup is
    take(table, ids). Negative indices count from the end; others out of range are an error
    when the graph runs."""
    from cgraph.ops.registry import graph_of

    g = graph_of("take", (a, indices))
    if not isinstance(a, Operand):
        a = g.constant(None, a)
    if not isinstance(indices, Operand):
        indices = g.constant(None, np.asarray(indices, dtype=np.int64))
    (ax,) = normalize_axes(axis, a.ndim)
    return _take(a, indices, axis=ax)


def one_hot(indices: Tensor, depth: int, dtype: Any = "float64") -> Tensor:
    """Rows of the identity of size `depth` picked by `indices` (int64, in [-depth, depth)):
    shape indices.shape + (depth,)."""
    return _one_hot(indices, depth=int(depth), dtype=str(np.dtype(dtype)))


def zeros_like(x: Tensor) -> Tensor:
    """Zeros of x's shape and dtype: a read-only broadcast of one stored zero."""
    zero = x.graph.constant(None, np.zeros((), x.dtype))
    return broadcast_to(zero, shape_like(x))
