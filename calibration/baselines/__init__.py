"""The peers SenCache is benchmarked against, one small module per method, and their registry.

Each method is `apply_<method>(pipe, knob, ...) -> BaselineHandle` (`reset()` before a call,
`remove()` after); `METHODS` holds every method's knob sweep and per-model preparation.
`BlockCounter` measures how much of the block stack really ran, whatever the method says.
"""

from calibration.baselines._common import BaselineHandle, MethodUnavailable, MethodUnsupported, StepTracker
from calibration.baselines._counter import BlockCounter, CounterSnapshot
from calibration.baselines.registry import METHODS, Method, MethodContext, method_names, resolve_methods

__all__ = [
    "METHODS",
    "BaselineHandle",
    "BlockCounter",
    "CounterSnapshot",
    "Method",
    "MethodContext",
    "MethodUnavailable",
    "MethodUnsupported",
    "StepTracker",
    "method_names",
    "resolve_methods",
]
