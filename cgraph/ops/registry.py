"""The op registry: every op is one declared contract, defined once with everything about it.

An op is an `OpDef`, made by `define` (the built-in ops) or `define_op` (your own, named with
a "/"). Its declaration is data, checked at every door (the builder, `load` and `cgraph check`,
`save`, ONNX import) by `OpDef.check`, and the op catalogue `docs/ops.md` is generated from it:

- `inputs`: the input names in order. A trailing name ending in "?" may be left out; a last
  name ending in "+" (one or more) or "*" (zero or more) takes any number of inputs.
- `attrs`: name -> `Attr(type, default, allowed, minimum)`. Types are exact (`ATTR_TYPES`): a
  bool is not an int, an int is not a bool or a float, a tuple is not a scalar. Op functions
  (`cg.sum`, ...) are friendlier: they turn an int given for a float attribute into a float.
- `dtype`: a `DtypeRule`: which input dtypes the op takes and the dtype of its output.
- `shape`: `shape(*metas, **attrs) -> shape`, the inputs' static shapes in (`Meta`, with
  `None` for a size known only at run time); raises ShapeError with a short reason. Its
  docstring is the rule as the catalogue states it.

The kernel and the derivative rules sit beside the declaration (as autograd's `defvjp` and
PyTorch's `derivatives.yaml`), with one signature for every rule:

- `kernel(*arrays, **attrs) -> ndarray`: a new array, or (only if `view=True`) possibly a view
  of the first input. Never writes to its inputs (`inplace=True` ops are numpy ufuncs that a
  plan may give `out=`, only ever a dying intermediate of the plan's own).
- `jvp[i](t, out, *xs, **attrs)`: the tangent of the output due to tangent `t` of input `i`.
  Or `jvp` is one function `(tangents, out, *xs, **attrs)` taking the list of input tangents
  (`None` for a zero tangent): the form for linear ops of many inputs (concat).
- `vjp[i](g, out, *xs, **attrs)`: the cotangent of input `i`, given cotangent `g` of the output
  (for a variadic op, one rule taking `index=`).
- `deriv[i](t, out, *xs, **attrs)`: for elementwise ops, whose Jacobian is diagonal, one rule
  per input that is both its JVP (`t` a tangent) and its VJP (`t` a cotangent).

`t`, `g`, `out` and `xs` are Tensors, so rules are written with cgraph ops and a derivative is
itself a graph. Rules may ignore broadcasting: the transforms sum a cotangent back to its
input's shape and broadcast a tangent to its output's shape. A rule may be `NONDIFF` (the input
carries no derivative: a condition, a shape) or `ZERO` (the derivative is zero wherever it
exists: `sign`); a rule that is missing is an error when a derivative needs it.

`identity(node, args)` may say that a node equals one of its inputs (or an input's input),
for the plan's simplification: `x * 1`, `neg(neg(x))`, a cast to the same dtype.

Two more rules sit beside the derivatives, for `cg.vmap` and `cg.jacobian_sparsity`:

- `batch(batched, *xs, **attrs)`: the op applied to every example of a batch. `batched[i]`
  says whether input `i` has a leading batch axis (axis 0; at least one has); the others are
  the same for every example. It returns the result for every example, with a leading batch
  axis, or `Unbatched(t)` for a result that is the same for every example (a shape). It is
  written with cgraph ops (so a batched graph saves, draws and differentiates) and its
  docstring is the catalogue's line. Helpers: `batch_elementwise(op)`, `batch_axes(op)`
  (cgraph/ops/array.py). An op without one (a user op defined without `batch=`) is applied
  to each example and the results stacked, which needs a batch size known when vmap runs.
- `pattern(out_shape, *xs, **attrs)`: the sparsity pattern of the output (a
  `cgraph.patterns.Pattern`: which wrt elements each element depends on) from the inputs'
  patterns, for concrete shapes (`out_shape` is the output's; a run-time shape input's value
  is in it). Inputs whose derivative rule is NONDIFF or ZERO arrive with empty patterns. The
  pattern must hold every entry the Jacobian can have (a superset); `patterns.dense` is the
  conservative rule (every output element depends on everything), marked DENSE in the
  catalogue, and is taken for an op without a rule. Its docstring is the catalogue's line.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeGuard, cast

import numpy as np

from cgraph.errors import DerivativeError, GraphError, ShapeError
from cgraph.shapes import DTYPES, TUPLE, Meta, Shape, as_dtype, broadcast_shapes, format_shape, tuple_meta


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NONDIFF = _Marker("NONDIFF")  # the input has no derivative (conditions, shapes, labels as ints)
ZERO = _Marker("ZERO")  # the derivative wrt this input is zero wherever it exists
REQUIRED = _Marker("REQUIRED")  # an attribute with no default


# ---- attributes ---------------------------------------------------------------------------

class Subgraph:
    """What a "graph" attribute holds: `cgraph.graph.Graph` derives from it, so that this module
    checks attribute values without importing the graph module."""

    __slots__ = ()


ATTR_TYPES: dict[str, str] = {
    "int": "an integer (a bool is not one)",
    "float": "a floating-point number (binary64; an integer is not one)",
    "bool": "true or false (an integer is not one)",
    "str": "a string",
    "ints": "a tuple of integers, possibly empty",
    "dims": "a tuple of sizes: integers, or None for a size known only at run time",
    "index": "a basic index: a tuple of integers, slices (start:stop:step, each an integer or None, "
             "step not 0), None (a new axis of size 1) and at most one Ellipsis",
    "graph": "a subgraph (the body of a control-flow op): a graph of inputs, constants and op nodes with "
             "named outputs, and no params",
}
_NOUN = {"int": "an int", "float": "a float", "bool": "a bool", "str": "a str", "ints": "a tuple of ints",
         "dims": "a tuple of ints and Nones", "index": "a basic index (a tuple of ints, slices, None and ...)",
         "graph": "a Graph (a body)"}


def _is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class Attr:
    """An attribute's declaration: its type (a key of ATTR_TYPES), its default (REQUIRED if it
    has none), the values it may take, the least value of an int (or of each entry of ints and
    dims), and what it means."""

    type: str
    default: Any = REQUIRED
    allowed: tuple[Any, ...] | None = None
    minimum: int | None = None
    doc: str = ""

    def __post_init__(self) -> None:
        if self.type not in ATTR_TYPES:
            raise ValueError(f"attribute type {self.type!r} is not one of {', '.join(ATTR_TYPES)}")

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def normalize(self, name: str, value: Any) -> Any:
        """`value` as the attribute holds it (numpy scalars as Python ones, lists as tuples), or
        GraphError's reason (a ValueError) if it is not one this attribute takes."""
        t = self.type
        ok = True
        if t == "int":
            ok = _is_int(value)
            value = int(value) if ok else value
        elif t == "float":
            ok = isinstance(value, (float, np.floating))
            value = float(value) if ok else value
        elif t == "bool":
            ok = isinstance(value, (bool, np.bool_))
            value = bool(value) if ok else value
        elif t == "str":
            ok = isinstance(value, str) and _utf8(value)
        elif t == "graph":
            ok = isinstance(value, Subgraph)
        elif t in ("ints", "dims"):
            ok = isinstance(value, (tuple, list)) and all(_is_int(v) or (t == "dims" and v is None) for v in value)
            value = tuple(None if v is None else int(v) for v in value) if ok else value
        else:  # index
            ok = isinstance(value, (tuple, list)) and all(_index_item(v) for v in value) \
                and sum(v is Ellipsis for v in value) <= 1
            value = tuple(_index_value(v) for v in value) if ok else value
        if not ok:
            raise ValueError(f"attribute {name!r} must be {_NOUN[t]}, got {type(value).__name__} {_short(value)}")
        if self.allowed is not None and value not in self.allowed:
            raise ValueError(f"attribute {name!r} must be one of {', '.join(map(repr, self.allowed))}, "
                             f"got {_short(value)}")
        if self.minimum is not None:
            low = [v for v in (value if t in ("ints", "dims") else (value,)) if v is not None and v < self.minimum]
            if low:
                raise ValueError(f"attribute {name!r} must be at least {self.minimum}"
                                 f"{' in each entry' if t in ('ints', 'dims') else ''}, got {_short(value)}")
        return value

    def describe(self, name: str) -> str:
        """One line for the catalogue."""
        text = self.type
        if self.allowed is not None:
            text += ", one of " + ", ".join(f"`{a!r}`" for a in self.allowed)
        if self.minimum is not None:
            text += f", at least {self.minimum}" + (" each" if self.type in ("ints", "dims") else "")
        text += ", required" if self.required else f", default `{self.default!r}`"
        return f"`{name}` ({text})" + (f": {self.doc}" if self.doc else "")


def _utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _index_item(v: Any) -> bool:
    if v is None or v is Ellipsis or _is_int(v):
        return True
    if isinstance(v, slice):
        return all(b is None or _is_int(b) for b in (v.start, v.stop, v.step)) and v.step != 0
    return False


def _index_value(v: Any) -> Any:
    if _is_int(v):
        return int(v)
    if isinstance(v, slice):
        return slice(*(None if b is None else int(b) for b in (v.start, v.stop, v.step)))
    return v


# ---- inputs -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Inputs:
    """The inputs an op takes: names in order (with their "?", "+" or "*" marks), and how many."""

    names: tuple[str, ...]
    minimum: int
    maximum: int | None  # None: any number

    @classmethod
    def parse(cls, spec: int | Sequence[str]) -> Inputs:
        """From a count (`2`: inputs x0, x1; `1`: x) or names ("x", "shape?", "xs+")."""
        if _is_int(spec):
            n = int(spec)
            if n < 0:
                raise ValueError(f"an op cannot take {n} inputs")
            return cls(("x",) if n == 1 else tuple(f"x{i}" for i in range(n)), n, n)
        names = (spec,) if isinstance(spec, str) else tuple(cast(Sequence[str], spec))
        minimum, maximum, seen_optional = 0, 0, False
        for i, raw in enumerate(names):
            base = raw.rstrip("?+*")
            if not isinstance(raw, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*[?+*]?", raw):
                raise ValueError(f"bad input name {raw!r}: a name, then optionally one of ? + *")
            if raw.endswith(("+", "*")):
                if i != len(names) - 1:
                    raise ValueError(f"only the last input may be variadic, not {base!r}")
                return cls(names, minimum + (raw[-1] == "+"), None)
            if raw.endswith("?"):
                seen_optional = True
            elif seen_optional:
                raise ValueError(f"input {base!r} follows an optional input: only trailing ones may be optional")
            else:
                minimum += 1
            maximum += 1
        return cls(names, minimum, maximum)

    @property
    def variadic(self) -> bool:
        return self.maximum is None

    def describe(self) -> str:
        """"1 input (x)", "1 or 2 inputs (x, shape?)", "at least 1 input (xs+)"."""
        lo, hi = self.minimum, self.maximum
        count = (f"{lo}" if lo == hi else f"at least {lo}" if hi is None
                 else f"{lo} or {hi}" if hi == lo + 1 else f"{lo} to {hi}")
        plural = "input" if (hi if hi is not None else lo) == 1 else "inputs"
        return f"{count} {plural}" + (f" ({', '.join(self.names)})" if self.names else "")

    def problem(self, n: int) -> str | None:
        if n < self.minimum or (self.maximum is not None and n > self.maximum):
            return f"takes {self.describe()}, got {n}"
        return None


# ---- dtype rules --------------------------------------------------------------------------

@dataclass(frozen=True)
class DtypeRule:
    """Which input dtypes an op takes and its output's dtype: `fn(dtypes, attrs) -> dtype`,
    raising ShapeError for inputs it does not take; `doc` says it for the catalogue."""

    doc: str
    fn: Callable[[Sequence[np.dtype], Mapping[str, Any]], np.dtype]

    def __call__(self, dtypes: Sequence[np.dtype], attrs: Mapping[str, Any]) -> np.dtype:
        return np.dtype(self.fn(dtypes, attrs))


def _numeric(dtypes: Sequence[np.dtype], attrs: Mapping[str, Any]) -> np.dtype:
    dt = np.result_type(*dtypes)
    if dt == np.bool_:
        raise ShapeError("needs numbers, got bool")
    return dt


def _float(dtypes: Sequence[np.dtype], attrs: Mapping[str, Any]) -> np.dtype:
    dt = np.result_type(*dtypes)
    if dt.kind != "f":
        raise ShapeError(f"needs float inputs, got {dt}")
    return dt


def _float_first(dtypes: Sequence[np.dtype], attrs: Mapping[str, Any]) -> np.dtype:
    if dtypes[0].kind != "f":
        raise ShapeError(f"needs a float input, got {dtypes[0]}")
    return dtypes[0]


def _where(dtypes: Sequence[np.dtype], attrs: Mapping[str, Any]) -> np.dtype:
    if dtypes[0] != np.bool_:
        raise ShapeError(f"the condition must be bool, got {dtypes[0]}")
    return np.result_type(dtypes[1], dtypes[2])


def _not_bool_first(dtypes: Sequence[np.dtype], attrs: Mapping[str, Any]) -> np.dtype:
    if dtypes[0] == np.bool_:
        raise ShapeError("needs numbers, got bool")
    return dtypes[0]


PROMOTE = DtypeRule("the inputs' result type (PROMOTE)", lambda d, a: np.result_type(*d))
NUMERIC = DtypeRule("the inputs' result type (PROMOTE), which MUST NOT be bool", _numeric)
FLOAT = DtypeRule("the inputs' result type (PROMOTE), which MUST be a float (float64, float32, float16)", _float)
COMPARE = DtypeRule("bool (the inputs may have any dtypes)", lambda d, a: np.dtype(bool))
SAME = DtypeRule("the first input's dtype", lambda d, a: d[0])
SAME_NUMERIC = DtypeRule("the first input's dtype, which MUST NOT be bool", _not_bool_first)
SAME_FLOAT = DtypeRule("the first input's dtype, which MUST be a float (float64, float32, float16)", _float_first)
MEAN = DtypeRule("the first input's dtype if it is a float, else float64",
                 lambda d, a: d[0] if d[0].kind == "f" else np.dtype(np.float64))
INT64 = DtypeRule("int64", lambda d, a: np.dtype(np.int64))
CAST = DtypeRule("the dtype named by the attribute `dtype`", lambda d, a: as_dtype(a["dtype"]))
RESULTS = DtypeRule("TUPLE: the node's value is the tuple of its results, which only `result` nodes read",
                    lambda d, a: TUPLE)
WHERE = DtypeRule("the result type (PROMOTE) of the second and third inputs; the first (the condition) "
                  "MUST be bool", _where)


# ---- simplification rules declared with their ops ---------------------------------------

class Arg(NamedTuple):
    """What an `identity` rule sees of one input: its node's name, op, attributes and inputs,
    and its value when it is a small constant (else None)."""

    name: str
    op: str
    attrs: Mapping[str, Any]
    inputs: tuple[str, ...]
    value: np.ndarray | None


Identity = Callable[[Any, Sequence[Arg]], "str | None"]


def unit(value: float, *sides: int) -> Identity:
    """`x op unit` is x, for a constant all `value` on any of `sides` (0: left, 1: right)."""
    def rule(node: Any, args: Sequence[Arg]) -> str | None:
        for side in sides:
            v = args[side].value
            if v is not None and bool(np.all(v == value)):
                return args[1 - side].name
        return None
    return rule


def involution(op: str) -> Identity:
    """`op(op(x))` is x (neg)."""
    return lambda node, args: args[0].inputs[0] if args[0].op == op else None


def passthrough(static: bool) -> Identity:
    """The node is its input when the shapes and dtypes agree (a cast to the same dtype, a
    reshape to the same static shape, stop_gradient); with `static`, only for static shapes."""
    return lambda node, args: args[0].name if len(args) == 1 and not (static and None in node.shape) else None


# ---- the op definition ------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class OpDef:
    """One op: its declaration, kernel, shape and dtype rules, derivative rules and scheduling
    hints. `cg.op_info(name)` gives it; `str()` of it is its catalogue entry."""

    name: str
    kernel: Callable[..., Any]
    inputs: Inputs
    attrs: Mapping[str, Attr]
    shape: Callable[..., Any] | None  # None for user ops: `infer_fn` gives shape and dtype; for a
    #                                   `multi` op, the Metas of its results
    dtype: DtypeRule | None
    infer_fn: Callable[..., tuple[Shape, Any]] | None = None
    jvp: Any = ()  # tuple of per-input rules, or one callable over all tangents
    vjp: Any = ()  # tuple of per-input rules (for a variadic op: one rule taking `index=`)
    view: bool = False  # the output may be a view of input 0 (no new buffer)
    eager: bool = False  # tiny output from a big input: schedule right after its inputs
    shape_arg: bool = False  # an optional input 1 is a run-time shape (from shape_of) that
    #                          stands for the attribute `shape`
    gives_shape: bool = False  # the output is the run-time shape of input 0 (shape_of)
    inplace: bool = False  # the kernel takes `out=` (a numpy ufunc): a plan may write the
    #                        result over an input that dies at that step
    identity: Identity | None = None
    scratch: Callable[..., int] | None = None  # bytes of working memory the kernel holds while
    #   it runs, beside its inputs and output: `scratch(*inputs, **attrs)`, the inputs anything
    #   with `.shape` and `.dtype` (the Metas of a prediction, the arrays of a run)
    multi: bool = False  # the value is the tuple of several results (control flow): `shape`
    #                      gives their Metas, `jvp`, `save` and `vjp` follow the rules for tuples
    #                      (cgraph.control), and only `project` ops read it
    project: bool = False  # the value is result `index` of input 0, a tuple: the same array
    save: Callable[..., Any] | None = None  # multi ops: the node rebuilt for reverse mode
    peak: Callable[..., int] | None = None  # multi ops: the most bytes the kernel holds at once,
    #                                         results included, for concrete input Metas
    batch: Callable[..., Any] | None = None  # the batching rule (vmap); None: example by example
    pattern: Callable[..., Any] | None = None  # the sparsity-pattern rule; None: dense
    doc: str = ""
    grad_doc: str = ""  # the derivative in a line, for the catalogue
    user: bool = False  # defined with define_op
    function: Callable[..., Any] = field(default=None, repr=False)  # type: ignore[assignment]

    # -- the contract -----------------------------------------------------------------------

    def check(self, node: str, n_inputs: int, attrs: Mapping[str, Any]) -> dict[str, Any]:
        """The attributes as the node holds them (normalized, defaults filled in, in declared
        order), or GraphError naming the node, the op and what is wrong."""
        where = f"{node} ({self.name})"
        problem = self.inputs.problem(n_inputs)
        if problem:
            raise GraphError(f"{where}: {problem}")
        given: dict[str, Any] = {}
        for k, v in attrs.items():
            decl = self.attrs.get(k)
            if decl is None:
                raise GraphError(self.unknown_attribute(node, k))
            try:
                given[k] = decl.normalize(k, v)
            except ValueError as e:
                raise GraphError(f"{where}: {e}") from None
        out = {}
        for k, decl in self.attrs.items():
            if k in given:
                out[k] = given[k]
            elif decl.required:
                raise GraphError(f"{where}: missing attribute {k!r} ({decl.type})")
            else:
                out[k] = decl.default
        return out

    def unknown_attribute(self, node: str, name: Any) -> str:
        takes = ", ".join(self.attrs) or "no attributes"
        return f"{node} ({self.name}): unknown attribute {_short(name)} ({self.name} takes {takes})"

    def meta(self, *metas: Meta, **attrs: Any) -> Meta:
        """The output's Meta: static shape and dtype, and for a tuple its results' (ShapeError
        with a short reason)."""
        if self.project:
            return _project(metas[0], attrs["index"])
        if self.multi:
            assert self.shape is not None
            return tuple_meta(tuple(cast(Sequence[Meta], self.shape(*metas, **attrs))))
        shape, dtype = self.infer(*metas, **attrs)
        return Meta(tuple(shape), np.dtype(dtype))

    def infer(self, *metas: Meta, **attrs: Any) -> tuple[Shape, np.dtype]:
        """The output's static shape and dtype (ShapeError with a short reason)."""
        if self.multi or self.project:
            m = self.meta(*metas, **attrs)
            return m.shape, m.dtype
        if self.infer_fn is not None:
            return _user_result(self.infer_fn(*metas, **attrs))
        assert self.shape is not None and self.dtype is not None
        dtype = self.dtype([m.dtype for m in metas], attrs)
        return tuple(self.shape(*metas, **attrs)), dtype

    def bind(self, node: Any) -> Callable[..., Any]:
        """The kernel of a plan's step for `node` (its attributes bound). A user op's kernel
        gets read-only inputs, and its result is checked against the node and never shares
        memory with an input (so no later step can write through it into a feed)."""
        attrs = dict(node.attrs)
        fn = functools.partial(self.kernel, **attrs) if attrs else self.kernel
        return _guarded(fn, node) if self.user else fn

    def bind_scratch(self, node: Any) -> Callable[..., int] | None:
        """The scratch rule of a plan's step for `node` (its attributes bound), or None."""
        if self.scratch is None:
            return None
        return functools.partial(self.scratch, **node.attrs) if node.attrs else self.scratch

    # -- derivative rules -------------------------------------------------------------------

    def vjp_rule(self, i: int, node: str) -> Any:
        rules = self.vjp
        if self.inputs.variadic and len(rules) == 1 and callable(rules[0]):
            rule = rules[0]
            return lambda g, out, *xs, **attrs: rule(g, out, *xs, index=i, **attrs)
        if i >= len(rules) or rules[i] is None:
            raise DerivativeError(f"{node} ({self.name}): no VJP rule for input {i}")
        return rules[i]

    def carries(self, i: int) -> bool:
        """Whether input `i` can carry a derivative to the output (its rule is not NONDIFF or
        ZERO)."""
        rules = self.jvp if not callable(self.jvp) else ()
        return not (i < len(rules) and (rules[i] is NONDIFF or rules[i] is ZERO))

    def pattern_doc(self) -> str:
        if self.jvp and not any(self.carries(i) for i in range(len(self.inputs.names))):
            return "empty (the output carries no derivative)"
        if self.pattern is None:
            return "DENSE (conservative; no rule declared): every output element may depend on every input element"
        return _docline(self.pattern)

    def jvp_rule(self, i: int, node: str) -> Any:
        if i >= len(self.jvp) or self.jvp[i] is None:
            raise DerivativeError(f"{node} ({self.name}): no JVP rule for input {i}")
        return self.jvp[i]

    # -- the catalogue ----------------------------------------------------------------------

    def __str__(self) -> str:
        return "\n".join(self.describe())

    def describe(self, onnx: str | None = None) -> list[str]:
        """The op's catalogue entry, as Markdown lines."""
        lines = [f"### `{self.name}`", ""]
        if self.doc:
            lines += [self.doc, ""]
        lines.append(f"- **inputs**: {self.inputs.describe()}")
        if self.attrs:
            lines.append("- **attributes**:")
            lines += [f"  - {a.describe(k)}" for k, a in self.attrs.items()]
        else:
            lines.append("- **attributes**: none")
        if self.dtype is not None:
            lines.append(f"- **dtype**: {self.dtype.doc}")
        if self.shape is not None:
            lines.append(f"- **shape**: {_docline(self.shape)}")
        if self.infer_fn is not None:
            lines.append("- **shape and dtype**: as the op's `infer` function gives them (a user op)")
        lines.append(f"- **derivative**: {self.grad_doc or _default_grad_doc(self)}")
        lines.append(f"- **batching**: {_docline(self.batch) if self.batch is not None else NO_BATCH_RULE}")
        lines.append(f"- **sparsity**: {self.pattern_doc()}")
        if onnx is not None:
            lines.append(f"- **ONNX**: {onnx}")
        return lines


def _project(x: Meta, index: int) -> Meta:
    if x.parts is None:
        raise ShapeError("the input is not the tuple of a control-flow node's results")
    if not 0 <= index < len(x.parts):
        raise ShapeError(f"result {index} of a tuple of {len(x.parts)} results")
    return x.parts[index]


def rule(doc: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` with `doc` as its docstring: the catalogue's line for a rule written as a lambda."""
    fn.__doc__ = doc
    return fn


NO_BATCH_RULE = ("none declared: vmap applies the op to each example and stacks the results, which needs a "
                 "batch size known when vmap runs")


class Unbatched(NamedTuple):
    """What a batching rule returns for a result that is the same for every example (a shape)."""

    value: Any


def _docline(fn: Callable[..., Any]) -> str:
    return " ".join((inspect.getdoc(fn) or "").split())


def _default_grad_doc(op: OpDef) -> str:
    rules = list(op.jvp) + list(op.vjp)
    if rules and all(r is NONDIFF for r in rules):
        return "none (the output carries no derivative)"
    if rules and all(r is ZERO for r in rules):
        return "zero"
    return "by its JVP and VJP rules"


def _user_result(result: Any) -> tuple[Shape, np.dtype]:
    """A user op's `infer` result, checked: (a shape of sizes and Nones, a supported dtype)."""
    try:
        shape, dtype = result
        shape = tuple(shape)
    except (TypeError, ValueError):
        raise ShapeError(f"infer must return (shape, dtype), got {_short(result)}") from None
    if not all(d is None or (_is_int(d) and d >= 0) for d in shape):
        raise ShapeError(f"infer returned a bad shape {_short(shape)}")
    return tuple(None if d is None else int(d) for d in shape), as_dtype(dtype)


def _guarded(fn: Callable[..., Any], node: Any) -> Callable[..., Any]:
    def run(*xs: Any) -> np.ndarray:
        ins = []
        for x in xs:
            v = np.asarray(x).view()
            v.flags.writeable = False
            ins.append(v)
        out = np.asarray(fn(*ins))
        if out.dtype != node.dtype or out.ndim != len(node.shape) or any(
                d is not None and d != s for d, s in zip(node.shape, out.shape, strict=True)):
            raise ShapeError(f"{node.name} ({node.op}): the kernel returned {format_shape(out.shape)} {out.dtype}, "
                             f"its infer gave {format_shape(node.shape)} {node.dtype}")
        if any(np.may_share_memory(out, x) for x in ins):
            out = out.copy()
        return out
    return run


# ---- the table ----------------------------------------------------------------------------

OPS: dict[str, OpDef] = {}
LEAF_OPS = ("input", "param", "constant")


def define(name: str, kernel: Callable[..., Any], *, inputs: int | Sequence[str], shape: Callable[..., Any],
           dtype: DtypeRule, attrs: Mapping[str, Attr] | None = None, jvp: Any = (), vjp: Any = (),
           deriv: Sequence[Any] | None = None, **flags: Any) -> Callable[..., Any]:
    """Register a built-in op (once: a second definition of a name is a bug) and return the
    function that builds its nodes. `deriv` gives elementwise rules that serve as both the
    JVP and the VJP (see the module docstring)."""
    if name in OPS:
        raise RuntimeError(f"op {name!r} is defined twice")
    if deriv is not None:
        jvp = vjp = tuple(deriv)
    return _register(OpDef(name, kernel, Inputs.parse(inputs), dict(attrs or {}), shape, dtype,
                           jvp=jvp, vjp=vjp, **flags))


def _register(op: OpDef) -> Callable[..., Any]:
    fn = _function(op)
    object.__setattr__(op, "function", fn)
    OPS[op.name] = op
    return fn


def _function(op: OpDef) -> Callable[..., Any]:
    """The function users call to build a node of `op`: inputs positionally (Tensors, numbers
    or arrays), attributes as keywords."""
    name = op.name
    floats = [k for k, a in op.attrs.items() if a.type == "float"]

    def build(*args: Any, **attrs: Any) -> Any:
        for k in floats:  # a Python int where a float is declared, as numbers are elsewhere
            if _is_int(attrs.get(k)):
                attrs[k] = float(attrs[k])
        return apply(name, *args, **attrs)

    P = inspect.Parameter
    params = [P(n.rstrip("?+*"), P.VAR_POSITIONAL if n[-1] in "+*" else P.POSITIONAL_OR_KEYWORD,
                default=None if n.endswith("?") else P.empty) for n in op.inputs.names]
    params += [P(k, P.KEYWORD_ONLY, default=P.empty if a.required else a.default) for k, a in op.attrs.items()]
    build.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    build.__name__ = build.__qualname__ = name.rsplit("/", 1)[-1]
    build.__doc__ = op.doc or None
    build.__module__ = "cgraph" if not op.user else "cgraph.ops"
    return build


def get_op(name: str) -> OpDef:
    try:
        return OPS[name]
    except KeyError:
        hint = (": a user op must be defined (cg.define_op) in this process before a graph that uses it is "
                "built or loaded" if "/" in name else "")
        raise GraphError(f"unknown op {_short(name)}{hint}") from None


def op_info(name: str) -> OpDef:
    """The declaration of op `name`: `inputs`, `attrs` (name -> Attr: type, default or
    required), `doc`, and the rest of its definition; `print(cg.op_info("sum"))` shows its
    catalogue entry."""
    return get_op(name)


_TYPE_NAMES = {int: "int", float: "float", bool: "bool", str: "str", tuple: "ints"}


def define_op(name: str, kernel: Callable[..., Any], infer: Callable[..., tuple[Shape, Any]], *,
              inputs: int | Sequence[str] = 1, attrs: Mapping[str, Any] | None = None,
              jvp: Sequence[Any] | None = None, vjp: Sequence[Any] | None = None,
              batch: Callable[..., Any] | None = None, pattern: Callable[..., Any] | None = None,
              doc: str = "") -> Callable[..., Any]:
    """Define your own op and return the function that builds its nodes.

    - `name`: with a "/" (`"my/square_plus"`), so it never clashes with a built-in op.
    - `kernel(*arrays, **attrs) -> array`: numpy in, numpy out. Its inputs are read-only; its
      result must have the dtype and sizes `infer` gave.
    - `infer(*metas, **attrs) -> (shape, dtype)`: the output's static shape (None for a size
      known only at run time) and dtype, from the inputs' `.shape` and `.dtype`; raise
      cg.ShapeError to refuse inputs.
    - `inputs`: how many (an int), or names: "x", "shape?" (optional, trailing), "xs+" (one
      or more, last).
    - `attrs`: name -> type (int, float, bool, str, tuple for ints) or `Attr` (with a default,
      allowed values, a minimum). Checked when a node is built, saved and loaded.
    - `jvp`, `vjp`: one rule per input, written with cgraph ops on Tensors:
      `jvp[i](t, out, *xs, **attrs)`, `vjp[i](g, out, *xs, **attrs)`; None (or leave the list
      short) where there is none (a derivative through it is then an error naming the op),
      `NONDIFF` for an input that carries no derivative.
    - `batch`, `pattern`: optional rules for `cg.vmap` and `cg.jacobian_sparsity` (the
      conventions are at the top of cgraph/ops/registry.py). Without `batch`, vmap applies
      the op to each example (a batch size known when vmap runs); without `pattern`, every
      output element is taken to depend on every input element.

    A file that uses the op loads only in a process that has defined it. Defining a name again
    replaces the earlier definition (as re-running a notebook cell would).
    """
    if not isinstance(name, str) or "/" not in name or not all(name.split("/")):
        raise GraphError(f"user op name {_short(name)} must contain a '/' between non-empty parts "
                         "(e.g. 'my/square_plus'), so that it never clashes with a built-in op")
    if not callable(kernel) or not callable(infer):
        raise TypeError(f"define_op({name!r}): kernel and infer must be callable")
    try:
        spec = Inputs.parse(inputs)
    except (TypeError, ValueError) as e:
        raise GraphError(f"define_op({name!r}): {e}") from None
    decls: dict[str, Attr] = {}
    for k, t in (attrs or {}).items():
        if not isinstance(k, str) or not k.isidentifier():
            raise GraphError(f"define_op({name!r}): attribute name {_short(k)} must be an identifier")
        if isinstance(t, Attr):
            decls[k] = t
        elif t in _TYPE_NAMES:
            decls[k] = Attr(_TYPE_NAMES[t])
        elif t in ATTR_TYPES:
            decls[k] = Attr(t)
        else:
            raise GraphError(f"define_op({name!r}): attribute {k!r} has type {_short(t)}; use int, float, bool, str, "
                             f"tuple, or one of {', '.join(ATTR_TYPES)}")
    rules = []
    for what, given in (("jvp", jvp), ("vjp", vjp)):
        given = tuple(given or ())
        n = 1 if spec.variadic else spec.maximum
        if len(given) > (n or 0):
            raise GraphError(f"define_op({name!r}): {len(given)} {what} rules for {spec.describe()}")
        rules.append(given)
    for what, given_rule in (("batch", batch), ("pattern", pattern)):
        if given_rule is not None and not callable(given_rule):
            raise TypeError(f"define_op({name!r}): {what} must be callable")
    op = OpDef(name, kernel, spec, decls, None, None, infer_fn=infer, jvp=rules[0], vjp=rules[1],
               batch=batch, pattern=pattern, doc=" ".join(doc.split()), user=True)
    return _register(op)


# ---- building nodes from Python values ---------------------------------------------------

class Operand:
    """What op functions accept as a value of the graph being built: `cgraph.graph.Tensor`
    derives from it, so that this module builds nodes (through the graph's public methods)
    without importing the graph module."""

    __slots__ = ()


def apply(op: str, *args: Any, **attrs: Any) -> Any:
    """Build `op(*args)` in the graph of its tensor arguments; numbers and arrays become
    constants (a Python number takes the dtype of the tensors it meets, as in JAX)."""
    graph = graph_of(op, args)
    tensors = lift_all(graph, args)
    return graph.add_node(op, [t.name for t in tensors], attrs)


def graph_of(op: str, args: Sequence[Any]) -> Any:
    """The graph to build in: the one graph the Tensors among `args` belong to, or, while a
    control-flow body is traced, the innermost of them when the others enclose it (their
    tensors are then captured as inputs of the body); an error if there is none, or if the
    graphs are unrelated."""
    graphs: list[Any] = []
    for a in args:
        if isinstance(a, Operand) and all(a.graph is not g for g in graphs):  # type: ignore[attr-defined]
            graphs.append(a.graph)  # type: ignore[attr-defined]
    if not graphs:
        raise GraphError(f"{op}: needs at least one Tensor argument (got only numbers or arrays)")
    for inner in graphs:
        enclosing = set(map(id, inner.enclosing()))
        if all(g is inner or id(g) in enclosing for g in graphs):
            return inner
    t = next(a for a in args if isinstance(a, Operand) and a.graph is graphs[1])  # type: ignore[attr-defined]
    raise GraphError(f"{op}: tensors {t.name!r} of graph {graphs[1].name!r} and of graph {graphs[0].name!r} "  # type: ignore
                     "cannot be combined")


def lift_all(graph: Any, args: Sequence[Any]) -> list[Any]:
    """Tensors of `graph` for `args`: Python and numpy values become constants, tensors of an
    enclosing graph are captured."""
    if all(isinstance(a, Operand) and a.graph is graph for a in args):  # type: ignore[attr-defined]
        return list(args)
    dtypes = [a.dtype for a in args if isinstance(a, Operand)]  # type: ignore[attr-defined]
    like = np.result_type(*dtypes) if dtypes else None
    return [(a if a.graph is graph else graph.capture(a)) if isinstance(a, Operand)  # type: ignore[attr-defined]
            else lift(graph, a, like) for a in args]


def lift(graph: Any, value: Any, like: np.dtype | None = None) -> Any:
    """A constant for `value`; a Python number takes the dtype `like` where it fits."""
    if isinstance(value, Operand):
        return value
    dtype: np.dtype | None
    if isinstance(value, bool):
        dtype = np.dtype(bool)
    elif isinstance(value, int):
        dtype = like if like is not None and like.kind in "fiu" else np.dtype(np.int64)
    elif isinstance(value, float):
        dtype = like if like is not None and like.kind == "f" else np.dtype(np.float64)
    else:
        arr = np.asarray(value)
        if arr.dtype == object:
            raise GraphError(f"cannot make a constant of {type(value).__name__}")
        dtype = None
    return graph.constant(None, value, dtype=dtype)


# ---- shape rules shared by many ops -------------------------------------------------------

def same_shape(x: Meta, *rest: Meta, **attrs: Any) -> Shape:
    """The first input's shape."""
    return x.shape


def elementwise_shape(*metas: Meta) -> Shape:
    """BROADCAST of the inputs' shapes."""
    return broadcast_shapes(*(m.shape for m in metas))


__all__ = ["ATTR_TYPES", "COMPARE", "DTYPES", "FLOAT", "INT64", "LEAF_OPS", "MEAN", "NONDIFF", "NUMERIC", "OPS",
           "PROMOTE", "REQUIRED", "RESULTS", "SAME", "SAME_FLOAT", "SAME_NUMERIC", "WHERE", "ZERO", "Arg", "Attr",
           "DtypeRule", "Inputs", "OpDef", "Operand", "Subgraph", "Unbatched", "apply", "define", "define_op",
           "get_op", "involution", "lift", "op_info", "passthrough", "rule", "unit"]
