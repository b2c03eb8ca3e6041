"""Optimizers on the public API: `GD`, `Momentum`, `Adam`, and `TrainStep`, a whole training
step as one plan.

`TrainStep(g, opt)(feeds)` runs the loss, the gradients and the optimizer's update in one
compiled plan (`ReverseMode.apply`): each param is updated in place as soon as its gradient is
complete, and that gradient is freed at once. `opt.step(g, grads)` applies given gradients.
Both change the graph's param arrays in place, with the same arithmetic (so they agree bit for
bit): an array read from `g.params` before a step shows the new values after it; copy it to
keep the old ones. A param whose array cannot be written (memory-mapped from a file) is copied
into memory once, at the first step.

An optimizer's state (velocities, moments, the step count) lives in the graph, in `g.state`
under `optim/<kind>/<slot>/<param>` and `optim/<kind>/t`, and its settings in
`g.metadata["optim"]`, so both are saved with the model: `from_graph(cg.load(path))` gives an
optimizer that continues exactly where the saved one stopped. Another optimizer of the same kind
continues from the same state (with its own settings); one of another kind drops it and starts
afresh.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

import cgraph as cg

PREFIX = "optim/"
METADATA = "optim"

__all__ = ["Adam", "GD", "Momentum", "Optimizer", "TrainStep", "from_graph", "reset"]


class Optimizer:
    """Base class: subclasses set `kind` and `slots` and write `_update`."""

    kind: ClassVar[str] = ""
    slots: ClassVar[tuple[str, ...]] = ()  # per-param state arrays, zero at the start

    def __init__(self, lr: float) -> None:
        _check(self.kind, "lr", lr, lo=0.0, lo_open=True)
        self.lr = float(lr)

    def config(self) -> dict[str, Any]:
        """The settings, as saved in the metadata (`from_graph` reads them back)."""
        return {"kind": self.kind, "lr": self.lr}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "kind")
        return f"{self.kind}({args})"

    def step(self, g: cg.Graph, grads: Mapping[str, np.ndarray]) -> None:
        """One update of every param in `grads` (a dict param name -> gradient), in place.
        Everything is checked before anything changes, so a bad gradient leaves the graph as
        it was."""
        for name, grad in grads.items():
            p = g.params.get(name)
            if p is not None and np.shape(grad) != p.shape:
                raise cg.ShapeError(f"{self.kind}.step: gradient of {name!r} has shape {np.shape(grad)}, "
                                    f"the param {p.shape}")
        t, states = self.begin(g, list(grads))
        for name, grad in grads.items():
            self.apply(g.params[name], np.asarray(grad, dtype=g.params[name].dtype), states[name], t)
        self.end(g, t)

    def begin(self, g: cg.Graph, names: list[str]) -> tuple[int, dict[str, dict[str, np.ndarray]]]:
        """Check and prepare a step of the params `names`: their arrays writable, their state
        arrays (zeros the first time), and the step count t of this step. Changes nothing a
        failed step would need undone but the state of another kind of optimizer, dropped."""
        own = f"{PREFIX}{self.kind}/"
        params, state = g.params, g.state
        for name in names:
            p = params.get(name)
            if p is None:
                raise cg.GraphError(f"{self.kind}.step: {name!r} is not a param of graph {g.name!r}")
            for s in self.slots:
                v = state.get(f"{own}{s}/{name}")
                if v is not None and np.shape(v) != p.shape:
                    raise cg.ShapeError(f"{self.kind}.step: state {own}{s}/{name} has shape {np.shape(v)}, "
                                        f"the param {p.shape}")
        if g.metadata.get(METADATA) != self._config_text():  # first step, or another optimizer was used last
            for k in [k for k in state if k.startswith(PREFIX) and not k.startswith(own)]:
                del state[k]  # another kind of optimizer's state: its slots mean other things
        states = {}
        for name in names:
            p = _writable(g, name, params[name])
            states[name] = {s: _state(g, f"{own}{s}/{name}", p) for s in self.slots} if self.slots else {}
        return int(np.asarray(state.get(own + "t", 0)).item()) + 1, states

    def end(self, g: cg.Graph, t: int) -> None:
        """Record the step count and the settings (saved with the model)."""
        g.state[f"{PREFIX}{self.kind}/t"] = np.array(t, dtype=np.int64)
        g.metadata[METADATA] = self._config_text()

    def apply(self, p: np.ndarray, grad: np.ndarray, state: dict[str, np.ndarray], t: int) -> None:
        """Update param array `p` in place from `grad` (its state arrays too) at step `t`."""
        p.flags.writeable = True
        try:
            self._update(p, grad, state, t)
        finally:
            p.flags.writeable = False

    def _config_text(self) -> str:
        """The settings as JSON, remade only when they change (it is written at every step)."""
        config = self.config()
        cached = self.__dict__.get("_config_cache")
        if cached is None or cached[0] != config:
            cached = self.__dict__["_config_cache"] = (config, json.dumps(config))
        return cached[1]

    def _update(self, p: np.ndarray, grad: np.ndarray, state: dict[str, np.ndarray], t: int) -> None:
        raise NotImplementedError


def _writable(g: cg.Graph, name: str, p: np.ndarray) -> np.ndarray:
    """Param `name`'s array `p`, able to be made writable (a copy of it, once, if it cannot: an
    array memory-mapped from a file)."""
    try:
        p.flags.writeable = True
    except ValueError:
        g.set_param(name, np.array(p))
        return g.params[name]
    p.flags.writeable = False
    return p


def _state(g: cg.Graph, key: str, p: np.ndarray) -> np.ndarray:
    """The state array `key` (zeros like `p` the first time), writable, in `g.state`."""
    v = g.state.get(key)
    if v is None or not isinstance(v, np.ndarray) or not v.flags.writeable or v.dtype != p.dtype:
        v = g.state[key] = np.zeros_like(p) if v is None else np.array(v, dtype=p.dtype)
    return v


class TrainStep:
    """A training step as one compiled plan: the loss, every gradient, and the optimizer's
    update of each param in place as soon as its gradient is complete (the gradient freed at
    once), so that a step never holds every gradient at once and copies nothing.

    >>> step = TrainStep(g, Adam(lr=1e-3))          # loss "loss", wrt g.trainable
    >>> loss = step({"x": X, "y": Y})               # one step; returns the loss before it

    `step(feeds, grads=d)` also copies each gradient into the dict `d` (for a stopping rule).
    The optimizer's state and step count live in `g.state` as with `opt.step`, which gives the
    same results bit for bit; `fit` trains with this."""

    def __init__(self, g: cg.Graph, optimizer: Optimizer, loss: str = "loss", wrt: list[str] | None = None) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"TrainStep: optimizer must be a cg.optim optimizer, got {type(optimizer).__name__}")
        self.g = g
        self.optimizer = optimizer
        self.wrt = list(g.trainable if wrt is None else wrt)
        self.rm = cg.ReverseMode(g, of=loss, wrt=self.wrt)

    def __call__(self, feeds: Mapping[str, Any], grads: dict[str, np.ndarray] | None = None) -> float:
        opt, g = self.optimizer, self.g
        t, states = opt.begin(g, self.wrt)

        def update(name: str) -> Any:
            state = states[name]

            def run(p: np.ndarray, grad: np.ndarray) -> None:
                if grads is not None:
                    grads[name] = np.array(grad)
                opt.apply(p, grad, state, t)
            return run

        value = self.rm.apply(feeds, {name: update(name) for name in self.wrt})
        opt.end(g, t)
        return float(value)


class GD(Optimizer):
    """Gradient descent, the lecture's `W = W - lr * dW`."""

    kind = "GD"

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__(lr)

    def _update(self, p: np.ndarray, grad: np.ndarray, state: dict[str, np.ndarray], t: int) -> None:
        np.subtract(p, self.lr * grad, out=p)


class Momentum(Optimizer):
    """Gradient descent with momentum (PyTorch's form): `v = beta v + grad; p = p - lr v`."""

    kind = "Momentum"
    slots = ("v",)

    def __init__(self, lr: float = 0.1, beta: float = 0.9) -> None:
        super().__init__(lr)
        _check(self.kind, "beta", beta, lo=0.0, hi=1.0)
        self.beta = float(beta)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "beta": self.beta}

    def _update(self, p: np.ndarray, grad: np.ndarray, state: dict[str, np.ndarray], t: int) -> None:
        v = state["v"]
        np.multiply(v, self.beta, out=v)
        np.add(v, grad, out=v)
        np.subtract(p, self.lr * v, out=p)


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with bias-corrected moments:
    `m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p -= lr m^ / (sqrt(v^) + eps)`."""

    kind = "Adam"
    slots = ("m", "v")

    def __init__(self, lr: float = 1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> None:
        super().__init__(lr)
        _check(self.kind, "b1", b1, lo=0.0, hi=1.0)
        _check(self.kind, "b2", b2, lo=0.0, hi=1.0)
        _check(self.kind, "eps", eps, lo=0.0)
        self.b1, self.b2, self.eps = float(b1), float(b2), float(eps)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "b1": self.b1, "b2": self.b2, "eps": self.eps}

    def _update(self, p: np.ndarray, grad: np.ndarray, state: dict[str, np.ndarray], t: int) -> None:
        m, v = state["m"], state["v"]
        np.multiply(m, self.b1, out=m)
        m += (1.0 - self.b1) * grad
        np.multiply(v, self.b2, out=v)
        s = np.square(grad)
        s *= 1.0 - self.b2
        v += s  # v = b2 v + (1 - b2) g^2
        np.divide(v, 1.0 - self.b2 ** t, out=s)
        np.sqrt(s, out=s)
        s += self.eps  # sqrt(v^) + eps
        step = np.divide(m, 1.0 - self.b1 ** t)
        step *= self.lr  # lr m^
        step /= s
        p -= step


KINDS: dict[str, type[Optimizer]] = {c.kind: c for c in (GD, Momentum, Adam)}


def from_graph(g: cg.Graph) -> Optimizer | None:
    """The optimizer that last stepped `g` (settings from its metadata, state in `g.state`),
    or None if none has: use it to resume training a loaded model exactly."""
    text = g.metadata.get(METADATA)
    if text is None:
        return None
    try:
        cfg = json.loads(text)
        cls = KINDS[cfg.pop("kind")]
        return cls(**cfg)
    except (ValueError, KeyError, TypeError) as e:
        raise cg.GraphError(f"graph {g.name!r}: metadata {METADATA!r} = {text!r} is not an optimizer: {e}") from None


def reset(g: cg.Graph) -> None:
    """Forget the optimizer state saved in `g` (to train again from its current params)."""
    for k in [k for k in g.state if k.startswith(PREFIX)]:
        del g.state[k]
    g.metadata.pop(METADATA, None)


def _check(kind: str, arg: str, value: float, lo: float, hi: float | None = None, lo_open: bool = False) -> None:
    ok = (value > lo if lo_open else value >= lo) and (hi is None or value < hi)
    if not ok:
        bounds = f"{'>' if lo_open else '>='} {lo}" + ("" if hi is None else f" and < {hi}")
        raise ValueError(f"{kind}: {arg} must be {bounds}, got {value!r}")
