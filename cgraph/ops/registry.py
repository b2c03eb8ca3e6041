"""The op registry: each primitive is defined once, with everything about it side by side.

An op is an `OpDef`: its name, its numpy kernel, its shape-and-dtype rule, and its derivative
rules. The rule conventions, for every op (as autograd's `defvjp` and PyTorch's
`derivatives.yaml`):

- `infer(*metas, **attrs) -> (shape, dtype)`: `metas` are the inputs' static shapes and dtypes
  (`None` for a size known only at run time). Raises ShapeError with a short reason.
- `kernel(*arrays, **attrs) -> ndarray`: a new array, or (only if `view=True`) possibly a view
  of the first input. Never writes to its inputs.
- `jvp[i](t, out, *xs, **attrs)`: the tangent of the output due to tangent `t` of input `i`.
  Or `jvp` is one function `(tangents, out, *xs, **attrs)` taking the list of input tangents
  (`None` for a zero tangent): the form for linear ops of many inputs (concat).
- `vjp[i](g, out, *xs, **attrs)`: the cotangent of input `i`, given cotangent `g` of the output.

`t`, `g`, `out` and `xs` are Tensors, so rules are written with cgraph ops and a derivative is
itself a graph. Rules may ignore broadcasting: the transforms sum a cotangent back to its
input's shape and broadcast a tangent to its output's shape. A rule may be `NONDIFF` (the input
carries no derivative: a condition, a shape) or `ZERO` (the derivative is zero wherever it
exists: `sign`); a rule that is missing is an error when a derivative needs it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cgraph.errors import DerivativeError, ShapeError
from cgraph.graph import DTYPES, Graph, GraphError, Meta, Shape, Tensor, format_shape


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NONDIFF = _Marker("NONDIFF")  # the input has no derivative (conditions, shapes, labels as ints)
ZERO = _Marker("ZERO")  # the derivative wrt this input is zero wherever it exists


@dataclass(frozen=True)
class OpDef:
    """One primitive: name, kernel, shape rule, derivative rules and scheduling hints."""

    name: str
    kernel: Callable[..., Any]
    infer: Callable[..., tuple[Shape, np.dtype]]
    jvp: Any = ()  # tuple of per-input rules, or one callable over all tangents
    vjp: Any = ()  # tuple of per-input rules (for a variadic op: one rule taking `index=`)
    view: bool = False  # the output may be a view of input 0 (no new buffer)
    eager: bool = False  # tiny output from a big input: schedule right after its inputs
    variadic: bool = False  # any number of inputs (concat)
    shape_arg: bool = False  # an optional input 1 is a run-time shape (from shape_of) that
    #                          stands for the attribute `shape`
    gives_shape: bool = False  # the output is the run-time shape of input 0 (shape_of)
    inplace: bool = False  # the kernel takes `out=` (a numpy ufunc): a plan may write the
    #                        result over an input that dies at that step
    doc: str = ""

    def vjp_rule(self, i: int, node: str) -> Any:
        rules = self.vjp
        if self.variadic and len(rules) == 1 and callable(rules[0]):
            rule = rules[0]
            return lambda g, out, *xs, **attrs: rule(g, out, *xs, index=i, **attrs)
        if i >= len(rules) or rules[i] is None:
            raise DerivativeError(f"{node} ({self.name}): no VJP rule for input {i}")
        return rules[i]

    def jvp_rule(self, i: int, node: str) -> Any:
        if callable(self.jvp):
            return self.jvp
        if i >= len(self.jvp) or self.jvp[i] is None:
            raise DerivativeError(f"{node} ({self.name}): no JVP rule for input {i}")
        return self.jvp[i]


OPS: dict[str, OpDef] = {}


def define(name: str, kernel: Callable[..., Any], infer: Callable[..., Any], *, jvp: Any = (),
           vjp: Any = (), **flags: Any) -> OpDef:
    """Register a primitive (once: a second definition of a name is a bug)."""
    if name in OPS:
        raise RuntimeError(f"op {name!r} is defined twice")
    OPS[name] = op = OpDef(name, kernel, infer, jvp, vjp, **flags)
    return op


def get_op(name: str) -> OpDef:
    try:
        return OPS[name]
    except KeyError:
        raise GraphError(f"unknown op {name!r}") from None


# ---- building nodes from Python values ---------------------------------------------------

def apply(op: str, *args: Any, **attrs: Any) -> Tensor:
    """Build `op(*args)` in the graph of its tensor arguments; numbers and arrays become
    constants (a Python number takes the dtype of the tensors it meets, as in JAX)."""
    graph = graph_of(op, args)
    tensors = lift_all(graph, args)
    return graph.add_node(op, [t.name for t in tensors], attrs)


def graph_of(op: str, args: Sequence[Any]) -> Graph:
    """The one graph the Tensors among `args` belong to (an error if none or several)."""
    graph = None
    for a in args:
        if isinstance(a, Tensor):
            if graph is None:
                graph = a.graph
            elif a.graph is not graph:
                raise GraphError(f"{op}: tensors {a.name!r} of graph {a.graph.name!r} and of graph "
                                 f"{graph.name!r} cannot be combined")
    if graph is None:
        raise GraphError(f"{op}: needs at least one Tensor argument (got only numbers or arrays)")
    return graph


def lift_all(graph: Graph, args: Sequence[Any]) -> list[Tensor]:
    """Tensors for `args`, turning Python and numpy values into constants of `graph`."""
    dtypes = [a.dtype for a in args if isinstance(a, Tensor)]
    like = np.result_type(*dtypes) if dtypes else None
    return [a if isinstance(a, Tensor) else lift(graph, a, like) for a in args]


def lift(graph: Graph, value: Any, like: np.dtype | None = None) -> Tensor:
    """A constant for `value`; a Python number takes the dtype `like` where it fits."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, bool):
        dtype = np.dtype(bool)
    elif isinstance(value, int):
        dtype = like if like is not None and like.kind in "fi" else np.dtype(np.int64)
    elif isinstance(value, float):
        dtype = like if like is not None and like.kind == "f" else np.dtype(np.float64)
    else:
        arr = np.asarray(value)
        if arr.dtype == object:
            raise GraphError(f"cannot make a constant of {type(value).__name__}")
        dtype = None
    return graph.constant(graph._fresh("const").rsplit("/", 1)[-1], value, dtype=dtype)


# ---- shape rules shared by many ops -------------------------------------------------------

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


def elementwise_infer(*metas: Meta) -> tuple[Shape, np.dtype]:
    return broadcast_shapes(*(m.shape for m in metas)), np.result_type(*(m.dtype for m in metas))


def float_infer(*metas: Meta) -> tuple[Shape, np.dtype]:
    """Elementwise, for math that needs floats (exp, log, ...): ints become float64."""
    shape, dtype = elementwise_infer(*metas)
    if dtype.kind != "f":
        raise ShapeError(f"needs float inputs, got {dtype}")
    return shape, dtype


def compare_infer(*metas: Meta) -> tuple[Shape, np.dtype]:
    return broadcast_shapes(*(m.shape for m in metas)), np.dtype(bool)


def normalize_axes(axis: Any, ndim: int) -> tuple[int, ...]:
    """`axis` (None, int or tuple, negatives allowed) as a sorted tuple of non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = []
    for a in axes:
        if not isinstance(a, (int, np.integer)) or not -ndim <= a < ndim:
            raise ShapeError(f"axis {a!r} is out of range for {ndim} dimensions")
        out.append(int(a) % ndim)
    if len(set(out)) != len(out):
        raise ShapeError(f"repeated axis in {axis!r}")
    return tuple(sorted(out))


def static_with_sentinels(fn: Callable[[tuple[int, ...]], tuple[int, ...]], shape: Shape) -> Shape:
    """Run a shape computation on concrete sizes twice, with two different stand-ins for each
    None, and keep as static only the output sizes that do not depend on them."""
    # stand-ins divisible by every size up to 16, so that reshapes like (None, 6) -> (4, -1) work
    s1 = tuple(720_720 * 1009 if d is None else d for d in shape)
    s2 = tuple(720_720 * 1013 if d is None else d for d in shape)
    r1, r2 = fn(s1), fn(s2)
    return tuple(a if a == b else None for a, b in zip(r1, r2, strict=True))


def check_float(meta: Meta) -> None:
    if meta.dtype.kind != "f":
        raise ShapeError(f"needs a float input, got {meta.dtype}")


__all__ = ["DTYPES", "NONDIFF", "OPS", "ZERO", "OpDef", "apply", "broadcast_shapes", "define",
           "get_op", "lift", "normalize_axes"]
