"""cgraph: graph-based automatic differentiation with serializable computation graphs.

Build a static graph (`Graph`, ops as functions and operators), run it with separate
executors (`Evaluator`, `ForwardMode`, `ReverseMode`), differentiate it into new graphs
(`gradient_graph`), batch it (`vmap`), take whole Jacobians and Hessians in a few sweeps
(`jacobian`, `hessian`, sparse by colouring) and check derivatives (`gradcheck`). Every op is a declared
contract (`op_info`); your own ops go through the same door (`define_op`).
"""

# nn, optim: training helpers on the public API; onnx: imports the onnx package only when used;
# patterns: what user ops' pattern rules are written with
from cgraph import nn, onnx, optim, patterns
from cgraph.autodiff import gradient_graph
from cgraph.batching import vmap
from cgraph.checkpoint import MemoryPlan
from cgraph.control import cond, scan, while_loop
from cgraph.errors import (
    BatchingError,
    CgraphError,
    DerivativeError,
    FeedError,
    GraphError,
    GraphFormatError,
    MemoryBudgetError,
    ShapeError,
    SparseMissingError,
)
from cgraph.executors import Evaluator, ForwardMode, ReverseMode
from cgraph.graph import Graph, Node, Tensor
from cgraph.io import dumps, load, loads, save
from cgraph.jacobian import Hessian, Jacobian, gradcheck, hessian, jacobian, jacobian_sparsity
from cgraph.ops import *  # noqa: F403  (the op functions: cg.add, cg.matmul, ...)
from cgraph.ops import __all__ as _ops_all
from cgraph.render import render, to_dot
from cgraph.tracing import Trace, trace
from cgraph.train import fit, predict
from cgraph.version import __version__ as __version__

__all__ = [
    "CgraphError", "DerivativeError", "Evaluator", "FeedError", "ForwardMode", "Graph",
    "GraphError", "GraphFormatError", "MemoryBudgetError", "MemoryPlan", "Node", "ReverseMode", "ShapeError",
    "Tensor", "cond", "gradcheck", "gradient_graph", "jacobian", "nn", "optim", "fit", "predict", "scan",
    "while_loop",
    *[n for n in _ops_all if n not in ("NONDIFF", "ZERO", "Attr", "OpDef")],
]
__all__ += ["BatchingError", "Hessian", "Jacobian", "SparseMissingError", "hessian", "jacobian_sparsity",
            "patterns", "vmap"]  # cgraph.batching, cgraph.jacobian: batches, Jacobians in a few sweeps
__all__ += ["dumps", "load", "loads", "save"]  # cgraph.io: the file format
__all__ += ["onnx"]  # cgraph.onnx: ONNX export and import (the onnx extra)
__all__ += ["Trace", "render", "to_dot", "trace"]  # cgraph.render (Graphviz), cgraph.tracing
