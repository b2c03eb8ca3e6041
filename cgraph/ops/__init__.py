"""The ops: functions that build nodes (`cg.add`, `cg.matmul`, ...), each op one declared
contract in the registry (`cgraph.ops.registry`), with its kernel, shape and dtype rules and
derivative rules; `cg.define_op` adds your own through the same door."""

from cgraph.ops.array import (
    broadcast_to,
    concat,
    expand_dims,
    getitem,
    matmul,
    one_hot,
    reshape,
    squeeze,
    take,
    transpose,
)
from cgraph.ops.conv import avg_pool2d, conv2d, max_pool2d
from cgraph.ops.elementwise import (
    abs,
    add,
    atan,
    atan2,
    cast,
    ceil,
    clip,
    cos,
    div,
    equal,
    erf,
    exp,
    expm1,
    floor,
    greater,
    greater_equal,
    less,
    less_equal,
    log,
    log1p,
    logistic,
    maximum,
    minimum,
    mod,
    mul,
    neg,
    pow,
    relu,
    round,
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
    dropout,
    log_softmax,
    logsumexp,
    mse,
    softmax,
    softmax_cross_entropy,
)
from cgraph.ops.reduce import argmax, cumsum, max, mean, min, prod, sum
from cgraph.ops.registry import NONDIFF, ZERO, Attr, OpDef, define_op, op_info

__all__ = [
    "NONDIFF", "ZERO", "Attr", "OpDef", "abs", "add", "argmax", "atan", "atan2", "avg_pool2d", "batch_norm",
    "binary_cross_entropy", "broadcast_to", "cast", "ceil", "clip", "concat", "conv2d", "cos", "cumsum",
    "define_op", "div", "dropout", "equal", "erf", "exp", "expand_dims", "expm1", "floor", "getitem", "greater",
    "greater_equal", "less", "less_equal", "log", "log1p", "log_softmax", "logistic", "logsumexp", "matmul",
    "max", "max_pool2d", "maximum", "mean", "min", "minimum", "mod", "mse", "mul", "neg", "one_hot", "op_info",
    "pow", "prod", "relu", "reshape", "round", "sign", "sin", "softmax", "softmax_cross_entropy", "softplus",
    "sqrt", "square", "squeeze", "stop_gradient", "sub", "sum", "take", "tanh", "transpose", "where",
]
