"""The ops: functions that build nodes (`cg.add`, `cg.matmul`, ...), each op one declared
contract in the registry (`cgraph.ops.registry`), with its kernel, shape and dtype rules and
derivative rules; `cg.define_op` adds your own through the same door."""

from cgraph.ops.array import (
    broadcast_to,
    concat,
    expand_dims,
    getitem,
    matmul,
    reshape,
    squeeze,
    transpose,
)
from cgraph.ops.elementwise import (
    abs,
    add,
    cast,
    cos,
    div,
    equal,
    exp,
    greater,
    greater_equal,
    less,
    less_equal,
    log,
    logistic,
    maximum,
    minimum,
    mul,
    neg,
    pow,
    relu,
    sign,
    sin,
    softplus,
    sqrt,
    square,
    stop_gradient,
    sub,
    tanh,
    where,
)
from cgraph.ops.nn import (
    batch_norm,
    binary_cross_entropy,
    log_softmax,
    logsumexp,
    mse,
    softmax,
    softmax_cross_entropy,
)
from cgraph.ops.reduce import max, mean, sum
from cgraph.ops.registry import NONDIFF, ZERO, Attr, OpDef, define_op, op_info

__all__ = [
    "NONDIFF", "ZERO", "Attr", "OpDef", "abs", "add", "batch_norm", "binary_cross_entropy", "broadcast_to",
    "cast", "concat", "cos", "define_op", "div", "equal", "exp", "expand_dims", "getitem", "greater",
    "greater_equal", "less", "less_equal", "log", "log_softmax", "logistic", "logsumexp", "matmul", "max",
    "maximum", "mean", "minimum", "mse", "mul", "neg", "op_info", "pow", "relu", "reshape", "sign", "sin",
    "softmax", "softmax_cross_entropy", "softplus", "sqrt", "square", "squeeze", "stop_gradient", "sub", "sum",
    "tanh", "transpose", "where",
]
