"""The exceptions cgraph raises, all in one place. Every message is one line naming the node,
the op and the shapes involved. Each derives from `CgraphError`, and from the built-in
exception a caller would otherwise catch (ValueError, ImportError)."""

from __future__ import annotations

import re

_LINE_BREAKS = re.compile("[\n\r\v\f\x1c-\x1e\x85\u2028\u2029]")


def one_line(text: str) -> str:
    """`text` with its line breaks (which names may hold) written as escapes: messages of
    errors about files stay one line whatever the file holds."""
    return _LINE_BREAKS.sub(lambda m: repr(m.group())[1:-1], text)


class CgraphError(Exception):
    """Base class of every error cgraph raises on purpose."""


class GraphError(CgraphError, ValueError):
    """A graph is built wrongly: a duplicate name, tensors of two graphs, an unknown name, an op
    given inputs or attributes its declaration does not allow."""


class ShapeError(CgraphError, ValueError):
    """Shapes or dtypes conflict: raised when a node is built, or when run-time sizes disagree."""


class FeedError(CgraphError, ValueError):
    """A feed is missing, unknown, mis-shaped or of a dtype that cannot be cast safely."""


class GraphFormatError(CgraphError, ValueError):
    """A file or byte string is not a valid cgraph model."""


class DerivativeError(CgraphError):
    """A derivative was asked of something that has none (a missing rule, a bool output...)."""


class BatchingError(CgraphError, ValueError):
    """`vmap` cannot batch a graph as asked: an unknown input, an op with no batching rule and
    no batch size known when vmap runs, inputs of different batch sizes."""


class MemoryBudgetError(CgraphError, ValueError):
    """No reverse-mode schedule fits the memory budget; `smallest` is the smallest budget that
    has one."""

    def __init__(self, message: str, budget: int, smallest: int) -> None:
        super().__init__(message)
        self.budget = budget
        self.smallest = smallest


class RenderError(CgraphError, ValueError):
    """A graph cannot be drawn as asked: an unknown format, a bad option, no `dot` program."""


class RenderWarning(UserWarning):
    """A graph was folded to keep its drawing readable and fast."""


class OnnxError(CgraphError, ValueError):
    """A graph cannot be exported to ONNX, or an ONNX model cannot be imported (one line
    naming the ops, nodes or values at fault)."""


class SparseMissingError(CgraphError, ImportError):
    """The optional `scipy` package (the `sparse` extra), needed for sparse Jacobians, is not
    installed."""


class OnnxMissingError(CgraphError, ImportError):
    """The optional `onnx` package (or onnxruntime) is not installed."""
