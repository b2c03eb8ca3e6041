"""One table of every op, used by the value tests and the derivative tests (as JAX's op tests).

A spec builds the op from cgraph Tensors and computes the same thing with numpy, independently.
Each entry of `shapes` is one case: the shapes of the op's array arguments. `domain` says where
inputs are drawn: "real" (normal), "pos" (positive, away from 0), "onehot" (rows of an identity),
"bool", "spread" (well separated values), "idx<n>" (int64 indices in [-n, n)).
"""

from __future__ import annotations

import math
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
    out_dtype: str | None = None  # the output's dtype when it is not the inputs' float dtype
    onnx_values: bool = True  # onnxruntime computes the same values (not so for dropout's mask)

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
            elif kind.startswith("idx"):
                n = int(kind[3:])
                out.append(np.asarray(rng.integers(-n, n, shape)))
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



# ---- convolution, pooling, gathering and the other ops of models past the MLP ------------------

def _np_windows(x, k, stride, pads, dil=(1, 1), fill=0.0):
    """(N, C, Ho, Wo, kh, kw) windows of x padded with `fill` (pads: top, left, bottom, right)."""
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])), constant_values=fill)
    span = [(k[a] - 1) * dil[a] + 1 for a in (0, 1)]
    win = np.lib.stride_tricks.sliding_window_view(xp, span, axis=(2, 3))
    return win[:, :, ::stride[0], ::stride[1], ::dil[0], ::dil[1]]


def _np_conv(x, w, stride=(1, 1), pads=(0, 0, 0, 0), dil=(1, 1), groups=1):
    Co, Cg, kh, kw = w.shape
    win = _np_windows(x, (kh, kw), stride, pads, dil)
    N, C, Ho, Wo = win.shape[:4]
    out = np.einsum("ngchwij,gocij->ngohw", win.reshape(N, groups, Cg, Ho, Wo, kh, kw),
                    w.reshape(groups, Co // groups, Cg, kh, kw))
    return out.reshape(N, Co, Ho, Wo)


def _np_conv_transpose(g, w, size, stride, pads, dil, groups):
    """Each element of g spread over the input positions its window covers, weighted by w."""
    N, Co, Ho, Wo = g.shape
    _, Cg, kh, kw = w.shape
    out = np.zeros((N, Cg * groups, size[0] + pads[0] + pads[2], size[1] + pads[1] + pads[3]))
    gg, wg = g.reshape(N, groups, Co // groups, Ho, Wo), w.reshape(groups, Co // groups, Cg, kh, kw)
    for i in range(kh):
        for j in range(kw):
            part = np.einsum("ngohw,goc->ngchw", gg, wg[..., i, j]).reshape(N, Cg * groups, Ho, Wo)
            out[:, :, i * dil[0]:i * dil[0] + stride[0] * (Ho - 1) + 1:stride[0],
                j * dil[1]:j * dil[1] + stride[1] * (Wo - 1) + 1:stride[1]] += part
    return out[:, :, pads[0]:pads[0] + size[0], pads[1]:pads[1] + size[1]]


def _np_conv_filter(x, g, kernel, stride, pads, dil, groups):
    """sum over n, p, q of g[n, o, p, q] times x's window (p, q) at kernel offset (i, j)."""
    win = _np_windows(x, kernel, stride, pads, dil)
    N, C, Ho, Wo = win.shape[:4]
    Co = g.shape[1]
    out = np.einsum("ngohw,ngchwij->gocij", g.reshape(N, groups, Co // groups, Ho, Wo),
                    win.reshape(N, groups, C // groups, Ho, Wo, *kernel))
    return out.reshape(Co, C // groups, *kernel)


def _adjoint(f, shape):
    """g -> J^T g for the linear map f on arrays of `shape`, J found from f of each basis vector
    (once, when first needed)."""
    size = int(np.prod(shape))
    J = []

    def vjp(g):
        if not J:
            J.append(np.array([np.ravel(f(e.reshape(shape))) for e in np.eye(size)]).reshape(size, -1))
        return (J[0] @ np.ravel(g)).reshape(shape)
    return vjp


def _np_max_pool(x, k, stride, pads):
    return _np_windows(x, k, stride, pads, fill=-np.inf).max(axis=(4, 5))


def _np_avg_pool(x, k, stride, pads, include=True):
    total = _np_windows(x, k, stride, pads).sum(axis=(4, 5))
    count = k[0] * k[1] if include else _np_windows(np.ones_like(x), k, stride, pads).sum(axis=(4, 5))
    return total / count


def _np_pool_share(x, k, stride, pads):
    """Per window element: 1/ties where it reaches the window's max (windows of padded x)."""
    win = _np_windows(x, k, stride, pads, fill=-np.inf)
    hit = (win == win.max(axis=(4, 5), keepdims=True)).astype(float)
    return hit / hit.sum(axis=(4, 5), keepdims=True)


def _np_max_scatter(g, x, k, stride, pads):
    share = _np_pool_share(x, k, stride, pads) * g[..., None, None]
    N, C, H, W = x.shape
    out = np.zeros((N, C, H + pads[0] + pads[2], W + pads[1] + pads[3]))
    for p in range(g.shape[2]):
        for q in range(g.shape[3]):
            out[:, :, p * stride[0]:p * stride[0] + k[0], q * stride[1]:q * stride[1] + k[1]] += share[:, :, p, q]
    return out[:, :, pads[0]:pads[0] + H, pads[1]:pads[1] + W]


def _np_max_gather(t, x, k, stride, pads):
    return (_np_pool_share(x, k, stride, pads) * _np_windows(t, k, stride, pads)).sum(axis=(4, 5))


def _np_dropout(x, rate, seed):
    return np.where(np.random.default_rng(int(seed) % 2**64).random(x.shape) < rate, 0.0, x / (1 - rate))


def _tf():
    import torch.nn.functional as F
    return F


def _torch_vjp(f, at, g):
    """The VJP of f at `at` applied to g, in torch (for the derivative ops of conv and pooling)."""
    import torch
    return torch.func.vjp(f, at)[1](g)[0]


_IDX = np.array([[2, 0, -1], [1, 1, -3]])  # indices into an axis of size 3, with repeats and negatives
_CONV_CASES = [  # (x shape, w shape, stride, padding (top, left, bottom, right), dilation, groups)
    ((1, 2, 4, 5), (3, 2, 3, 3), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    ((1, 4, 5, 4), (4, 2, 3, 2), (2, 1), (1, 2, 1, 2), (1, 2), 2),
    ((1, 2, 5, 5), (2, 2, 2, 3), (1, 2), (0, 1, 1, 1), (2, 1), 1),
    ((0, 2, 4, 4), (2, 2, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    ((2, 1, 4, 4), (2, 1, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
]


def _conv_spec(i, case):
    xs, ws, st, pd, dl, gr = case
    torch = (lambda x, w: _tf().conv2d(x, w, None, st, pd[:2], dl, gr)) if pd[:2] == pd[2:] else None
    return Spec(f"conv2d_{i}", lambda x, w: cg.conv2d(x, w, st, pd, dl, gr),
                lambda x, w: _np_conv(x, w, st, pd, dl, gr), [(xs, ws)], torch=torch)


def _conv_internal_specs():
    out = []
    for i, case in enumerate(_CONV_CASES[:3]):
        xs, ws, st, pd, dl, gr = case
        attrs = dict(stride=st, padding=pd, dilation=dl, groups=gr)
        ys = _np_conv(np.zeros(xs), np.zeros(ws), st, pd, dl, gr).shape
        sym = pd[:2] == pd[2:]

        def t_torch(g, w, xs=xs, st=st, pd=pd, dl=dl, gr=gr):
            return _torch_vjp(lambda x: _tf().conv2d(x, w, None, st, pd[:2], dl, gr), g.new_zeros(xs), g)

        def f_torch(x, g, ws=ws, st=st, pd=pd, dl=dl, gr=gr):
            return _torch_vjp(lambda w: _tf().conv2d(x, w, None, st, pd[:2], dl, gr), g.new_zeros(ws), g)

        out.append(Spec(
            f"conv2d_transpose_{i}", lambda g, w, a=attrs, xs=xs: apply("conv2d_transpose", g, w, size=xs[2:], **a),
            lambda g, w, xs=xs, c=case: _np_conv_transpose(g, w, xs[2:], *c[2:]), [(ys, ws)],
            torch=t_torch if sym else None))
        out.append(Spec(
            f"conv2d_filter_grad_{i}",
            lambda x, g, a=attrs, ws=ws: apply("conv2d_filter_grad", x, g, kernel=ws[2:], **a),
            lambda x, g, ws=ws, c=case: _np_conv_filter(x, g, ws[2:], *c[2:]), [(xs, ys)],
            torch=f_torch if sym else None))
    return out


_POOL_CASES = [  # (x shape, kernel, stride, padding (top, left, bottom, right))
    ((1, 2, 4, 6), (2, 2), (2, 2), (0, 0, 0, 0)),
    ((1, 2, 5, 4), (3, 3), (2, 1), (1, 1, 1, 1)),
    ((1, 1, 5, 7), (2, 3), (1, 2), (1, 0, 0, 1)),
]


def _pool_specs():
    out = []
    for i, (xs, k, st, pd) in enumerate(_POOL_CASES):
        sym = pd[:2] == pd[2:]
        a = dict(kernel=k, stride=st, padding=pd)
        ys = _np_max_pool(np.zeros(xs), k, st, pd).shape
        out += [
            Spec(f"max_pool2d_{i}", lambda x, k=k, st=st, pd=pd: cg.max_pool2d(x, k, st, pd),
                 lambda x, k=k, st=st, pd=pd: _np_max_pool(x, k, st, pd), [(xs,)], domain=("spread",),
                 torch=(lambda x, k=k, st=st, pd=pd: _tf().max_pool2d(x, k, st, pd[:2])) if sym else None),
            Spec(f"avg_pool2d_{i}", lambda x, k=k, st=st, pd=pd: cg.avg_pool2d(x, k, st, pd),
                 lambda x, k=k, st=st, pd=pd: _np_avg_pool(x, k, st, pd), [(xs,)],
                 torch=(lambda x, k=k, st=st, pd=pd: _tf().avg_pool2d(x, k, st, pd[:2])) if sym else None),
            Spec(f"avg_pool2d_exclude_pad_{i}",
                 lambda x, k=k, st=st, pd=pd: cg.avg_pool2d(x, k, st, pd, count_include_pad=False),
                 lambda x, k=k, st=st, pd=pd: _np_avg_pool(x, k, st, pd, include=False), [(xs,)],
                 torch=(lambda x, k=k, st=st, pd=pd: _tf().avg_pool2d(x, k, st, pd[:2], count_include_pad=False))
                 if sym else None),
            Spec(f"max_pool2d_scatter_{i}", lambda g, x, a=a: apply("max_pool2d_scatter", g, x, **a),
                 lambda g, x, a=a: _np_max_scatter(g, x, a["kernel"], a["stride"], a["padding"]), [(ys, xs)],
                 domain=("real", "spread"),
                 torch=(lambda g, x, k=k, st=st, pd=pd: _torch_vjp(lambda z: _tf().max_pool2d(z, k, st, pd[:2]), x, g))
                 if sym else None),
            Spec(f"max_pool2d_gather_{i}", lambda t, x, a=a: apply("max_pool2d_gather", t, x, **a),
                 lambda t, x, a=a: _np_max_gather(t, x, a["kernel"], a["stride"], a["padding"]), [(xs, xs)],
                 domain=("real", "spread")),
            Spec(f"avg_pool2d_scatter_{i}",
                 lambda g, a=a, xs=xs, inc=i != 1: apply("avg_pool2d_scatter", g, shape=xs, count_include_pad=inc, **a),
                 _adjoint(lambda x, k=k, st=st, pd=pd, inc=i != 1: _np_avg_pool(x, k, st, pd, inc), xs),
                 [(ys,)]),
        ]
    return out


UNARY0 = [(UNARY,), ((),), ((0, 3),)]
SPECS += [
    Spec("atan", cg.atan, np.arctan, UNARY0, torch=_t("torch.atan")),
    Spec("atan2", cg.atan2, np.arctan2, [*BIN, ((0,), ())], torch=_t("torch.atan2")),
    Spec("floor", cg.floor, np.floor, [(UNARY,)], domain=("spread",), torch=_t("torch.floor")),
    Spec("ceil", cg.ceil, np.ceil, [(UNARY,)], domain=("spread",), torch=_t("torch.ceil")),
    Spec("round", cg.round, np.round, [(UNARY,)], domain=("spread",), torch=_t("torch.round")),
    Spec("mod", cg.mod, np.mod, BIN, domain=("real", "pos"), torch=_t("torch.remainder")),
    Spec("fmod", lambda a, b: cg.mod(a, b, fmod=True), np.fmod, BIN, domain=("real", "pos"), torch=_t("torch.fmod")),
    Spec("erf", cg.erf, lambda x: np.vectorize(math.erf)(x) if np.size(x) else np.asarray(x), UNARY0,
         torch=_t("torch.erf")),
    Spec("log1p", cg.log1p, np.log1p, UNARY0, domain=("pos",), torch=_t("torch.log1p")),
    Spec("expm1", cg.expm1, np.expm1, UNARY0, torch=_t("torch.expm1")),
    Spec("clip", cg.clip, lambda x, lo, hi: np.minimum(np.maximum(x, lo), hi),
         [((3, 4), (4,), (3, 1)), ((), (), ()), ((0, 2), (2,), ())],
         torch=lambda x, lo, hi: __import__("torch").clamp(x, lo, hi)),
    Spec("clip_numbers", lambda x: cg.clip(x, -0.5, 0.7), lambda x: np.clip(x, -0.5, 0.7), [(UNARY,)],
         torch=lambda x: x.clamp(-0.5, 0.7)),
    Spec("clip_open", lambda x: cg.clip(x, None, 0.3), lambda x: np.minimum(x, 0.3), [(UNARY,)],
         torch=lambda x: x.clamp(max=0.3)),
    Spec("prod", cg.prod, np.prod, [((3, 4),), ((),)], torch=_t("torch.prod")),
    Spec("prod_axis", lambda x: cg.prod(x, axis=1), lambda x: np.prod(x, axis=1), [((3, 4),), ((2, 3, 4),), ((0, 3),)],
         torch=lambda x: x.prod(1)),
    Spec("prod_keep", lambda x: cg.prod(x, axis=(0, 2), keepdims=True), lambda x: np.prod(x, (0, 2), keepdims=True),
         [((2, 3, 4),)]),
    Spec("min", cg.min, np.min, [((3, 4),), ((),)], domain=("spread",), torch=_t("torch.amin")),
    Spec("min_axis", lambda x: cg.min(x, axis=0, keepdims=True), lambda x: np.min(x, 0, keepdims=True), [((3, 4),)],
         domain=("spread",), torch=lambda x: x.amin(0, keepdim=True)),
    Spec("cumsum", lambda x: cg.cumsum(x, 1), lambda x: np.cumsum(x, 1), [((3, 4),), ((2, 0),)],
         torch=lambda x: x.cumsum(1)),
    Spec("cumsum_reverse", lambda x: cg.cumsum(x, 0, reverse=True), lambda x: np.cumsum(x[::-1], 0)[::-1],
         [((3, 4),), ((5,),)], torch=lambda x: x.flip(0).cumsum(0).flip(0)),
    Spec("cumsum_flat", cg.cumsum, np.cumsum, [((2, 3),), ((),)], torch=lambda x: x.reshape(-1).cumsum(0)),
    Spec("argmax", cg.argmax, lambda x: np.argmax(x, -1), [((3, 4),), ((5,),)], domain=("spread",), smooth=False,
         out_dtype="int64"),
    Spec("argmax_keep", lambda x: cg.argmax(x, 0, keepdims=True), lambda x: np.argmax(x, 0, keepdims=True),
         [((3, 4),)], domain=("spread",), smooth=False, out_dtype="int64"),
    Spec("argmax_flat", lambda x: cg.argmax(x, None), lambda x: np.argmax(x), [((2, 3),), ((),)], domain=("spread",),
         smooth=False, out_dtype="int64"),
    Spec("take", cg.take, lambda a, i: np.take(a, i, axis=0), [((3, 2), (4,)), ((3,), ()), ((3, 5), (2, 0))],
         domain=("real", "idx3"), nondiff_args=(1,), torch=lambda a, i: a[i]),
    Spec("take_axis", lambda a: cg.take(a, _IDX, axis=1), lambda a: np.take(a, _IDX, axis=1), [((2, 3, 4),)],
         torch=lambda a: a[:, __import__("torch").tensor(_IDX)]),
    Spec("scatter_add", lambda g: apply("scatter_add", g, g.graph.constant(None, _IDX), axis=1, size=3),
         _adjoint(lambda a: np.take(a, _IDX, axis=1), (2, 3, 4)), [((2, 2, 3, 4),)],
         torch=lambda g: __import__("torch").zeros(2, 3, 4, dtype=g.dtype).index_add(
             1, __import__("torch").tensor(_IDX.ravel() % 3), g.reshape(2, 6, 4))),
    Spec("one_hot", lambda i: cg.one_hot(i, 4), lambda i: np.eye(4)[i], [((5,),), ((2, 3),), ((0,),), ((),)],
         domain=("idx4",), smooth=False, out_dtype="float64"),
    Spec("one_hot_f32", lambda i: cg.one_hot(i, 3, "float32"), lambda i: np.eye(3, dtype=np.float32)[i],
         [((2, 2),)], domain=("idx3",), smooth=False, out_dtype="float32"),
    Spec("dropout", lambda x: cg.dropout(x, 0.3, 7), lambda x: _np_dropout(x, 0.3, 7), [((4, 5),), ((),), ((0,),)],
         onnx_values=False),
    Spec("dropout_seed_input", lambda x, s: cg.dropout(x, 0.5, s), lambda x, s: _np_dropout(x, 0.5, s),
         [((3, 4), ())], domain=("real", "idx100"), nondiff_args=(1,), onnx_values=False),
    *[_conv_spec(i, c) for i, c in enumerate(_CONV_CASES)],
    Spec("conv2d_same", lambda x, w: cg.conv2d(x, w, padding="same"), lambda x, w: _np_conv(x, w, pads=(0, 1, 1, 1)),
         [((1, 2, 4, 3), (2, 2, 2, 3))], torch=lambda x, w: _tf().conv2d(x, w, padding="same")),
    *_conv_internal_specs(),
    *_pool_specs(),
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
        dt = "bool" if kind == "bool" else "int64" if kind.startswith("idx") else dtype
        args.append(g.input(f"a{i}", shape, dt))
    out = spec.build(*args)
    g.output("out", out * scale if scale != 1.0 else out)
    return g
