"""ONNX interop, with the optional `onnx` extra (`pip install 'cgraph-ad[onnx]'`).

`export(g, path)` writes a cgraph Graph (gradient graphs included) as an ONNX model that
passes `onnx.checker` and runs in onnxruntime with cgraph's outputs; `load(path)` builds a
cgraph Graph from an ONNX model so that it can be differentiated and fine-tuned. Importing
this module never imports `onnx`: each function does, when it is called.
"""

from cgraph.errors import OnnxError, OnnxMissingError
from cgraph.onnx._export import DEFAULT_OPSET, EXPORTABLE, export, to_model
from cgraph.onnx._import import IMPORTABLE, from_model, load

__all__ = ["DEFAULT_OPSET", "EXPORTABLE", "IMPORTABLE", "OnnxError", "OnnxMissingError", "export",
           "from_model", "load", "to_model"]
