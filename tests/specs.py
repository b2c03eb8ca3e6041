"""One table of every op, used by the value tests and the derivative tests (as JAX's op tests).

A spec builds the op from cgraph Tensors and computes the same thing with numpy, independently.
Each entry of `shapes` is one case: the shapes of the op's array arguments. `domain` says where
inputs are drawn: "real" (normal), "pos" (positive, away from 0), "onehot" (rows of an identity),
"bool".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

import cgraph as cg
from cgraph.ops.registry import apply


@dataclass
class Spec:
    name: str
    build: Callable[..., cg.Tensor]
    ref: Callable[..., np.ndarray]
    shapes: list[tuple[tuple[int, ...], ...]]
    domain: tuple[str, ...] = ()  # per argument; default "real"
    smooth: bool = True  # has derivatives to check at random points
    torch: Callable | None = None  # the same op in torch (x -> tensor), when torch is installed
    nondiff_args: tuple[int, ...] = ()  # arguments not differentiated (labels, conditions)
    ids: list[str] = field(default_factory=list)

    def draw(self, rng: np.random.Generator, shapes: tuple[tuple[int, ...], ...],
             dtype: str = "float64") -> list[np.ndarray]:
        out = []
        for i, shape in enumerate(shapes):
            kind = self.domain[i] if i < len(self.domain) else "real"
            if kind == "pos":
                a = rng.uniform(0.5, 2.0, shape)
            elif kind == "onehot":
                a = np.eye(shape[-1])[rng.integers(0, shape[-1], shape[:-1])]
            elif kind == "bool":
                out.append(np.asarray(rng.random(shape) > 0.5))
                continue
            elif kind == "spread":  # well separated values: no ties for max, no kinks near 0
                a = rng.permutation(np.arange(int(np.prod(shape)), dtype=float)).reshape(shape) * 0.1 - 0.35
            else:
                a = rng.normal(size=shape)
            out.append(np.asarray(a).astype(dtype))  # 0-d: an array, not a numpy scalar
        return out


def _np_logistic(x):
    return 1 / (1 + np.exp(-x))


def _np_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def _np_lse(x, axis=-1, keepdims=False):
    m = x.max(axis, keepdims=True)
    r = np.log(np.exp(x - m).sum(axis, keepdims=True)) + m
    return r if keepdims else np.squeeze(r, axis)


def _t(name):
    """A lazy torch function by name (torch is imported only when a test uses it)."""
    def f(*xs, **kw):
        import torch
        return eval(name, {"torch": torch})(*xs, **kw)
    return f


UNARY = (3, 4)
SCALAR = ((),)  # a 0-d input: every op that takes one is tested on it
BIN = [((3, 4), (3, 4)), ((3, 4), (4,)), ((2, 1, 3), (4, 1)), ((), (2, 3)), ((), ())]

SPECS: list[Spec] = [
    Spec("add", cg.add, np.add, BIN, torch=_t("torch.add")),
    Spec("sub", cg.sub, np.subtract, BIN, torch=_t("torch.sub")),
    Spec("mul", cg.mul, np.multiply, BIN, torch=_t("torch.mul")),
    Spec("div", cg.div, np.divide, BIN, domain=("real", "pos"), torch=_t("torch.div")),
    Spec("pow", cg.pow, np.power, BIN, domain=("pos", "real"), torch=_t("torch.pow")),
    Spec("pow_const", lambda x: x ** 3, lambda x: x ** 3, [(UNARY,), SCALAR], torch=lambda x: x ** 3),
    Spec("neg", cg.neg, np.negative, [(UNARY,), SCALAR], torch=_t("torch.neg")),
    Spec("exp", cg.exp, np.exp, [(UNARY,), SCALAR], torch=_t("torch.exp")),
    Spec("log", cg.log, np.log, [(UNARY,), SCALAR], domain=("pos",), torch=_t("torch.log")),
    Spec("sqrt", cg.sqrt, np.sqrt, [(UNARY,), SCALAR], domain=("pos",), torch=_t("torch.sqrt")),
    Spec("square", cg.square, np.square, [(UNARY,), SCALAR], torch=_t("torch.square")),
    Spec("abs", cg.abs, np.abs, [(UNARY,), SCALAR], domain=("spread",), torch=_t("torch.abs")),
    Spec("sin", cg.sin, np.sin, [(UNARY,), SCALAR], torch=_t("torch.sin")),
    Spec("cos", cg.cos, np.cos, [(UNARY,), SCALAR], torch=_t("torch.cos")),
    Spec("tanh", cg.tanh, np.tanh, [(UNARY,), SCALAR], torch=_t("torch.tanh")),
    Spec("logistic", cg.logistic, _np_logistic, [(UNARY,), ((5,),), SCALAR], torch=_t("torch.sigmoid")),
    Spec("relu", cg.relu, lambda x: np.maximum(x, 0), [(UNARY,), SCALAR], domain=("spread",), torch=_t("torch.relu")),
    Spec("softplus", cg.softplus, lambda x: np.log1p(np.exp(x)), [(UNARY,), SCALAR],
         torch=_t("torch.nn.functional.softplus")),
    Spec("maximum", cg.maximum, np.maximum, BIN[:3] + BIN[4:], torch=_t("torch.maximum")),
    Spec("minimum", cg.minimum, np.minimum, BIN[:3] + BIN[4:], torch=_t("torch.minimum")),
    Spec("where", lambda c, a, b: cg.where(c, a, b), np.where, [((3, 4), (3, 4), (4,)), ((), (), ()), ((), (2,), ())],
         domain=("bool",), nondiff_args=(0,), torch=_t("torch.where")),
    Spec("matmul", cg.matmul, np.matmul, [((3, 4), (4, 5)), ((2, 3, 4), (4, 2)), ((2, 1, 3, 4), (3, 4, 2))],
         torch=_t("torch.matmul")),
    Spec("transpose", cg.transpose, np.transpose, [((3, 4),), ((2, 3, 4),), SCALAR],
         torch=lambda x: x.permute(tuple(reversed(range(x.ndim))))),
    Spec("transpose_axes", lambda x: cg.transpose(x, (1, 0, 2)), lambda x: np.transpose(x, (1, 0, 2)),
         [((2, 3, 4),)], torch=lambda x: x.permute(1, 0, 2)),
    Spec("reshape", lambda x: cg.reshape(x, (4, -1)), lambda x: np.reshape(x, (4, -1)), [((2, 6),), ((2, 3, 2),)],
         torch=lambda x: x.reshape(4, -1)),
    Spec("reshape_scalar", lambda x: cg.reshape(cg.reshape(x, (1, -1)) * 2.0, ()),
         lambda x: np.reshape(np.reshape(x, (1, -1)) * 2.0, ()), [SCALAR],
         torch=lambda x: (x.reshape(1, -1) * 2).reshape(())),
    Spec("broadcast_to", lambda x: cg.broadcast_to(x, (2, 3, 4)), lambda x: np.broadcast_to(x, (2, 3, 4)),
         [((3, 1),), ((4,),), SCALAR], torch=lambda x: x.broadcast_to(2, 3, 4)),
    Spec("concat", lambda a, b: cg.concat([a, b], axis=1), lambda a, b: np.concatenate([a, b], axis=1),
         [((2, 3), (2, 4))], torch=lambda a, b: __import__("torch").cat([a, b], 1)),
    Spec("sum", cg.sum, np.sum, [((3, 4),), SCALAR], torch=_t("torch.sum")),
    Spec("sum_axis", lambda x: cg.sum(x, axis=1), lambda x: np.sum(x, axis=1), [((3, 4),), ((2, 3, 4),)],
         torch=lambda x: x.sum(1)),
    Spec("sum_keep", lambda x: cg.sum(x, axis=(0, 2), keepdims=True), lambda x: np.sum(x, (0, 2), keepdims=True),
         [((2, 3, 4),)], torch=lambda x: x.sum((0, 2), keepdim=True)),
    Spec("mean", cg.mean, np.mean, [((3, 4),), SCALAR], torch=_t("torch.mean")),
    Spec("mean_axis", lambda x: cg.mean(x, axis=-1, keepdims=True), lambda x: np.mean(x, -1, keepdims=True),
         [((3, 4),)], torch=lambda x: x.mean(-1, keepdim=True)),
    Spec("max", cg.max, np.max, [((3, 4),), SCALAR], domain=("spread",), torch=_t("torch.amax")),
    Spec("max_axis", lambda x: cg.max(x, axis=0), lambda x: np.max(x, 0), [((3, 4),)], domain=("spread",),
         torch=lambda x: x.amax(0)),
    Spec("getitem", lambda x: x[1:3], lambda x: x[1:3], [((4, 3),)], torch=lambda x: x[1:3]),
    Spec("getitem_scalar", lambda x: x[None, ...], lambda x: x[None, ...], [SCALAR], torch=lambda x: x[None, ...]),
    Spec("getitem_mixed", lambda x: x[:, 1, None, ::2], lambda x: x[:, 1, None, ::2], [((2, 3, 5),)],
         torch=lambda x: x[:, 1, None, ::2]),
    Spec("softmax", cg.softmax, _np_softmax, [((3, 4),)], torch=lambda x: x.softmax(-1)),
    Spec("softmax_axis0", lambda x: cg.softmax(x, axis=0), lambda x: _np_softmax(x, 0), [((3, 4),)],
         torch=lambda x: x.softmax(0)),
    Spec("log_softmax", cg.log_softmax, lambda x: x - _np_lse(x, -1, True), [((3, 4),)],
         torch=lambda x: x.log_softmax(-1)),
    Spec("logsumexp", cg.logsumexp, _np_lse, [((3, 4),), ((5,),)], torch=lambda x: x.logsumexp(-1)),
    Spec("logsumexp_keep", lambda x: cg.logsumexp(x, axis=0, keepdims=True), lambda x: _np_lse(x, 0, True),
         [((3, 4),)], torch=lambda x: x.logsumexp(0, keepdim=True)),
    Spec("softmax_cross_entropy", cg.softmax_cross_entropy,
         lambda u, y: -np.sum(y * (u - _np_lse(u, -1, True))) / u.shape[0], [((5, 3), (5, 3))],
         domain=("real", "onehot"),
         torch=lambda u, y: __import__("torch").nn.functional.cross_entropy(u, y)),
    Spec("softmax_cross_entropy_soft", cg.softmax_cross_entropy,
         lambda u, y: -np.sum(y * (u - _np_lse(u, -1, True))) / u.shape[0], [((4, 3), (4, 3))]),
    Spec("nll", lambda lp, y: apply("nll", lp, y), lambda lp, y: -np.sum(y * lp) / lp.shape[0],
         [((4, 3), (4, 3)), ((2, 3, 2), (2, 3, 2))]),
    Spec("binary_cross_entropy", cg.binary_cross_entropy,
         lambda u, y: np.sum(y * np.log1p(np.exp(-u)) + (1 - y) * np.log1p(np.exp(u))) / u.shape[0],
         [((6,), (6,)), ((4, 2), (4, 2))], domain=("real", "pos"),
         torch=lambda u, y: __import__("torch").nn.functional.binary_cross_entropy_with_logits(
             u, y, reduction="sum") / u.shape[0]),
    Spec("mse", cg.mse, lambda p, y: 0.5 * np.sum((p - y) ** 2) / p.shape[0], [((5, 3), (5, 3)), ((4,), (4,))],
         torch=lambda p, y: 0.5 * ((p - y) ** 2).sum() / p.shape[0]),
    Spec("batch_norm", lambda x, g, b: cg.batch_norm(x, g, b),
         lambda x, g, b: g * (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5) + b, [((6, 3), (3,), (3,))],
         torch=lambda x, g, b: __import__("torch").nn.functional.batch_norm(
             x, None, None, g, b, training=True, eps=1e-5)),
    Spec("batch_norm_eval", lambda x, g, b, m, v: cg.batch_norm(x, g, b, training=False, mean=m, var=v),
         lambda x, g, b, m, v: g * (x - m) / np.sqrt(v + 1e-5) + b, [((6, 3), (3,), (3,), (3,), (3,)), ((),) * 5],
         domain=("real", "real", "real", "real", "pos")),
]

COMPARISONS = [
    ("less", cg.less, np.less), ("less_equal", cg.less_equal, np.less_equal),
    ("greater", cg.greater, np.greater), ("greater_equal", cg.greater_equal, np.greater_equal),
    ("equal", cg.equal, np.equal),
]


def cases() -> list[tuple[Spec, tuple[tuple[int, ...], ...]]]:
    return [(s, shp) for s in SPECS for shp in s.shapes]


def case_id(case: tuple[Spec, tuple]) -> str:
    spec, shapes = case
    return f"{spec.name}-" + "-".join("x".join(map(str, s)) or "scalar" for s in shapes)


def build_graph(spec: Spec, shapes, dtype: str = "float64", scale: float = 1.0,
                inputs_as: str = "input") -> cg.Graph:
    """A graph with one input per argument ("a0", "a1", ...) and output "out" = scale * op."""
    g = cg.Graph(spec.name)
    args = []
    for i, shape in enumerate(shapes):
        kind = spec.domain[i] if i < len(spec.domain) else "real"
        dt = "bool" if kind == "bool" else dtype
        args.append(g.input(f"a{i}", shape, dt))
    out = spec.build(*args)
    g.output("out", out * scale if scale != 1.0 else out)
    return g
