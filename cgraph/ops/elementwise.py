"""Elementwise ops (numpy broadcasting): arithmetic, math functions, comparisons, where, cast.

Unary math ops are defined by their derivative alone (`_unary`): both the JVP and the VJP are a
product with it, as in autograd's elementwise rules.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cgraph.errors import ShapeError
from cgraph.graph import Meta, Tensor
from cgraph.ops.registry import (
    NONDIFF,
    ZERO,
    apply,
    compare_infer,
    define,
    elementwise_infer,
    float_infer,
)

# ---- arithmetic -------------------------------------------------------------------------

define("add", np.add, elementwise_infer, inplace=True,
       jvp=(lambda t, out, a, b: t, lambda t, out, a, b: t),
       vjp=(lambda g, out, a, b: g, lambda g, out, a, b: g))
define("sub", np.subtract, elementwise_infer, inplace=True,
       jvp=(lambda t, out, a, b: t, lambda t, out, a, b: neg(t)),
       vjp=(lambda g, out, a, b: g, lambda g, out, a, b: neg(g)))
define("mul", np.multiply, elementwise_infer, inplace=True,
       jvp=(lambda t, out, a, b: mul(t, b), lambda t, out, a, b: mul(a, t)),
       vjp=(lambda g, out, a, b: mul(g, b), lambda g, out, a, b: mul(a, g)))
define("div", np.divide, float_infer, inplace=True,
       jvp=(lambda t, out, a, b: div(t, b), lambda t, out, a, b: neg(div(mul(t, out), b))),
       vjp=(lambda g, out, a, b: div(g, b), lambda g, out, a, b: neg(div(mul(g, out), b))))


def _pow_da(a: Tensor, b: Tensor) -> Tensor:
    return mul(b, pow(a, sub(b, 1)))


define("pow", np.power, float_infer, inplace=True,
       jvp=(lambda t, out, a, b: mul(t, _pow_da(a, b)), lambda t, out, a, b: mul(t, mul(out, log(a)))),
       vjp=(lambda g, out, a, b: mul(g, _pow_da(a, b)), lambda g, out, a, b: mul(g, mul(out, log(a)))),
       doc="a ** b; the derivative wrt b is out * log(a), so it needs a > 0 where it is used")


def _unary(name: str, kernel: Any, deriv: Any, infer: Any = float_infer, doc: str = "") -> None:
    """An elementwise op whose JVP is `t * deriv(x, out)` and VJP `g * deriv(x, out)`."""
    inplace = isinstance(kernel, np.ufunc)
    if deriv is ZERO:
        define(name, kernel, infer, jvp=(ZERO,), vjp=(ZERO,), doc=doc, inplace=inplace)
        return
    define(name, kernel, infer,
           jvp=(lambda t, out, x: mul(t, deriv(x, out)),),
           vjp=(lambda g, out, x: mul(g, deriv(x, out)),), doc=doc, inplace=inplace)


def _linear_unary(name: str, kernel: Any, fn: Any, infer: Any = elementwise_infer) -> None:
    define(name, kernel, infer, jvp=(lambda t, out, x: fn(t),), vjp=(lambda g, out, x: fn(g),),
           inplace=isinstance(kernel, np.ufunc))


def _logistic(x: np.ndarray) -> np.ndarray:
    # For x < -709, e^-x overflows to inf and the result is its limit, 0: no NaN, no warning.
    with np.errstate(over="ignore"):
        e = np.exp(-x)
    e += 1.0
    return np.reciprocal(e, out=e)


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x).astype(x.dtype, copy=False)


_linear_unary("neg", np.negative, lambda t: neg(t))
_unary("exp", np.exp, lambda x, out: out)
_unary("log", np.log, lambda x, out: reciprocal(x))
_unary("sqrt", np.sqrt, lambda x, out: div(0.5, out))
_unary("square", np.square, lambda x, out: mul(2.0, x), infer=elementwise_infer)
_unary("abs", np.abs, lambda x, out: sign(x), infer=elementwise_infer,
       doc="|x|; its derivative at 0 is taken as 0 (sign(0))")
_unary("sign", np.sign, ZERO, infer=elementwise_infer)
_unary("sin", np.sin, lambda x, out: cos(x))
_unary("cos", np.cos, lambda x, out: neg(sin(x)))
_unary("tanh", np.tanh, lambda x, out: sub(1.0, square(out)))
_unary("logistic", _logistic, lambda x, out: mul(out, sub(1.0, out)))
_unary("relu", lambda x: np.maximum(x, 0), lambda x, out: cast(greater(x, 0), x.dtype),
       infer=elementwise_infer, doc="max(x, 0); its derivative at 0 is taken as 0")
_unary("softplus", _softplus, lambda x, out: logistic(x), doc="log(1 + e^x), computed stably")


def reciprocal(x: Tensor) -> Tensor:
    return div(1.0, x)


# ---- maximum and minimum: ties share the derivative equally --------------------------------

def _share(win: Tensor, tie: Tensor, dtype: Any) -> Tensor:
    """The weight of one side of maximum/minimum: 1 where it wins, 0.5 on ties, 0 else."""
    return add(cast(win, dtype), mul(0.5, cast(tie, dtype)))


def _extremum(name: str, kernel: Any, wins: Any) -> None:
    def weight_a(out: Tensor, a: Tensor, b: Tensor) -> Tensor:
        return _share(wins(a, b), equal(a, b), out.dtype)

    def weight_b(out: Tensor, a: Tensor, b: Tensor) -> Tensor:
        return _share(wins(b, a), equal(a, b), out.dtype)

    define(name, kernel, elementwise_infer, inplace=True,
           jvp=(lambda t, out, a, b: mul(t, weight_a(out, a, b)),
                lambda t, out, a, b: mul(t, weight_b(out, a, b))),
           vjp=(lambda g, out, a, b: mul(g, weight_a(out, a, b)),
                lambda g, out, a, b: mul(g, weight_b(out, a, b))))


_extremum("maximum", np.maximum, lambda a, b: greater(a, b))
_extremum("minimum", np.minimum, lambda a, b: less(a, b))


# ---- comparisons (bool results, no derivative) and where ------------------------------------

for _name, _kernel in (("less", np.less), ("less_equal", np.less_equal), ("greater", np.greater),
                       ("greater_equal", np.greater_equal), ("equal", np.equal)):
    define(_name, _kernel, compare_infer, jvp=(NONDIFF, NONDIFF), vjp=(NONDIFF, NONDIFF))


def _where_infer(c: Meta, a: Meta, b: Meta) -> tuple[Any, np.dtype]:
    if c.dtype != np.bool_:
        raise ShapeError(f"the condition must be bool, got {c.dtype}")
    shape, _ = elementwise_infer(c, a, b)
    return shape, np.result_type(a.dtype, b.dtype)


define("where", np.where, _where_infer,
       jvp=(NONDIFF, lambda t, out, c, a, b: where(c, t, 0.0), lambda t, out, c, a, b: where(c, 0.0, t)),
       vjp=(NONDIFF, lambda g, out, c, a, b: where(c, g, 0.0), lambda g, out, c, a, b: where(c, 0.0, g)))


def _cast_infer(x: Meta, *, dtype: str) -> tuple[Any, np.dtype]:
    from cgraph.graph import as_dtype

    return x.shape, as_dtype(dtype)


def _cast_rule(t: Tensor, out: Tensor, x: Tensor, *, dtype: str) -> Tensor | None:
    return cast(t, dtype)


def _cast_back(g: Tensor, out: Tensor, x: Tensor, *, dtype: str) -> Tensor:
    return cast(g, x.dtype)


define("cast", lambda x, *, dtype: x.astype(dtype), _cast_infer, jvp=(_cast_rule,), vjp=(_cast_back,),
       doc="convert to another dtype; bool and int inputs carry no derivative")


# ---- the functions users call -------------------------------------------------------------

def add(a: Any, b: Any) -> Tensor:
    """a + b"""
    return apply("add", a, b)


def sub(a: Any, b: Any) -> Tensor:
    """a - b"""
    return apply("sub", a, b)


def mul(a: Any, b: Any) -> Tensor:
    """a * b"""
    return apply("mul", a, b)


def div(a: Any, b: Any) -> Tensor:
    """a / b (true division; ints give float64)"""
    return apply("div", a, b)


def pow(a: Any, b: Any) -> Tensor:  # noqa: A001  (the name users expect: cg.pow)
    """a ** b"""
    return apply("pow", a, b)


def neg(x: Any) -> Tensor:
    """-x"""
    return apply("neg", x)


def exp(x: Any) -> Tensor:
    return apply("exp", x)


def log(x: Any) -> Tensor:
    return apply("log", x)


def sqrt(x: Any) -> Tensor:
    return apply("sqrt", x)


def square(x: Any) -> Tensor:
    return apply("square", x)


def abs(x: Any) -> Tensor:  # noqa: A001
    return apply("abs", x)


def sign(x: Any) -> Tensor:
    return apply("sign", x)


def sin(x: Any) -> Tensor:
    return apply("sin", x)


def cos(x: Any) -> Tensor:
    return apply("cos", x)


def tanh(x: Any) -> Tensor:
    return apply("tanh", x)


def logistic(x: Any) -> Tensor:
    """1 / (1 + e^-x), computed without overflow"""
    return apply("logistic", x)


def relu(x: Any) -> Tensor:
    return apply("relu", x)


def softplus(x: Any) -> Tensor:
    """log(1 + e^x), computed without overflow"""
    return apply("softplus", x)


def maximum(a: Any, b: Any) -> Tensor:
    """Elementwise max; where a == b each side gets half the derivative."""
    return apply("maximum", a, b)


def minimum(a: Any, b: Any) -> Tensor:
    """Elementwise min; where a == b each side gets half the derivative."""
    return apply("minimum", a, b)


def less(a: Any, b: Any) -> Tensor:
    return apply("less", a, b)


def less_equal(a: Any, b: Any) -> Tensor:
    return apply("less_equal", a, b)


def greater(a: Any, b: Any) -> Tensor:
    return apply("greater", a, b)


def greater_equal(a: Any, b: Any) -> Tensor:
    return apply("greater_equal", a, b)


def equal(a: Any, b: Any) -> Tensor:
    return apply("equal", a, b)


def where(cond: Any, a: Any, b: Any) -> Tensor:
    """a where cond (a bool tensor) holds, else b."""
    return apply("where", cond, a, b)


def cast(x: Any, dtype: Any) -> Tensor:
    """x converted to `dtype` (float64, float32, int64 or bool)."""
    return apply("cast", x, dtype=str(np.dtype(dtype)))
