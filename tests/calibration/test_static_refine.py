"""Moving a static schedule's computed steps while the error falls (`calibration.static_refine`)."""

from __future__ import annotations

import pytest

from calibration.objectives import Evaluation
from calibration.static_refine import mask_schedule, refine_static
from policies import OperatingPoint, evenly_spaced

N = 30
#: the mask the toy-wan probe found best at 15 of 30 steps: dense at both ends, sparse mid-way
BEST = (0, 2, 4, 7, 10, 13, 15, 17, 20, 22, 24, 25, 27, 28, 29)


class MaskObjective:
    """Error = 1 + Σ |i-th computed step − i-th step of BEST|: one move toward BEST lowers it by 1."""

    kind = "mask"

    def __init__(self) -> None:
        self.calls = 0

    def evaluate(self, predictors, point: OperatingPoint) -> Evaluation:
        self.calls += 1
        steps = sorted(point.schedule.steps(N))
        assert len(steps) == len(BEST)
        error = 1.0 + sum(abs(a - b) for a, b in zip(steps, BEST))
        return Evaluation(error, len(steps) / N, [error], [len(steps) / N])


def test_a_mask_schedule_computes_exactly_its_steps_and_keeps_its_fraction():
    schedule = mask_schedule(set(BEST), N)
    assert sorted(schedule.steps(N)) == list(BEST)
    assert schedule.fraction(N) == pytest.approx(0.5)
    assert schedule.fraction(50) == pytest.approx(0.5)  # the same shape, resampled at another N


def test_refinement_walks_an_evenly_spaced_schedule_to_the_best_mask_within_its_budget():
    start = OperatingPoint("balanced", schedule=evenly_spaced(0.5, N), forecast="taylor")
    objective = MaskObjective()
    found = refine_static(objective, None, start, N, evals=400)
    assert sorted(found.point.schedule.steps(N)) == list(BEST)
    assert found.error == 1.0 and found.start_error > found.error and found.moves > 0
    assert found.point.forecast == "taylor" and found.point.name == "balanced"
    assert found.evaluations == objective.calls <= 400
    # a small budget stops early, and what it returns is never worse than where it started
    small = refine_static(MaskObjective(), None, start, N, evals=5)
    assert small.evaluations <= 5 and small.error <= small.start_error


def test_refinement_refuses_a_score_driven_point():
    from policies import EpsSchedule

    point = OperatingPoint("s", EpsSchedule((0.0, 1.0), (1.0, 1.0)))
    with pytest.raises(ValueError, match="score-driven"):
        refine_static(MaskObjective(), None, point, N)


def test_a_mask_shaped_point_is_strict_where_the_mask_is_dense_and_allows_its_longest_skip_run():
    from calibration.search import SearchSpace
    from calibration.shapes import mask_shaped_point

    space = SearchSpace(knots=12, log_lo=-10.0, log_hi=5.0, num_steps=N)
    static = OperatingPoint("balanced", schedule=mask_schedule(set(BEST), N), forecast="taylor")
    point = mask_shaped_point(static, space, 0.0)
    eps = dict(zip((round(p * (N - 1)) for p in point.eps.positions), point.eps.values))
    assert eps[27] == pytest.approx(0.5) and eps[28] == pytest.approx(0.5)  # 27, 28, 29 computed in a row
    assert eps[7] == pytest.approx(2.5) and eps[8] == pytest.approx(2.5)    # 7 → 10: a gap of 3
    assert eps[0] == pytest.approx(1.5)                                     # 0 → 2
    assert point.max_skips == 2 and point.forecast == "taylor" and not point.static
    # on a flat score s the rule skips where ε ≥ the score: a higher level skips more
    assert mask_shaped_point(static, space, 1.0).eps.values[7] > point.eps.values[7]
