"""Training and inference on the public API: `cg.fit` and `cg.predict`.

`fit` compiles one training step (`cg.optim.TrainStep`: the loss, the gradients and the
optimizer's in-place update of each param in one plan) and runs it on the whole data or on
shuffled minibatches. Everything it changes lives
in the graph, so a saved model resumes exactly: the params, the optimizer's state
(`g.state["optim/..."]`), batch norm's running statistics (non-trainable params) and the number
of epochs trained (`g.state["fit/epoch"]`), from which each epoch's shuffle is seeded.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from tqdm import tqdm

import cgraph as cg
from cgraph.nn import SEED, running_stats
from cgraph.optim import Optimizer, TrainStep

EPOCH = "fit/epoch"  # g.state: epochs trained so far, over every call of fit


@dataclass
class Epoch:
    """What a `stop` rule sees after each epoch."""

    epoch: int  # 0-based, within this call of fit
    loss: float  # mean loss over the epoch's batches (full batch: the loss before the step)
    grads: dict[str, np.ndarray]  # the gradients of the epoch's last step (kept when eps or stop is given)
    metric: float | None = None

    @property
    def grad_norm(self) -> float:
        """The 2-norm of all the gradients together."""
        return float(np.sqrt(sum(float(np.sum(np.square(v))) for v in self.grads.values())))


@dataclass
class History:
    """What `fit` did: the loss (and metric) after each epoch, on the training data and on the
    validation data, the steps taken, the time.

    `history.history` holds the same lists by name, as Keras users read them:
    `history.history["loss"]`, `["val_loss"]`, and the metric's name (`["accuracy"]`,
    `["val_accuracy"]`)."""

    loss: list[float] = field(default_factory=list)
    metric: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_metric: list[float] = field(default_factory=list)
    metric_name: str = "metric"  # "accuracy", or the metric function's name
    steps: int = 0
    epochs: int = 0
    stopped: bool = False  # the stop rule (eps or stop) ended training before `epochs`
    seconds: float = 0.0

    @property
    def history(self) -> dict[str, list[float]]:
        """{"loss": [...], "val_loss": [...], "<metric>": [...], "val_<metric>": [...]}: the
        lists that were recorded (validation ones only with `validation=`)."""
        lists = {"loss": self.loss, "val_loss": self.val_loss,
                 self.metric_name: self.metric, f"val_{self.metric_name}": self.val_metric}
        return {k: v for k, v in lists.items() if v or k == "loss"}


def fit(g: cg.Graph, data: Mapping[str, Any], optimizer: Optimizer, epochs: int,
        batch_size: int | None = None, progress: bool = True, seed: int = 0,
        eps: float | None = None, stop: Callable[[Epoch], bool] | None = None,
        metric: str | Callable[[cg.Graph], float] | None = None, loss: str = "loss",
        validation: Mapping[str, Any] | None = None) -> History:
    """Train `g`'s trainable params to lower its output `loss` on `data` ({input name: array},
    the same number of rows in each).

    batch_size: None for full-batch steps, else shuffled minibatches (the last may be smaller),
        one permutation per epoch from numpy's default_rng([seed, epochs trained so far]).
    progress: a tqdm bar on stderr, shown only when stderr is a terminal (never when False).
    eps, stop: end early after an epoch whose last gradients have 2-norm < eps, or for which
        stop(Epoch) is true (the lecture: `stop=lambda e: np.linalg.norm(e.grads["layer1/W"]) < 1e-9`).
    metric: "accuracy" (on data's "x" and "y", see `accuracy`) or a function of the graph,
        recorded after each epoch in `History.metric`.
    validation: held-out data ({input name: array}, as `data`): after each epoch, the loss on
        it (`History.val_loss`) and, with metric="accuracy", its accuracy (`val_metric`). A
        model with batch norm is validated in inference mode (its "loss_eval" output).
    The progress bar shows the epoch's loss (and the validation loss).
    Batch norm's running statistics (see `cg.nn`) are updated after every step, from the batch
    statistics the model outputs (one more forward pass per step: ReverseMode gives only the
    loss and the gradients). A model with dropout layers (`cg.nn.dropout`) gets a fresh seed
    each step, from default_rng([seed, epochs trained so far, batch index]).
    """
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"fit: optimizer must be a cg.optim optimizer, got {type(optimizer).__name__}")
    if int(epochs) < 0:
        raise ValueError(f"fit: epochs must be >= 0, got {epochs}")
    arrays = {k: np.asarray(v) for k, v in data.items()}
    rows = {k: (v.shape[0] if v.ndim else None) for k, v in arrays.items()}
    if not arrays or len(set(rows.values())) != 1 or None in rows.values():
        raise cg.FeedError(f"fit: data must hold arrays with the same number of rows, got {rows}")
    n = cast(int, next(iter(rows.values())))  # not None: checked above
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"fit: batch_size must be >= 1 or None, got {batch_size}")
    full = batch_size is None or batch_size >= n
    val = None if validation is None else {k: np.asarray(v) for k, v in validation.items()}
    metric_fn: Callable[[cg.Graph], float] | None
    val_metric_fn: Callable[[cg.Graph], float] | None = None
    if metric == "accuracy":
        for what, d in (("data", arrays), ("validation", val)):
            if d is not None and ("x" not in d or "y" not in d):
                raise cg.FeedError(f"fit: metric='accuracy' needs {what} 'x' and 'y'")
        ev = cg.Evaluator(g, outputs=[_default_output(g)])  # compiled once, run every epoch

        def accuracy_on(d: Mapping[str, np.ndarray]) -> Callable[[cg.Graph], float]:
            return lambda m: _accuracy_of(ev.run({"x": d["x"]})[ev.outputs[0]], d["y"])

        metric_fn = accuracy_on(arrays)
        val_metric_fn = accuracy_on(val) if val is not None else None
        metric_name = "accuracy"
    elif metric is None or callable(metric):
        metric_fn = metric
        name = getattr(metric, "__name__", "metric")
        metric_name = name if name.isidentifier() else "metric"
    else:
        raise ValueError(f"fit: metric must be 'accuracy', a function of the graph, or None; got {metric!r}")
    val_ev = None
    if val is not None:
        val_loss = f"{loss}_eval" if f"{loss}_eval" in g.outputs else loss  # batch norm: inference mode
        val_ev = cg.Evaluator(g, outputs=[val_loss])

    step = TrainStep(g, optimizer, loss=loss)
    keep_grads = eps is not None or stop is not None
    seed_input = g.metadata.get(SEED)  # dropout's seed (cg.nn.dropout): a fresh one each step
    if seed_input is not None and seed_input not in g.inputs:
        raise cg.GraphError(f"fit: metadata {SEED!r} names {seed_input!r}, which is not an input of graph {g.name!r}")
    stats_map, momentum = running_stats(g)
    stats_ev = cg.Evaluator(g, outputs=list(stats_map.values())) if stats_map else None
    history = History(metric_name=metric_name)
    start = time.perf_counter()
    bar = tqdm(total=int(epochs), desc=g.name, unit="epoch", file=sys.stderr, disable=not _show_progress(progress))
    try:
        for e in range(int(epochs)):
            done = int(np.asarray(g.state.get(EPOCH, 0)).item())
            if full:
                batches = [arrays]
            else:
                order = np.random.default_rng([seed, done]).permutation(n)
                size = cast(int, batch_size)  # not None: minibatches
                batches = [{k: v[order[i:i + size]] for k, v in arrays.items()} for i in range(0, n, size)]
            total = 0.0
            grads: dict[str, np.ndarray] = {}
            for k, batch in enumerate(batches):
                count = len(next(iter(batch.values())))
                if seed_input is not None:
                    step_seed = np.random.default_rng([seed, done, k]).integers(np.iinfo(np.int64).max)
                    batch = {**batch, seed_input: np.asarray(step_seed, dtype=np.int64)}
                if stats_ev is not None:  # from the params before this step's update
                    batch_stats = stats_ev.run(batch)
                value = step(batch, grads if keep_grads and k == len(batches) - 1 else None)
                if stats_ev is not None:
                    for param, out in stats_map.items():
                        g.set_param(param, (1.0 - momentum) * g.params[param] + momentum * batch_stats[out])
                total += float(value) * count
                history.steps += 1
            g.state[EPOCH] = np.array(done + 1, dtype=np.int64)
            info = Epoch(e, total / n, grads)
            history.loss.append(info.loss)
            if metric_fn is not None:
                info.metric = float(metric_fn(g))
                history.metric.append(info.metric)
            shown = {"loss": f"{info.loss:.4g}"}
            if val_ev is not None and val is not None:
                fixed = {seed_input: np.int64(seed)} if seed_input is not None else {}  # (dropout: one mask)
                history.val_loss.append(float(val_ev.run({**val, **fixed})[val_ev.outputs[0]]))
                shown["val_loss"] = f"{history.val_loss[-1]:.4g}"
                if val_metric_fn is not None:
                    history.val_metric.append(float(val_metric_fn(g)))
            history.epochs += 1
            if not bar.disable:
                bar.set_postfix(shown, refresh=False)
                bar.update(1)
            if (eps is not None and info.grad_norm < eps) or (stop is not None and stop(info)):
                history.stopped = True
                break
    finally:
        bar.close()
    history.seconds = time.perf_counter() - start
    return history


def _show_progress(progress: bool) -> bool:
    """A bar on a terminal, or in a Jupyter kernel (whose stderr is not a terminal but shows
    one); never in a log file or a pipe."""
    isatty = getattr(sys.stderr, "isatty", None)
    ipython = sys.modules.get("IPython")  # imported already, in a kernel: never imported here
    shell = ipython.get_ipython() if ipython is not None else None
    return progress and ((isatty is not None and isatty()) or hasattr(shell, "kernel"))


def predict(g: cg.Graph, x: Any, output: str | None = None, batch_size: int | None = None) -> np.ndarray:
    """The output `output` for inputs `x` (an array for input "x", or a dict of feeds), run in
    row batches of `batch_size` (all at once if None). The default output is "logits_eval"
    when the model has one (batch norm's inference mode), else "logits"."""
    output = _default_output(g) if output is None else output
    feeds = dict(x) if isinstance(x, Mapping) else {"x": x}
    feeds = {k: np.asarray(v) for k, v in feeds.items()}
    ev = cg.Evaluator(g, outputs=[output])
    first = next(iter(feeds.values()), None)
    n = first.shape[0] if first is not None and first.ndim else 0
    if batch_size is None or batch_size >= n:
        return ev.run(feeds)[output]
    if batch_size < 1:
        raise ValueError(f"predict: batch_size must be >= 1 or None, got {batch_size}")
    if len(g.outputs[output].shape) == 0:
        raise cg.ShapeError(f"predict: output {output!r} is a scalar; it cannot be computed in row batches")
    parts = [ev.run({k: v[i:i + batch_size] for k, v in feeds.items()})[output] for i in range(0, n, batch_size)]
    return np.concatenate(parts, axis=0)


def accuracy(g: cg.Graph, x: Any, y: Any, batch_size: int | None = None) -> float:
    """The fraction of rows classified right: argmax of the logits against argmax of one-hot
    `y` (several classes), or logit > 0 against y > 0.5 (one output column)."""
    return _accuracy_of(predict(g, x, batch_size=batch_size), y)


def _default_output(g: cg.Graph) -> str:
    return "logits_eval" if "logits_eval" in g.outputs else "logits"


def _accuracy_of(logits: np.ndarray, y: Any) -> float:
    y = np.asarray(y)
    if logits.shape[-1] == 1:
        return float(np.mean((logits[..., 0] > 0) == (y.reshape(logits.shape)[..., 0] > 0.5)))
    return float(np.mean(np.argmax(logits, axis=-1) == np.argmax(y, axis=-1)))
