"""Local search over a static schedule's computed steps: the best static mask near a good one.

Why: the smooth search draws static schedules from three shape parameters (a density at its
quantiles), which cannot say "dense for the first few steps, sparse mid-way, dense at the end"
to the step. On toy-wan with the taylor forecast, 100 random 15-of-30 masks held one at 49.1 dB
on held-out prompts while the fit's best static schedule at 0.5 gave 40.9 dB and its shipped
score-driven point 45.9 (`benchmarks/headroom_probe.py`): the fit's static twin, and so the
ablation that judges the score, was far from the best static schedule.

A move shifts one computed step (never the first or the last, which every schedule computes) one
step earlier or later into a free neighbour; the number of computed steps, so the compute, stays
the same. Greedy first improvement on the calibration objective, sweep after sweep, until a full
sweep finds nothing better or the evaluation budget is spent. Each evaluation is one batched
re-run (or replay) of the calibration runs, so the budget is what bounds it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from calibration.objectives import Objective
from policies import OperatingPoint, StaticSchedule

__all__ = ["RefinedSchedule", "mask_schedule", "refine_static", "static_equivalent"]

logger = logging.getLogger(__name__)

#: a move must lower the error by more than this share to count: evaluation noise on a re-run
#: is nil (fixed seeds), but a gain this small is not worth a less regular mask
MIN_IMPROVEMENT = 1e-3


@dataclass(frozen=True)
class RefinedSchedule:
    """The refined point, its calibration error and compute, and what the search spent."""

    point: OperatingPoint
    error: float
    nfe_fraction: float
    start_error: float
    evaluations: int
    moves: int


def mask_schedule(steps: frozenset[int] | set[int], num_steps: int) -> StaticSchedule:
    """The static schedule that computes exactly `steps` of an N-step run, and the same fraction
    (the same shape, resampled) at any other step count."""
    n = int(num_steps)
    taken = sorted(set(steps) | {0, n - 1})
    return StaticSchedule(tuple(s / (n - 1) for s in taken), len(taken) / n)


def static_equivalent(steps: frozenset[int] | set[int], num_steps: int) -> StaticSchedule:
    """The static schedule nearest a mask at the same count: a schedule always computes the first
    and the last step, so a mask that skips the last one moves its last computed step there
    (a score-driven point with K = 1 at half compute computes 0, 2, …, 28 of 30 and skips 29)."""
    n = int(num_steps)
    taken = set(steps) | {0}
    if n - 1 not in taken:
        later = sorted(taken - {0})
        if later:
            taken.discard(later[-1])
        taken.add(n - 1)
    return mask_schedule(taken, n)


def refine_static(objective: Objective, predictors: Any, point: OperatingPoint, num_steps: int,
                  evals: int = 40, start_error: float | None = None) -> RefinedSchedule:
    """Shift `point`'s computed steps one at a time while the calibration error falls (see the
    module docstring); at most `evals` evaluations of `objective`. `start_error` is `point`'s own
    error when already measured (saves one evaluation)."""
    if not point.static:
        raise ValueError(f"{point.name!r} is score-driven; only a static schedule's steps can be moved")
    n = int(num_steps)
    mask = set(point.schedule.steps(n))
    used = 0

    def measure(steps: set[int]) -> tuple[float, float, OperatingPoint]:
        nonlocal used
        used += 1
        candidate = replace(point, schedule=mask_schedule(steps, n), expected_nfe_fraction=None,
                            expected_error=None, expected_nfe_by_steps=None)
        result = objective.evaluate(predictors, candidate)
        return result.error, result.nfe_fraction, candidate

    if start_error is None:
        best_error, best_nfe, best_point = measure(mask)
    else:
        best_point = replace(point, schedule=mask_schedule(mask, n))
        best_error, best_nfe = float(start_error), float(point.schedule.fraction(n))
    first_error, moves = best_error, 0
    improved = True
    while improved and used < evals:
        improved = False
        for s in sorted(mask - {0, n - 1}):
            for target in (s - 1, s + 1):
                if used >= evals or s not in mask or not 0 < target < n - 1 or target in mask:
                    continue
                trial = (mask - {s}) | {target}
                error, nfe, candidate = measure(trial)
                if error < best_error * (1.0 - MIN_IMPROVEMENT):
                    mask, best_error, best_nfe, best_point = trial, error, nfe, candidate
                    moves += 1
                    improved = True
                    break
    logger.info("static refinement of %r: error %.4g -> %.4g in %d move(s), %d evaluation(s); computes %s",
                point.name, first_error, best_error, moves, used, sorted(mask))
    return RefinedSchedule(best_point, best_error, best_nfe, first_error, used, moves)
