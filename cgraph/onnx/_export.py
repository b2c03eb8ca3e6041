"""Export a cgraph Graph to an ONNX model.

Each cgraph op has one export rule in `RULES`: a function of the emitter and the node that
emits ONNX nodes and returns the name of the value holding the op's result. Ops ONNX has no
single operator for are written with several (softplus, logsumexp, scatter, the losses), in
the same numerically stable forms as cgraph's kernels. Params and constants become
initializers under their own names; inputs keep their names, with a `None` size as a symbolic
dimension; outputs keep their names. The model is checked (`onnx.checker`, full check) before
it is returned.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from os import PathLike
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from cgraph.errors import OnnxError
from cgraph.graph import Graph, Node
from cgraph.onnx._common import (
    CONSTANTS_KEY,
    FROZEN_KEY,
    STOP_GRADIENT_DOC,
    np_to_onnx_type,
    registrar,
    require,
)
from cgraph.version import __version__

if TYPE_CHECKING:
    import onnx

DEFAULT_OPSET = 17
MIN_OPSET = 13  # axes as inputs of ReduceSum, Squeeze and Unsqueeze; Softmax over one axis
INT64_MAX = np.iinfo(np.int64).max
INT64_MIN = np.iinfo(np.int64).min


class _Emitter:
    """Collects ONNX nodes; knows each cgraph node's ONNX value name and dtype."""

    def __init__(self, g: Graph, opset: int) -> None:
        self.onnx = require()
        self.g = g
        self.opset = opset
        self.nodes: list[Any] = []
        self.value: dict[str, str] = {}  # cgraph node name -> ONNX value name
        self.used: set[str] = set(g.nodes) | set(g.outputs)
        self.hint = ""  # the cgraph node being exported: a prefix for helper value names
        self.parts: dict[str, list[str]] = {}  # a control-flow node's ONNX outputs

    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self.used:
            name = f"{base}_{i}"
            i += 1
        self.used.add(name)
        return name

    def node(self, op_type: str, inputs: list[str], **attrs: Any) -> str:
        """Emit one ONNX node with one output; returns the output's name."""
        out = self.fresh(f"{self.hint}/{op_type}")
        self.nodes.append(self.onnx.helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def const(self, value: Any, dtype: Any = np.int64) -> str:
        """A Constant node (axes, shapes, scalars the rules need)."""
        arr = np.asarray(value, dtype=dtype)
        out = self.fresh(f"{self.hint}/const")
        tensor = self.onnx.numpy_helper.from_array(arr, out)
        self.nodes.append(self.onnx.helper.make_node("Constant", [], [out], name=out, value=tensor))
        return out

    def x(self, n: Node, i: int, dtype: Any = None) -> str:
        """Input `i` of node `n`, cast to `dtype` where it differs (cgraph follows numpy's
        type promotion; ONNX operators want equal types)."""
        src = n.inputs[i]
        name = self.value[src]
        if dtype is not None and self.g.nodes[src].dtype != np.dtype(dtype):
            name = self.cast(name, dtype)
        return name

    def cast(self, name: str, dtype: Any) -> str:
        return self.node("Cast", [name], to=np_to_onnx_type(np.dtype(dtype)))

    def reduce(self, op_type: str, x: str, axes: Any, keepdims: bool) -> str:
        """`op_type` over `axes` (never empty: ONNX reads no axes as all axes)."""
        axes = [int(a) for a in axes]
        if op_type == "ReduceSum" or self.opset >= 18:
            return self.node(op_type, [x, self.const(axes)], keepdims=int(keepdims))
        return self.node(op_type, [x], axes=axes, keepdims=int(keepdims))

    def unsqueeze(self, x: str, axes: Any) -> str:
        return self.node("Unsqueeze", [x, self.const([int(a) for a in axes])])

    def squeeze(self, x: str, axes: Any) -> str:
        return self.node("Squeeze", [x, self.const([int(a) for a in axes])])


Rule = Callable[[_Emitter, Node], "str | None"]
RULES: dict[str, Rule] = {}


_rule = registrar(RULES)


# ---- elementwise --------------------------------------------------------------------------

def _documented(rule: Rule, doc: str) -> Rule:
    """`rule` with `doc` as its docstring: the ONNX form the op catalogue shows."""
    rule.__doc__ = doc
    return rule


def _same_type(onnx_op: str) -> Rule:
    """An ONNX operator on inputs cast to the node's dtype (numpy's promotion made explicit)."""
    return _documented(lambda e, n: e.node(onnx_op, [e.x(n, i, n.dtype) for i in range(len(n.inputs))]),
                       f"{onnx_op}, the inputs cast to the output's dtype")


def _unary(onnx_op: str) -> Rule:
    return _documented(lambda e, n: e.node(onnx_op, [e.x(n, 0)]), onnx_op)


for _op, _onnx_op in (("add", "Add"), ("sub", "Sub"), ("mul", "Mul"), ("div", "Div"), ("pow", "Pow"),
                      ("maximum", "Max"), ("minimum", "Min"), ("matmul", "MatMul")):
    RULES[_op] = _same_type(_onnx_op)
for _op, _onnx_op in (("neg", "Neg"), ("exp", "Exp"), ("log", "Log"), ("sqrt", "Sqrt"), ("abs", "Abs"),
                      ("sign", "Sign"), ("sin", "Sin"), ("cos", "Cos"), ("tanh", "Tanh"),
                      ("logistic", "Sigmoid"), ("relu", "Relu"), ("atan", "Atan"), ("erf", "Erf")):
    RULES[_op] = _unary(_onnx_op)


def _rounding(onnx_op: str) -> Rule:
    """An ONNX operator of float inputs; an int input is its own result."""
    return _documented(lambda e, n: e.node(onnx_op, [e.x(n, 0)]) if n.dtype.kind == "f"
                       else e.node("Identity", [e.x(n, 0)]), f"{onnx_op} (Identity for ints)")


for _op, _onnx_op in (("floor", "Floor"), ("ceil", "Ceil"), ("round", "Round")):
    RULES[_op] = _rounding(_onnx_op)


@_rule("mod")
def _mod(e: _Emitter, n: Node) -> str:
    """Mod, the inputs cast to the output's dtype; a float remainder with b's sign is a - b * Floor(a / b)

    (ONNX's Mod takes floats only with fmod=1.)"""
    a, b = e.x(n, 0, n.dtype), e.x(n, 1, n.dtype)
    if n.dtype.kind == "f" and not n.attrs["fmod"]:
        return e.node("Sub", [a, e.node("Mul", [b, e.node("Floor", [e.node("Div", [a, b])])])])
    return e.node("Mod", [a, b], fmod=int(n.attrs["fmod"]))


@_rule("log1p")
def _log1p(e: _Emitter, n: Node) -> str:
    """Log(1 + x)"""
    return e.node("Log", [e.node("Add", [e.x(n, 0), e.const(1, n.dtype)])])


@_rule("expm1")
def _expm1(e: _Emitter, n: Node) -> str:
    """Exp(x) - 1"""
    return e.node("Sub", [e.node("Exp", [e.x(n, 0)]), e.const(1, n.dtype)])


@_rule("atan2")
def _atan2(e: _Emitter, n: Node) -> str:
    """Atan(a / b), plus pi (a >= 0) or -pi (a < 0) where b < 0, and 0 where a = b = 0

    The quadrant correction of atan(a / b), with the inputs cast to the output's dtype."""
    a, b = e.x(n, 0, n.dtype), e.x(n, 1, n.dtype)
    zero = e.const(0, n.dtype)
    base = e.node("Atan", [e.node("Div", [a, b])])
    turn = e.node("Where", [e.node("Less", [a, zero]), e.const(-np.pi, n.dtype), e.const(np.pi, n.dtype)])
    out = e.node("Add", [base, e.node("Where", [e.node("Less", [b, zero]), turn, zero])])
    origin = e.node("Equal", [e.node("Add", [e.node("Abs", [a]), e.node("Abs", [b])]), zero])
    return e.node("Where", [origin, zero, out])


@_rule("clip")
def _clip(e: _Emitter, n: Node) -> str:
    """Min(Max(x, lo), hi), the inputs cast to the output's dtype (ONNX's Clip takes scalar bounds only)"""
    low = e.node("Max", [e.x(n, 0, n.dtype), e.x(n, 1, n.dtype)])
    return e.node("Min", [low, e.x(n, 2, n.dtype)])


@_rule("square")
def _square(e: _Emitter, n: Node) -> str:
    """Mul(x, x)"""
    x = e.x(n, 0)
    return e.node("Mul", [x, x])


@_rule("softplus")
def _softplus(e: _Emitter, n: Node) -> str:
    """Relu(x) + Log(1 + Exp(-Abs(x))), which never overflows, as cgraph's logaddexp(0, x)"""
    x = e.x(n, 0)
    tail = e.node("Exp", [e.node("Neg", [e.node("Abs", [x])])])
    tail = e.node("Log", [e.node("Add", [e.const(1, n.dtype), tail])])
    return e.node("Add", [e.node("Relu", [x]), tail])


_COMPARE = {"less": "Less", "less_equal": "LessOrEqual", "greater": "Greater",
            "greater_equal": "GreaterOrEqual", "equal": "Equal"}


def _compare(onnx_op: str) -> Rule:
    def rule(e: _Emitter, n: Node) -> str:
        common = np.result_type(*(e.g.nodes[s].dtype for s in n.inputs))
        if common == np.bool_ and n.op != "equal":  # ONNX orders numbers only
            common = np.dtype(np.int64)
        return e.node(onnx_op, [e.x(n, 0, common), e.x(n, 1, common)])
    return _documented(rule, f"{onnx_op}, the inputs cast to their common type (bools to int64 for ordering)")


for _op, _onnx_op in _COMPARE.items():
    RULES[_op] = _compare(_onnx_op)


@_rule("where")
def _where(e: _Emitter, n: Node) -> str:
    """Where, a and b cast to the output's dtype (for bools, which onnxruntime's Where lacks:
    Or(And(cond, a), And(Not(cond), b)))"""
    c, a, b = e.x(n, 0), e.x(n, 1, n.dtype), e.x(n, 2, n.dtype)
    if n.dtype == np.bool_:
        return e.node("Or", [e.node("And", [c, a]), e.node("And", [e.node("Not", [c]), b])])
    return e.node("Where", [c, a, b])


@_rule("cast")
def _cast(e: _Emitter, n: Node) -> str:
    """Cast"""
    return e.cast(e.x(n, 0), n.dtype)


@_rule("stop_gradient")
def _stop_gradient(e: _Emitter, n: Node) -> str:
    """Identity, marked in its doc_string so that cgraph's import restores stop_gradient"""
    out = e.node("Identity", [e.x(n, 0)])
    e.nodes[-1].doc_string = STOP_GRADIENT_DOC
    return out


# ---- shapes and moving elements -----------------------------------------------------------

@_rule("transpose")
def _transpose(e: _Emitter, n: Node) -> str:
    """Transpose (perm = axes)"""
    if not n.attrs["axes"]:  # a 0-d value: ONNX cannot type an empty perm attribute
        return e.node("Identity", [e.x(n, 0)])
    return e.node("Transpose", [e.x(n, 0)], perm=[int(a) for a in n.attrs["axes"]])


def _shape_input(e: _Emitter, n: Node) -> str:
    """The target shape of an op with a `shape_arg`: the run-time shape input, else the
    attribute as a constant."""
    if len(n.inputs) > 1:
        return e.x(n, 1)
    return e.const([int(d) for d in n.attrs["shape"]])


@_rule("shape_of")
def _shape_of(e: _Emitter, n: Node) -> str:
    """Shape"""
    return e.node("Shape", [e.x(n, 0)])


@_rule("reshape")
def _reshape(e: _Emitter, n: Node) -> str:
    """Reshape (allowzero=1 for a static shape with a 0 size)"""
    shape = n.attrs["shape"]
    zero_size = len(n.inputs) == 1 and 0 in shape and -1 not in shape
    attrs = {"allowzero": 1} if zero_size and e.opset >= 14 else {}  # a 0 is a size, not "copy"
    return e.node("Reshape", [e.x(n, 0), _shape_input(e, n)], **attrs)


@_rule("broadcast_to")
def _broadcast_to(e: _Emitter, n: Node) -> str:
    """Expand"""
    return e.node("Expand", [e.x(n, 0), _shape_input(e, n)])


@_rule("sum_to")
def _sum_to(e: _Emitter, n: Node) -> str:
    """ReduceSum over the stretched axes (found in the graph with Shape, Equal, NonZero for a run-time shape)"""
    x_shape = e.g.nodes[n.inputs[0]].shape
    shape = n.attrs["shape"]
    lead = len(x_shape) - len(shape)
    out = e.x(n, 0)
    if len(n.inputs) > 1:  # a run-time target: sum where it is 1 and x is not, found in-graph
        tail = e.node("Slice", [e.node("Shape", [out]), e.const([lead]), e.const([INT64_MAX])])
        one = e.const([1])
        stretched = e.node("And", [e.node("Equal", [e.x(n, 1), one]),
                                   e.node("Not", [e.node("Equal", [tail, one])])])
        axes = e.node("Add", [e.node("Reshape", [e.node("NonZero", [stretched]), e.const([-1])]),
                              e.const([lead])])
        out = e.node("ReduceSum", [out, axes], keepdims=1, noop_with_empty_axes=1)
    else:
        ones = [lead + i for i, d in enumerate(shape) if d == 1 and x_shape[lead + i] != 1]
        if ones:
            out = e.reduce("ReduceSum", out, ones, keepdims=True)
    if lead:
        out = e.reduce("ReduceSum", out, range(lead), keepdims=False)
    return out


@_rule("expand_dims")
def _expand_dims(e: _Emitter, n: Node) -> str:
    """Unsqueeze"""
    return e.unsqueeze(e.x(n, 0), n.attrs["axes"])


@_rule("squeeze")
def _squeeze(e: _Emitter, n: Node) -> str:
    """Squeeze (Identity for no axes)"""
    axes = n.attrs["axes"]  # ONNX reads no axes as "every axis of size 1"
    return e.squeeze(e.x(n, 0), axes) if axes else e.x(n, 0)


@_rule("concat")
def _concat(e: _Emitter, n: Node) -> str:
    """Concat, the inputs cast to the output's dtype"""
    axis = int(n.attrs["axis"]) % len(n.shape)
    return e.node("Concat", [e.x(n, i, n.dtype) for i in range(len(n.inputs))], axis=axis)


def _index(e: _Emitter, x: str, ndim: int, index: tuple) -> str:
    """x[index] for basic indexing: one Slice, a Squeeze of the int axes, an Unsqueeze of the
    None axes. Python's clamping of slice bounds is ONNX Slice's."""
    consumed = sum(1 for it in index if it is not None and it is not Ellipsis)
    items: list[Any] = []
    for it in index:
        items.extend([slice(None)] * (ndim - consumed) if it is Ellipsis else [it])
    if Ellipsis not in index:
        items.extend([slice(None)] * (ndim - consumed))
    starts, ends, axes, steps, drop, new = [], [], [], [], [], []
    axis = out_pos = 0
    for it in items:
        if it is None:
            new.append(out_pos)
            out_pos += 1
            continue
        if isinstance(it, int):
            starts.append(it)
            ends.append(INT64_MAX if it == -1 else it + 1)
            axes.append(axis)
            steps.append(1)
            drop.append(axis)
        elif it != slice(None):
            step = 1 if it.step is None else it.step
            starts.append(it.start if it.start is not None else (0 if step > 0 else INT64_MAX))
            ends.append(it.stop if it.stop is not None else (INT64_MAX if step > 0 else INT64_MIN))
            axes.append(axis)
            steps.append(step)
            out_pos += 1
        else:
            out_pos += 1
        axis += 1
    out = x
    if axes:
        out = e.node("Slice", [out, e.const(starts), e.const(ends), e.const(axes), e.const(steps)])
    if drop:
        out = e.squeeze(out, drop)
    if new:
        out = e.unsqueeze(out, new)
    return out


@_rule("getitem")
def _getitem(e: _Emitter, n: Node) -> str:
    """Slice, then Squeeze of the integer-indexed axes and Unsqueeze of the new ones"""
    return _index(e, e.x(n, 0), len(e.g.nodes[n.inputs[0]].shape), n.attrs["index"])


@_rule("scatter")
def _scatter(e: _Emitter, n: Node) -> str:
    """ScatterND of g into ConstantOfShape zeros, at the positions getitem's Slice picks from a Range

    Zeros of `shape` with g written at `index`: index the flat positions 0..size-1 (laid out in
    `shape`) the way getitem does, and ScatterND g's elements there."""
    shape = _shape_input(e, n)
    size = e.node("ReduceProd", [shape], keepdims=0)
    positions = e.node("Range", [e.const(0), size, e.const(1)])
    chosen = _index(e, e.node("Reshape", [positions, shape]), len(n.attrs["shape"]), n.attrs["index"])
    chosen = e.node("Reshape", [chosen, e.const([-1, 1])])
    updates = e.node("Reshape", [e.x(n, 0, n.dtype), e.const([-1])])
    zeros = e.node("ConstantOfShape", [e.unsqueeze(size, [0])],
                   value=e.onnx.numpy_helper.from_array(np.zeros(1, n.dtype)))
    return e.node("Reshape", [e.node("ScatterND", [zeros, chosen, updates]), shape])


@_rule("dim_size")
def _dim_size(e: _Emitter, n: Node) -> str:
    """ReduceProd of Gather(Shape(x), axes), cast to the output's dtype"""
    sizes = e.node("Gather", [e.node("Shape", [e.x(n, 0)]), e.const(list(n.attrs["axes"]))])
    return e.cast(e.node("ReduceProd", [sizes], keepdims=0), n.dtype)


# ---- reductions and the ops of neural networks ----------------------------------------------

def _reduction(onnx_op: str) -> Rule:
    def rule(e: _Emitter, n: Node) -> str:
        x = e.x(n, 0, n.dtype)
        axes = n.attrs["axes"]
        return e.reduce(onnx_op, x, axes, n.attrs["keepdims"]) if axes else x
    return _documented(rule, f"{onnx_op} (Identity over no axes)")


RULES["sum"] = _reduction("ReduceSum")
RULES["mean"] = _reduction("ReduceMean")
RULES["max"] = _reduction("ReduceMax")
RULES["min"] = _reduction("ReduceMin")
RULES["prod"] = _reduction("ReduceProd")


@_rule("argmax")
def _argmax(e: _Emitter, n: Node) -> str:
    """ArgMax (the first index of ties)"""
    return e.node("ArgMax", [e.x(n, 0)], axis=int(n.attrs["axis"]), keepdims=int(n.attrs["keepdims"]))


@_rule("cumsum")
def _cumsum(e: _Emitter, n: Node) -> str:
    """CumSum (reverse as the attribute)"""
    return e.node("CumSum", [e.x(n, 0), e.const(int(n.attrs["axis"]))], reverse=int(n.attrs["reverse"]))


# ---- gathering ------------------------------------------------------------------------------

@_rule("take")
def _take(e: _Emitter, n: Node) -> str:
    """Gather"""
    return e.node("Gather", [e.x(n, 0), e.x(n, 1)], axis=int(n.attrs["axis"]))


def _one_hot_of(e: _Emitter, indices: str, depth: int, dtype: Any) -> str:
    """OneHot with int64 values (onnxruntime has no float64 OneHot), cast to `dtype`."""
    out = e.node("OneHot", [indices, e.const(depth), e.const([0, 1])], axis=-1)
    return out if np.dtype(dtype) == np.int64 else e.cast(out, dtype)


@_rule("one_hot")
def _one_hot(e: _Emitter, n: Node) -> str:
    """OneHot with values (0, 1) as int64, then Cast to the dtype

    ONNX's OneHot needs indices of rank >= 1: a 0-d index is reshaped to (1,) and the row back
    to (depth,)."""
    depth = int(n.attrs["depth"])
    if e.g.nodes[n.inputs[0]].shape:
        return _one_hot_of(e, e.x(n, 0), depth, n.dtype)
    row = _one_hot_of(e, e.node("Reshape", [e.x(n, 0), e.const([1])]), depth, n.dtype)
    return e.node("Reshape", [row, e.const([depth])])


@_rule("scatter_add")
def _scatter_add(e: _Emitter, n: Node) -> str:
    """MatMul of g (the indices' axes moved last and flattened) with OneHot(indices), then Transpose back

    g's slices summed into `size` positions: the indices' axes are moved to the end and
    flattened (Transpose, Reshape), multiplied by the one-hot rows of the indices, and the new
    axis moved to `axis`."""
    g_shape = e.g.nodes[n.inputs[0]].shape
    idx_shape = e.g.nodes[n.inputs[1]].shape
    axis, k, nd = int(n.attrs["axis"]), len(idx_shape), len(g_shape)
    flat = 0 if None in idx_shape else math.prod(cast(tuple[int, ...], idx_shape))
    g = _permute(e, e.x(n, 0), [*range(axis), *range(axis + k, nd), *range(axis, axis + k)])
    g = e.node("Reshape", [g, e.const([0] * (nd - k) + [flat or -1])])  # (a 0 copies the size there)
    hot = _one_hot_of(e, e.node("Reshape", [e.x(n, 1), e.const([-1])]), int(n.attrs["size"]), n.dtype)
    return _permute(e, e.node("MatMul", [g, hot]), [*range(axis), nd - k, *range(axis, nd - k)])


def _permute(e: _Emitter, x: str, perm: list[int]) -> str:
    """Transpose, or x itself when `perm` moves nothing."""
    return x if perm == sorted(perm) else e.node("Transpose", [x], perm=perm)


# ---- dropout, convolution and pooling --------------------------------------------------------

@_rule("dropout")
def _dropout(e: _Emitter, n: Node) -> str:
    """Dropout in training mode (onnxruntime draws its own mask: the same distribution, not cgraph's mask)"""
    ratio = e.const(float(n.attrs["rate"]), n.dtype)
    return e.node("Dropout", [e.x(n, 0), ratio, e.const(True, np.bool_)])


def _conv_attrs(n: Node) -> dict[str, Any]:
    a = n.attrs
    return {"strides": list(a["stride"]), "pads": list(a["padding"]), "dilations": list(a["dilation"]),
            "group": int(a["groups"])}


@_rule("conv2d")
def _conv2d(e: _Emitter, n: Node) -> str:
    """Conv (pads in the same order: top, left, bottom, right)"""
    return e.node("Conv", [e.x(n, 0, n.dtype), e.x(n, 1, n.dtype)], **_conv_attrs(n))


def _output_padding(n: Node, size: tuple, g_hw: tuple, kernel: tuple, stride: tuple, dilation: tuple) -> list[int]:
    """ConvTranspose's output_padding that gives `size` back from conv2d's output `g_hw`."""
    pads = n.attrs["padding"]
    if None in size or None in g_hw or None in kernel:
        raise OnnxError(f"{n.name} ({n.op}): the ONNX form needs static image and kernel sizes")
    return [size[a] + pads[a] + pads[a + 2] - dilation[a] * (kernel[a] - 1) - 1 - stride[a] * (g_hw[a] - 1)
            for a in (0, 1)]


@_rule("conv2d_transpose")
def _conv2d_transpose(e: _Emitter, n: Node) -> str:
    """ConvTranspose, output_padding chosen to give `size`"""
    a = n.attrs
    g_hw, kernel = e.g.nodes[n.inputs[0]].shape[2:], e.g.nodes[n.inputs[1]].shape[2:]
    pad = _output_padding(n, a["size"], g_hw, kernel, a["stride"], a["dilation"])
    return e.node("ConvTranspose", [e.x(n, 0, n.dtype), e.x(n, 1, n.dtype)], output_padding=pad, **_conv_attrs(n))


@_rule("conv2d_filter_grad")
def _conv2d_filter_grad(e: _Emitter, n: Node) -> str:
    """Conv of x's channels (as the batch) with g's (as the kernels), stride and dilation swapped, Slice, Transpose

    out[o, c] = sum over n of x[n, group(o) c] correlated with g[n, o]: x reshaped to
    (C / groups, groups * N, H, W) (grouped by N), g transposed to (O, N, Ho, Wo), one grouped
    Conv with strides = dilation and dilations = stride, sliced to the kernel's size and
    transposed to (O, C / groups, kh, kw)."""
    a = n.attrs
    x_shape = e.g.nodes[n.inputs[0]].shape
    groups, (cg, kh, kw) = int(a["groups"]), n.shape[1:]
    if None in x_shape[1:]:
        raise OnnxError(f"{n.name} ({n.op}): the ONNX form needs static channels, height and width, got {x_shape}")
    h, w = x_shape[2:]
    x = e.node("Reshape", [e.x(n, 0, n.dtype), e.const([0, groups, cg, h, w])])
    x = e.node("Reshape", [e.node("Transpose", [x], perm=[2, 1, 0, 3, 4]), e.const([cg, -1, h, w])])
    k = e.node("Transpose", [e.x(n, 1, n.dtype)], perm=[1, 0, 2, 3])
    out = e.node("Conv", [x, k], strides=list(a["dilation"]), dilations=list(a["stride"]), pads=list(a["padding"]),
                 group=groups)
    out = e.node("Slice", [out, e.const([0, 0]), e.const([kh, kw]), e.const([2, 3])])
    return e.node("Transpose", [out], perm=[1, 0, 2, 3])


def _pool_attrs(n: Node) -> dict[str, Any]:
    a = n.attrs
    return {"kernel_shape": list(a["kernel"]), "strides": list(a["stride"]), "pads": list(a["padding"])}


@_rule("max_pool2d")
def _max_pool2d(e: _Emitter, n: Node) -> str:
    """MaxPool"""
    return e.node("MaxPool", [e.x(n, 0)], **_pool_attrs(n))


@_rule("avg_pool2d")
def _avg_pool2d(e: _Emitter, n: Node) -> str:
    """AveragePool (count_include_pad as the attribute)"""
    return e.node("AveragePool", [e.x(n, 0)], count_include_pad=int(n.attrs["count_include_pad"]), **_pool_attrs(n))


def _pool_geometry(n: Node, x_shape: tuple) -> tuple[int, tuple, tuple]:
    """Channels, (H, W) and (Ho, Wo) of a pooling node's input, all static, or OnnxError."""
    from cgraph.ops.conv import out_size

    a = n.attrs
    if None in x_shape[1:]:
        raise OnnxError(f"{n.name} ({n.op}): the ONNX form needs static channels, height and width, got {x_shape}")
    hw = tuple(x_shape[2:])
    out = tuple(out_size(hw[i], a["kernel"][i], a["stride"][i], 1, a["padding"][i], a["padding"][i + 2])
                for i in (0, 1))
    return int(x_shape[1]), hw, out


def _taps_kernel(e: _Emitter, n: Node, channels: int, dtype: Any) -> str:
    """The (C kh kw, 1, kh, kw) kernel whose channel c kh kw + k is 1 at tap k: a grouped Conv
    with it lists each window's elements; a grouped ConvTranspose puts them back."""
    kh, kw = n.attrs["kernel"]
    eye = np.eye(kh * kw, dtype=dtype).reshape(kh * kw, 1, kh, kw)
    return e.const(np.tile(eye, (channels, 1, 1, 1)), dtype)


def _spread(e: _Emitter, n: Node, parts: str, kernel: str, channels: int, hw: tuple, out_hw: tuple) -> str:
    """ConvTranspose (grouped by channel) of `parts` with `kernel`: each window's values added
    back at its elements, to the image size `hw`."""
    a = n.attrs
    pad = _output_padding(n, hw, out_hw, a["kernel"], a["stride"], (1, 1))
    return e.node("ConvTranspose", [parts, kernel], output_padding=pad, group=channels, **_pool_attrs(n))


def _windows(e: _Emitter, n: Node, x: str, kernel: str, channels: int, out_hw: tuple) -> str:
    """(N, C, kh kw, Ho, Wo): each window's elements (0 in the padding)."""
    kh, kw = n.attrs["kernel"]
    win = e.node("Conv", [x, kernel], group=channels, **_pool_attrs(n))
    return e.node("Reshape", [win, e.const([0, channels, kh * kw, *out_hw])])


def _max_share(e: _Emitter, n: Node) -> tuple[str, int, tuple, tuple, str]:
    """(N, C, kh kw, Ho, Wo): 1/k at the k elements of each window that reach its max (inside
    the image), else 0; also the channels, sizes and the taps kernel."""
    from cgraph.ops.conv import _taps

    a = n.attrs
    x = e.x(n, 1, n.dtype)
    channels, hw, out_hw = _pool_geometry(n, e.g.nodes[n.inputs[1]].shape)
    kernel = _taps_kernel(e, n, channels, n.dtype)
    inside = np.zeros((a["kernel"][0] * a["kernel"][1], *out_hw), n.dtype)
    for i, j, region, _ in _taps(hw, out_hw, a["kernel"], a["stride"], a["padding"]):
        inside[i * a["kernel"][1] + j][region[1:]] = 1
    top = e.unsqueeze(e.node("MaxPool", [x], **_pool_attrs(n)), [2])
    hit = e.node("Mul", [e.cast(e.node("Equal", [_windows(e, n, x, kernel, channels, out_hw), top]), n.dtype),
                         e.const(inside, n.dtype)])
    share = e.node("Div", [hit, e.reduce("ReduceSum", hit, [2], keepdims=True)])
    return share, channels, hw, out_hw, kernel


@_rule("max_pool2d_scatter")
def _max_pool2d_scatter(e: _Emitter, n: Node) -> str:
    """ConvTranspose of g times each window's max share (found with MaxPool, a taps Conv and Equal)"""
    share, channels, hw, out_hw, kernel = _max_share(e, n)
    kh, kw = n.attrs["kernel"]
    parts = e.node("Mul", [share, e.unsqueeze(e.x(n, 0, n.dtype), [2])])
    parts = e.node("Reshape", [parts, e.const([0, channels * kh * kw, *out_hw])])
    return _spread(e, n, parts, kernel, channels, hw, out_hw)


@_rule("max_pool2d_gather")
def _max_pool2d_gather(e: _Emitter, n: Node) -> str:
    """ReduceSum over each window of t (a taps Conv) times the window's max share"""
    share, channels, _, out_hw, kernel = _max_share(e, n)
    t = _windows(e, n, e.x(n, 0, n.dtype), kernel, channels, out_hw)
    return e.reduce("ReduceSum", e.node("Mul", [share, t]), [2], keepdims=False)


@_rule("avg_pool2d_scatter")
def _avg_pool2d_scatter(e: _Emitter, n: Node) -> str:
    """ConvTranspose (grouped by channel) of g divided as avg_pool2d divides, with a kernel of ones"""
    from cgraph.ops.conv import _divisor

    a = n.attrs
    channels, hw, out_hw = _pool_geometry(n, a["shape"])
    kh, kw = a["kernel"]
    divisor = _divisor(hw, out_hw, a["kernel"], a["stride"], a["padding"], a["count_include_pad"], n.dtype)
    parts = e.node("Div", [e.x(n, 0), e.const(divisor, n.dtype)])
    return _spread(e, n, parts, e.const(np.ones((channels, 1, kh, kw)), n.dtype), channels, hw, out_hw)


def _max_kept(e: _Emitter, x: str, axes: Any) -> str:
    """The max over `axes`, kept as size-1 axes: cgraph's max trick."""
    return e.reduce("ReduceMax", x, axes, keepdims=True)


def _softmax_like(onnx_op: str) -> Rule:
    def rule(e: _Emitter, n: Node) -> str:
        x = e.x(n, 0)
        axes = n.attrs["axes"]
        if len(axes) == 1:
            return e.node(onnx_op, [x], axis=int(axes[0]))
        if not axes:
            raise OnnxError(f"{n.name} ({n.op}): no ONNX form over zero axes")
        shifted = e.node("Sub", [x, _max_kept(e, x, axes)])
        total = e.reduce("ReduceSum", e.node("Exp", [shifted]), axes, keepdims=True)
        if onnx_op == "Softmax":
            return e.node("Div", [e.node("Exp", [shifted]), total])
        return e.node("Sub", [shifted, e.node("Log", [total])])
    return _documented(rule, f"{onnx_op} over one axis; over several, the max trick with ReduceMax, Exp, ReduceSum")


RULES["softmax"] = _softmax_like("Softmax")
RULES["log_softmax"] = _softmax_like("LogSoftmax")


@_rule("logsumexp")
def _logsumexp(e: _Emitter, n: Node) -> str:
    """Log(ReduceSum(Exp(x - m))) + m, m = ReduceMax(x) (the max trick)"""
    x = e.x(n, 0)
    axes = n.attrs["axes"]
    if not axes:
        return x
    m = _max_kept(e, x, axes)
    total = e.reduce("ReduceSum", e.node("Exp", [e.node("Sub", [x, m])]), axes, keepdims=True)
    out = e.node("Add", [e.node("Log", [total]), m])
    return out if n.attrs["keepdims"] else e.squeeze(out, axes)


@_rule("nll")
def _nll(e: _Emitter, n: Node) -> str:
    """Neg(ReduceMean over rows of ReduceSum(y * logp)): the row count comes from ReduceMean

    -(mean over rows of sum over the rest of y * logp), with no Shape."""
    logp, y = e.x(n, 0), e.x(n, 1, n.dtype)
    ndim = len(e.g.nodes[n.inputs[0]].shape)
    per_row = e.reduce("ReduceSum", e.node("Mul", [y, logp]), range(1, ndim), keepdims=False)
    return e.node("Neg", [e.reduce("ReduceMean", per_row, [0], keepdims=False)])


# ---- control flow --------------------------------------------------------------------------
#
# A body becomes an ONNX subgraph: its inputs are bound to the ONNX values the operator gives
# the subgraph, or to values of the graph around it (ONNX subgraphs read those by name), its
# constants are Constant nodes and its outputs Identity nodes of fresh names. A control-flow
# rule records its node's ONNX outputs (`e.parts`) and returns None; `result` picks one.

def _body(e: _Emitter, body: Graph, bind: dict[str, str], formal: list[tuple[str, Node]],
          outputs: list[str] | None = None, extra: Sequence[str] = ()) -> Any:
    """The ONNX GraphProto of `body`: `formal` lists (ONNX input name, the body input it is);
    `bind` gives the other inputs' outer names; its outputs are the body's (or those named in
    `outputs`), then the body inputs named in `extra` passed through."""
    onnx = e.onnx
    sub = _Emitter(body, e.opset)
    sub.used = e.used  # one namespace for the graph and its subgraphs
    sub.parts = {}
    for node in body.nodes.values():
        if node.op == "input":
            sub.value[node.name] = bind[node.name]
        elif node.is_leaf:
            sub.hint = node.name
            sub.value[node.name] = sub.const(np.asarray(body.value(node.name)), body.nodes[node.name].dtype)
        else:
            sub.hint = e.fresh(node.name)
            got = RULES[node.op](sub, node)
            if got is not None:
                sub.value[node.name] = got
    outs = []
    chosen = [(o, body.outputs[o]) for o in (list(body.outputs) if outputs is None else outputs)]
    for o, t in [*chosen, *((n, body[n]) for n in extra)]:
        name = e.fresh(f"{body.name}/{o}")
        sub.nodes.append(onnx.helper.make_node("Identity", [sub.value[t.name]], [name], name=name))
        outs.append(_value_info(onnx, name, t.dtype, t.shape, symbols=False))
    ins = [_value_info(onnx, n, node.dtype, node.shape, symbols=False) for n, node in formal]
    return onnx.helper.make_graph(sub.nodes, e.fresh(body.name), ins, outs)


def _formal(e: _Emitter, body: Graph, names: list[str], which: Sequence[int]) -> tuple[dict[str, str], list]:
    """Fresh ONNX input names for the body inputs at positions `which`."""
    bind, formal = {}, []
    for i in which:
        n = names[i]
        bind[n] = e.fresh(f"{body.name}/{n}")
        formal.append((bind[n], body.nodes[n]))
    return bind, formal


def _outputs(e: _Emitter, n: Node, count: int) -> list[str]:
    return [e.fresh(f"{e.hint}/{i}") for i in range(count)]


@_rule("result")
def _result(e: _Emitter, n: Node) -> str:
    """the ONNX output of its control-flow node (If, Scan or Loop) at `index`"""
    return e.parts[n.inputs[0]][n.attrs["index"]]


@_rule("cond")
def _cond(e: _Emitter, n: Node) -> None:
    """If, the branches as subgraphs reading the operands from the graph around them"""
    outer = [e.value[s] for s in n.inputs[1:]]
    branches = []
    for key in ("then_branch", "else_branch"):
        body = n.attrs[key]
        branches.append(_body(e, body, dict(zip(body.inputs, outer, strict=True)), []))
    outs = _outputs(e, n, len(n.parts or ()))
    e.nodes.append(e.onnx.helper.make_node("If", [e.value[n.inputs[0]]], outs, name=e.fresh(e.hint),
                                           then_branch=branches[0], else_branch=branches[1]))
    e.parts[n.name] = outs


@_rule("scan")
def _scan(e: _Emitter, n: Node) -> None:
    """Scan (reverse: scan_input_directions and scan_output_directions 1; with no slices, a
    ConstantOfShape of the length scanned; checkpoints: the carries stacked, Gather at the
    schedule's steps)"""
    a = n.attrs
    body, c, m = a["body"], a["carries"], a["slices"]
    names = list(body.inputs)
    stacked = _emit_scan(e, n, body, [e.value[s] for s in n.inputs[:c]], n.inputs[c:c + m], n.inputs[c + m:],
                         list(body.outputs), names[:c] if a["checkpoints"] else [], a["reverse"], a["length"])
    outs = stacked[:len(n.parts or ()) - (c if a["checkpoints"] else 0)]
    if a["checkpoints"]:
        from cgraph.control import first_sweep
        steps = e.g.nodes[n.inputs[c]].shape[0] if m else a["length"]
        if steps is None:
            raise OnnxError(f"{n.name} (scan): checkpoints need a static number of steps to export")
        at = first_sweep(steps, a["checkpoints"])
        order = [steps - 1 - k for k in at] if a["reverse"] else at
        assert n.parts is not None
        for x, all_in in zip(n.parts[:c], stacked[len(outs):], strict=True):
            picked = e.node("Gather", [all_in, e.const(order)], axis=0)
            pad = a["checkpoints"] - len(order)
            if pad:
                zeros = e.node("ConstantOfShape", [e.const([pad, *x.shape])], value=e.onnx.helper.make_tensor(
                    "zero", np_to_onnx_type(x.dtype), [1], [0]))
                picked = e.node("Concat", [picked, zeros], axis=0)
            outs.append(picked)
    e.parts[n.name] = outs


def _emit_scan(e: _Emitter, n: Node, body: Graph, state: list[str], slices: Any, rest: Any, outputs: list[str],
               extra: list[str], reverse: bool, length: int, order: list[int] | None = None) -> list[str]:
    """An ONNX Scan of `body` over the cgraph values `slices`, from `state` (ONNX names), the
    body's other inputs bound to `rest`; body inputs in `order` (default: state, slices, rest).
    Its outputs: the final state, then `outputs` past the state and the `extra` body inputs,
    stacked."""
    names = list(body.inputs)
    c, m = len(state), len(slices)
    order = list(range(len(names))) if order is None else order
    formal_at = order[:c + m]
    bind, formal = _formal(e, body, names, formal_at)
    bind.update({names[i]: e.value[s] for i, s in zip(order[c + m:], rest, strict=True)})
    xs = [e.value[s] for s in slices]
    if not m:
        dummy = e.fresh(f"{e.hint}/step")
        formal.append((dummy, Node(dummy, "input", (), {}, (), np.dtype(np.int64), 0)))
        xs = [e.node("ConstantOfShape", [e.const([length])], value=e.onnx.helper.make_tensor(
            "zero", np_to_onnx_type(np.dtype(np.int64)), [1], [0]))]
    graph = _body(e, body, bind, formal, outputs, extra)
    outs = [e.fresh(f"{e.hint}/{i}") for i in range(len(graph.output))]
    ny = len(outs) - c
    direction = int(reverse)
    directions = {"scan_output_directions": [direction] * ny} if ny else {}
    e.nodes.append(e.onnx.helper.make_node(
        "Scan", state + xs, outs, name=e.fresh(e.hint), body=graph,
        num_scan_inputs=len(xs), scan_input_directions=[direction] * len(xs), **directions))
    return outs


@_rule("scan_revolve")
def _scan_revolve(e: _Emitter, n: Node) -> None:
    """two Scans, the same values by storing every carry: the advance body forward (its carries
    stacked), then the adjoint body in the other direction"""
    a = n.attrs
    adv, adj, c, m, L, Y = a["advance"], a["adjoint"], a["carries"], a["slices"], a["cotangents"], a["ys"]
    k = len(adv.inputs) - c - m
    ins = n.inputs
    init, xs, closures = ins[:c], ins[2 * c:2 * c + m], ins[2 * c + m:2 * c + m + k]
    g, gys, acc = ins[2 * c + m + k:2 * c + m + k + L], ins[2 * c + m + k + L:2 * c + m + k + L + Y], \
        ins[2 * c + m + k + L + Y:]
    fwd = _emit_scan(e, n, adv, [e.value[s] for s in init], xs, closures, list(adv.outputs)[:c],
                     list(adv.inputs)[:c], a["reverse"], a["length"])
    carries_in = fwd[c:]
    tmp = {f"{e.hint}/carry{j}": v for j, v in enumerate(carries_in)}
    e.value.update(tmp)
    A = len(acc)
    order = [*range(c + m + k, c + m + k + L), *range(c + m + k + L + Y, c + m + k + L + Y + A),
             *range(c), *range(c, c + m), *range(c + m + k + L, c + m + k + L + Y), *range(c + m, c + m + k)]
    back = _emit_scan(e, n, adj, [e.value[s] for s in (*g, *acc)], [*tmp, *xs, *gys], closures,
                      list(adj.outputs), [], not a["reverse"], a["length"], order)
    e.parts[n.name] = back


@_rule("while_loop")
def _while_loop(e: _Emitter, n: Node) -> None:
    """Loop (M = max_trips, or none), its condition the cond subgraph run on the initial carries
    (an If-free copy of its nodes before the loop) and again in the body on the new carries"""
    onnx = e.onnx
    a = n.attrs
    cond, body, c = a["cond"], a["body"], a["carries"]
    names = list(body.inputs)
    outer = [e.value[s] for s in n.inputs]
    first = _inline_cond(e, cond, outer)
    bind, formal = _formal(e, body, names, range(c))
    bind.update({names[i]: outer[i] for i in range(c, len(names))})
    step, flag = e.fresh(f"{e.hint}/trip"), e.fresh(f"{e.hint}/cond")
    formal = [(step, Node(step, "input", (), {}, (), np.dtype(np.int64), 0)),
              (flag, Node(flag, "input", (), {}, (), np.dtype(bool), 0)), *formal]
    graph = _body(e, body, bind, formal)
    # the body's new carries, then cond on them, as the loop body's outputs: cond first
    new = [o.name for o in graph.output]
    again = _inline_cond(e, cond, new + outer[c:], into=graph)
    keep = e.fresh(f"{e.hint}/again")
    graph.node.append(onnx.helper.make_node("Identity", [again], [keep], name=keep))
    graph.output.insert(0, _value_info(onnx, keep, np.dtype(bool), (), symbols=False))
    outs = _outputs(e, n, c)
    trips = e.const(np.int64(a["max_trips"])) if a["max_trips"] >= 0 else ""
    e.nodes.append(onnx.helper.make_node("Loop", [trips, first, *outer[:c]], outs, name=e.fresh(e.hint), body=graph))
    e.parts[n.name] = outs


def _inline_cond(e: _Emitter, cond: Graph, values: list[str], into: Any = None) -> str:
    """cond's nodes on the values `values` (its inputs in order), appended to `e` or to the
    subgraph `into`; returns the name of its output."""
    sub = _Emitter(cond, e.opset)
    sub.used = e.used
    sub.parts = {}
    for node in cond.nodes.values():
        if node.op == "input":
            sub.value[node.name] = values[list(cond.inputs).index(node.name)]
        elif node.is_leaf:
            sub.hint = node.name
            sub.value[node.name] = sub.const(np.asarray(cond.value(node.name)), node.dtype)
        else:
            sub.hint = e.fresh(node.name)
            got = RULES[node.op](sub, node)
            if got is not None:
                sub.value[node.name] = got
    (out,) = cond.outputs.values()
    if into is None:
        e.nodes += sub.nodes
    else:
        into.node.extend(sub.nodes)
    return sub.value[out.name]


EXPORTABLE: frozenset[str] = frozenset(RULES)


# ---- the model -----------------------------------------------------------------------------

def _needed(g: Graph) -> list[Node]:
    """The nodes the outputs depend on, in creation (topological) order."""
    need = {t.name for t in g.outputs.values()}
    for node in reversed(list(g.nodes.values())):
        if node.name in need:
            need.update(node.inputs)
    return [n for n in g.nodes.values() if n.name in need]


def _value_info(onnx: Any, name: str, dtype: np.dtype, shape: tuple, symbols: bool) -> Any:
    dims = [f"{name}_dim{i}" if d is None and symbols else d for i, d in enumerate(shape)]
    return onnx.helper.make_tensor_value_info(name, np_to_onnx_type(dtype), dims)


def to_model(g: Graph, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """The ONNX model of `g` (see `export`), checked, not written."""
    onnx = require()
    newest = onnx.defs.onnx_opset_version()
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise OnnxError(f"opset {opset!r} is not supported: cgraph exports opsets {MIN_OPSET} to {newest}")
    if not g.outputs:
        raise OnnxError(f"graph {g.name!r} has no outputs to export")
    nodes = _needed(g)
    missing = Counter(n.op for n in nodes if not n.is_leaf and n.op not in RULES)
    if missing:
        listed = ", ".join(f"{op} ({k} node{'s' if k > 1 else ''})" for op, k in sorted(missing.items()))
        raise OnnxError(f"graph {g.name!r} cannot be exported to ONNX: no ONNX form for {listed}")

    e = _Emitter(g, opset)
    outputs = {k: t.name for k, t in g.outputs.items()}
    inits, inputs, constants, frozen = [], [], [], []
    for t in g.inputs.values():
        e.value[t.name] = t.name
        inputs.append(_value_info(onnx, t.name, t.dtype, t.shape, symbols=True))
    for node in nodes:
        if node.op == "input":
            continue
        own = node.name not in outputs or outputs[node.name] == node.name
        name = e.value[node.name] = node.name if own else e.fresh(node.name)
        if node.is_leaf:
            inits.append(onnx.numpy_helper.from_array(np.asarray(g.value(node.name)), name))
            if node.op == "constant":
                constants.append(name)
            elif not node.attrs.get("trainable", True):
                frozen.append(name)
            continue
        start = len(e.nodes)
        e.hint = name
        result = RULES[node.op](e, node)
        if result is not None:  # None: a control-flow node, whose outputs its results name
            _name_result(e, start, result, name)

    graph_outputs = []
    for out, src in outputs.items():
        value = e.value[src]
        if value != out:
            e.nodes.append(onnx.helper.make_node("Identity", [value], [out], name=out))
        node = g.nodes[src]
        graph_outputs.append(_value_info(onnx, out, node.dtype, node.shape, symbols=False))

    graph = onnx.helper.make_graph(e.nodes, g.name, inputs, graph_outputs, initializer=inits)
    opsets = [onnx.helper.make_opsetid("", opset)]
    model = onnx.helper.make_model(graph, opset_imports=opsets, producer_name="cgraph",
                                   ir_version=onnx.helper.find_min_ir_version_for(opsets))
    model.producer_version = __version__
    props = {**g.metadata, CONSTANTS_KEY: json.dumps(constants), FROZEN_KEY: json.dumps(frozen)}
    onnx.helper.set_model_props(model, props)
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise OnnxError(f"graph {g.name!r}: the exported model fails onnx.checker (a cgraph bug): {first}") from err
    return model


def _name_result(e: _Emitter, start: int, result: str, name: str) -> None:
    """Give the value `result` the name `name`: rename it if one of the nodes emitted since
    `start` made it, else (the rule passed a value through) add an Identity."""
    made = [nd for nd in e.nodes[start:] if result in nd.output]
    if not made:
        e.nodes.append(e.onnx.helper.make_node("Identity", [result], [name], name=name))
        return
    for nd in e.nodes[start:]:
        for seq in (nd.input, nd.output):
            for i, v in enumerate(seq):
                if v == result:
                    seq[i] = name
        if nd.name == result:
            nd.name = name


def export(g: Graph, path: str | PathLike[str] | None, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Write `g` as an ONNX model (params and constants as initializers, inputs, outputs and
    params under their cgraph names, `None` sizes as symbolic dimensions) and return it.

    The model passes `onnx.checker` (full check); onnxruntime gives cgraph's outputs. `path`
    None only returns the model. Ops with no ONNX form raise one OnnxError naming them all.
    """
    model = to_model(g, opset)
    if path is not None:
        require().save_model(model, str(path))
    return model
