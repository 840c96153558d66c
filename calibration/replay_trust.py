"""How far a replay fit on this store can be trusted, and what to collect when it cannot.

Replay (`calibration.replay`) estimates a candidate's final error from three things the store
must hold: each reuse mode's measured errors, the propagation gain G(p) that carries a step's
error to the final output, and enough runs for both. Without propagation rows every step weighs
the same, and the ranking of early against late skips (which is what the search decides) is a
guess: on toy-cogvideox a replay with 3 propagation points underestimated the final error 27×.
`replay_trust` states the coverage, and `fit` writes it to its result and warns, with the
`collect` command that adds what is missing, when it is thin.

Coverage is not agreement. Over random candidates replay ranks as re-runs do (ρ ≥ 0.96 on the
toys), yet it misjudges whole *kinds* of point: on toy-cogvideox's holdout runs it puts K = 1
and K = 2 "taylor" points 1.4–1.6× above their re-runs and K = 4 points at 0.7×, so a replay fit
ships long runs of skips (`benchmarks/replay_vs_rerun.py --regret`). When the model is at hand
(`fit --objective replay --validate rerun`), `replay_check` sets each chosen point's replayed
holdout error beside its re-run and `fit` warns where they part by more than `AGREEMENT`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = ["AGREEMENT", "ReplayCheck", "ReplayTrust", "replay_check", "replay_trust"]

logger = logging.getLogger(__name__)

#: replay ÷ re-run of a chosen point outside this band: replay misjudges that kind of point
AGREEMENT = (2 / 3, 3 / 2)
#: the reuse modes replay can score with their own errors
MODES = ("none", "linear", "taylor")


@dataclass(frozen=True)
class ReplayTrust:
    """A store's coverage for replay, the problems found and the command that mends them."""

    runs: int
    runs_with_propagation: int
    propagation_positions: int
    modes_measured: tuple[str, ...]
    max_lag: int
    problems: list[str] = field(default_factory=list)
    remedy: str | None = None
    #: the reuse modes with a propagation gain of their own (a skip of that mode really made)
    gain_modes: tuple[str, ...] = ()
    #: whole static schedules really run (`collect --mask-runs`): what calibrates replay's compounding
    mask_runs: int = 0

    @property
    def thin(self) -> bool:
        return bool(self.problems)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "modes_measured": list(self.modes_measured), "gain_modes": list(self.gain_modes),
                "thin": self.thin}


def replay_trust(data: Any) -> ReplayTrust:
    """The coverage of `data` (a `calibration.fitdata.FitData`) for a replay fit."""
    runs = int(data.runs["run_id"].nunique())
    prop = data.propagation
    if len(prop):
        prop = prop[np.isfinite(prop["gain"]) & (prop["gain"] > 0)]
    with_prop = int(prop["run_id"].nunique()) if len(prop) else 0
    positions = int(prop["step"].nunique()) if len(prop) else 0
    reuse = data.reuse_errors
    modes = tuple(m for m in MODES if len(reuse) and m in set(reuse["mode"].astype(str)))
    max_lag = int(data.cache_errors["lag"].max()) if len(data.cache_errors) else 0
    problems = []
    if with_prop == 0:
        problems.append("no propagation rows: every skipped step's error counts the same wherever it lies")
    # A skip between two measured positions takes an interpolated gain, and the gain moves between
    # neighbouring steps: on toy-cogvideox single "linear" skips between 8 positions replayed at
    # 0.89–1.64× their re-runs on average, ±20–60 % run by run, and replay put the anchor's
    # one-step neighbours on the wrong side of it; measured at every step it ordered 25 of 26 as
    # re-runs did (23 of 26 at 8). So every step after the first is wanted.
    elif positions < int(data.num_steps) - 1:
        problems.append(f"propagation measured at {positions} of the {int(data.num_steps) - 1} steps after the first: "
                        "a skip between them takes an interpolated gain (toy-cogvideox at 8 of 29: single skips "
                        "replayed at 0.89–1.64× their re-runs, ±20–60 % run by run)")
    if 0 < with_prop < runs / 2:
        problems.append(f"propagation measured on {with_prop} of {runs} runs")
    delta_based = _delta_gain_runs(data, set(prop["run_id"]) if len(prop) else set())
    if delta_based:
        problems.append(f"propagation of {delta_based} run(s) measured with a small perturbation, not a real skip "
                        "(a store collected before the 'cache' gain): replay then misjudges early skips (toy-cogvideox: "
                        "a skip at step 2 moved the final latents 32× more than such a gain said)")
    missing = [m for m in MODES if m not in modes]
    if missing:
        problems.append(f"no measured errors of reuse mode(s) {', '.join(missing)}: replay cannot search them")
    gain_modes = tuple(sorted(set(prop["mode"].astype(str)))) if len(prop) and "mode" in prop else \
        (("none",) if with_prop else ())
    borrowed = [m for m in modes if m != "none" and m not in gain_modes]
    if with_prop and borrowed:
        problems.append(f"no propagation gain of reuse mode(s) {', '.join(borrowed)}: replay carries their errors "
                        "with plain reuse's gain (on toy-wan a 'taylor' skip then replayed to 0.43–0.76 of its re-run)")
    masks = getattr(data, "mask_errors", None)
    mask_runs = int(len(masks)) if masks is not None else 0
    if mask_runs == 0:
        problems.append("no whole-mask re-runs: how a mask's skips compound is not calibrated (on toy-cogvideox "
                        "uncalibrated replay put masks with long runs of skips at 0.6–0.8 of their re-runs, single "
                        "skips at up to 1.7×, and a replay fit then chose long runs)")
    remedy = None
    if problems:
        steps = int(data.num_steps)
        remedy = (f"sencache-calibrate collect --model {data.model_name} --prompts <your prompts> --seeds 1 "
                  f"--steps {steps} --propagation {steps} --mask-runs 12 --db <a new store>.duckdb")
    return ReplayTrust(runs, with_prop, positions, modes, max_lag, problems, remedy, gain_modes, mask_runs)


def _delta_gain_runs(data: Any, runs_with_gain: set) -> int:
    """How many runs with propagation rows measured them with a δ (`random` or `trajectory`, or a
    store from before the direction was recorded) rather than by skipping the step."""
    from calibration.fitdata import _json

    count = 0
    for _, row in data.runs.iterrows():
        if row["run_id"] not in runs_with_gain:
            continue
        extra = _json(row.get("extra")) or {}
        if not isinstance(extra, dict) or extra.get("propagation_direction", "random") != "cache":
            count += 1
    return count


def warn_if_thin(trust: ReplayTrust, store: Any) -> None:
    """Log the coverage, and a warning with the remedy when it is thin."""
    logger.info("replay coverage of %s: %d runs, propagation on %d at %d steps (gains of %s), modes %s, lags 1..%d, "
                "%d whole masks re-run", store, trust.runs, trust.runs_with_propagation, trust.propagation_positions,
                ", ".join(trust.gain_modes) or "no mode", ", ".join(trust.modes_measured) or
                "none (plain reuse from cache_errors)", trust.max_lag, trust.mask_runs)
    if trust.thin:
        logger.warning("a replay fit on %s is not to be trusted as it stands: %s. Collect what is missing: `%s`",
                       store, "; ".join(trust.problems), trust.remedy)


@dataclass(frozen=True)
class ReplayCheck:
    """One chosen point's holdout error by replay and by re-run, and whether they agree."""

    replay_error: float
    rerun_error: float

    @property
    def ratio(self) -> float:
        return self.replay_error / self.rerun_error if self.rerun_error > 0 else float("inf")

    @property
    def agrees(self) -> bool:
        if self.rerun_error == 0:
            return self.replay_error == 0
        return AGREEMENT[0] <= self.ratio <= AGREEMENT[1]

    def to_dict(self) -> dict[str, Any]:
        ratio = self.ratio if np.isfinite(self.ratio) else None
        return {"replay_error": self.replay_error, "rerun_error": self.rerun_error, "ratio": ratio,
                "agrees": self.agrees}


def replay_check(replay: Any, predictors: Any, point: Any, rerun_error: float, store: Any) -> ReplayCheck:
    """Replay `point` on the runs `replay` holds (the holdout runs) beside its measured re-run error
    there; warns, with what to do, when the two part by more than `AGREEMENT`."""
    check = ReplayCheck(float(replay.evaluate(predictors, point).error), float(rerun_error))
    if not check.agrees:
        logger.warning(
            "%r: replay puts its holdout error at %.2fx what the re-run measures (%.4g against %.4g); "
            "replay misjudges this kind of point on %s, so a replay fit's choice between points of "
            "different K or reuse mode cannot be trusted here: where the model allows, fit with "
            "`sencache-calibrate fit --db %s --objective rerun`", point.name, check.ratio,
            check.replay_error, check.rerun_error, store, store)
    return check
