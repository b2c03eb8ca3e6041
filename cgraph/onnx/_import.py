"""Import an ONNX model as a cgraph Graph, built with the public builder (`g.input`,
`g.param`, the ops), so that it can be run, rendered, saved and differentiated.

Each supported ONNX operator has one import rule in `RULES`: a function of the reader and the
ONNX node returning the Tensors of the node's outputs. Attribute-like inputs (Reshape's shape,
ReduceSum's axes, Slice's bounds) must be constants: initializers or Constant nodes. Graph
inputs, outputs and float initializers keep their ONNX names; float initializers become
params (BatchNormalization's running mean and variance non-trainable ones), so an imported
model can be fine-tuned.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from os import PathLike
from typing import TYPE_CHECKING, Any, cast

import numpy as np

import cgraph.ops as ops
from cgraph.errors import CgraphError, OnnxError, one_line
from cgraph.graph import DTYPES, Graph, Tensor
from cgraph.onnx._common import (
    CONSTANTS_KEY,
    FROZEN_KEY,
    STOP_GRADIENT_DOC,
    np_to_onnx_type,
    onnx_to_np_type,
    registrar,
    require,
)
from cgraph.ops.array import shape_like
from cgraph.ops.registry import apply, get_op

if TYPE_CHECKING:
    import onnx


class _Reader:
    """The graph being built, the Tensor of each ONNX value, and the constant values known
    before any run (initializers, Constant nodes)."""

    def __init__(self, g: Graph, opset: int) -> None:
        self.onnx = require()
        self.g = g
        self.opset = opset
        self.env: dict[str, Tensor] = {}
        self.static: dict[str, np.ndarray] = {}
        self.folded: dict[str, np.ndarray | None] = {}  # cgraph node -> its value if known before any run
        self.node: Any = None  # the ONNX node being imported, for messages
        self.index = 0  # its position in the graph
        self.part = "ONNX model"  # the part being read when there is no node: an initializer, an input...

    def t(self, name: str) -> Tensor:
        """The Tensor of ONNX value `name`; a constant value becomes a cgraph constant the
        first time an op reads it as a tensor."""
        if name in self.env:
            return self.env[name]
        if name not in self.static:
            raise OnnxError(f"{self.where()}: value {name!r} is not defined")
        value = self.static[name]
        if value.dtype not in DTYPES:
            raise OnnxError(f"{self.where()}: value {name!r} has type {value.dtype}; cgraph supports "
                            f"{', '.join(map(str, DTYPES))}")
        cname, i = name, 1
        while cname in self.g:
            cname, i = f"{name}_{i}", i + 1
        self.env[name] = t = self.g.constant(cname, value)
        return t

    def value(self, name: str, what: str) -> np.ndarray:
        """The value of input `name` (an axes list, a shape...), which must be known before any
        run (see `known`)."""
        value = self.known(name)
        if value is None:
            raise OnnxError(f"{self.where()}: {what} ({name!r}) must be known before the model runs (a constant, "
                            "or computed from constants and static shapes)")
        return value

    def known(self, name: str) -> np.ndarray | None:
        """The value of ONNX value `name` if it is known before any run: an initializer that is
        not a param, a Constant node, or a value computed from those alone (a Shape of static
        sizes, a Concat of such shapes...), evaluated here by the ops' kernels; else None."""
        if name in self.static and (name not in self.env or self.env[name].op == "constant"):
            return self.static[name]
        t = self.env.get(name)
        return None if t is None else self._fold(t.name)

    def _fold(self, node_name: str) -> np.ndarray | None:
        if node_name in self.folded:
            return self.folded[node_name]
        node = self.g.nodes[node_name]
        value: np.ndarray | None = None
        if node.op == "constant":
            value = self.g.value(node_name)
        elif not node.is_leaf:
            op = get_op(node.op)
            args = [] if op.multi or op.project or op.user else [self._fold(i) for i in node.inputs]
            if args and all(a is not None for a in args):
                value = np.asarray(op.bind(node)(*args))
        self.folded[node_name] = value
        return value

    def attrs(self, node: Any) -> dict[str, Any]:
        return {a.name: self.onnx.helper.get_attribute_value(a) for a in node.attribute}

    def where(self) -> str:
        n = self.node
        if n is None:
            return self.part
        try:
            return f"ONNX node {n.name or n.output[0]!r} ({n.op_type})"
        except Exception:  # noqa: BLE001  (a name that is not UTF-8, no outputs: say where it is instead)
            return f"ONNX node {self.index}"


Rule = Callable[[_Reader, Any], list[Tensor]]
RULES: dict[str, Rule] = {}


_rule = registrar(RULES)


def _inputs(r: _Reader, n: Any) -> list[Tensor]:
    return [r.t(name) for name in n.input]


def _optional(n: Any, i: int) -> str | None:
    return n.input[i] if len(n.input) > i and n.input[i] else None


# ---- elementwise --------------------------------------------------------------------------

def _fold(fn: Callable[..., Tensor]) -> Rule:
    """A binary op, or a variadic one (Max, Min, Sum) folded left to right."""
    def rule(r: _Reader, n: Any) -> list[Tensor]:
        xs = _inputs(r, n)
        out = xs[0]
        for x in xs[1:]:
            out = fn(out, x)
        return [out]
    return rule


for _name, _fn in (("Add", ops.add), ("Sub", ops.sub), ("Mul", ops.mul), ("Div", ops.div),
                   ("Max", ops.maximum), ("Min", ops.minimum), ("Sum", ops.add), ("Equal", ops.equal),
                   ("Less", ops.less), ("LessOrEqual", ops.less_equal), ("Greater", ops.greater),
                   ("GreaterOrEqual", ops.greater_equal)):
    RULES[_name] = _fold(_fn)
for _name, _fn in (("Neg", ops.neg), ("Relu", ops.relu), ("Sigmoid", ops.logistic), ("Tanh", ops.tanh),
                   ("Exp", ops.exp), ("Log", ops.log), ("Sqrt", ops.sqrt), ("Abs", ops.abs),
                   ("Sign", ops.sign), ("Sin", ops.sin), ("Cos", ops.cos), ("Softplus", ops.softplus),
                   ("Atan", ops.atan), ("Erf", ops.erf)):
    RULES[_name] = (lambda fn: lambda r, n: [fn(r.t(n.input[0]))])(_fn)


@_rule("Clip")
def _clip(r: _Reader, n: Any) -> list[Tensor]:
    """Bounds as inputs (opset 11 on) or attributes (before); a missing one leaves that side open."""
    x, at = r.t(n.input[0]), r.attrs(n)
    lo, hi = (r.t(name) if name else at.get(key) for name, key in ((_optional(n, 1), "min"), (_optional(n, 2), "max")))
    return [ops.clip(x, lo, hi)]


@_rule("Pow")
def _pow(r: _Reader, n: Any) -> list[Tensor]:
    """An exponent of another dtype is cast to the base's; an integer power is computed in
    float64 and cast back (exact while the result fits in 53 bits)."""
    a, b = _inputs(r, n)
    if a.dtype.kind != "f":
        return [ops.cast(ops.pow(ops.cast(a, np.float64), ops.cast(b, np.float64)), a.dtype)]
    if b.dtype != a.dtype:  # ONNX allows an int exponent; cgraph would promote
        b = ops.cast(b, a.dtype)
    return [ops.pow(a, b)]


@_rule("Identity")
def _identity(r: _Reader, n: Any) -> list[Tensor]:
    """The input itself; an Identity that cgraph's export marked as stop_gradient is one."""
    x = r.t(n.input[0])
    return [ops.stop_gradient(x) if n.doc_string == STOP_GRADIENT_DOC else x]


@_rule("Where")
def _where(r: _Reader, n: Any) -> list[Tensor]:
    return [ops.where(*_inputs(r, n))]


@_rule("Cast")
def _cast(r: _Reader, n: Any) -> list[Tensor]:
    to = onnx_to_np_type(r.attrs(n)["to"])
    if to is None:
        raise OnnxError(f"{r.where()}: cast to an ONNX type cgraph lacks ({r.attrs(n)['to']})")
    return [ops.cast(r.t(n.input[0]), to)]


@_rule("IsInf")
def _isinf(r: _Reader, n: Any) -> list[Tensor]:
    x, a = r.t(n.input[0]), r.attrs(n)
    pos, neg = a.get("detect_positive", 1), a.get("detect_negative", 1)
    if pos and neg:
        return [ops.equal(ops.abs(x), np.inf)]
    return [ops.equal(x, np.inf if pos else -np.inf)] if pos or neg else [ops.less(x, x)]


# ---- linear algebra -----------------------------------------------------------------------

@_rule("MatMul")
def _matmul(r: _Reader, n: Any) -> list[Tensor]:
    """numpy's matmul, vectors included (cgraph's takes matrices: a vector becomes one)."""
    a, b = _inputs(r, n)
    va, vb = a.ndim == 1, b.ndim == 1
    out = ops.matmul(ops.expand_dims(a, 0) if va else a, ops.expand_dims(b, 1) if vb else b)
    if vb:
        out = ops.squeeze(out, -1)
    if va:
        out = ops.squeeze(out, -1 if vb else -2)
    return [out]


@_rule("Gemm")
def _gemm(r: _Reader, n: Any) -> list[Tensor]:
    a, b = r.t(n.input[0]), r.t(n.input[1])
    at = r.attrs(n)
    if at.get("transA", 0):
        a = ops.transpose(a)
    if at.get("transB", 0):
        b = ops.transpose(b)
    out = ops.matmul(a, b)
    if at.get("alpha", 1.0) != 1.0:
        out = ops.mul(out, float(at["alpha"]))
    c = _optional(n, 2)
    if c is not None:
        bias = r.t(c)
        if at.get("beta", 1.0) != 1.0:
            bias = ops.mul(bias, float(at["beta"]))
        out = ops.add(out, bias)
    return [out]


# ---- shapes -------------------------------------------------------------------------------

def _sizes(r: _Reader, name: str, what: str) -> Tensor:
    """A 1-D int64 run-time shape input whose length is known."""
    s = r.t(name)
    if s.ndim != 1 or s.shape[0] is None:
        raise OnnxError(f"{r.where()}: {what} ({name!r}) must be a 1-D tensor of known length, got {s.shape}")
    return s if s.dtype == np.int64 else ops.cast(s, np.int64)


@_rule("Reshape")
def _reshape(r: _Reader, n: Any) -> list[Tensor]:
    """A static target shape where it is known (a 0 copying a known size), else the run-time one."""
    x = r.t(n.input[0])
    allowzero = r.attrs(n).get("allowzero", 0)
    known = r.known(n.input[1])
    if known is not None:
        shape = [int(d) for d in known]
        copied = [x.shape[i] if i < x.ndim else None for i, d in enumerate(shape) if d == 0 and not allowzero]
        if None not in copied or -1 not in shape:
            for i, d in enumerate(shape):
                if d == 0 and not allowzero:
                    shape[i] = -1 if x.shape[i] is None else cast(int, x.shape[i])
            return [ops.reshape(x, tuple(shape))]
    s = _sizes(r, n.input[1], "the target shape")
    k = cast(int, s.shape[0])
    if not allowzero and k:  # a 0 copies the input's size there (none past its last axis)
        xs = _shape_of(x)
        xs = ops.getitem(xs, (slice(0, k),)) if k <= x.ndim else ops.concat([xs, _int64(r, [0] * (k - x.ndim))])
        s = ops.where(ops.equal(s, 0), xs, s)
    return [ops.reshape(x, s)]


@_rule("Transpose")
def _transpose(r: _Reader, n: Any) -> list[Tensor]:
    perm = r.attrs(n).get("perm")
    return [ops.transpose(r.t(n.input[0]), None if perm is None else tuple(perm))]


@_rule("Concat")
def _concat(r: _Reader, n: Any) -> list[Tensor]:
    return [ops.concat(_inputs(r, n), axis=r.attrs(n)["axis"])]


def _axes(r: _Reader, n: Any, input_index: int) -> list[int] | None:
    """Axes from the attribute (older opsets) or from a constant input (newer ones)."""
    at = r.attrs(n)
    if "axes" in at:
        return [int(a) for a in at["axes"]]
    name = _optional(n, input_index)
    if name is not None and r.known(name) is None and r.t(name).shape == (0,):
        return []  # fed at run time, but always empty
    return None if name is None else [int(a) for a in r.value(name, "the axes")]


@_rule("Squeeze")
def _squeeze(r: _Reader, n: Any) -> list[Tensor]:
    x = r.t(n.input[0])
    axes = _axes(r, n, 1)
    if axes is None:
        axes = [i for i, d in enumerate(x.shape) if d == 1]
    return [ops.squeeze(x, tuple(axes))]


@_rule("Unsqueeze")
def _unsqueeze(r: _Reader, n: Any) -> list[Tensor]:
    """Axes of size 1 inserted; with axes fed at run time, a reshape to the sizes that puts them
    there (the input's sizes, in order, elsewhere)."""
    x = r.t(n.input[0])
    name = _optional(n, 1) if "axes" not in r.attrs(n) else None
    if name is None or r.known(name) is not None:
        return [ops.expand_dims(x, tuple(_axes(r, n, 1) or ()))]
    axes = _sizes(r, name, "the axes")
    m = x.ndim + cast(int, axes.shape[0])
    axes = ops.where(ops.less(axes, 0), ops.add(axes, m), axes)
    new = ops.greater(ops.sum(ops.cast(ops.equal(ops.expand_dims(axes, 1), _int64(r, np.arange(m)[None, :])),
                                       np.int64), 0), 0)
    at = ops.sub(ops.cumsum(ops.cast(_not(new), np.int64)), 1)  # the input axis each output axis shows
    pick = ops.equal(ops.expand_dims(at, 1), _int64(r, np.arange(x.ndim)[None, :]))
    sizes = ops.sum(ops.where(pick, ops.expand_dims(_shape_of(x), 0), 0), 1) if x.ndim else _int64(r, np.zeros(m))
    return [ops.reshape(x, ops.where(new, 1, sizes))]


def _shape_of(x: Tensor) -> Tensor:
    """x's shape as a 1-D int64 tensor: a constant when every size is known."""
    s = shape_like(x)
    return s if isinstance(s, Tensor) else x.graph.constant(None, np.array(s, np.int64))


@_rule("Expand")
def _expand(r: _Reader, n: Any) -> list[Tensor]:
    """ONNX broadcasts both ways: a 1 in the target shape keeps x's size. A static target where
    the sizes are known, else one computed at run time."""
    x = r.t(n.input[0])
    known = r.known(n.input[1])
    if known is not None:
        shape = [int(d) for d in known]
        ndim = max(len(shape), x.ndim)
        xs = [1] * (ndim - x.ndim) + list(x.shape)
        ts = [1] * (ndim - len(shape)) + shape
        target = [d if t == 1 else t for d, t in zip(xs, ts, strict=True)]
        if None not in target:
            return [ops.broadcast_to(x, tuple(target))]
    s = _sizes(r, n.input[1], "the target shape")
    k = cast(int, s.shape[0])
    m = max(k, x.ndim)
    xs_t, ones = _shape_of(x), x.graph.constant(None, np.ones(m, np.int64))
    if x.ndim < m:
        xs_t = ops.concat([ops.getitem(ones, (slice(0, m - x.ndim),)), xs_t])
    if k < m:
        s = ops.concat([ops.getitem(ones, (slice(0, m - k),)), s])
    return [ops.broadcast_to(x, ops.where(ops.equal(s, 1), xs_t, s))]


@_rule("Slice")
def _slice(r: _Reader, n: Any) -> list[Tensor]:
    x, at = r.t(n.input[0]), r.attrs(n)
    starts: Any
    ends: Any
    axes: Any
    steps: Any
    if "starts" in at:  # before opset 10: bounds and axes as attributes, no steps
        starts, ends = at["starts"], at["ends"]
        axes = at.get("axes", range(len(starts)))
        steps = [1] * len(starts)
    else:
        starts = r.value(n.input[1], "the starts")
        ends = r.value(n.input[2], "the ends")
        axes = r.value(n.input[3], "the axes") if _optional(n, 3) else range(len(starts))
        steps = r.value(n.input[4], "the steps") if _optional(n, 4) else [1] * len(starts)
    index: list[Any] = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
        index[int(a)] = slice(int(s), int(e), int(st))
    return [ops.getitem(x, tuple(index))]


# ---- reductions and the ops of neural networks ----------------------------------------------

Pre = Callable[[Tensor], Tensor]
Post = Callable[[Tensor, Tensor], Tensor]  # (the sum, x)


def _reduction(fn: Callable[..., Tensor], pre: Pre | None = None, post: Post | None = None,
               mean: bool = False) -> Rule:
    """A reduction over constant axes; one that is post(sum(pre(x))) (divided by the count for a
    mean) also over axes fed at run time."""
    def rule(r: _Reader, n: Any) -> list[Tensor]:
        x = r.t(n.input[0])
        at = r.attrs(n)
        keepdims = bool(at.get("keepdims", 1))
        name = _optional(n, 1) if "axes" not in at else None
        if name is not None and r.known(name) is None and (r.t(name).shape[0] or 0) > 0 and (pre or post or mean):
            return [_runtime_reduction(r, x, _sizes(r, name, "the axes"), keepdims, pre, post, mean)]
        axes = _axes(r, n, 1)
        if not axes:
            if at.get("noop_with_empty_axes", 0):
                return [x]
            axes = None
        return [fn(x, None if axes is None else tuple(axes), keepdims=keepdims)]
    return rule


def _runtime_reduction(r: _Reader, x: Tensor, axes: Tensor, keepdims: bool, pre: Pre | None, post: Post | None,
                       mean: bool) -> Tensor:
    """post(sum(pre(x))) over axes known only at run time: sum_to a run-time shape with 1 on
    those axes; without keepdims, reshaped to the sizes of the other axes, in order."""
    ndim = x.ndim
    axes = ops.where(ops.less(axes, 0), ops.add(axes, ndim), axes)
    hit = ops.equal(ops.expand_dims(axes, 1), _int64(r, np.arange(ndim)[None, :]))
    mask = ops.greater(ops.sum(ops.cast(hit, np.int64), 0), 0)
    xs = _shape_of(x)
    out = ops.array.sum_to(pre(x) if pre else x, ops.where(mask, 1, xs))
    if mean:
        out = ops.div(out, ops.cast(ops.prod(ops.where(mask, xs, 1)), out.dtype))
    out = post(out, x) if post else out
    if keepdims:
        return out
    m = ndim - cast(int, axes.shape[0])
    kept = ops.cast(_not(mask), np.int64)
    at = ops.sub(ops.cumsum(kept), 1)  # the position of each kept axis in the result
    pick = ops.where(ops.equal(ops.expand_dims(at, 0), _int64(r, np.arange(m)[:, None])), ops.expand_dims(kept, 0), 0)
    return ops.reshape(out, ops.sum(ops.mul(pick, ops.expand_dims(xs, 0)), 1))


def _logsumexp(x: Tensor, axes: Any, keepdims: bool) -> Tensor:
    return ops.logsumexp(x, tuple(range(x.ndim)) if axes is None else axes, keepdims)


def _top(x: Tensor) -> Tensor | float:
    """x's largest element: the shift that keeps a log-sum-exp's exponentials from overflowing
    (0 for an x without elements)."""
    return 0.0 if 0 in x.shape else ops.stop_gradient(ops.max(x))


RULES["ReduceSum"] = _reduction(ops.sum, post=lambda t, x: t)
RULES["ReduceMean"] = _reduction(ops.mean, mean=True)
RULES["ReduceMax"] = _reduction(ops.max)
RULES["ReduceL1"] = _reduction(lambda x, axes, keepdims: ops.sum(ops.abs(x), axes, keepdims), pre=ops.abs)
RULES["ReduceL2"] = _reduction(lambda x, axes, keepdims: ops.sqrt(ops.sum(ops.square(x), axes, keepdims)),
                               pre=ops.square, post=lambda t, x: ops.sqrt(t))
RULES["ReduceSumSquare"] = _reduction(lambda x, axes, keepdims: ops.sum(ops.square(x), axes, keepdims),
                                      pre=ops.square)
RULES["ReduceLogSum"] = _reduction(lambda x, axes, keepdims: ops.log(ops.sum(x, axes, keepdims)),
                                   post=lambda t, x: ops.log(t))
RULES["ReduceLogSumExp"] = _reduction(_logsumexp, pre=lambda x: ops.exp(ops.sub(x, _top(x))),
                                      post=lambda t, x: ops.add(ops.log(t), _top(x)))


RULES["ReduceMin"] = _reduction(ops.min)
RULES["ReduceProd"] = _reduction(ops.prod)


@_rule("CumSum")
def _cumsum(r: _Reader, n: Any) -> list[Tensor]:
    """The running sum; `exclusive` leaves each element out of its own sum."""
    x, at = r.t(n.input[0]), r.attrs(n)
    axis = int(np.asarray(r.value(n.input[1], "the axis")).reshape(()))
    out = ops.cumsum(x, axis, reverse=bool(at.get("reverse", 0)))
    return [ops.sub(out, x) if at.get("exclusive", 0) else out]


# ---- gathering ------------------------------------------------------------------------------

@_rule("Gather")
def _gather(r: _Reader, n: Any) -> list[Tensor]:
    return [ops.take(r.t(n.input[0]), r.t(n.input[1]), axis=r.attrs(n).get("axis", 0))]


@_rule("OneHot")
def _one_hot(r: _Reader, n: Any) -> list[Tensor]:
    """one_hot scaled to the (off, on) values, its new axis moved to `axis`. ONNX gives a row of
    zeros for an index out of range where cgraph raises an error."""
    indices = r.t(n.input[0])
    depth = int(np.asarray(r.value(n.input[1], "the depth")).reshape(()))
    off, on = np.asarray(r.value(n.input[2], "the values"))
    out = ops.one_hot(indices, depth, dtype=np.asarray(on).dtype)
    if (off, on) != (0, 1):
        out = ops.add(ops.mul(out, on - off), off)
    axis = r.attrs(n).get("axis", -1) % out.ndim
    if axis != out.ndim - 1:
        out = ops.transpose(out, (*range(axis), out.ndim - 1, *range(axis, out.ndim - 1)))
    return [out]


# ---- convolution, pooling, dropout --------------------------------------------------------

def _spatial(r: _Reader, n: Any, x: Tensor, kernel: tuple, dilations: tuple = (1, 1)) -> dict[str, Any]:
    """Strides and pads (top, left, bottom, right) of a 2-D Conv or pooling node, its auto_pad
    resolved (SAME_* needs the image's size)."""
    at = r.attrs(n)
    if x.ndim != 4:
        raise OnnxError(f"{r.where()}: only 2-D images (N, C, H, W) are supported, got {x.ndim}-D")
    strides = tuple(at.get("strides", (1, 1)))
    pads = tuple(at.get("pads", (0, 0, 0, 0)))
    mode = at.get("auto_pad", b"NOTSET")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode == "VALID":
        pads = (0, 0, 0, 0)
    elif mode in ("SAME_UPPER", "SAME_LOWER"):
        if None in x.shape[2:]:
            raise OnnxError(f"{r.where()}: auto_pad={mode} needs the image's size, got {x.shape}")
        hw = cast(tuple[int, int], x.shape[2:])
        total = [max(0, (-(-hw[a] // strides[a]) - 1) * strides[a] + (kernel[a] - 1) * dilations[a] + 1 - hw[a])
                 for a in (0, 1)]
        first = [t // 2 if mode == "SAME_UPPER" else t - t // 2 for t in total]
        pads = (first[0], first[1], total[0] - first[0], total[1] - first[1])
    return {"stride": strides, "padding": pads}


def _bias(r: _Reader, n: Any, out: Tensor) -> Tensor:
    b = _optional(n, 2)
    return out if b is None else ops.add(out, ops.reshape(r.t(b), (-1, 1, 1)))


@_rule("Conv")
def _conv(r: _Reader, n: Any) -> list[Tensor]:
    x, w = r.t(n.input[0]), r.t(n.input[1])
    at = r.attrs(n)
    dilations = tuple(at.get("dilations", (1, 1)))
    geometry = _spatial(r, n, x, tuple(at.get("kernel_shape", w.shape[2:])), dilations)
    out = ops.conv2d(x, w, dilation=dilations, groups=at.get("group", 1), **geometry)
    return [_bias(r, n, out)]


@_rule("ConvTranspose")
def _conv_transpose(r: _Reader, n: Any) -> list[Tensor]:
    """conv2d_transpose (the VJP of conv2d) where its input's size and the kernel's are known."""
    from cgraph.ops.conv import conv2d_transpose, out_size

    x, w = r.t(n.input[0]), r.t(n.input[1])
    at = r.attrs(n)
    if at.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or "output_shape" in at:
        raise OnnxError(f"{r.where()}: only explicit pads are supported (no auto_pad, no output_shape)")
    dilations = tuple(at.get("dilations", (1, 1)))
    geometry = _spatial(r, n, x, w.shape[2:], dilations)
    extra = tuple(at.get("output_padding", (0, 0)))
    if None in x.shape[2:] or None in w.shape[2:]:
        raise OnnxError(f"{r.where()}: cgraph needs the input's and the kernel's sizes, got {x.shape}, {w.shape}")
    s, p = geometry["stride"], geometry["padding"]
    hw, k = cast(tuple[int, int], x.shape[2:]), cast(tuple[int, int], w.shape[2:])
    size = tuple(s[a] * (hw[a] - 1) + extra[a] + dilations[a] * (k[a] - 1) + 1 - p[a] - p[a + 2] for a in (0, 1))
    if any(out_size(size[a], k[a], s[a], dilations[a], p[a], p[a + 2]) != hw[a] for a in (0, 1)):
        raise OnnxError(f"{r.where()}: output_padding {extra} is not less than the stride {s}")
    out = conv2d_transpose(x, w, size=size, dilation=dilations, groups=at.get("group", 1), **geometry)
    return [_bias(r, n, out)]


def _pool(fn: Callable[..., Tensor]) -> Rule:
    def rule(r: _Reader, n: Any) -> list[Tensor]:
        x, at = r.t(n.input[0]), r.attrs(n)
        if at.get("ceil_mode", 0) or any(d != 1 for d in at.get("dilations", (1, 1))):
            raise OnnxError(f"{r.where()}: ceil_mode and dilations are not supported")
        kernel = tuple(at["kernel_shape"])
        geometry = _spatial(r, n, x, kernel)
        pads = geometry["padding"]
        extra = {"count_include_pad": bool(at.get("count_include_pad", 0))} if n.op_type == "AveragePool" else {}
        return [fn(x, kernel, geometry["stride"], pads if pads[:2] != pads[2:] else pads[:2], **extra)]
    return rule


RULES["MaxPool"] = _pool(ops.max_pool2d)
RULES["AveragePool"] = _pool(ops.avg_pool2d)


@_rule("Dropout")
def _dropout(r: _Reader, n: Any) -> list[Tensor]:
    """Inference form (training_mode absent or false; before opset 7, as every runtime runs it):
    the input itself, and a mask of all true."""
    mode = _optional(n, 2)
    if mode is not None and bool(np.asarray(r.value(mode, "training_mode"))):
        raise OnnxError(f"{r.where()}: Dropout in training mode is not supported (cgraph's dropout draws its "
                        "mask from a seed input)")
    x = r.t(n.input[0])
    if not n.output[1:] or not n.output[1]:
        return [x]
    return [x, ops.broadcast_to(r.g.constant(None, np.array(True)), shape_like(x))]


def _softmax_like(fn: Callable[..., Tensor]) -> Rule:
    def rule(r: _Reader, n: Any) -> list[Tensor]:
        x = r.t(n.input[0])
        if r.opset >= 13:
            return [fn(x, r.attrs(n).get("axis", -1))]
        axis = r.attrs(n).get("axis", 1) % max(x.ndim, 1)  # before opset 13: over axes axis..end
        return [fn(x, tuple(range(axis, x.ndim)))]
    return rule


RULES["Softmax"] = _softmax_like(ops.softmax)
RULES["LogSoftmax"] = _softmax_like(ops.log_softmax)


@_rule("BatchNormalization")
def _batch_norm(r: _Reader, n: Any) -> list[Tensor]:
    """Inference form: scale * (x - mean) / sqrt(var + epsilon) + B over channel axis 1."""
    x, scale, bias, mean, var = _inputs(r, n)
    if x.ndim > 2:  # channels are axis 1: per-channel values broadcast as (C, 1, ..., 1)
        shape = (-1,) + (1,) * (x.ndim - 2)
        scale, bias, mean, var = (ops.reshape(t, shape) for t in (scale, bias, mean, var))
    eps = float(r.attrs(n).get("epsilon", 1e-5))
    return [ops.batch_norm(x, scale, bias, training=False, eps=eps, mean=mean, var=var)]


# ---- shapes computed in the graph -----------------------------------------------------------

def _int64(r: _Reader, value: Any) -> Tensor:
    return r.g.constant(None, np.asarray(value, np.int64))


@_rule("Shape")
def _shape(r: _Reader, n: Any) -> list[Tensor]:
    """A constant where the sizes are known, else shape_of (sliced by start and end, opset 15)."""
    x, at = r.t(n.input[0]), r.attrs(n)
    part = slice(at.get("start", 0), at.get("end"))
    sizes = x.shape[part]
    if None not in sizes:
        return [_int64(r, sizes)]
    s = _shape_of(x)
    return [s if part == slice(0, None) else ops.getitem(s, (part,))]


@_rule("Size")
def _size(r: _Reader, n: Any) -> list[Tensor]:
    x = r.t(n.input[0])
    if None not in x.shape:
        return [_int64(r, int(np.prod(cast(tuple[int, ...], x.shape), dtype=np.int64)))]
    return [ops.sum(_shape_of(x)) if x.ndim == 1 else _product(_shape_of(x))]


def _product(v: Tensor) -> Tensor:
    """The product of a short 1-D int64 vector of known length, as a scalar."""
    out = ops.getitem(v, (0,))
    for i in range(1, cast(int, v.shape[0])):
        out = ops.mul(out, ops.getitem(v, (i,)))
    return out


@_rule("ConstantOfShape")
def _constant_of_shape(r: _Reader, n: Any) -> list[Tensor]:
    """The value (a one-element tensor, float32 0 by default) broadcast to the shape input."""
    at = r.attrs(n)
    value = r.onnx.numpy_helper.to_array(at["value"]).reshape(()) if "value" in at else np.zeros((), np.float32)
    known = r.known(n.input[0])
    if known is not None:
        return [r.g.constant(None, np.full(tuple(int(d) for d in known), value))]
    return [ops.broadcast_to(r.g.constant(None, value), _sizes(r, n.input[0], "the shape"))]


@_rule("Range")
def _range(r: _Reader, n: Any) -> list[Tensor]:
    """start + delta * arange(max(ceil((limit - start) / delta), 0)), from values known before any run."""
    start, limit, delta = (np.asarray(r.value(name, what)) for name, what in zip(n.input, ("start", "limit", "delta"),
                                                                              strict=True))
    count = max(int(np.ceil((limit.astype(np.float64) - start) / delta)), 0)
    return [r.g.constant(None, (start + delta * np.arange(count)).astype(start.dtype))]


@_rule("CastLike")
def _cast_like(r: _Reader, n: Any) -> list[Tensor]:
    return [ops.cast(r.t(n.input[0]), r.t(n.input[1]).dtype)]


@_rule("Flatten")
def _flatten(r: _Reader, n: Any) -> list[Tensor]:
    """A 2-D reshape: the axes before `axis` make the rows, the rest the columns."""
    x = r.t(n.input[0])
    axis = r.attrs(n).get("axis", 1)
    axis = axis + x.ndim if axis < 0 else axis
    rows, cols = x.shape[:axis], x.shape[axis:]
    if None not in rows:
        return [ops.reshape(x, (int(np.prod(cast(tuple[int, ...], rows), dtype=np.int64)), -1))]
    if None not in cols:
        return [ops.reshape(x, (-1, int(np.prod(cast(tuple[int, ...], cols), dtype=np.int64))))]
    s = _shape_of(x)
    return [ops.reshape(x, ops.concat([ops.expand_dims(_product(ops.getitem(s, (slice(0, axis),))), 0),
                                       _int64(r, [-1])]))]


@_rule("Tile")
def _tile(r: _Reader, n: Any) -> list[Tensor]:
    """x with an axis of size 1 before each of its axes, broadcast to the repeats, then merged."""
    x = r.t(n.input[0])
    reps = [int(k) for k in r.value(n.input[1], "the repeats")]
    if None in x.shape:
        raise OnnxError(f"{r.where()}: cgraph needs static sizes to tile {x.shape}")
    sizes = cast(tuple[int, ...], x.shape)
    spread = ops.reshape(x, tuple(d for size in sizes for d in (1, size)))
    spread = ops.broadcast_to(spread, tuple(d for k, size in zip(reps, sizes, strict=True) for d in (k, size)))
    return [ops.reshape(spread, tuple(k * size for k, size in zip(reps, sizes, strict=True)))]


@_rule("Split")
def _split(r: _Reader, n: Any) -> list[Tensor]:
    """Slices along `axis`: sizes from the `split` input or attribute, else equal parts (the last
    one smaller when they do not divide)."""
    x, at = r.t(n.input[0]), r.attrs(n)
    axis = at.get("axis", 0) % x.ndim
    size = x.shape[axis]
    name = _optional(n, 1)
    parts = [int(k) for k in (r.value(name, "the split sizes") if name else at.get("split", ()))]
    if not parts:
        if size is None:
            raise OnnxError(f"{r.where()}: cgraph needs the size of axis {axis} to split {x.shape}")
        k = at.get("num_outputs", len(n.output))
        step = -(-size // k)
        parts = [min(step, size - i * step) for i in range(k)]
    outs, start = [], 0
    for k in parts:
        outs.append(ops.getitem(x, (slice(None),) * axis + (slice(start, start + k),)))
        start += k
    return outs


def _padded(r: _Reader, x: Tensor, before: list[int], after: list[int], mode: str, value: Any) -> Tensor:
    """x padded per axis: constant (value), edge (the border repeated), reflect (mirrored without
    the border) or wrap; negative pads crop."""
    crop = tuple(slice(max(-b, 0), (a if a < 0 else None)) for b, a in zip(before, after, strict=True))
    if any(b < 0 or a < 0 for b, a in zip(before, after, strict=True)):
        x = ops.getitem(x, crop)
    before, after = [max(b, 0) for b in before], [max(a, 0) for a in after]
    if None in x.shape:
        raise OnnxError(f"{r.where()}: cgraph needs static sizes to pad {x.shape}")
    if mode == "constant":
        shape = tuple(cast(int, d) + b + a for d, b, a in zip(x.shape, before, after, strict=True))
        index = tuple(slice(b, b + cast(int, d)) for d, b in zip(x.shape, before, strict=True))
        v = np.asarray(value, x.dtype)
        out = apply("scatter", x, shape=shape, index=index)
        if v == 0:
            return out
        inside = np.zeros(shape, bool)
        inside[index] = True
        return ops.where(r.g.constant(None, inside), out, v)
    for axis, (b, a) in enumerate(zip(before, after, strict=True)):
        size = cast(int, x.shape[axis])
        def part(sl: slice, x: Tensor = x, axis: int = axis) -> Tensor:
            return ops.getitem(x, (slice(None),) * axis + (sl,))
        pieces = []
        if mode == "edge":
            pieces = [part(slice(0, 1))] * b + [x] + [part(slice(size - 1, size))] * a
        elif mode == "reflect":
            if b >= size or a >= size:
                raise OnnxError(f"{r.where()}: reflect pads {b}, {a} need an axis longer than them, got {size}")
            stop = size - 2 - a if size - 2 - a >= 0 else None
            pieces = ([part(slice(b, 0, -1))] if b else []) + [x] + ([part(slice(size - 2, stop, -1))] if a else [])
        elif mode == "wrap":
            pieces = ([part(slice(size - b, size))] if b else []) + [x] + ([part(slice(0, a))] if a else [])
        else:
            raise OnnxError(f"{r.where()}: pad mode {mode!r} is not supported")
        if len(pieces) > 1:
            x = ops.concat(pieces, axis=axis)
    return x


@_rule("Pad")
def _pad(r: _Reader, n: Any) -> list[Tensor]:
    x, at = r.t(n.input[0]), r.attrs(n)
    mode = at.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if "pads" in at:  # before opset 11: pads and value as attributes
        pads, value = [int(p) for p in at["pads"]], at.get("value", 0.0)
        axes = list(range(x.ndim))
    else:
        pads = [int(p) for p in r.value(n.input[1], "the pads")]
        name = _optional(n, 2)
        value = np.asarray(r.value(name, "the pad value")).reshape(()) if name else 0
        name = _optional(n, 3)
        axes = [int(a) % x.ndim for a in r.value(name, "the axes")] if name else list(range(x.ndim))
    before, after = [0] * x.ndim, [0] * x.ndim
    k = len(axes)
    for i, a in enumerate(axes):
        before[a], after[a] = pads[i], pads[i + k]
    return [_padded(r, x, before, after, mode, value)]


# ---- logic and elementwise compositions ----------------------------------------------------

def _not(x: Tensor) -> Tensor:
    return ops.equal(x, False)


RULES["Not"] = lambda r, n: [_not(r.t(n.input[0]))]
RULES["And"] = _fold(lambda a, b: ops.where(a, b, False))
RULES["Or"] = _fold(lambda a, b: ops.where(a, True, b))
RULES["Xor"] = _fold(lambda a, b: _not(ops.equal(a, b)))
RULES["Reciprocal"] = lambda r, n: [ops.div(1.0, r.t(n.input[0]))]
RULES["Softsign"] = lambda r, n: [(lambda x: ops.div(x, ops.add(1.0, ops.abs(x))))(r.t(n.input[0]))]
RULES["Mish"] = lambda r, n: [(lambda x: ops.mul(x, ops.tanh(ops.softplus(x))))(r.t(n.input[0]))]


def _attr_rule(fn: Callable[..., Tensor], **defaults: float) -> Rule:
    """A rule of one input and float attributes (alpha, beta, gamma) with ONNX's defaults."""
    def rule(r: _Reader, n: Any) -> list[Tensor]:
        at = r.attrs(n)
        return [fn(r.t(n.input[0]), **{k: float(at.get(k, v)) for k, v in defaults.items()})]
    return rule


def _elu(x: Tensor, alpha: float) -> Tensor:
    """alpha (e^x - 1) for x < 0, else x; the exponential of min(x, 0), so it never overflows."""
    return ops.where(ops.less(x, 0), ops.mul(alpha, ops.sub(ops.exp(ops.minimum(x, 0)), 1)), x)


def _hard_sigmoid(x: Tensor, alpha: float, beta: float) -> Tensor:
    return ops.maximum(ops.minimum(ops.add(ops.mul(alpha, x), beta), 1), 0)


RULES["LeakyRelu"] = _attr_rule(lambda x, alpha: ops.where(ops.less(x, 0), ops.mul(alpha, x), x), alpha=0.01)
RULES["Elu"] = _attr_rule(_elu, alpha=1.0)
RULES["Celu"] = _attr_rule(lambda x, alpha: ops.mul(alpha, _elu(ops.div(x, alpha), 1.0)), alpha=1.0)
RULES["Selu"] = _attr_rule(lambda x, alpha, gamma: ops.mul(gamma, _elu(x, alpha)), alpha=1.67326319217681884765625,
                           gamma=1.05070102214813232421875)
RULES["HardSigmoid"] = _attr_rule(_hard_sigmoid, alpha=0.2, beta=0.5)
RULES["HardSwish"] = _attr_rule(lambda x: ops.mul(x, _hard_sigmoid(x, 1 / 6, 0.5)))
RULES["ThresholdedRelu"] = _attr_rule(lambda x, alpha: ops.where(ops.greater(x, alpha), x, 0), alpha=1.0)


@_rule("PRelu")
def _prelu(r: _Reader, n: Any) -> list[Tensor]:
    x, slope = r.t(n.input[0]), r.t(n.input[1])
    return [ops.where(ops.less(x, 0), ops.mul(slope, x), x)]


@_rule("Mean")
def _mean_of(r: _Reader, n: Any) -> list[Tensor]:
    xs = _inputs(r, n)
    total = _fold(ops.add)(r, n)[0]
    return [total if len(xs) == 1 else ops.div(total, float(len(xs)))]


@_rule("Gelu")
def _gelu(r: _Reader, n: Any) -> list[Tensor]:
    """The tanh approximation (approximate="tanh"); the exact form needs erf."""
    x, at = r.t(n.input[0]), r.attrs(n)
    mode = at.get("approximate", b"none")
    if (mode.decode() if isinstance(mode, bytes) else mode) != "tanh":
        if not hasattr(ops, "erf"):
            raise OnnxError(f"{r.where()}: the exact Gelu needs erf")
        erf = getattr(ops, "erf")  # noqa: B009
        return [ops.mul(ops.mul(0.5, x), ops.add(1.0, erf(ops.mul(x, float(1 / np.sqrt(2))))))]
    inner = ops.mul(float(np.sqrt(2 / np.pi)), ops.add(x, ops.mul(0.044715, ops.mul(x, ops.square(x)))))
    return [ops.mul(ops.mul(0.5, x), ops.add(1.0, ops.tanh(inner)))]


# ---- normalisation and pooling over whole axes -------------------------------------------------

@_rule("LayerNormalization")
def _layer_norm(r: _Reader, n: Any) -> list[Tensor]:
    """(x - mean) / sqrt(var + epsilon) * scale + B over the axes from `axis` on; the mean and
    the inverse standard deviation are the optional second and third outputs. With stash_type
    1 (the default) a float16 x is normalised in float32."""
    x, scale = r.t(n.input[0]), r.t(n.input[1])
    at = r.attrs(n)
    axes = tuple(range(at.get("axis", -1) % x.ndim, x.ndim))
    xf = ops.cast(x, np.float32) if x.dtype == np.float16 and at.get("stash_type", 1) == 1 else x
    mean = ops.mean(xf, axes, keepdims=True)
    centred = ops.sub(xf, mean)
    inv = ops.div(1.0, ops.sqrt(ops.add(ops.mean(ops.square(centred), axes, keepdims=True),
                                        float(at.get("epsilon", 1e-5)))))
    out = ops.cast(ops.mul(centred, inv), x.dtype) if xf is not x else ops.mul(centred, inv)
    out = ops.mul(out, scale)
    b = _optional(n, 2)
    return [ops.add(out, r.t(b)) if b else out, mean, inv]


@_rule("GlobalAveragePool")
def _global_average_pool(r: _Reader, n: Any) -> list[Tensor]:
    x = r.t(n.input[0])
    return [ops.mean(x, tuple(range(2, x.ndim)), keepdims=True)]


@_rule("GlobalMaxPool")
def _global_max_pool(r: _Reader, n: Any) -> list[Tensor]:
    x = r.t(n.input[0])
    return [ops.max(x, tuple(range(2, x.ndim)), keepdims=True)]


@_rule("LRN")
def _lrn(r: _Reader, n: Any) -> list[Tensor]:
    """x / (bias + alpha / size * the sum of squares over `size` channels around each) ** beta."""
    x, at = r.t(n.input[0]), r.attrs(n)
    size = int(at["size"])
    sq = ops.square(x)
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    padded = _padded(r, sq, [0, lo] + [0] * (x.ndim - 2), [0, hi] + [0] * (x.ndim - 2), "constant", 0)
    channels = cast(int, x.shape[1])
    total = ops.getitem(padded, (slice(None), slice(0, channels)))
    for k in range(1, size):
        total = ops.add(total, ops.getitem(padded, (slice(None), slice(k, k + channels))))
    scale = ops.add(float(at.get("bias", 1.0)), ops.mul(float(at.get("alpha", 1e-4)) / size, total))
    return [ops.div(x, ops.pow(scale, float(at.get("beta", 0.75))))]


# ---- rounding, remainders, integer division --------------------------------------------------

for _name, _fn in (("Floor", ops.floor), ("Ceil", ops.ceil), ("Round", ops.round)):
    RULES[_name] = (lambda fn: lambda r, n: [fn(r.t(n.input[0]))])(_fn)


@_rule("Mod")
def _mod(r: _Reader, n: Any) -> list[Tensor]:
    a, b = _inputs(r, n)
    return [ops.mod(a, b, fmod=bool(r.attrs(n).get("fmod", 0)))]


def _div(a: Tensor, b: Tensor) -> Tensor:
    """True division of floats; of integers, the quotient truncated toward zero (computed in
    float64, exact while the values fit in 53 bits)."""
    dtype = np.result_type(a.dtype, b.dtype)
    if dtype.kind == "f":
        return ops.div(a, b)
    return ops.cast(ops.div(ops.cast(a, np.float64), ops.cast(b, np.float64)), dtype)


RULES["Div"] = _fold(_div)


# ---- losses ---------------------------------------------------------------------------------

def _nll(r: _Reader, n: Any, logp: Tensor, target: Tensor) -> Tensor:
    """-logp[n, target[n, ...], ...] * weight[target], 0 where target is ignore_index, reduced
    by `reduction`: none, sum, or mean (divided by the weights of the targets counted)."""
    at = r.attrs(n)
    reduction = at.get("reduction", b"mean")
    reduction = reduction.decode() if isinstance(reduction, bytes) else reduction
    classes = logp.shape[1]
    if classes is None:
        raise OnnxError(f"{r.where()}: cgraph needs the number of classes, got {logp.shape}")
    target = ops.cast(target, np.int64)
    ignore = at.get("ignore_index")
    keep = None if ignore is None else _not(ops.equal(target, ignore))
    if keep is not None:
        target = ops.where(keep, target, 0)
    onehot = ops.one_hot(target, classes, dtype=logp.dtype)  # (N, d..., C): the class axis to 1
    onehot = ops.transpose(onehot, (0, onehot.ndim - 1, *range(1, onehot.ndim - 1)))
    loss = ops.neg(ops.sum(ops.mul(logp, onehot), 1))
    weight = r.t(n.input[2]) if _optional(n, 2) else None
    w = ops.take(weight, target) if weight is not None else None
    if keep is not None:
        mask = ops.cast(keep, logp.dtype)
        w = mask if w is None else ops.mul(w, mask)
    if w is not None:
        loss = ops.mul(loss, w)
    if reduction == "none":
        return loss
    total = ops.sum(loss)
    if reduction == "sum":
        return total
    return ops.div(total, ops.sum(w) if w is not None else float(np.prod(loss.shape)) if None not in loss.shape
                   else ops.cast(_product(_shape_of(loss)), logp.dtype))


@_rule("NegativeLogLikelihoodLoss")
def _nll_loss(r: _Reader, n: Any) -> list[Tensor]:
    return [_nll(r, n, r.t(n.input[0]), r.t(n.input[1]))]


@_rule("SoftmaxCrossEntropyLoss")
def _softmax_cross_entropy_loss(r: _Reader, n: Any) -> list[Tensor]:
    """The NLL of log_softmax over the class axis (1); the log-probabilities are the second output."""
    logp = ops.log_softmax(r.t(n.input[0]), 1)
    return [_nll(r, n, logp, r.t(n.input[1])), logp]


@_rule("RMSNormalization")
def _rms_norm(r: _Reader, n: Any) -> list[Tensor]:
    """x / sqrt(mean(x ** 2) + epsilon) * scale over the axes from `axis` on (in float32 for a
    float16 x, as stash_type 1 says)."""
    x, scale = r.t(n.input[0]), r.t(n.input[1])
    at = r.attrs(n)
    axes = tuple(range(at.get("axis", -1) % x.ndim, x.ndim))
    xf = ops.cast(x, np.float32) if x.dtype == np.float16 and at.get("stash_type", 1) == 1 else x
    out = ops.div(xf, ops.sqrt(ops.add(ops.mean(ops.square(xf), axes, keepdims=True), float(at.get("epsilon", 1e-5)))))
    return [ops.mul(ops.cast(out, x.dtype) if xf is not x else out, scale)]


@_rule("Trilu")
def _trilu(r: _Reader, n: Any) -> list[Tensor]:
    """x where column - row >= k (upper) or <= k (lower), else 0; k a constant or fed at run time."""
    x = r.t(n.input[0])
    rows, cols = x.shape[-2:]
    if rows is None or cols is None:
        raise OnnxError(f"{r.where()}: cgraph needs the matrix sizes, got {x.shape}")
    name = _optional(n, 1)
    k: Any = 0 if name is None else r.known(name)
    k = ops.cast(ops.reshape(r.t(cast(str, name)), ()), np.int64) if k is None else int(np.asarray(k).reshape(()))
    offset = _int64(r, np.arange(cols)[None, :] - np.arange(rows)[:, None])
    upper = r.attrs(n).get("upper", 1)
    mask = ops.greater_equal(offset, k) if upper else ops.less_equal(offset, k)
    return [ops.where(mask, x, np.zeros((), x.dtype))]


# ---- gathering and one-dimensional images ------------------------------------------------------

@_rule("GatherElements")
def _gather_elements(r: _Reader, n: Any) -> list[Tensor]:
    """out[..., j, ...] = x[..., indices[..., j, ...], ...] along `axis`: x's axis moved last and
    compared with every index (a where and a sum, so that it differentiates)."""
    x, idx = r.t(n.input[0]), ops.cast(r.t(n.input[1]), np.int64)
    axis = r.attrs(n).get("axis", 0) % x.ndim
    size = x.shape[axis]
    off_axis = x.shape[:axis] + x.shape[axis + 1:] != idx.shape[:axis] + idx.shape[axis + 1:]
    if size is None or None in idx.shape or off_axis:
        raise OnnxError(f"{r.where()}: cgraph needs static sizes, equal off the axis, got {x.shape} and {idx.shape}")
    idx = ops.where(ops.less(idx, 0), ops.add(idx, size), idx)
    moved = ops.expand_dims(ops.transpose(x, (*range(axis), *range(axis + 1, x.ndim), axis)), axis)
    hit = ops.equal(ops.expand_dims(idx, -1), _int64(r, np.arange(size)))
    return [ops.sum(ops.where(hit, moved, np.zeros((), x.dtype)), -1)]


def _last_index(r: _Reader, n: Any, x: Tensor) -> Tensor:
    """argmax along `axis`; with select_last_index, of x reversed along it, counted from the end."""
    at = r.attrs(n)
    axis, keepdims = at.get("axis", 0) % x.ndim, bool(at.get("keepdims", 1))
    if not at.get("select_last_index", 0):
        return ops.argmax(x, axis=axis, keepdims=keepdims)
    size = x.shape[axis]
    if size is None:
        raise OnnxError(f"{r.where()}: select_last_index needs the axis' size, got {x.shape}")
    flipped = ops.getitem(x, (slice(None),) * axis + (slice(None, None, -1),))
    return ops.sub(size - 1, ops.argmax(flipped, axis=axis, keepdims=keepdims))


RULES["ArgMax"] = lambda r, n: [_last_index(r, n, r.t(n.input[0]))]
RULES["ArgMin"] = lambda r, n: [_last_index(r, n, (lambda x: ops.neg(x if x.dtype.kind == "f" else ops.cast(
    x, np.int64)))(r.t(n.input[0])))]


@_rule("Hardmax")
def _hardmax(r: _Reader, n: Any) -> list[Tensor]:
    """1 at the first largest element along `axis` (opset 13; before, of the flattened axes from
    `axis` on), else 0."""
    x = r.t(n.input[0])
    axis = r.attrs(n).get("axis", -1 if r.opset >= 13 else 1) % x.ndim
    flat = x if r.opset >= 13 or axis == x.ndim - 1 else ops.reshape(x, (*x.shape[:axis], -1))
    a = flat.ndim - 1 if flat is not x else axis
    size = flat.shape[a]
    if size is None or None in x.shape:
        raise OnnxError(f"{r.where()}: cgraph needs static sizes, got {x.shape}")
    hot = ops.one_hot(ops.argmax(flat, axis=a), size, dtype=x.dtype)
    hot = ops.transpose(hot, (*range(a), hot.ndim - 1, *range(a, hot.ndim - 1)))
    return [hot if flat is x else ops.reshape(hot, x.shape)]


@_rule("LpNormalization")
def _lp_normalization(r: _Reader, n: Any) -> list[Tensor]:
    x, at = r.t(n.input[0]), r.attrs(n)
    axis, p = at.get("axis", -1), at.get("p", 2)
    norm = ops.sum(ops.abs(x), axis, keepdims=True) if p == 1 else ops.sqrt(ops.sum(ops.square(x), axis, keepdims=True))
    zero = ops.equal(norm, 0)  # a zero vector stays zero
    return [ops.where(zero, np.zeros((), x.dtype), ops.div(x, ops.where(zero, np.ones((), x.dtype), norm)))]


RULES["Swish"] = _attr_rule(lambda x, alpha: ops.mul(x, ops.logistic(ops.mul(alpha, x))), alpha=1.0)


@_rule("DepthToSpace", "SpaceToDepth")
def _depth_space(r: _Reader, n: Any) -> list[Tensor]:
    """Reshapes and a transpose of an (N, C, H, W) image of static sizes, as ONNX lays them out
    (DCR or CRD for DepthToSpace)."""
    x, at = r.t(n.input[0]), r.attrs(n)
    b = int(at["blocksize"])
    if x.ndim != 4 or None in x.shape:
        raise OnnxError(f"{r.where()}: cgraph needs a 4-D image of static sizes, got {x.shape}")
    N, C, H, W = cast(tuple[int, int, int, int], x.shape)
    mode = at.get("mode", b"DCR")
    dcr = (mode.decode() if isinstance(mode, bytes) else mode) == "DCR"
    if n.op_type == "SpaceToDepth":
        t = ops.reshape(x, (N, C, H // b, b, W // b, b))
        t = ops.transpose(t, (0, 3, 5, 1, 2, 4) if dcr else (0, 1, 3, 5, 2, 4))
        return [ops.reshape(t, (N, C * b * b, H // b, W // b))]
    if dcr:
        t = ops.transpose(ops.reshape(x, (N, b, b, C // (b * b), H, W)), (0, 3, 4, 1, 5, 2))
    else:
        t = ops.transpose(ops.reshape(x, (N, C // (b * b), b, b, H, W)), (0, 1, 4, 2, 5, 3))
    return [ops.reshape(t, (N, C // (b * b), H * b, W * b))]


def _one_dimensional(rule: Rule) -> Rule:
    """A 2-D image rule that also takes 1-D images (N, C, L): as (N, C, 1, L), its weights and
    attributes given a leading size-1 axis, the result's axis 2 dropped."""
    def wrapped(r: _Reader, n: Any) -> list[Tensor]:
        if r.t(n.input[0]).ndim != 3:
            return rule(r, n)
        helper = r.onnx.helper
        node = r.onnx.NodeProto()
        node.CopyFrom(n)
        del node.input[:], node.attribute[:]
        for i, name in enumerate(n.input):
            if name and (i < 2 and not (n.op_type in ("MaxPool", "AveragePool") and i == 1)):
                wide = f"{name}\x00as 2-D"
                r.env[wide] = ops.expand_dims(r.t(name), 2)
                name = wide
            node.input.append(name)
        lead = {"kernel_shape": [1], "strides": [1], "dilations": [1], "output_padding": [0]}
        for key, value in r.attrs(n).items():
            if key in lead:
                value = lead[key] + list(value)
            elif key == "pads":
                value = [0, value[0], 0, value[1]]
            elif key == "output_shape":
                value = [1, *value]
            node.attribute.append(helper.make_attribute(key, value))
        r.node = node
        try:
            outs = rule(r, node)
        finally:
            r.node = n
        return [ops.squeeze(t, 2) if t.ndim == 4 else t for t in outs]
    return wrapped


for _name in ("Conv", "ConvTranspose", "MaxPool", "AveragePool"):
    RULES[_name] = _one_dimensional(RULES[_name])


def _constant_value(r: _Reader, n: Any) -> np.ndarray:
    at = r.attrs(n)
    numpy_helper = r.onnx.numpy_helper
    if "value" in at:
        return numpy_helper.to_array(at["value"])
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                       ("value_ints", np.int64)):
        if key in at:
            return np.asarray(at[key], dtype=dtype)
    raise OnnxError(f"{r.where()}: only tensor, float and int Constant values are supported "
                    f"(got {', '.join(at)})")


def _import_node(r: _Reader, n: Any) -> None:
    """Import one ONNX node: by its rule, or, for an operator ONNX defines as a function of
    others (Attention...), node by node through the function's body."""
    r.node = n
    if n.op_type == "Constant":
        r.static[n.output[0]] = _constant_value(r, n)
        return
    if n.op_type not in RULES:
        body, opset = _function_body(r, n)
        outer = r.opset
        r.opset = opset
        try:
            for inner in body:
                if inner.op_type not in IMPORTABLE and not _has_function(inner.op_type, opset, inner.domain):
                    raise OnnxError(f"{r.where()}: its ONNX function uses {inner.op_type}, which cgraph cannot import")
                _import_node(r, inner)
        finally:
            r.opset, r.node = outer, n
        return
    try:
        outs = RULES[n.op_type](r, n)
    except OnnxError:
        raise
    except CgraphError as err:
        raise OnnxError(f"{r.where()}: {err}") from None
    for out_name, t in zip(n.output, outs, strict=False):
        if out_name:
            r.env[out_name] = t


def _has_function(op_type: str, opset: int, domain: str = "") -> bool:
    """Whether ONNX defines the operator (at this opset) as a function of other operators."""
    defs = require("onnx.defs")
    try:
        schema = defs.get_schema(op_type, opset, domain)
    except Exception:  # noqa: BLE001 - onnx raises its SchemaError for an unknown operator
        return False
    return bool(schema.has_function or schema.has_context_dependent_function)


def _function_body(r: _Reader, n: Any) -> tuple[list[Any], int]:
    """The nodes of the ONNX function that defines node n's operator, its inputs, outputs and
    attribute references bound to the node's (internal values renamed apart), and the opset
    they are written for."""
    onnx = r.onnx
    schema = onnx.defs.get_schema(n.op_type, r.opset, n.domain)
    node = onnx.NodeProto()
    node.CopyFrom(n)
    given = {a.name for a in node.attribute}
    for name, attr in schema.attributes.items():
        if name not in given and attr.default_value.name:
            node.attribute.append(attr.default_value)
    fn = onnx.FunctionProto()
    if schema.has_function:
        fn.ParseFromString(schema.function_body.SerializeToString())
    else:
        types = [onnx.helper.make_tensor_type_proto(np_to_onnx_type(t.dtype), list(t.shape))
                 for t in (r.t(i) for i in node.input if i)]
        fn.ParseFromString(schema.get_context_dependent_function(node.SerializeToString(),
                                                                 [t.SerializeToString() for t in types]))
    opset = next((o.version for o in fn.opset_import if o.domain in ("", "ai.onnx")), r.opset)
    prefix = f"{n.name or n.output[0]}\x00{n.op_type}/"
    names = {formal: (n.input[i] if i < len(n.input) else "") for i, formal in enumerate(fn.input)}
    names.update({formal: n.output[i] for i, formal in enumerate(fn.output) if i < len(n.output) and n.output[i]})
    attrs = {a.name: a for a in node.attribute}
    body = []
    for inner in fn.node:
        if any(a.type == onnx.AttributeProto.GRAPH for a in inner.attribute):
            raise OnnxError(f"{r.where()}: its ONNX function has subgraphs, which cgraph cannot import")
        copy = onnx.NodeProto()
        copy.CopyFrom(inner)
        del copy.input[:], copy.output[:], copy.attribute[:]
        copy.input.extend(names.get(v, prefix + v) if v else "" for v in inner.input)
        copy.output.extend(names.get(v, prefix + v) if v else "" for v in inner.output)
        for a in inner.attribute:
            if a.ref_attr_name:
                if a.ref_attr_name in attrs:
                    bound = onnx.AttributeProto()
                    bound.CopyFrom(attrs[a.ref_attr_name])
                    bound.name = a.name
                    copy.attribute.append(bound)
            else:
                copy.attribute.append(a)
        copy.name = prefix + (inner.name or inner.output[0])
        body.append(copy)
    return body, opset


def _all_nodes(graph: Any) -> Any:
    """The nodes of an ONNX graph and of the bodies its nodes hold (If's branches, Loop's and
    Scan's bodies), depth first."""
    for n in graph.node:
        yield n
        for a in n.attribute:
            for body in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from _all_nodes(body)


def _unsupported(model: onnx.ModelProto) -> Counter[str]:
    """Nodes cgraph cannot import, bodies included, by op (with the domain when it is not
    ONNX's own); an operator that ONNX defines as a function of others is imported through its
    body."""
    bad: Counter[str] = Counter()
    onnx = require()
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=1)
    for n in _all_nodes(model.graph):
        if n.domain not in ("", "ai.onnx"):
            bad[f"{n.domain}:{n.op_type}"] += 1
        elif n.op_type not in IMPORTABLE and not _has_function(n.op_type, opset):
            bad[n.op_type] += 1
        elif n.op_type == "BatchNormalization":
            training = any(a.name == "training_mode" and onnx.helper.get_attribute_value(a) for a in n.attribute)
            if training or any(n.output[1:]):
                bad["BatchNormalization (training mode)"] += 1
        elif n.op_type == "MaxPool" and any(n.output[1:]):
            bad[f"{n.op_type} (second output)"] += 1
    return bad


def from_model(model: onnx.ModelProto, name: str | None = None) -> Graph:
    """The cgraph Graph of an ONNX ModelProto (see `load`). Anything wrong with the model is
    one OnnxError line naming the node or the part of the model at fault."""
    r = _Reader(Graph(name or "onnx"), 1)
    try:
        return _read_model(r, model, name)
    except OnnxError as err:
        raise OnnxError(one_line(str(err))) from None
    except CgraphError as err:
        raise OnnxError(one_line(f"{r.where()}: {err}")) from None
    except Exception as err:  # protobuf and onnx meeting malformed input (bad UTF-8, unknown types...)
        raise OnnxError(one_line(f"{r.where()}: {_first_line(err)}")) from None


def _first_line(err: BaseException, kind: bool = True) -> str:
    """The first line of an exception's message (at most 200 characters), after its type."""
    lines = str(err).strip().splitlines()
    text = lines[0][:200] if lines else ""
    return f"{type(err).__name__}: {text}" if kind or not text else text


def _text(value: Any, what: str) -> str:
    """A string of the model, which must be UTF-8 text (ONNX says so; cgraph files need it)."""
    if not isinstance(value, str):
        raise OnnxError(f"{what} is not UTF-8 text: {value!r:.80}")
    return value


def _read_model(r: _Reader, model: onnx.ModelProto, name: str | None) -> Graph:
    onnx = r.onnx
    try:
        onnx.checker.check_model(model)
    except Exception as err:  # ValidationError, and what the checker's C++ raises on stranger input
        raise OnnxError(f"not a valid ONNX model: {_first_line(err, kind=False)}") from None
    bad = _unsupported(model)
    if bad:
        listed = ", ".join(f"{op} ({k})" for op, k in sorted(bad.items(), key=lambda kv: (-kv[1], kv[0])))
        raise OnnxError(f"ONNX model {model.graph.name!r} uses ops cgraph cannot import: {listed}")
    r.opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=1)
    r.part = "ONNX metadata_props"
    props = {_text(p.key, "a metadata_props key"): _text(p.value, f"metadata_props {p.key!r}")
             for p in model.metadata_props}
    constants = _names(props.pop(CONSTANTS_KEY, "[]"), CONSTANTS_KEY)
    frozen = _names(props.pop(FROZEN_KEY, "[]"), FROZEN_KEY)
    frozen |= {nm for n in model.graph.node if n.op_type == "BatchNormalization" for nm in n.input[3:5]}

    graph = model.graph
    g = r.g
    g.name = name or _text(graph.name, "the graph name") or "onnx"
    g.metadata.update(props)
    for t in graph.initializer:
        r.part = f"ONNX initializer {t.name!r}"
        r.static[t.name] = onnx.numpy_helper.to_array(t)
    for vi in graph.input:
        r.part = f"ONNX input {vi.name!r}"
        if vi.name not in r.static:
            r.env[vi.name] = _input(g, vi)
    for iname, value in r.static.items():
        r.part = f"ONNX initializer {iname!r}"
        if iname not in constants and value.dtype in (np.float32, np.float64):
            r.env[iname] = g.param(iname, value, trainable=iname not in frozen)
    for r.index, n in enumerate(graph.node):
        _import_node(r, n)
    r.node = None
    for vi in graph.output:
        r.part = f"ONNX output {vi.name!r}"
        t = r.t(vi.name)
        want = onnx_to_np_type(vi.type.tensor_type.elem_type) if vi.type.HasField("tensor_type") else None
        if want is not None and t.dtype != want:  # never a result of another dtype than the model's
            raise OnnxError(f"ONNX output {vi.name!r}: the model says {want}, cgraph's import gives {t.dtype}")
        dims = vi.type.tensor_type.shape.dim if vi.type.tensor_type.HasField("shape") else None
        if dims is not None and (len(dims) != t.ndim or any(
                d.HasField("dim_value") and s is not None and d.dim_value != s
                for d, s in zip(dims, t.shape, strict=True))):
            raise OnnxError(f"ONNX output {vi.name!r}: the model says shape "
                            f"{tuple(d.dim_value if d.HasField('dim_value') else None for d in dims)}, cgraph's "
                            f"import gives {t.shape}")
        g.output(vi.name, t)
    return g


def _names(text: str, key: str) -> set[str]:
    """The names listed in cgraph's metadata `key`: a JSON list of strings."""
    try:
        names = json.loads(text)
    except ValueError:
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise OnnxError(f"ONNX metadata_props {key!r} must be a JSON list of names, not {text!r:.80}")
    return set(names)


def _input(g: Graph, vi: Any) -> Tensor:
    tt = vi.type.tensor_type
    if not vi.type.HasField("tensor_type") or not tt.HasField("shape"):
        raise OnnxError(f"ONNX input {vi.name!r}: cgraph needs a tensor input of known rank")
    dtype = onnx_to_np_type(tt.elem_type)
    if dtype is None:
        raise OnnxError(f"ONNX input {vi.name!r}: element type {tt.elem_type} is not one cgraph supports "
                        f"({', '.join(map(str, DTYPES))})")
    shape = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    return g.input(vi.name, shape, dtype)


def load(path: str | PathLike[str] | bytes | onnx.ModelProto, name: str | None = None) -> Graph:
    """An ONNX model (a file, its bytes, or a ModelProto) as a cgraph Graph: inputs, outputs
    and initializers (as params) keep their ONNX names. Ops cgraph does not cover raise one
    OnnxError listing them with their counts."""
    onnx = require()
    if isinstance(path, onnx.ModelProto):
        return from_model(path, name)
    try:
        model = onnx.load_model_from_string(path) if isinstance(path, bytes) else onnx.load_model(str(path))
    except OSError:
        raise
    except Exception as err:  # protobuf's DecodeError and friends: not an ONNX file
        raise OnnxError(f"{path if not isinstance(path, bytes) else 'bytes'}: not an ONNX model "
                        f"({_first_line(err)})") from None
    return from_model(model, name)


from cgraph.onnx import _import_control  # noqa: E402, F401  (If, Loop and Scan, whose bodies are read by _import_node)

IMPORTABLE: frozenset[str] = frozenset(RULES) | {"Constant"}
