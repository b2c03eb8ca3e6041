"""Elementwise ops (numpy broadcasting): arithmetic, math functions, comparisons, where, cast,
stop_gradient.

An elementwise op's Jacobian is diagonal, so one rule per input (`deriv`) serves as both its
JVP and its VJP: `t * d(out)/d(x)` for a tangent or a cotangent `t`, as in autograd's
elementwise rules. Unary math ops are defined by that partial derivative alone (`_unary`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from cgraph.ops.array import batch_elementwise
from cgraph.ops.registry import (
    CAST,
    COMPARE,
    DTYPES,
    FLOAT,
    NONDIFF,
    NUMERIC,
    PROMOTE,
    SAME,
    WHERE,
    ZERO,
    Attr,
    Operand,
    define,
    elementwise_shape,
    involution,
    passthrough,
    same_shape,
    unit,
)
from cgraph.patterns import elementwise


def _rules(op: str) -> dict[str, Any]:
    """The batching and pattern rules every elementwise op shares."""
    return {"batch": batch_elementwise(op), "pattern": elementwise}


if TYPE_CHECKING:
    from cgraph.graph import Tensor

# ---- arithmetic -------------------------------------------------------------------------

BINARY = ("a", "b")

add = define("add", np.add, **_rules("add"), inputs=BINARY, shape=elementwise_shape, dtype=NUMERIC, inplace=True,
             deriv=(lambda t, out, a, b: t, lambda t, out, a, b: t), identity=unit(0, 0, 1),
             doc="a + b", grad_doc="d/da = 1, d/db = 1")
sub = define("sub", np.subtract, **_rules("sub"), inputs=BINARY, shape=elementwise_shape, dtype=NUMERIC, inplace=True,
             deriv=(lambda t, out, a, b: t, lambda t, out, a, b: neg(t)), identity=unit(0, 1),
             doc="a - b", grad_doc="d/da = 1, d/db = -1")
mul = define("mul", np.multiply, **_rules("mul"), inputs=BINARY, shape=elementwise_shape, dtype=NUMERIC, inplace=True,
             deriv=(lambda t, out, a, b: mul(t, b), lambda t, out, a, b: mul(a, t)), identity=unit(1, 0, 1),
             doc="a * b", grad_doc="d/da = b, d/db = a")
div = define("div", np.divide, **_rules("div"), inputs=BINARY, shape=elementwise_shape, dtype=FLOAT, inplace=True,
             deriv=(lambda t, out, a, b: div(t, b), lambda t, out, a, b: neg(div(mul(t, out), b))),
             identity=unit(1, 1), doc="a / b (true division; the inputs' result type must be a float)",
             grad_doc="d/da = 1 / b, d/db = -out / b")


def _pow_da(a: Tensor, b: Tensor) -> Tensor:
    return mul(b, pow(a, sub(b, 1)))


pow = define("pow", np.power, **_rules("pow"), inputs=BINARY, shape=elementwise_shape, dtype=FLOAT, inplace=True,  # noqa: A001
             deriv=(lambda t, out, a, b: mul(t, _pow_da(a, b)), lambda t, out, a, b: mul(t, mul(out, log(a)))),
             doc="a ** b; the derivative wrt b is out * log(a), so it needs a > 0 where it is used",
             grad_doc="d/da = b * a ** (b - 1), d/db = out * log(a)")


def _unary(name: str, kernel: Any, deriv: Any, grad_doc: str, dtype: Any = FLOAT, doc: str = "",
           **flags: Any) -> Any:
    """An elementwise op of one input whose derivative is `deriv(x, out)` (or ZERO)."""
    rule = ZERO if deriv is ZERO else (lambda t, out, x: mul(t, deriv(x, out)))
    return define(name, kernel, inputs=("x",), shape=same_shape, dtype=dtype, deriv=(rule,), doc=doc, **_rules(name),
                  grad_doc=grad_doc, inplace=isinstance(kernel, np.ufunc), **flags)


def _logistic(x: np.ndarray) -> np.ndarray:
    # For x < -709, e^-x overflows to inf and the result is its limit, 0: no NaN, no warning.
    with np.errstate(over="ignore"):
        e = np.exp(-x)
    if not isinstance(e, np.ndarray):  # a 0-d input gives a numpy scalar, which has no `out=`
        return np.reciprocal(e + 1)
    e += 1.0
    return np.reciprocal(e, out=e)


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x).astype(x.dtype, copy=False)


neg = define("neg", np.negative, **_rules("neg"), inputs=("x",), shape=same_shape, dtype=NUMERIC, inplace=True,
             deriv=(lambda t, out, x: neg(t),), identity=involution("neg"), doc="-x", grad_doc="d/dx = -1")
exp = _unary("exp", np.exp, lambda x, out: out, "d/dx = out", doc="e ** x")
log = _unary("log", np.log, lambda x, out: reciprocal(x), "d/dx = 1 / x", doc="the natural logarithm")
sqrt = _unary("sqrt", np.sqrt, lambda x, out: div(0.5, out), "d/dx = 0.5 / out", doc="the square root")
square = _unary("square", np.square, lambda x, out: mul(2.0, x), "d/dx = 2 x", dtype=NUMERIC, doc="x * x")
abs = _unary("abs", np.abs, lambda x, out: sign(x), "d/dx = sign(x) (0 at 0)", dtype=NUMERIC,  # noqa: A001
             doc="|x|; its derivative at 0 is taken as 0 (sign(0))")
sign = _unary("sign", np.sign, ZERO, "zero", dtype=NUMERIC, doc="-1, 0 or 1 as x is negative, zero or positive")
floor = _unary("floor", np.floor, ZERO, "zero (it jumps at the integers)", dtype=NUMERIC,
               doc="the largest integer not above x (numpy.floor; an int x is itself)")
ceil = _unary("ceil", np.ceil, ZERO, "zero (it jumps at the integers)", dtype=NUMERIC,
              doc="the smallest integer not below x (numpy.ceil; an int x is itself)")
round = _unary("round", np.round, ZERO, "zero (it jumps halfway between integers)", dtype=NUMERIC,  # noqa: A001
               doc="the nearest integer, halves to the even one (numpy.round, ONNX's Round; an int x is itself)")
sin = _unary("sin", np.sin, lambda x, out: cos(x), "d/dx = cos(x)", doc="the sine")
cos = _unary("cos", np.cos, lambda x, out: neg(sin(x)), "d/dx = -sin(x)", doc="the cosine")
tanh = _unary("tanh", np.tanh, lambda x, out: sub(1.0, square(out)), "d/dx = 1 - out ** 2",
              doc="the hyperbolic tangent")
logistic = _unary("logistic", _logistic, lambda x, out: mul(out, sub(1.0, out)), "d/dx = out (1 - out)",
                  doc="1 / (1 + e ** -x), computed without overflow")
relu = _unary("relu", lambda x: np.maximum(x, 0), lambda x, out: cast(greater(x, 0), x.dtype),
              "d/dx = 1 where x > 0, else 0", dtype=NUMERIC, doc="max(x, 0); its derivative at 0 is taken as 0")
softplus = _unary("softplus", _softplus, lambda x, out: logistic(x), "d/dx = logistic(x)",
                  doc="log(1 + e ** x), computed without overflow")


def reciprocal(x: Tensor) -> Tensor:
    return div(1.0, x)


def _erf(x: np.ndarray) -> np.ndarray:
    """scipy.special.erf when scipy is installed (the sparse extra); else the C library's erf,
    as exact, one Python call per element."""
    try:
        from scipy.special import erf as scipy_erf  # imported when first run: `import cgraph` stays light
    except ImportError:
        return np.asarray(np.frompyfunc(math.erf, 1, 1)(x), dtype=x.dtype)
    return scipy_erf(x)


atan = _unary("atan", np.arctan, lambda x, out: reciprocal(add(1.0, square(x))), "d/dx = 1 / (1 + x ** 2)",
              doc="the arctangent, in (-pi/2, pi/2)")
erf = _unary("erf", _erf, lambda x, out: mul(2.0 / np.sqrt(np.pi), exp(neg(square(x)))),
             "d/dx = 2 / sqrt(pi) * e ** -(x ** 2)", doc="the error function (scipy.special.erf, or the C "
             "library's erf without scipy)")
log1p = _unary("log1p", np.log1p, lambda x, out: reciprocal(add(1.0, x)), "d/dx = 1 / (1 + x)",
               doc="log(1 + x), exact for x near 0")
expm1 = _unary("expm1", np.expm1, lambda x, out: add(out, 1.0), "d/dx = out + 1",
               doc="e ** x - 1, exact for x near 0")


def _atan2_rule(num: Any) -> Any:
    """t * d(atan2(a, b)) for the side whose partial is `num(a, b) / (a ** 2 + b ** 2)`."""
    return lambda t, out, a, b: mul(t, div(num(a, b), add(square(a), square(b))))


atan2 = define("atan2", np.arctan2, **_rules("atan2"), inputs=BINARY, shape=elementwise_shape, dtype=FLOAT,
               inplace=True,
               deriv=(_atan2_rule(lambda a, b: b), _atan2_rule(lambda a, b: neg(a))),
               doc="the angle of the point (b, a) from the positive b axis, in [-pi, pi] (numpy.arctan2)",
               grad_doc="d/da = b / (a ** 2 + b ** 2), d/db = -a / (a ** 2 + b ** 2)")


def _mod_kernel(a: np.ndarray, b: np.ndarray, *, fmod: bool) -> np.ndarray:
    return np.fmod(a, b) if fmod else np.mod(a, b)


def _mod_shape(a: Any, b: Any, *, fmod: bool) -> Any:
    """BROADCAST of the inputs' shapes."""
    return elementwise_shape(a, b)


mod = define("mod", _mod_kernel, **_rules("mod"), inputs=BINARY, shape=_mod_shape, dtype=NUMERIC,
             attrs={"fmod": Attr("bool", False, doc="the remainder takes a's sign (C's fmod) instead of b's")},
             deriv=(lambda t, out, a, b, *, fmod: t, lambda t, out, a, b, *, fmod: mul(t, div(sub(out, a), b))),
             doc="the remainder of a / b: with b's sign (numpy.mod, Python's %), or with `fmod` a's (numpy.fmod)",
             grad_doc="d/da = 1, d/db = (out - a) / b, i.e. -floor(a / b) (-trunc(a / b) with fmod); it jumps "
                      "where a / b is an integer")


# ---- maximum and minimum: ties share the derivative equally --------------------------------

def _share(win: Tensor, tie: Tensor, dtype: Any) -> Tensor:
    """The weight of one side of maximum/minimum: 1 where it wins, 0.5 on ties, 0 else."""
    return add(cast(win, dtype), mul(0.5, cast(tie, dtype)))


def _extremum(name: str, kernel: Any, wins: Any, doc: str) -> Any:
    def weight_a(out: Tensor, a: Tensor, b: Tensor) -> Tensor:
        return _share(wins(a, b), equal(a, b), out.dtype)

    def weight_b(out: Tensor, a: Tensor, b: Tensor) -> Tensor:
        return _share(wins(b, a), equal(a, b), out.dtype)

    return define(name, kernel, inputs=BINARY, shape=elementwise_shape, dtype=PROMOTE, inplace=True, **_rules(name),
                  deriv=(lambda t, out, a, b: mul(t, weight_a(out, a, b)),
                         lambda t, out, a, b: mul(t, weight_b(out, a, b))),
                  doc=doc, grad_doc="1 to the side that wins, 0 to the other; 1/2 to each on a tie")


maximum = _extremum("maximum", np.maximum, lambda a, b: greater(a, b),
                    "the larger of a and b, elementwise; where a == b each side gets half the derivative")
minimum = _extremum("minimum", np.minimum, lambda a, b: less(a, b),
                    "the smaller of a and b, elementwise; where a == b each side gets half the derivative")


# ---- comparisons (bool results, no derivative) and where ------------------------------------

def _compare(name: str, kernel: Any, doc: str) -> Any:
    return define(name, kernel, inputs=BINARY, shape=elementwise_shape, dtype=COMPARE, **_rules(name),
                  deriv=(NONDIFF, NONDIFF), doc=doc)


less = _compare("less", np.less, "a < b")
less_equal = _compare("less_equal", np.less_equal, "a <= b")
greater = _compare("greater", np.greater, "a > b")
greater_equal = _compare("greater_equal", np.greater_equal, "a >= b")
equal = _compare("equal", np.equal, "a == b")

where = define("where", np.where, **_rules("where"), inputs=("cond", "a", "b"), shape=elementwise_shape, dtype=WHERE,
               deriv=(NONDIFF, lambda t, out, c, a, b: where(c, t, 0.0), lambda t, out, c, a, b: where(c, 0.0, t)),
               doc="a where cond (a bool tensor) holds, else b",
               grad_doc="d/da = 1 where cond, else 0; d/db = 1 where not cond, else 0; none for cond")


# ---- clip -------------------------------------------------------------------------------------

def _clip_kernel(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return np.minimum(np.maximum(x, lo), hi)


_clip = define(
    "clip", _clip_kernel, **_rules("clip"), inputs=("x", "lo", "hi"), shape=elementwise_shape, dtype=NUMERIC,
    deriv=(lambda t, out, x, lo, hi: where(greater_equal(x, lo), where(less_equal(x, hi), t, 0.0), 0.0),
           lambda t, out, x, lo, hi: where(less(x, lo), where(less(lo, hi), t, 0.0), 0.0),
           lambda t, out, x, lo, hi: where(greater(x, hi), t, where(less(hi, lo), t, 0.0))),
    doc="min(max(x, lo), hi), elementwise (torch.clamp; where lo > hi, hi)",
    grad_doc="as torch.clamp: to x where lo <= x <= hi; to lo where x < lo < hi; to hi where x > hi or hi < lo")


def clip(x: Any, lo: Any = None, hi: Any = None) -> Tensor:
    """x limited to [lo, hi] elementwise (torch.clamp): lo and hi are numbers or tensors that
    broadcast with x; None leaves that side open."""
    if lo is None or hi is None:
        dtypes = [t.dtype for t in (x, lo, hi) if isinstance(t, Operand)]  # type: ignore[attr-defined]
        dt = np.result_type(*dtypes) if dtypes else np.dtype(np.float64)
        big = np.inf if dt.kind == "f" else np.iinfo(dt).max
        lo = (-big if dt.kind == "f" else np.iinfo(dt).min) if lo is None else lo
        hi = big if hi is None else hi
    return _clip(x, lo, hi)


# ---- cast and stop_gradient ----------------------------------------------------------------

_cast = define("cast", lambda x, *, dtype: x.astype(dtype), **_rules("cast"), inputs=("x",), shape=same_shape,
               dtype=CAST,
               attrs={"dtype": Attr("str", allowed=tuple(map(str, DTYPES)), doc="the dtype to convert to")},
               jvp=(lambda t, out, x, *, dtype: cast(t, dtype),), vjp=(lambda g, out, x, *, dtype: cast(g, x.dtype),),
               identity=passthrough(static=True),
               doc="x converted to another dtype (numpy's astype); bool and int values carry no derivative",
               grad_doc="JVP: the tangent cast to `dtype`; VJP: the cotangent cast back to x's dtype")


def cast(x: Any, dtype: Any) -> Tensor:
    """x converted to `dtype` (one of cgraph.shapes.DTYPES)."""
    return _cast(x, dtype=str(np.dtype(dtype)))


stop_gradient = define(
    "stop_gradient", lambda x: x, **_rules("stop_gradient"), inputs=("x",), shape=same_shape, dtype=SAME, view=True,
    deriv=(ZERO,),
    identity=passthrough(static=False), grad_doc="zero, in both modes",
    doc="the value of x, with derivative zero in both modes (for targets, moving averages, straight-through tricks)")
