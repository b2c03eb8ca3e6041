"""cgraph as an ONNX backend (`onnx.backend.base.Backend`): `cg.onnx.load` then `cg.Evaluator`,
so that ONNX's own backend test suite (`onnx.backend.test`) runs against cgraph as it runs
against onnxruntime. `suite()` lists the suite's CPU tests by category; `outcome(test)` runs one
and says whether it passed, was refused (an OnnxError at import: the reason), or went wrong."""

from __future__ import annotations

import os
import re
import tempfile
import unittest
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.backend.base
import onnx.backend.test

import cgraph as cg
import cgraph.onnx

CATEGORIES = {"Node": "node", "Simple": "simple", "PyTorchConverted": "pytorch-converted",
              "PyTorchOperator": "pytorch-operator", "Real": "real"}


class CgraphRep(onnx.backend.base.BackendRep):
    """An imported model, run by an Evaluator; inputs in the model's order, as ONNX gives them."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.graph = cg.onnx.load(model)
        inits = {t.name for t in model.graph.initializer}
        self.inputs = [vi.name for vi in model.graph.input if vi.name not in inits]
        self.outputs = [vi.name for vi in model.graph.output]
        self.evaluator = cg.Evaluator(self.graph)

    def run(self, inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        if isinstance(inputs, dict):
            feeds = dict(inputs)
        else:
            inputs = [inputs] if isinstance(inputs, np.ndarray) else list(inputs)
            feeds = dict(zip(self.inputs, inputs, strict=False))
        out = self.evaluator.run(feeds)
        return tuple(np.asarray(out[name]) for name in self.outputs)


class CgraphBackend(onnx.backend.base.Backend):
    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> CgraphRep:
        super().prepare(model, device, **kwargs)
        return CgraphRep(model)

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU", **kwargs: Any) -> Any:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device == "CPU"


def retyped(model: onnx.ModelProto, to: int) -> onnx.ModelProto:
    """A copy of a model computing in `to` (onnx.TensorProto.FLOAT or DOUBLE) where it used the
    other float type: initializers, constants, inputs, outputs and casts."""
    was = onnx.TensorProto.DOUBLE if to == onnx.TensorProto.FLOAT else onnx.TensorProto.FLOAT
    dtype = np.float32 if to == onnx.TensorProto.FLOAT else np.float64
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for t in m.graph.initializer:
        if t.data_type == was:
            t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t).astype(dtype), t.name))
    for vi in [*m.graph.input, *m.graph.output]:
        if vi.type.tensor_type.elem_type == was:
            vi.type.tensor_type.elem_type = to
    for node in m.graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == was:
                a.t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(a.t).astype(dtype), a.t.name))
            elif node.op_type == "Cast" and a.name == "to" and a.i == was:
                a.i = to
    del m.graph.value_info[:]
    return m


def suite() -> dict[str, tuple[str, Callable[[], None]]]:
    """Every CPU test of the suite: name -> (category, a function that runs it). The light
    real models write their reference data under ONNX_HOME, pointed at a temporary folder."""
    os.environ.setdefault("ONNX_HOME", os.path.join(tempfile.gettempdir(), "cgraph-onnx-home"))
    cases = onnx.backend.test.BackendTest(CgraphBackend, __name__).test_cases
    tests: dict[str, tuple[str, Callable[[], None]]] = {}
    for case_name, case in cases.items():
        category = CATEGORIES[case_name[len("OnnxBackend"):-len("Test")].removesuffix("Model")]
        for name in sorted(n for n in dir(case) if n.startswith("test_") and n.endswith("_cpu")):
            tests[name] = (category, getattr(case(name), name))
    return tests


def outcome(run: Callable[[], None]) -> tuple[str, str]:
    """("pass", ""), ("skip", why), ("refused", the OnnxError's line) or ("wrong", what
    happened: a wrong value, a crash, any other error)."""
    try:
        run()
    except unittest.SkipTest as e:
        return "skip", str(e)
    except cg.onnx.OnnxError as e:
        return "refused", str(e)
    except AssertionError as e:
        return "wrong", "wrong answer: " + " ".join(str(e).split())[:300]
    except Exception as e:  # noqa: BLE001 - anything else is a crash, reported as such
        return "wrong", f"{type(e).__name__}: " + " ".join(str(e).split())[:300]
    return "pass", ""


def refusal_causes(reason: str) -> list[str]:
    """The causes of a refusal, for counting: each missing op, or the message with the node's
    name left out."""
    if "uses ops cgraph cannot import:" in reason:
        listed = reason.split("cannot import: ", 1)[1]
        return ["no import rule: " + re.sub(r" \(\d+\)$", "", op) for op in listed.split(", ")]
    if reason.startswith("ONNX node ") and "): " in reason:
        head, rest = reason.split("): ", 1)
        return [f"{head.rsplit('(', 1)[1]}: {rest}"]
    return [reason]


REFUSED = Path(__file__).with_name("onnx_refused.txt")


def read_refused() -> dict[str, str]:
    """The expected refusals: test name -> the OnnxError's line."""
    out = {}
    for line in REFUSED.read_text().splitlines():
        if line and not line.startswith("#"):
            name, why = line.split(": ", 1)
            out[name] = why
    return out


def write_refused(refused: dict[str, str]) -> None:
    lines = ["# ONNX backend tests that cgraph refuses at import (tests/test_onnx_suite.py), with the",
             "# OnnxError's line. Regenerated by `python tools/onnx_suite --write`.",
             *(f"{name}: {why}" for name, why in sorted(refused.items()))]
    REFUSED.write_text("\n".join(lines) + "\n")


