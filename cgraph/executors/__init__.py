"""The executors: each compiles a plan once and runs it for many feeds."""

from cgraph.executors.evaluator import Evaluator
from cgraph.executors.forward import ForwardMode
from cgraph.executors.reverse import ReverseMode

__all__ = ["Evaluator", "ForwardMode", "ReverseMode"]
