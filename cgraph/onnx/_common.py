"""What the ONNX exporter and importer share: the lazy import of the optional `onnx` package,
the dtypes both sides understand, and the metadata keys cgraph writes (the errors are in
cgraph.errors, re-exported here)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

from cgraph.errors import OnnxMissingError

EXTRA_HINT = "pip install 'cgraph-ad[onnx]'"
CONSTANTS_KEY = "cgraph.constants"  # metadata_props: JSON list of initializers that were constants
FROZEN_KEY = "cgraph.frozen"  # metadata_props: JSON list of params with trainable=False
STOP_GRADIENT_DOC = "cgraph.stop_gradient"  # the doc_string that marks an Identity as stop_gradient


def require(name: str = "onnx") -> ModuleType:
    """Import `onnx` (or another module of the extra) only when ONNX is used, so that the core
    never needs it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise OnnxMissingError(f"cgraph.onnx needs the {name.split('.')[0]} package: {EXTRA_HINT}") from None


def np_to_onnx_type(dtype: np.dtype) -> int:
    onnx = require()
    return int(onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))


def onnx_to_np_type(elem_type: int) -> np.dtype | None:
    """The numpy dtype of an ONNX element type, if cgraph supports it (else None)."""
    onnx = require()
    try:
        dt = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, ValueError, TypeError):
        return None
    from cgraph.graph import DTYPES

    return dt if dt in DTYPES else None


def registrar(table: dict[str, Any]) -> Callable[..., Callable[[Any], Any]]:
    """A decorator `@rule("A", "B")` that files a conversion rule under those op names."""
    def rule(*names: str) -> Callable[[Any], Any]:
        def register(fn: Any) -> Any:
            for name in names:
                table[name] = fn
            return fn
        return register
    return rule
