"""The threshold search: an Optuna multi-objective study over ε(p), K and the always-compute zones.

Search space (one trial = one operating point):

* ``log_eps_<k>`` for ``k < knots`` (8–16 knots evenly spaced over p ∈ [0, 1]): log ε at each
  knot, uniform in ``[log lo, log hi]``, where lo/hi bracket the fitted score's range on the
  calibration pairs (a fraction of its 1st percentile to a multiple of its 99th), so the search
  can reach both "never skip" and "always skip as far as K allows";
* ``max_skips`` K ∈ {1, …, 4};
* ``warmup`` and ``final``: always-compute steps at the start and the end, 0 … ⌈0.4·N⌉ and
  0 … ⌈0.25·N⌉ for the calibration step count N, exported as fractions of N so that the policy
  serves any step count;
* ``forecast`` ∈ {none, linear} when the objective re-runs the model (replay has measured only
  plain reuse, so it searches ``none`` alone): what a skipped step reuses.

Objectives: minimise (final-output error, fraction of steps computed). TPE (Optuna's
multi-objective TPE) seeded by ``seed``: with few trials it beats NSGA-II, whose first
generation alone would use the budget. Warm starts are enqueued before the sampler takes over:
ε(p) ∝ 1/G(p) (the measured propagation gain) at several levels, the evenly-spaced-skipping
schedules (ε above every score, K = 1, 2, 3, various warm-up zones) and a flat ε, because the
design's experiment found the error budget belongs late in the trajectory and that evenly spaced
skipping beats a flat threshold; the search starts from the strong baselines instead of
rediscovering them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna

from calibration.compute_cost import SkipCosts
from calibration.objectives import Evaluation, Objective
from policies import EpsSchedule, OperatingPoint, Predictor

__all__ = ["SearchSpace", "open_study", "optimize_study", "pareto_front", "point_from_params", "run_search", "warm_starts"]

logger = logging.getLogger(__name__)

STUDY_NAME = "sencache-fit"


@dataclass(frozen=True)
class SearchSpace:
    """Bounds of the search, derived from the calibration data."""

    knots: int
    log_lo: float
    log_hi: float
    num_steps: int
    max_k: int = 4
    forecasts: tuple[str, ...] = ("none",)
    #: what a skipped step of each mode still computes (`calibration.compute_cost`): static points
    #: of a mode whose skips cost something compute fewer steps to stay at their target compute
    skip_costs: SkipCosts = field(default_factory=SkipCosts)

    def __post_init__(self) -> None:
        if not 2 <= self.knots <= 32:
            raise ValueError(f"knots must lie in [2, 32], got {self.knots}")
        if not self.log_hi > self.log_lo:
            raise ValueError(f"empty ε range: log_lo={self.log_lo} >= log_hi={self.log_hi}")

    @property
    def positions(self) -> np.ndarray:
        return np.linspace(0.0, 1.0, self.knots)

    @property
    def max_warmup(self) -> int:
        return max(1, math.ceil(0.4 * self.num_steps))

    @property
    def max_final(self) -> int:
        return max(1, math.ceil(0.25 * self.num_steps))

    @classmethod
    def from_scores(cls, scores: np.ndarray, knots: int, num_steps: int, max_k: int = 4,
                    forecasts: tuple[str, ...] = ("none",), skip_costs: SkipCosts | None = None) -> SearchSpace:
        """Bracket the positive scores: ``[q01/10, q99·10]`` in log space."""
        s = np.asarray(scores, dtype=np.float64)
        s = s[np.isfinite(s) & (s > 0)]
        if s.size == 0:
            lo, hi = 1e-6, 1.0
        else:
            lo, hi = float(np.quantile(s, 0.01)) / 10.0, float(np.quantile(s, 0.99)) * 10.0
        if hi <= lo:
            hi = lo * 100.0
        return cls(knots, math.log(lo), math.log(hi), int(num_steps), max_k, tuple(forecasts), skip_costs or SkipCosts())

    def to_dict(self) -> dict[str, Any]:
        return {"knots": self.knots, "eps_range": [math.exp(self.log_lo), math.exp(self.log_hi)],
                "num_steps": self.num_steps, "max_k": self.max_k, "forecasts": list(self.forecasts),
                "max_warmup": self.max_warmup, "max_final": self.max_final, "skip_costs": self.skip_costs.to_dict()}

    def static_fraction(self, forecast: str, compute: float) -> float:
        """The step fraction of a static point of `forecast` that computes at most `compute`."""
        return self.skip_costs.static_steps(forecast, compute, self.num_steps) / self.num_steps


def _suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for k in range(space.knots):
        params[f"log_eps_{k}"] = trial.suggest_float(f"log_eps_{k}", space.log_lo, space.log_hi)
    params["max_skips"] = trial.suggest_int("max_skips", 1, space.max_k)
    params["warmup"] = trial.suggest_int("warmup", 0, space.max_warmup)
    params["final"] = trial.suggest_int("final", 0, space.max_final)
    if len(space.forecasts) > 1:
        params["forecast"] = trial.suggest_categorical("forecast", list(space.forecasts))
    return params


def _zone(count: int, num_steps: int) -> int | float:
    """A count of steps as the fraction of N the policy format stores (serves any N)."""
    return 0 if count <= 0 else count / num_steps


def point_from_params(params: dict[str, Any], space: SearchSpace, name: str = "candidate") -> OperatingPoint:
    values = [math.exp(float(params[f"log_eps_{k}"])) for k in range(space.knots)]
    return OperatingPoint(
        name=name,
        eps=EpsSchedule(tuple(float(p) for p in space.positions), tuple(values)),
        max_skips=int(params["max_skips"]),
        warmup_steps=_zone(int(params["warmup"]), space.num_steps),
        final_steps=_zone(int(params["final"]), space.num_steps),
        forecast=str(params.get("forecast", space.forecasts[0])),
    )


def _clip(x: float, space: SearchSpace) -> float:
    return float(min(max(x, space.log_lo), space.log_hi))


def warm_starts(space: SearchSpace, typical_score: float, gain: np.ndarray | None,
                paper_levels: tuple[float, float] | None = None) -> list[dict[str, Any]]:
    """Enqueued first trials, most informative first (a small budget takes them in order).

    `gain`: the propagation gain G at the knot positions (None when not measured: a late-loose
    ramp stands in for 1/G). `typical_score`: the median fitted score at lag 1. `paper_levels`:
    the paper's two ε levels in the fitted score's units (strict for p <= 0.2, loose after).
    """
    pos = space.positions
    if gain is not None and np.all(np.isfinite(gain)) and np.all(gain > 0):
        shape = np.log(np.median(gain) / np.asarray(gain, dtype=np.float64))
    else:
        shape = 3.0 * (pos - 0.5)  # ε grows ×20 from start to end: errors early propagate
    base = math.log(max(typical_score, 1e-12))
    out: list[dict[str, Any]] = []

    def add(log_eps: np.ndarray, k: int, warmup: int, final: int) -> None:
        params = {f"log_eps_{i}": _clip(float(v), space) for i, v in enumerate(log_eps)}
        params.update(max_skips=min(k, space.max_k), warmup=min(warmup, space.max_warmup),
                      final=min(final, space.max_final))
        # each start with every forecast, the last one of `forecasts` first (linear, when searched:
        # at the same mask it measured closer to full compute on every toy)
        for forecast in reversed(space.forecasts):
            candidate = dict(params, forecast=forecast) if len(space.forecasts) > 1 else params
            if candidate not in out:
                out.append(candidate)

    top = np.full(space.knots, space.log_hi)
    n = space.num_steps
    w = max(1, round(0.1 * n))
    # 1/G-shaped thresholds at a spread of levels (the design's winning shape).
    for level in (0.0, 1.0, -1.0, 2.0):
        add(base + level + shape, 3, w, 1)
    # Evenly spaced skipping: ε above every score, K fixes the stride; warm-up sets the NFE.
    add(top, 1, w, 1)
    add(top, 2, w, 1)
    add(top, 1, round(0.4 * n), 1)
    add(top, 3, w, 1)
    for level in (0.5, -0.5, 1.5):
        add(base + level + shape, 2, w, 1)
    if paper_levels is not None:  # the paper's two-level shape, K = 3
        early, late = (math.log(max(v, 1e-300)) for v in paper_levels)
        add(np.where(pos <= 0.2, early, late), 3, 0, 0)
    # A flat ε (the design's losing baseline: kept so the front shows it).
    add(np.full(space.knots, base), 3, 0, 0)
    return out


def open_study(storage: str | optuna.storages.BaseStorage | None, seed: int, study_name: str = STUDY_NAME,
               n_startup: int = 10) -> optuna.Study:
    """Create or resume the study; seeded TPE so a single-worker fit is reproducible."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per trial is noise; the bar shows progress
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup, multivariate=True,
                                         constant_liar=True)
    return optuna.create_study(
        study_name=study_name,
        storage=storage,
        directions=["minimize", "minimize"],
        sampler=sampler,
        load_if_exists=True,
    )


def optimize_study(study: optuna.Study, trials: int, starts: list[dict[str, Any]],
                   evaluate: Callable[[optuna.Trial], tuple[float, float]], what: str,
                   show_progress: bool = True) -> optuna.Study:
    """Run `evaluate` until the study holds `trials` finished trials (a resumed study runs only the rest).

    A new study first enqueues up to half its trials from `starts` (the warm starts); `what`
    names the search in the log line.
    """
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not study.trials:
        for params in starts[: max(1, trials // 2)]:
            study.enqueue_trial(params, skip_if_exists=True)
    remaining = trials - len(done)
    if remaining <= 0:
        logger.info("study %r already holds %d finished trials: nothing to run", study.study_name, len(done))
        return study
    logger.info("search: %d trial(s) to run (%s), study %r", remaining, what, study.study_name)
    study.optimize(evaluate, n_trials=remaining, show_progress_bar=show_progress, gc_after_trial=False)
    return study


def run_search(
    study: optuna.Study,
    objective: Objective,
    predictor: Predictor,
    space: SearchSpace,
    trials: int,
    starts: list[dict[str, Any]],
    show_progress: bool = True,
) -> optuna.Study:
    """The knot search: each trial's ε knots, K, zones and forecast, scored by `objective`."""

    def evaluate(trial: optuna.Trial) -> tuple[float, float]:
        params = _suggest(trial, space)
        result: Evaluation = objective.evaluate(predictor, point_from_params(params, space))
        trial.set_user_attr("per_run_error_std", float(np.std(result.per_run_error)) if result.per_run_error else 0.0)
        return result.error, result.nfe_fraction

    return optimize_study(study, trials, starts, evaluate, f"{objective.kind} objective", show_progress)


def pareto_front(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The non-dominated finished trials, by fraction of steps computed (ascending)."""
    return sorted(study.best_trials, key=lambda t: (t.values[1], t.values[0]))
