"""Import rules for ONNX's control flow: If, Loop and Scan become `cg.cond`, `cg.while_loop` and
`cg.scan`, whose bodies are traced from the ONNX body graphs by the same rules, node by node.

A body sees the names of the graphs around it, as ONNX scopes them: an outer tensor it reads is
captured by the traced body (cgraph's closures). Constants a body makes live in the model's
graph and are captured the same way; a computation that reads no value of the body is built
outside it (it gives the same value on every trip). An If whose condition is known before the
run imports the branch taken alone.

What cgraph's loops cannot express is refused with one OnnxError line: a Loop with scan outputs
needs a trip count known before the run and no early exit (cgraph's scan has a fixed length),
and Scan before opset 9 (a batch axis and sequence lengths) is not read.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import cgraph.ops as ops
from cgraph.control import cond, scan, while_loop
from cgraph.errors import OnnxError
from cgraph.graph import Tensor
from cgraph.onnx._common import registrar
from cgraph.onnx._import import RULES, _import_node, _optional, _Reader

_rule = registrar(RULES)


class _BodyReader(_Reader):
    """The reader of one body: the environment of the reader around it plus the body's inputs
    (`given`: ONNX name -> the traced Tensor), its own initializers as constants."""

    def __init__(self, outer: _Reader, body: Any, given: dict[str, Tensor]) -> None:
        super().__init__(outer.g, outer.opset)
        self.body_of = outer.where()
        self.env = {**outer.env, **given}
        self.static = {k: v for k, v in outer.static.items() if k not in given}
        self.static.update({t.name: self.onnx.numpy_helper.to_array(t) for t in body.initializer})
        self.folded = outer.folded

    def known(self, name: str) -> np.ndarray | None:
        t = self.env.get(name)
        if t is not None and t.graph is not self.g:  # a value of a body: known only at run time
            return None
        return super().known(name)

    def where(self) -> str:
        return f"{super().where()} in the body of {self.body_of}"


def _read_body(r: _Reader, body: Any, values: list[Tensor]) -> list[Tensor]:
    """The outputs of ONNX graph `body` read with `values` for its inputs, in order."""
    if len(body.input) != len(values):
        raise OnnxError(f"{r.where()}: its body {body.name!r} takes {len(body.input)} inputs, "
                        f"the node gives {len(values)}")
    s = _BodyReader(r, body, {vi.name: v for vi, v in zip(body.input, values, strict=True)})
    for n in body.node:
        _import_node(s, n)
    s.node = None
    return [s.t(o.name) for o in body.output]


def _scalar(r: _Reader, t: Tensor, what: str, dtype: Any) -> Tensor:
    """`t` as a 0-d tensor of `dtype` (ONNX allows a one-element tensor)."""
    if t.dtype != dtype:
        raise OnnxError(f"{r.where()}: {what} must be {np.dtype(dtype)}, got {t.dtype}")
    if t.shape == ():
        return t
    if len(t.shape) != 1 or t.shape[0] not in (1, None):
        raise OnnxError(f"{r.where()}: {what} must hold one element, got shape {t.shape}")
    return ops.reshape(t, ())


def _branch(r: _Reader, n: Any, which: str) -> list[Tensor]:
    return _read_body(r, r.attrs(n)[which], [])


@_rule("If")
def _if(r: _Reader, n: Any) -> list[Tensor]:
    """cg.cond of the two branches (graphs of no inputs that read the names around them)."""
    known = r.known(n.input[0])
    if known is not None:  # decided before the run: the branch taken alone
        if known.size != 1:
            raise OnnxError(f"{r.where()}: the condition must hold one element, got shape {known.shape}")
        return _branch(r, n, "then_branch" if bool(known.reshape(())) else "else_branch")
    pred = _scalar(r, r.t(n.input[0]), "the condition", np.bool_)
    return list(cond(pred, lambda: tuple(_branch(r, n, "then_branch")), lambda: tuple(_branch(r, n, "else_branch"))))


@_rule("Loop")
def _loop(r: _Reader, n: Any) -> list[Tensor]:
    """`for i in range(M) while cond`: the body maps (i, cond, carried...) to (cond, carried...,
    scan outputs...). Without scan outputs a cg.while_loop (with max_trips when M is known
    before the run, so that reverse mode works); with them a cg.scan of M steps, which needs M
    known and no early exit (no cond input: the body's cond is then ignored, as ONNX says)."""
    body = r.attrs(n)["body"]
    m_name, c_name = _optional(n, 0), _optional(n, 1)
    inits = [r.t(x) for x in n.input[2:]]
    k = len(inits)
    n_scan = len(body.output) - 1 - k
    if n_scan < 0:
        raise OnnxError(f"{r.where()}: the body gives {len(body.output)} outputs for {k} loop-carried values")
    m_known = None if m_name is None else r.known(m_name)
    trips = None if m_known is None else int(np.asarray(m_known).reshape(()))
    zero = r.g.constant(None, np.int64(0))

    def step(i: Tensor, c: Tensor, vs: tuple[Tensor, ...]) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        outs = _read_body(r, body, [i, c, *vs])
        return _scalar(r, outs[0], "the body's condition", np.bool_), outs[1:1 + k], outs[1 + k:]

    if n_scan:
        if trips is None or c_name is not None:
            raise OnnxError(f"{r.where()}: a Loop with scan outputs needs a trip count known before the run and no "
                            "condition input (cgraph's scan has a fixed length)")
        true = r.g.constant(None, np.bool_(True))

        def scan_step(carry: tuple[Tensor, ...], _: Any) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
            i, *vs = carry
            _, new, ys = step(i, true, tuple(vs))
            return (ops.add(i, 1), *new), tuple(ys)

        final, ys = scan(scan_step, (zero, *inits), length=max(trips, 0))
        return [*final[1:], *ys]
    c0 = r.g.constant(None, np.bool_(True)) if c_name is None else _scalar(r, r.t(c_name), "the condition", np.bool_)
    m = None if m_name is None else _scalar(r, r.t(m_name), "the trip count", np.int64)

    def keep_going(carry: tuple[Tensor, ...]) -> Tensor:
        i, c = carry[:2]
        return c if m is None else ops.where(c, ops.less(i, m), False)

    def loop_step(carry: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        i, c, *vs = carry
        c_out, new, _ = step(i, c, tuple(vs))
        return (ops.add(i, 1), c if c_name is None else c_out, *new)

    final = while_loop(keep_going, loop_step, (zero, c0, *inits), max_trips=None if trips is None else max(trips, 0))
    return list(final[2:])


def _flip(t: Tensor) -> Tensor:
    return ops.getitem(t, (slice(None, None, -1),))


@_rule("Scan")
def _scan(r: _Reader, n: Any) -> list[Tensor]:
    """cg.scan: the states are the carries, the scan inputs are sliced along their
    `scan_input_axes` (moved first), in their direction (a reverse one flipped first); the scan
    outputs are stacked, then flipped and moved to their `scan_output_axes` as asked."""
    if r.opset < 9:
        raise OnnxError(f"{r.where()}: Scan before opset 9 (a batch axis and sequence_lens) is not supported")
    at = r.attrs(n)
    body, count = at["body"], int(at["num_scan_inputs"])
    k = len(n.input) - count
    if k < 0 or count < 1:
        raise OnnxError(f"{r.where()}: num_scan_inputs {count} does not fit its {len(n.input)} inputs")
    states = [r.t(x) for x in n.input[:k]]
    xs = []
    for j, name in enumerate(n.input[k:]):
        x = r.t(name)
        axis = list(at.get("scan_input_axes", [0] * count))[j]
        if not -x.ndim <= axis < x.ndim:
            raise OnnxError(f"{r.where()}: scan input {name!r} of {x.ndim} axes has no axis {axis}")
        axis %= x.ndim
        if axis:
            x = ops.transpose(x, (axis, *(a for a in range(x.ndim) if a != axis)))
        xs.append(_flip(x) if list(at.get("scan_input_directions", [0] * count))[j] else x)

    def f(carry: tuple[Tensor, ...], sl: tuple[Tensor, ...]) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        outs = _read_body(r, body, [*carry, *sl])
        return tuple(outs[:k]), tuple(outs[k:])

    final, ys = scan(f, tuple(states), tuple(xs))
    out_axes = list(at.get("scan_output_axes", [0] * len(ys)))
    out_dirs = list(at.get("scan_output_directions", [0] * len(ys)))
    moved = []
    for j, y in enumerate(ys):
        y = _flip(y) if out_dirs[j] else y
        axis = out_axes[j]
        if not -y.ndim <= axis < y.ndim:
            raise OnnxError(f"{r.where()}: scan output {j} of {y.ndim} axes has no axis {axis}")
        axis %= y.ndim
        if axis:
            y = ops.transpose(y, (*range(1, axis + 1), 0, *range(axis + 1, y.ndim)))
        moved.append(y)
    return [*final, *moved]
