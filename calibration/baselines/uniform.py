"""`uniform`: static skipping at evenly spaced steps (the baseline to beat: docs/design.md,
"What an experiment found").

The knob is the fraction of steps that compute: `round(f x N)` steps (at least 2), evenly
spaced from the first step to the last, so both always compute. A skipped step reuses each
cache context's last block-stack residual exactly as SenCache does (`sencache.stack`), so the
two differ only in *which* steps they skip.
"""

from __future__ import annotations

from typing import Any

import torch

from calibration.baselines._common import BaselineHandle, StepTracker, evenly_spaced, transformer_of
from sencache.adapters import adapter_for
from sencache.stack import install_stack, remove_stack

__all__ = ["apply_uniform", "UniformController"]


class UniformController:
    """`StackController`: all rows compute at the chosen steps, none elsewhere."""

    def __init__(self, tracker: StepTracker, fraction: float) -> None:
        self.tracker = tracker
        self.fraction = float(fraction)
        self._cache: dict[int, set[int]] = {}

    def computes(self, step: int, num_steps: int) -> bool:
        steps = self._cache.get(num_steps)
        if steps is None:
            steps = self._cache[num_steps] = evenly_spaced(num_steps, self.fraction)
        return step in steps

    def compute_mask(self, context: str, batch: int) -> torch.Tensor | None:
        if self.computes(self.tracker.step, self.tracker.num_steps):
            return None
        return torch.zeros(batch, dtype=torch.bool)

    def stack_ran(self, context: str, rows: int, batch: int) -> None:
        pass


def apply_uniform(pipe: Any, knob: float) -> BaselineHandle:
    """Compute a fraction `knob` (0 < knob <= 1) of the steps, evenly spaced; skip the others."""
    if not 0.0 < float(knob) <= 1.0:
        raise ValueError(f"uniform: the knob is the computed fraction of steps, in (0, 1]; got {knob!r}")
    transformer = transformer_of(pipe)
    adapter = adapter_for(transformer)
    tracker = StepTracker(pipe, adapter)
    stack = install_stack(transformer, adapter, UniformController(tracker, knob))

    def remove() -> None:
        remove_stack(transformer, adapter)
        tracker.remove()

    return BaselineHandle(
        "uniform", float(knob), remove, reset=stack.reset,
        config={"computed_fraction": float(knob), "first_and_last_step": "always computed"},
    )
