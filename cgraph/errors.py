"""The exceptions cgraph raises. Every message is one line naming the node, op and shapes."""


class CgraphError(Exception):
    """Base class of every error cgraph raises on purpose."""


class ShapeError(CgraphError, ValueError):
    """Shapes or dtypes conflict: raised when a node is built, or when run-time sizes disagree."""


class FeedError(CgraphError, ValueError):
    """A feed is missing, unknown, mis-shaped or of a dtype that cannot be cast safely."""


class GraphFormatError(CgraphError, ValueError):
    """A file or byte string is not a valid cgraph model."""


class DerivativeError(CgraphError):
    """A derivative was asked of something that has none (a missing rule, a bool output...)."""
