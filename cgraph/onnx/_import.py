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
    onnx_to_np_type,
    registrar,
    require,
)

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
        if value.dtype not in DTYPES and value.dtype.kind in "iu":
            value = value.astype(np.int64)
        if value.dtype not in DTYPES:
            raise OnnxError(f"{self.where()}: value {name!r} has type {value.dtype}; cgraph supports "
                            f"{', '.join(map(str, DTYPES))}")
        cname, i = name, 1
        while cname in self.g:
            cname, i = f"{name}_{i}", i + 1
        self.env[name] = t = self.g.constant(cname, value)
        return t

    def value(self, name: str, what: str) -> np.ndarray:
        """The constant value of input `name` (an axes list, a shape...)."""
        if name not in self.static:
            raise OnnxError(f"{self.where()}: {what} ({name!r}) must be a constant (an initializer "
                            "or a Constant node)")
        return self.static[name]

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
    a, b = _inputs(r, n)
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

@_rule("Reshape")
def _reshape(r: _Reader, n: Any) -> list[Tensor]:
    x = r.t(n.input[0])
    shape = [int(d) for d in r.value(n.input[1], "the target shape")]
    if not r.attrs(n).get("allowzero", 0):  # a 0 copies the input's size
        for i, d in enumerate(shape):
            if d == 0:
                size = x.shape[i] if i < x.ndim else None
                if size is None and -1 in shape:
                    raise OnnxError(f"{r.where()}: a 0 in shape {shape} copies a size known only at "
                                    "run time, next to a -1")
                shape[i] = -1 if size is None else size
    return [ops.reshape(x, tuple(shape))]


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
    return [ops.expand_dims(r.t(n.input[0]), tuple(_axes(r, n, 1) or ()))]


@_rule("Expand")
def _expand(r: _Reader, n: Any) -> list[Tensor]:
    x = r.t(n.input[0])
    shape = [int(d) for d in r.value(n.input[1], "the target shape")]
    ndim = max(len(shape), x.ndim)
    xs = [1] * (ndim - x.ndim) + list(x.shape)
    ts = [1] * (ndim - len(shape)) + shape
    target = [d if t == 1 else t for d, t in zip(xs, ts, strict=True)]
    if None in target:
        raise OnnxError(f"{r.where()}: cgraph needs static sizes to expand {x.shape} to {shape}")
    return [ops.broadcast_to(x, tuple(target))]


@_rule("Slice")
def _slice(r: _Reader, n: Any) -> list[Tensor]:
    x = r.t(n.input[0])
    starts = r.value(n.input[1], "the starts")
    ends = r.value(n.input[2], "the ends")
    axes = r.value(n.input[3], "the axes") if _optional(n, 3) else range(len(starts))
    steps = r.value(n.input[4], "the steps") if _optional(n, 4) else [1] * len(starts)
    index: list[Any] = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
        index[int(a)] = slice(int(s), int(e), int(st))
    return [ops.getitem(x, tuple(index))]


# ---- reductions and the ops of neural networks ----------------------------------------------

def _reduction(fn: Callable[..., Tensor]) -> Rule:
    def rule(r: _Reader, n: Any) -> list[Tensor]:
        x = r.t(n.input[0])
        at = r.attrs(n)
        axes = _axes(r, n, 1)
        if not axes:
            if at.get("noop_with_empty_axes", 0):
                return [x]
            axes = None
        return [fn(x, None if axes is None else tuple(axes), keepdims=bool(at.get("keepdims", 1)))]
    return rule


RULES["ReduceSum"] = _reduction(ops.sum)
RULES["ReduceMean"] = _reduction(ops.mean)
RULES["ReduceMax"] = _reduction(ops.max)
RULES["ReduceMin"] = _reduction(ops.min)
RULES["ReduceProd"] = _reduction(ops.prod)


@_rule("ArgMax")
def _argmax(r: _Reader, n: Any) -> list[Tensor]:
    at = r.attrs(n)
    if at.get("select_last_index", 0):
        raise OnnxError(f"{r.where()}: select_last_index=1 is not supported (cgraph's argmax takes the first)")
    return [ops.argmax(r.t(n.input[0]), axis=at.get("axis", 0), keepdims=bool(at.get("keepdims", 1)))]


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
    """Inference form: the input itself (training_mode absent or false)."""
    mode = _optional(n, 2)
    if mode is not None and bool(np.asarray(r.value(mode, "training_mode"))):
        raise OnnxError(f"{r.where()}: Dropout in training mode is not supported (cgraph's dropout draws its "
                        "mask from a seed input)")
    return [r.t(n.input[0])]


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


IMPORTABLE: frozenset[str] = frozenset(RULES) | {"Constant"}


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


def _unsupported(model: onnx.ModelProto) -> Counter[str]:
    """Nodes cgraph cannot import, by op (with the domain when it is not ONNX's own)."""
    bad: Counter[str] = Counter()
    onnx = require()
    for n in model.graph.node:
        if n.domain not in ("", "ai.onnx"):
            bad[f"{n.domain}:{n.op_type}"] += 1
        elif n.op_type not in IMPORTABLE:
            bad[n.op_type] += 1
        elif n.op_type == "BatchNormalization":
            training = any(a.name == "training_mode" and onnx.helper.get_attribute_value(a) for a in n.attribute)
            if training or any(n.output[1:]):
                bad["BatchNormalization (training mode)"] += 1
        elif n.op_type in ("Dropout", "MaxPool") and any(n.output[1:]):
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
        r.node = n
        if n.op_type == "Constant":
            r.static[n.output[0]] = _constant_value(r, n)
            continue
        outs = RULES[n.op_type](r, n)
        for out_name, t in zip(n.output, outs, strict=False):
            if out_name:
                r.env[out_name] = t
    r.node = None
    for vi in graph.output:
        r.part = f"ONNX output {vi.name!r}"
        g.output(vi.name, r.t(vi.name))
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
