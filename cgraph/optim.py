"""Optimizers on the public API: `GD`, `Momentum`, `Adam`.

`opt.step(g, grads)` moves each param named in `grads` with `g.set_param`. An optimizer's
state (velocities, moments, the step count) lives in the graph, in `g.state` under
`optim/<kind>/<slot>/<param>` and `optim/<kind>/t`, and its settings in `g.metadata["optim"]`,
so both are saved with the model: `from_graph(cg.load(path))` gives an optimizer that continues
exactly where the saved one stopped. Another optimizer of the same kind continues from the same
state (with its own settings); one of another kind drops it and starts afresh.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

import cgraph as cg

PREFIX = "optim/"
METADATA = "optim"

__all__ = ["Adam", "GD", "Momentum", "Optimizer", "from_graph", "reset"]


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
        """One update of every param in `grads` (a dict param name -> gradient). Everything is
        checked before anything changes, so a bad gradient leaves the graph as it was."""
        params = g.params
        own = f"{PREFIX}{self.kind}/"
        t = int(np.asarray(g.state.get(own + "t", 0)).item()) + 1
        work: list[tuple[str, np.ndarray, np.ndarray, dict[str, Any]]] = []
        for name, grad in grads.items():
            if name not in params:
                raise cg.GraphError(f"{self.kind}.step: {name!r} is not a param of graph {g.name!r}")
            p, grad = params[name], np.asarray(grad)
            if grad.shape != p.shape:
                raise cg.ShapeError(f"{self.kind}.step: gradient of {name!r} has shape {grad.shape}, "
                                    f"the param {p.shape}")
            state: dict[str, Any] = {s: g.state.get(f"{own}{s}/{name}") for s in self.slots}
            for s, v in state.items():
                if v is None:
                    state[s] = np.zeros_like(p)
                elif np.shape(v) != p.shape:
                    raise cg.ShapeError(f"{self.kind}.step: state {own}{s}/{name} has shape "
                                        f"{np.shape(v)}, the param {p.shape}")
            work.append((name, p, grad, state))
        text = self._config_text()
        if g.metadata.get(METADATA) != text:  # first step, or another optimizer was used last
            for k in [k for k in g.state if k.startswith(PREFIX) and not k.startswith(own)]:
                del g.state[k]  # another kind of optimizer's state: its slots mean other things
        for name, p, grad, state in work:
            g.set_param(name, self._update(p, grad, state, t))
            for s in self.slots:
                g.state[f"{own}{s}/{name}"] = state[s]
        g.state[own + "t"] = np.array(t, dtype=np.int64)
        g.metadata[METADATA] = text

    def _config_text(self) -> str:
        """The settings as JSON, remade only when they change (it is written at every step)."""
        config = self.config()
        cached = self.__dict__.get("_config_cache")
        if cached is None or cached[0] != config:
            cached = self.__dict__["_config_cache"] = (config, json.dumps(config))
        return cached[1]

    def _update(self, p: np.ndarray, grad: np.ndarray, state: dict[str, np.ndarray], t: int) -> np.ndarray:
        raise NotImplementedError


class GD(Optimizer):
    """Gradient descent, the lecture's `W = W - lr * dW`."""

    kind = "GD"

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__(lr)

    def _update(self, p: np.ndarray, grad: np.ndarray, state: dict[str, np.ndarray], t: int) -> np.ndarray:
        return p - self.lr * grad


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

    def _update(self, p: np.ndarray, grad: np.ndarray, state: dict[str, np.ndarray], t: int) -> np.ndarray:
        state["v"] = self.beta * state["v"] + grad
        return p - self.lr * state["v"]


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

    def _update(self, p: np.ndarray, grad: np.ndarray, state: dict[str, np.ndarray], t: int) -> np.ndarray:
        state["m"] = self.b1 * state["m"] + (1.0 - self.b1) * grad
        state["v"] = self.b2 * state["v"] + (1.0 - self.b2) * np.square(grad)
        m_hat = state["m"] / (1.0 - self.b1 ** t)
        v_hat = state["v"] / (1.0 - self.b2 ** t)
        return p - self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


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
