"""Where in the denoising loop a transformer forward is: the step index and the step count.

A forward's own timestep is a poor witness: image-to-video pipelines (LTX, Wan 2.2 TI2V with
`expand_timesteps`) pass one timestep per token, and their first-frame tokens carry t = 0, so
the first element of `t` says "last step" at every step. The pipeline knows better, so the
sources are asked in order of trust:

1. the cache context the pipeline set (`cache_context("cond", step_index=i, num_inference_steps=N)`,
   Wan's text-to-video pipeline);
2. the scheduler's own counter (`scheduler.step_index`, or `begin_index` before the first
   `scheduler.step` of a call), when the schedule entry it points at is the timestep the
   transformer was given;
3. the schedule entry nearest to the row's timestep, taken as the maximum over tokens (the noise
   level of the frames being generated; conditioning tokens sit at t = 0).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

__all__ = ["StepPlace", "locate_step", "row_timesteps"]


class StepPlace(NamedTuple):
    """A forward's step `step` of `total`, and which source said so (for debugging)."""

    step: int
    total: int
    source: str


def row_timesteps(t: torch.Tensor, batch: int) -> torch.Tensor:
    """One timestep per row, float32 [batch]: the maximum over a row's per-token timesteps.

    A scalar or a [1] timestep is shared by every row.
    """
    t = t.detach().float()
    if t.ndim == 0 or t.numel() == 1:
        return t.reshape(1).expand(batch).clone()
    flat = t.reshape(t.shape[0], -1).amax(dim=1) if t.shape[0] == batch else t.reshape(-1)[:1].expand(batch)
    return flat.clone()


def locate_step(t_rows: torch.Tensor, context: Any, scheduler: Any, schedule: np.ndarray) -> StepPlace:
    """Place a forward whose rows have timesteps `t_rows` on `schedule` (see the module docstring)."""
    step = getattr(context, "step_index", None)
    total = getattr(context, "num_inference_steps", None)
    if step is not None and total:
        return StepPlace(int(step), int(total), "cache_context")
    t_now = float(t_rows.max()) if t_rows.numel() else float("nan")
    n = len(schedule)
    index = _scheduler_index(scheduler)
    if index is not None and 0 <= index < n and _same_timestep(schedule[index], t_now, schedule):
        return StepPlace(index, n, "scheduler")
    return StepPlace(int(np.abs(schedule - t_now).argmin()), n, "timestep")


def _scheduler_index(scheduler: Any) -> int | None:
    if scheduler is None:
        return None
    index = getattr(scheduler, "step_index", None)
    if index is None:  # before the call's first `scheduler.step`: the index it will start from
        index = getattr(scheduler, "begin_index", None)
    return None if index is None else int(index)


def _same_timestep(entry: float, t_now: float, schedule: np.ndarray) -> bool:
    """Whether `t_now` is schedule `entry` (within a hundredth of the schedule's smallest spacing)."""
    gaps = np.abs(np.diff(schedule))
    gaps = gaps[gaps > 0]
    tolerance = 0.01 * float(gaps.min()) if gaps.size else 1e-6
    return abs(float(entry) - t_now) <= max(tolerance, 1e-6)
