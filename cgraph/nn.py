"""Model builders on the public API: `cg.nn.mlp` makes the lecture's MLPs as graphs.

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
from collections.abc import Sequence
from typing import Any

import numpy as np

import cgraph as cg

HIDDEN = {"logistic": "logistic", "tanh": "tanh", "relu": "relu"}
LOSSES = ("softmax_cross_entropy", "binary_cross_entropy", "mse")
INITS = ("normal", "glorot", "he")
RUNNING_STATS = "nn.running_stats"  # metadata: JSON {running param: batch statistic output}
BN_MOMENTUM = "nn.bn_momentum"  # metadata: the running statistics' momentum, as text

__all__ = ["init_weight", "mlp", "running_stats"]


def init_weight(rng: np.random.Generator, fan_in: int, fan_out: int, init: str, scale: float) -> np.ndarray:
    """A (fan_in, fan_out) weight: `randn * scale` ("normal", the lecture's small random
    values), or Glorot's sqrt(2 / (fan_in + fan_out)) or He's sqrt(2 / fan_in) standard
    deviation (for tanh and ReLU nets; `scale` does not apply to them)."""
    std = {"normal": scale, "glorot": np.sqrt(2.0 / (fan_in + fan_out)), "he": np.sqrt(2.0 / fan_in)}[init]
    return rng.standard_normal((fan_in, fan_out)) * std


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
