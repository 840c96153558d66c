"""`none`: full compute, the reference every other method is measured against."""

from __future__ import annotations

from typing import Any

from calibration.baselines._common import BaselineHandle, transformer_of

__all__ = ["apply_none"]


def apply_none(pipe: Any, knob: Any = None) -> BaselineHandle:
    """Install nothing; the handle's `remove` is a no-op."""
    transformer_of(pipe)
    return BaselineHandle("none", knob, remove=lambda: None, config={"description": "every step runs the block stack"})
