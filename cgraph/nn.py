"""Model builders on the public API: `cg.nn.mlp` makes the lecture's MLPs as graphs, and layers
(`dense`, `conv2d`, `max_pool2d`, `avg_pool2d`, `flatten`, `embedding`, `dropout`) build
other models a node at a time.

A model is an ordinary Graph (inputs "x" and "y", outputs "loss" and "logits", params named by
layer), so it runs in every executor, trains with `cg.fit`, saves with `cg.save` and draws
with `cg.render`. Nothing here reaches inside the graph: it only calls what users can call.

Biases are params `layer<i>/b` added to `x @ W` (`bias=False` leaves them out; the lecture's
alternative, a column of ones appended to the inputs, is what examples/iris_mlp.py does).

With `batch_norm=True` every hidden layer normalises its pre-activation,
`h(batch_norm(x @ W)) [+ x]`, with learnable `layer<i>/bn/gamma` and `layer<i>/bn/beta` (and no
bias: beta takes its place). The graph then holds two forward paths sharing all params:
"loss"/"logits" normalise with the statistics of the batch (training, gradients flow through
them), "loss_eval"/"logits_eval" with the running statistics, the non-trainable params
`layer<i>/bn/running_mean` and `running_var`. The outputs `layer<i>/bn/batch_mean` and
`batch_var` (the biased variance that batch_norm normalises with; PyTorch keeps the unbiased
one) give `fit` what it folds into those with
`running = (1 - momentum) * running + momentum * batch`; the metadata key `nn.running_stats`
says which output feeds which param, so a loaded model trains on the same way.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

import cgraph as cg
from cgraph.ops import avg_pool2d, max_pool2d  # the pooling layers: ops without params

HIDDEN = {"logistic": "logistic", "tanh": "tanh", "relu": "relu"}
LOSSES = ("softmax_cross_entropy", "binary_cross_entropy", "mse")
INITS = ("normal", "glorot", "he")
RUNNING_STATS = "nn.running_stats"  # metadata: JSON {running param: batch statistic output}
SEED = "nn.seed"  # metadata: the name of the int64 scalar input that `fit` feeds a fresh seed each step
BN_MOMENTUM = "nn.bn_momentum"  # metadata: the running statistics' momentum, as text

__all__ = ["init_weight", "mlp", "running_stats"]


def init_weight(rng: np.random.Generator, fan_in: int, fan_out: int, init: str, scale: float,
                shape: Sequence[int] | None = None) -> np.ndarray:
    """A weight of `shape` (default (fan_in, fan_out)): `randn * scale` ("normal", the
    lecture's small random values), or Glorot's sqrt(2 / (fan_in + fan_out)) or He's
    sqrt(2 / fan_in) standard deviation (for tanh and ReLU nets; `scale` does not apply to them)."""
    std = {"normal": scale, "glorot": np.sqrt(2.0 / (fan_in + fan_out)), "he": np.sqrt(2.0 / fan_in)}[init]
    return rng.standard_normal((fan_in, fan_out) if shape is None else tuple(shape)) * std


def mlp(sizes: Sequence[int], hidden: str = "logistic", loss: str = "softmax_cross_entropy",
        bias: bool = True, init: str = "normal", scale: float = 0.01, seed: int = 0,
        skip: bool = False, batch_norm: bool = False, bn_momentum: float = 0.1,
        bn_eps: float = 1e-5, dtype: Any = "float64", name: str = "mlp") -> cg.Graph:
    """A multilayer perceptron as a Graph: `sizes = [D, M1, ..., C]`.

    Layer i computes `x @ W + b` (`W` of shape (sizes[i], sizes[i+1]), params `layer<i>/W`,
    `layer<i>/b`); hidden layers apply `hidden` ("logistic", "tanh" or "relu"). `loss`
    ("softmax_cross_entropy", "binary_cross_entropy" from logits, or "mse") compares the last
    layer's output, the output "logits", with the input "y" of shape (None, C); it is the mean
    over rows. `skip=True` adds the input of a hidden layer to its output when both have the
    same width (x_{l+1} = h(x_l W) + x_l). `batch_norm=True`: see the module docstring.
    Weights are drawn from numpy's default_rng(seed) in layer order; biases start at zero.
    """
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or any(s < 1 for s in sizes):
        raise cg.GraphError(f"mlp: sizes must be at least [inputs, outputs], all >= 1; got {list(sizes)}")
    for arg, value, allowed in (("hidden", hidden, tuple(HIDDEN)), ("loss", loss, LOSSES), ("init", init, INITS)):
        if value not in allowed:
            raise cg.GraphError(f"mlp: {arg}={value!r} is not one of {', '.join(allowed)}")
    if not 0.0 < bn_momentum <= 1.0:
        raise cg.GraphError(f"mlp: bn_momentum must be in (0, 1], got {bn_momentum}")
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    act = getattr(cg, HIDDEN[hidden])
    n_layers = len(sizes) - 1

    g = cg.Graph(name)
    x = g.input("x", shape=(None, sizes[0]), dtype=dtype)
    y = g.input("y", shape=(None, sizes[-1]), dtype=dtype)

    layers: list[dict[str, cg.Tensor]] = []  # each layer's params, made once, used by both paths
    for i in range(n_layers):
        fan_in, fan_out = sizes[i], sizes[i + 1]
        last = i == n_layers - 1
        with g.scope(f"layer{i}"):
            p = {"W": g.param("W", init_weight(rng, fan_in, fan_out, init, scale), dtype=dtype)}
            if batch_norm and not last:
                with g.scope("bn"):
                    p["gamma"] = g.param("gamma", np.ones(fan_out), dtype=dtype)
                    p["beta"] = g.param("beta", np.zeros(fan_out), dtype=dtype)
                    p["running_mean"] = g.param("running_mean", np.zeros(fan_out), dtype=dtype, trainable=False)
                    p["running_var"] = g.param("running_var", np.ones(fan_out), dtype=dtype, trainable=False)
            elif bias:
                p["b"] = g.param("b", np.zeros(fan_out), dtype=dtype)
        layers.append(p)

    def forward(training: bool) -> tuple[cg.Tensor, dict[str, cg.Tensor]]:
        """The logits, and (training) each batch-normalised layer's batch statistics."""
        h, stats = x, dict[str, cg.Tensor]()
        for i, p in enumerate(layers):
            with g.scope(f"layer{i}"):
                a = h @ p["W"]
                if "b" in p:
                    a = a + p["b"]
                if i == n_layers - 1:
                    return a, stats
                if "gamma" in p:
                    if training:
                        mu = cg.mean(a, axis=0)
                        stats[f"layer{i}/bn/running_mean"] = mu
                        stats[f"layer{i}/bn/running_var"] = cg.mean(cg.square(a - mu), axis=0)
                        a = cg.batch_norm(a, p["gamma"], p["beta"], training=True, eps=bn_eps)
                    else:
                        a = cg.batch_norm(a, p["gamma"], p["beta"], training=False, eps=bn_eps,
                                          mean=p["running_mean"], var=p["running_var"])
                out = act(a)
                if skip and i > 0 and sizes[i] == sizes[i + 1]:
                    out = out + h
                h = out
        raise AssertionError("unreachable")

    def loss_of(logits: cg.Tensor) -> cg.Tensor:
        return getattr(cg, loss)(logits, y)

    logits, stats = forward(training=True)
    g.output("loss", loss_of(logits))
    g.output("logits", logits)
    if batch_norm:
        with g.scope("eval"):
            logits_eval, _ = forward(training=False)
            g.output("loss_eval", loss_of(logits_eval))
        g.output("logits_eval", logits_eval)
        running = {}
        for param, tensor in stats.items():
            out_name = param.replace("running_", "batch_")
            g.output(out_name, tensor)
            running[param] = out_name
        g.metadata[RUNNING_STATS] = json.dumps(running)
        g.metadata[BN_MOMENTUM] = repr(float(bn_momentum))
    g.metadata["nn.mlp"] = json.dumps({
        "sizes": sizes, "hidden": hidden, "loss": loss, "bias": bias, "init": init, "scale": scale,
        "seed": seed, "skip": skip, "batch_norm": batch_norm, "dtype": str(dtype)})
    return g


def running_stats(g: cg.Graph) -> tuple[dict[str, str], float]:
    """({running-statistic param: batch-statistic output}, momentum) of a model built with
    batch norm, or ({}, 0.0): what `fit` updates after each step."""
    text = g.metadata.get(RUNNING_STATS)
    if not text:
        return {}, 0.0
    try:
        mapping = json.loads(text)
        momentum = float(g.metadata.get(BN_MOMENTUM, "0.1"))
    except ValueError as e:
        raise cg.GraphError(f"graph {g.name!r}: metadata {RUNNING_STATS!r} is not valid: {e}") from None
    for param, out in mapping.items():
        if param not in g.params or out not in g.outputs:
            raise cg.GraphError(f"graph {g.name!r}: running statistic {param!r} <- output {out!r}: "
                                "no such param or output")
    return mapping, momentum


# ---- layers ------------------------------------------------------------------------------------
#
# Each layer adds its params (if any) under a name scope, `<name>/W`, `<name>/b`, ..., where
# `name` defaults to the kind and the first free number (`conv0`, `conv1`, ...), and returns
# the output tensor. Weights are drawn from numpy's default_rng([seed, crc32(name)]): the same
# seed and name give the same values, different layers different ones.

def _scope(g: cg.Graph, kind: str, name: str | None) -> str:
    """`name`, or the first `<kind><i>` that no node's name (in the current scope) starts with."""
    if name is not None:
        return name
    here = g.fresh_name(kind)
    prefix = here.rsplit("/", 1)[0] + "/" if "/" in here else ""
    taken = {n[len(prefix):].split("/", 1)[0] for n in g.nodes if n.startswith(prefix)}
    return next(f"{kind}{i}" for i in range(len(taken) + 1) if f"{kind}{i}" not in taken)


def _draw(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(name.encode())])


def _check_init(layer: str, init: str) -> None:
    if init not in INITS:
        raise cg.GraphError(f"{layer}: init={init!r} is not one of {', '.join(INITS)}")


def dense(x: cg.Tensor, units: int, *, bias: bool = True, init: str = "glorot", scale: float = 0.01,
          seed: int = 0, name: str | None = None) -> cg.Tensor:
    """x @ W + b for x of shape (..., D): W (D, units) as `init_weight` draws it, b zeros."""
    _check_init("dense", init)
    if x.ndim < 2 or x.shape[-1] is None:
        raise cg.ShapeError(f"dense: {x.name} must have a known last size and a batch axis, got {x.shape}")
    g = x.graph
    name = _scope(g, "dense", name)
    fan_in = int(x.shape[-1])
    with g.scope(name):
        w = g.param("W", init_weight(_draw(seed, name), fan_in, units, init, scale), dtype=x.dtype)
        out = x @ w
        if bias:
            out = out + g.param("b", np.zeros(units), dtype=x.dtype)
    return out


def conv2d(x: cg.Tensor, channels: int, kernel_size: Any, *, stride: Any = 1, padding: Any = 0,
           dilation: Any = 1, groups: int = 1, bias: bool = True, init: str = "he", scale: float = 0.01,
           seed: int = 0, name: str | None = None) -> cg.Tensor:
    """cg.conv2d of x (N, C, H, W) with a kernel W (channels, C / groups, kh, kw), plus a bias b
    (channels, 1, 1) of zeros. Fans as torch counts them: fan_in = C / groups * kh * kw,
    fan_out = channels * kh * kw."""
    _check_init("conv2d", init)
    if x.ndim != 4 or x.shape[1] is None:
        raise cg.ShapeError(f"conv2d: {x.name} must be (N, C, H, W) with C known, got {x.shape}")
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
    g = x.graph
    name = _scope(g, "conv", name)
    cin = int(x.shape[1]) // int(groups)
    shape = (int(channels), cin, kh, kw)
    with g.scope(name):
        w = g.param("W", init_weight(_draw(seed, name), cin * kh * kw, channels * kh * kw, init, scale, shape),
                    dtype=x.dtype)
        out = cg.conv2d(x, w, stride=stride, padding=padding, dilation=dilation, groups=groups)
        if bias:
            out = out + g.param("b", np.zeros((channels, 1, 1)), dtype=x.dtype)
    return out




def flatten(x: cg.Tensor) -> cg.Tensor:
    """x (N, ...) as (N, the product of the other sizes), which must be known."""
    if x.ndim < 1 or None in x.shape[1:]:
        raise cg.ShapeError(f"flatten: {x.name} needs its sizes after the first known, got {x.shape}")
    return cg.reshape(x, (-1, math.prod(x.shape[1:])))  # type: ignore[arg-type]


def embedding(ids: cg.Tensor, vocab: int, dim: int, *, init: str = "normal", scale: float = 1.0, seed: int = 0,
              dtype: Any = "float64", name: str | None = None) -> cg.Tensor:
    """The rows of a table (vocab, dim), param `<name>/table` drawn as `init_weight` draws it
    (default N(0, 1), as torch), picked by the int64 `ids`: shape ids.shape + (dim,)."""
    _check_init("embedding", init)
    g = ids.graph
    name = _scope(g, "embedding", name)
    with g.scope(name):
        table = g.param("table", init_weight(_draw(seed, name), vocab, dim, init, scale), dtype=dtype)
        return cg.take(table, ids)


def dropout(x: cg.Tensor, rate: float, *, training: bool = True, seed: str = "seed") -> cg.Tensor:
    """cg.dropout when `training`, else x. The mask comes from the graph's int64 scalar input
    `seed` (made on first use and named in the metadata, so that `fit` feeds it a fresh value
    each step) plus the number of dropout nodes before this one, so that layers differ."""
    if not training:
        return x
    g = x.graph
    if seed not in g:
        g.input(seed, (), "int64")
        g.metadata[SEED] = seed
    s = g[seed]
    if s.op != "input" or s.dtype != np.int64 or s.shape != ():
        raise cg.GraphError(f"dropout: {seed!r} must be an int64 scalar input of graph {g.name!r}")
    k = sum(1 for n in g.nodes.values() if n.op == "dropout")
    return cg.dropout(x, rate, s + np.int64(k) if k else s)


__all__ = ["avg_pool2d", "conv2d", "dense", "dropout", "embedding", "flatten", "init_weight", "max_pool2d", "mlp",
           "running_stats"]
