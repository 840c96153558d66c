"""The smooth search: ε(p) from a few parameters, its level bisected to a target compute per trial.

Why not one free log ε per knot: with 12 independent knots over the scores' whole range most
draws lie above every score, and with 20–40 trials the sampler lands on schedules ("warm-up,
then skip K of every K+1"), not on score-driven points. Here a trial is

    log ε(p) = level + tilt·(p − ½) + bump·exp(−((p − bump_at)/0.2)²)

with `tilt`, `bump` and `bump_at` drawn, and `level` **bisected** (on the replay of the stored
calibration trajectories: no model run) so the point computes about the trial's drawn `target`
fraction of the steps. Every trial is score-driven and trials are comparable at matched compute;
the sampler explores the shape, K, the zones and the reuse mode, and the target spreads them over
the front's range.

A trial may instead be a **static schedule** (``kind = "static"``): the same three shape
parameters give a compute density ∝ exp(−shape(p)) (loose where ε would be high), and the
schedule computes ``round(target·N)`` steps at its quantiles — so the search looks for the best
static schedule too (dense where errors hurt, sparse where they do not), and every score-driven
point has a static twin from the same search and reuse mode.

Each trial keeps the operating point it evaluated (user attribute ``point``) so the choice of
points rebuilds exactly what was measured.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import numpy as np
import optuna

from calibration.objectives import Objective
from calibration.search import SearchSpace, _zone, optimize_study
from policies import EpsSchedule, OperatingPoint, StaticSchedule

__all__ = ["KINDS", "NFE_RANGE", "SHAPE_RANGES", "bisect", "bisect_level", "mask_shaped_point", "run_shape_search",
           "shape_point", "shape_schedule", "shape_warm_starts", "static_from_shape", "trial_point"]

logger = logging.getLogger(__name__)

KINDS = ("score", "static")
#: the compute fractions a trial's target is drawn from (the front's useful range)
NFE_RANGE = (0.3, 0.85)
#: the ranges a trial's shape parameters are drawn from
SHAPE_RANGES: dict[str, tuple[float, float]] = {"tilt": (-4.0, 4.0), "bump": (-4.0, 4.0), "bump_at": (0.1, 0.9)}
_BUMP_WIDTH = 0.2


def _shape(params: dict[str, Any], p: np.ndarray) -> np.ndarray:
    return (float(params["tilt"]) * (p - 0.5)
            + float(params["bump"]) * np.exp(-(((p - float(params["bump_at"])) / _BUMP_WIDTH) ** 2)))


def shape_point(params: dict[str, Any], space: SearchSpace, level: float, name: str = "candidate") -> OperatingPoint:
    """The score-driven point of `params` at log-ε `level`."""
    pos = space.positions
    values = np.exp(np.clip(level + _shape(params, pos), -700.0, 700.0))
    return OperatingPoint(
        name=name,
        eps=EpsSchedule(tuple(float(p) for p in pos), tuple(float(v) for v in values)),
        max_skips=int(params["max_skips"]),
        warmup_steps=_zone(int(params["warmup"]), space.num_steps),
        final_steps=_zone(int(params["final"]), space.num_steps),
        forecast=str(params.get("forecast", space.forecasts[0])),
    )


def static_from_shape(params: dict[str, Any], space: SearchSpace, target: float, name: str = "candidate") -> OperatingPoint:
    """The static point of `params`: ``round(target·N)`` computes at the quantiles of the density
    ∝ exp(−shape(p)), keeping `target` as its fraction at every step count."""
    n = space.num_steps
    forecast = str(params.get("forecast", space.forecasts[0]))
    m = space.skip_costs.static_steps(forecast, target, n) if space.skip_costs.of(forecast) else \
        int(min(n, max(2, round(float(target) * n))))
    return OperatingPoint(name=name, schedule=shape_schedule(params, m, n), forecast=forecast)


def shape_schedule(params: dict[str, Any], computed: int, num_steps: int) -> StaticSchedule:
    """`computed` of `num_steps` steps at the quantiles of the density ∝ exp(−shape(p)) of `params`
    (``tilt``, ``bump``, ``bump_at``): the search's static candidates, and `collect`'s calibration
    masks (`calibration.mask_runs`), which must look like them."""
    grid = np.linspace(0.0, 1.0, 1001)
    density = np.exp(-np.clip(_shape(params, grid), -50.0, 50.0))
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(grid))])
    cdf /= cdf[-1]
    positions = np.interp(np.linspace(0.0, 1.0, computed), cdf, grid)
    return StaticSchedule(tuple(float(p) for p in positions), computed / num_steps)


def bisect_level(params: dict[str, Any], space: SearchSpace, nfe_of: Callable[[OperatingPoint], float],
                 target: float, evals: int = 8) -> float:
    """The log-ε level at which `params`' point computes closest to `target` (NFE falls as the level
    rises); bisection over the space's ε range, `evals` evaluations of `nfe_of`."""
    return bisect(lambda level: shape_point(params, space, level), space, nfe_of, target, evals)


def mask_shaped_point(static: OperatingPoint, space: SearchSpace, level: float, name: str | None = None) -> OperatingPoint:
    """A score-driven point that follows a static schedule's density: log ε at step i is `level`
    plus log(L − ½), L the length of the schedule's gap that holds i (1 where the schedule
    computes two steps in a row, so ε there sits below one lag's score), K the longest run of
    skips the schedule makes. The score then moves the schedule's skips per sample, where it says
    a sample can afford them, instead of putting them at the same steps for every sample."""
    n = space.num_steps
    steps = sorted(static.schedule.steps(n))
    gaps = np.ones(n)
    for a, b in zip(steps[:-1], steps[1:]):
        gaps[a:b] = b - a
    gaps[-1] = gaps[-2] if n > 1 else 1.0
    values = np.exp(np.clip(level + np.log(gaps - 0.5), -700.0, 700.0))
    return OperatingPoint(
        name=name or static.name,
        eps=EpsSchedule(tuple(i / max(n - 1, 1) for i in range(n)), tuple(float(v) for v in values)),
        max_skips=int(max(1, int(gaps.max()) - 1)),
        forecast=static.forecast,
    )


def bisect(point_at: Callable[[float], OperatingPoint], space: SearchSpace, nfe_of: Callable[[OperatingPoint], float],
           target: float, evals: int = 8) -> float:
    """The log-ε level at which `point_at(level)` computes closest to `target` (NFE falls as the
    level rises); bisection over the space's ε range, `evals` evaluations of `nfe_of`."""
    lo, hi = space.log_lo, space.log_hi
    best_level, best_gap = hi, math.inf
    for _ in range(max(1, evals)):
        mid = 0.5 * (lo + hi)
        nfe = float(nfe_of(point_at(mid)))
        if abs(nfe - target) < best_gap:
            best_level, best_gap = mid, abs(nfe - target)
        if nfe > target:
            lo = mid  # computes too much: loosen
        else:
            hi = mid
    return best_level


def _suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    # Every parameter in every trial (a static trial ignores K and the zones): a fixed space
    # keeps the multivariate sampler on one joint model.
    params: dict[str, Any] = {
        "kind": trial.suggest_categorical("kind", list(KINDS)),
        "target": trial.suggest_float("target", *NFE_RANGE),
        **{name: trial.suggest_float(name, *SHAPE_RANGES[name]) for name in ("tilt", "bump", "bump_at")},
        "max_skips": trial.suggest_int("max_skips", 1, space.max_k),
        "warmup": trial.suggest_int("warmup", 0, space.max_warmup),
        "final": trial.suggest_int("final", 0, space.max_final),
    }
    if len(space.forecasts) > 1:
        params["forecast"] = trial.suggest_categorical("forecast", list(space.forecasts))
    return params


def shape_warm_starts(space: SearchSpace, targets: tuple[float, ...] = (0.7, 0.5, 0.4)) -> list[dict[str, Any]]:
    """First trials, most promising first: each shape at every target before the next shape, with
    the last forecast of `space.forecasts` (the module forecast, when searched) before the others.

    A study enqueues only the first half of its trials from here, so the order decides what is
    tried: evenly spaced, then TaylorSeer's pattern as a score-driven point (a dense warm-up,
    then at most one skip in a row above 0.45 of the compute and two below it: the level, bisected
    to the target, lets the K cap decide), then the probe's shapes.
    """
    w = max(1, round(0.1 * space.num_steps))
    dense_warmup = min(3, space.max_warmup)
    shapes = [
        ("static", 0.0, 0.0, 0.5, 1, 0, 0),   # evenly spaced
        ("score", 0.0, 0.0, 0.5, None, dense_warmup, 0),  # TaylorSeer's pattern: warm-up, then the K cap
        ("score", 0.0, 2.0, 0.5, 2, 1, 0),    # loose mid-way, strict at both ends
        ("static", 0.0, 2.0, 0.5, 1, 0, 0),   # sparse mid-way, dense at both ends
        ("score", 0.0, 0.0, 0.5, 2, 1, 0),    # flat ε
        ("static", -2.0, 0.0, 0.5, 1, 0, 0),  # dense at the end
        ("score", 3.0, 0.0, 0.5, 3, w, 1),    # late-loose ramp (1/G-like)
    ]
    out: list[dict[str, Any]] = []
    for forecasts in ((space.forecasts[-1],), tuple(reversed(space.forecasts[:-1]))):
        for kind, tilt, bump, at, k, warmup, final in shapes:
            for target in targets:
                skips = k if k is not None else (1 if target >= 0.45 else 2)
                params = {"kind": kind, "target": float(min(max(target, NFE_RANGE[0]), NFE_RANGE[1])), "tilt": tilt,
                          "bump": bump, "bump_at": at, "max_skips": min(skips, space.max_k),
                          "warmup": min(warmup, space.max_warmup), "final": min(final, space.max_final)}
                for forecast in forecasts:
                    candidate = dict(params, forecast=forecast) if len(space.forecasts) > 1 else params
                    if candidate not in out:
                        out.append(candidate)
    return out


def trial_point(trial: optuna.trial.FrozenTrial, name: str) -> OperatingPoint:
    """The operating point a finished trial evaluated, renamed."""
    data = dict(json.loads(trial.user_attrs["point"]), name=name)
    return OperatingPoint.from_dict(data)


def run_shape_search(
    study: optuna.Study,
    objective: Objective,
    predictors: Any,
    space: SearchSpace,
    trials: int,
    starts: list[dict[str, Any]],
    nfe_of: Callable[[OperatingPoint], float],
    show_progress: bool = True,
    level_evals: int = 8,
) -> optuna.Study:
    """The smooth search: ε shapes with their level bisected to each trial's target, and static schedules."""

    def evaluate(trial: optuna.Trial) -> tuple[float, float]:
        params = _suggest(trial, space)
        if params["kind"] == "static":
            point = static_from_shape(params, space, params["target"])
        else:
            point = shape_point(params, space, bisect_level(params, space, nfe_of, params["target"], level_evals))
        result = objective.evaluate(predictors, point)
        trial.set_user_attr("point", json.dumps(point.to_dict()))
        trial.set_user_attr("kind", params["kind"])
        trial.set_user_attr("per_run_error_std", float(np.std(result.per_run_error)) if result.per_run_error else 0.0)
        return result.error, result.nfe_fraction

    return optimize_study(study, trials, starts, evaluate,
                          f"{objective.kind} objective, smooth ε shapes + static schedules", show_progress)


@dataclass(frozen=True)
class Twin:
    """A chosen point's static twin and the paired holdout difference (point − twin, per run).

    `gain_db` is what the score adds in the bench's own unit: the mean over the holdout runs of
    20·log10(twin's error ÷ point's error), the PSNR a sample gains from the score (> 0: the point
    is closer to full compute). `fit` ships the point score-driven only when it exceeds the fit's
    `twin_margin_db`.
    """

    point: OperatingPoint
    origin: str
    mean_difference: float
    standard_error: float
    runs: int
    gain_db: float = 0.0
    gain_db_standard_error: float = float("nan")

    @classmethod
    def paired(cls, twin: OperatingPoint, origin: str, point_errors: Any, twin_errors: Any) -> Twin:
        """The twin, paired run by run with the point: the mean error difference and its standard
        error (NaN for one run), and the dB the point gains (`paired_gain_db`)."""
        diff = np.asarray(point_errors, dtype=np.float64) - np.asarray(twin_errors, dtype=np.float64)
        se = float(np.std(diff, ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else float("nan")
        gain = paired_gain_db(point_errors, twin_errors)
        return cls(twin, origin, float(np.mean(diff)), se, int(len(diff)), gain.mean_db, gain.standard_error_db)

    def to_dict(self) -> dict[str, Any]:
        # one holdout run has no standard error: null in the JSON (NaN is not JSON)
        se = self.standard_error if math.isfinite(self.standard_error) else None
        gain_se = self.gain_db_standard_error if math.isfinite(self.gain_db_standard_error) else None
        return {"point": self.point.to_dict(), "origin": self.origin, "paired_difference": self.mean_difference,
                "standard_error": se, "runs": self.runs, "gain_db": self.gain_db, "gain_db_standard_error": gain_se}


class PairedGain(NamedTuple):
    """The dB a point gains over another, paired run by run."""

    mean_db: float
    standard_error_db: float


def paired_gain_db(point_errors: Any, twin_errors: Any) -> PairedGain:
    """Mean and standard error over runs of 20·log10(twin ÷ point): the dB the point gains.

    A run where both are exact gains nothing; an exact side is floored at 1e-12 so the gain
    stays finite.
    """
    point = np.maximum(np.asarray(point_errors, dtype=np.float64), 1e-12)
    twin = np.maximum(np.asarray(twin_errors, dtype=np.float64), 1e-12)
    gains = 20.0 * np.log10(twin / point)
    se = float(np.std(gains, ddof=1) / math.sqrt(len(gains))) if len(gains) > 1 else float("nan")
    return PairedGain(float(np.mean(gains)), se)


def _with_fraction(point: OperatingPoint, target: float, name: str, space: SearchSpace | None = None) -> OperatingPoint:
    """A static point's shape at another compute fraction (fewer steps where its mode's skips cost
    something: `space.skip_costs`)."""
    if space is not None and space.skip_costs.of(point.forecast):
        target = space.static_fraction(point.forecast, target)
    return replace(point, name=name, schedule=StaticSchedule(point.schedule.compute_at, float(target)),
                   expected_nfe_fraction=None, expected_error=None, expected_nfe_by_steps=None)


#: ε "above every score": with it only the zones and the skip cap decide a step
_ABOVE_EVERY_SCORE = 1e30


def score_moves_masks(objective: Any, predictors: Any, point: OperatingPoint) -> bool:
    """Whether the score moves any step of score-driven `point` on `objective`'s runs (an
    objective with `masks`, the replay of stored trajectories): its masks against those of the
    same zones and skip cap with ε above every score. A point whose steps the zones and the cap
    alone decide is a schedule in effect, and what it gains over its static twin is its mask's,
    not the score's: toy-ltx's `balanced` fitted on 14 calibration prompts computed 8 warm-up
    steps and then every third step, the last ones skipped, the same mask for every sample, and
    beat its twin (that mask with the last step computed, as a static schedule always does) by
    1.4 dB on the holdout runs."""
    capped = replace(point, eps=EpsSchedule(point.eps.positions, tuple(_ABOVE_EVERY_SCORE for _ in point.eps.values)),
                     expected_nfe_fraction=None, expected_error=None)
    return objective.masks(predictors, point) != objective.masks(predictors, capped)


def static_twin(study: optuna.Study, point: OperatingPoint, target: float, space: SearchSpace,
                calib: Objective, holdout: Objective, predictors: Any, measured: Any,
                candidates: int = 3, extra: list[tuple[str, OperatingPoint]] = ()) -> Twin:
    """The best static schedule of the same search and reuse mode at `target`, and the paired
    holdout difference `point` − twin (per run; > 0: the twin is closer to full compute).

    Candidates: evenly spaced, the `candidates` static trials of the same forecast whose own
    target lay nearest, each rebuilt at `target`, and `extra` (origin, point) pairs of that
    forecast (the refined static schedule, `calibration.static_refine`), each measured on the
    calibration runs; the best there that computes no more steps than `point` does on the holdout
    runs (within half a step) is the twin. `measured` is `point`'s holdout `Evaluation` (its per-run errors pair with
    the twin's: the same runs in the same order).
    """
    from policies.schedule import evenly_spaced

    name = f"{point.name}-static"
    even = space.static_fraction(point.forecast, target) if space.skip_costs.of(point.forecast) else target
    options = [("uniform", OperatingPoint(name, schedule=evenly_spaced(even, space.num_steps),
                                          forecast=point.forecast))]
    static = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE
              and t.user_attrs.get("kind") == "static" and "point" in t.user_attrs]
    static = [t for t in static if trial_point(t, name).forecast == point.forecast]
    static.sort(key=lambda t: (abs(float(t.params.get("target", t.values[1])) - target), t.values[0]))
    for t in static[:candidates]:
        options.append((f"search (trial {t.number})", _with_fraction(trial_point(t, name), target, name, space)))
    options += [(origin, replace(p, name=name)) for origin, p in extra if p.static and p.forecast == point.forecast]
    # the same compute: a schedule that computes more steps than the point does on the holdout runs
    # is no twin (a point averaging 21 of 30 steps whose most common mask computes 23 was displaced
    # by that mask, and shipped at 0.77 for a 0.7 target)
    most = measured.nfe_fraction * space.num_steps + 0.5
    options = [(origin, p) for origin, p in options if p.schedule.count(space.num_steps) <= most] or options[:1]
    scored = [(calib.evaluate(predictors, p).error, i, origin, p) for i, (origin, p) in enumerate(options)]
    _, _, origin, twin = min(scored, key=lambda s: s[:2])
    twin_holdout = holdout.evaluate(predictors, twin)
    twin = OperatingPoint.from_dict({**twin.to_dict(), "expected_nfe_fraction": max(twin_holdout.nfe_fraction, 1e-6),
                                     "expected_error": twin_holdout.error})
    return Twin.paired(twin, origin, measured.per_run_error, twin_holdout.per_run_error)
