"""The threshold search and the replay objective, on synthetic stores (fast)."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest

from calibration.fit import fit, fit_result_path, paper_point, uniform_point
from calibration.fitdata import load_fit_data
from calibration.replay import ReplayObjective
from calibration.search import SearchSpace, point_from_params, warm_starts
from policies import EpsSchedule, OperatingPoint, Predictor
from tests.calibration.test_fit_store import make_store


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("search") / "s.duckdb")


def _replay(db) -> ReplayObjective:
    data = load_fit_data(db)
    pos, gain = data.gain_curve()
    return ReplayObjective(data.sensitivity_table(), data.steps, data.cache_errors, gain, pos)


def test_uniform_point_reproduces_its_mask():
    # 10 steps at 0.5: compute round(linspace(0, 9, 5)) = 0, 2, 4, 7, 9 (np.round: 2.25→2, 4.5→4,
    # 6.75→7): a static schedule, and the same fraction evenly spaced at other step counts.
    point = uniform_point(0.5, 10)
    assert point.static and sorted(point.schedule.steps(10)) == [0, 2, 4, 7, 9]
    assert point.schedule.fraction(20) == 0.5 and point.schedule.fraction(50) == 0.5


def test_replay_of_full_compute_has_no_error(synth):
    result = _replay(synth).evaluate(Predictor(), OperatingPoint("all", EpsSchedule.constant(0.0)))
    assert result.nfe_fraction == 1.0 and result.error == 0.0


def test_replay_nfe_matches_the_uniform_mask(synth):
    # 12 steps at 0.5: 6 evenly spaced steps compute, in every run; replay decides with the
    # runtime's own `decide`, so the fraction is exactly 6/12.
    result = _replay(synth).evaluate(Predictor(), uniform_point(0.5, 12))
    assert result.per_run_nfe == [0.5] * len(result.per_run_nfe)


def test_replay_error_grows_as_nfe_drops(synth):
    objective = _replay(synth)
    evals = [objective.evaluate(Predictor(), uniform_point(f, 12)) for f in (1.0, 0.75, 0.5, 0.34)]
    nfe = [e.nfe_fraction for e in evals]
    err = [e.error for e in evals]
    assert nfe == sorted(nfe, reverse=True)
    assert err == sorted(err) and err[0] == 0.0 and err[-1] > err[1] > 0


def test_gain_weighting_penalises_early_skips(synth):
    # Same number of skips (one), early vs late: G(p) = 10·e^{-3p} makes the early one ~15x dearer.
    objective = _replay(synth)
    n = 12
    pos = tuple(i / (n - 1) for i in range(n))

    def skip_only(step: int) -> OperatingPoint:
        values = tuple(1e30 if i == step else 0.0 for i in range(n))
        return OperatingPoint(f"skip{step}", EpsSchedule(pos, values), max_skips=1)

    early, late = objective.evaluate(Predictor(), skip_only(2)), objective.evaluate(Predictor(), skip_only(9))
    assert early.nfe_fraction == late.nfe_fraction == pytest.approx(11 / 12)
    assert early.error > 5 * late.error


def test_warm_starts_follow_one_over_the_gain():
    space = SearchSpace(knots=8, log_lo=-10.0, log_hi=5.0, num_steps=30)
    gain = 10.0 * np.exp(-3.0 * space.positions)
    starts = warm_starts(space, typical_score=0.1, gain=gain)
    first = [starts[0][f"log_eps_{k}"] for k in range(8)]
    # ε ∝ 1/G: log ε rises linearly with p, by 3 over [0, 1].
    assert np.diff(first) == pytest.approx(np.full(7, 3.0 / 7))
    # and evenly spaced skipping is among them: ε at the top of the range, K = 1.
    assert any(all(s[f"log_eps_{k}"] == 5.0 for k in range(8)) and s["max_skips"] == 1 for s in starts)


def test_search_point_serves_any_step_count():
    space = SearchSpace(knots=8, log_lo=-5.0, log_hi=0.0, num_steps=30)
    params = {**{f"log_eps_{k}": -1.0 for k in range(8)}, "max_skips": 2, "warmup": 3, "final": 0}
    point = point_from_params(params, space)
    assert point.zones(30) == (3, 0)  # stored as the fraction 3/30
    assert point.zones(60) == (6, 0)


def _fit(db, storage, seed=0, trials=8):
    return fit(db, trials=trials, objective="replay", seed=seed, storage=str(storage), show_progress=False, plot=False)


def test_same_seed_and_store_give_the_same_points(synth, tmp_path):
    one = _fit(synth, tmp_path / "a.log")
    two = _fit(synth, tmp_path / "b.log")
    strip = lambda r: [{k: v for k, v in p.items()} for p in r["operating_points"]]  # noqa: E731
    assert strip(one) == strip(two)
    assert one["predictor"] == two["predictor"]


def test_study_resumes_and_runs_only_the_rest(synth, tmp_path):
    storage = tmp_path / "resume.log"
    _fit(synth, storage, trials=4)
    result = _fit(synth, storage, trials=6)
    assert result["trials"] == 6
    study = optuna.load_study(study_name=result["study"]["name"],
                              storage=optuna.storages.JournalStorage(
                                  optuna.storages.journal.JournalFileBackend(str(storage))))
    assert len(study.trials) == 6


def test_fit_result_has_points_references_and_a_plot(synth, tmp_path):
    result = fit(synth, trials=10, objective="replay", seed=1, storage=str(tmp_path / "p.log"), show_progress=False)
    names = [p["name"] for p in result["operating_points"]]
    assert names == ["quality", "balanced", "fast", "paper"]
    assert result["validation"] == "holdout"
    for p in result["operating_points"]:
        assert 0 < p["expected_nfe_fraction"] <= 1 and p["expected_error"] >= 0
    assert set(result["references"]["uniform"]) == {"quality", "balanced", "fast"}
    assert result["references"]["paper"]["point"] == paper_point().to_dict()
    assert json.loads(fit_result_path(synth).read_text())["format"] == "sencache-fit"
    assert fit_result_path(synth).with_suffix(".png").stat().st_size > 1000


def test_refine_scales_a_point_to_its_target(synth):
    # A flat ε far below every score computes every step (NFE 1); scaling the curve up by
    # bisection on log m must bring it to at most 0.5 + tolerance, as close to 0.5 as found.
    from calibration.fit import NFE_TOLERANCE, _refine

    objective = _replay(synth)
    point = OperatingPoint("p", EpsSchedule.constant(1e-4), max_skips=2)
    start = objective.evaluate(Predictor(), point)
    assert start.nfe_fraction == 1.0
    refined, nfe, err = _refine(objective, Predictor(), point, start.nfe_fraction, start.error, 0.5, evals=8)
    assert 0.5 - 0.1 <= nfe <= 0.5 + NFE_TOLERANCE
    assert objective.evaluate(Predictor(), refined).nfe_fraction == pytest.approx(nfe)


def test_a_point_never_ships_worse_than_evenly_spaced_skipping_on_calib(synth):
    # One front "trial" whose ε is far below every score (computes every step, NFE 1, so it cannot
    # be refined below 0.5 with 0 evaluations): the only candidate at or under the target is
    # evenly spaced skipping, which must then be chosen and say so.
    from calibration.fit import NFE_TOLERANCE, _choose_points

    objective = _replay(synth)
    space = SearchSpace(knots=8, log_lo=-12.0, log_hi=2.0, num_steps=int(load_fit_data(synth).num_steps))
    params = {f"log_eps_{k}": -12.0 for k in range(8)} | {"max_skips": 1, "warmup": 0, "final": 0}
    trial = optuna.trial.create_trial(params={}, distributions={}, values=[0.0, 1.0])
    trial.params.update(params)  # FrozenTrial.params is a plain dict
    chosen = _choose_points([trial], space, {"balanced": 0.5}, objective, Predictor(), refine_evals=0)
    (point,) = chosen
    even = objective.evaluate(Predictor(), uniform_point(0.5, space.num_steps))
    assert point["origin"] == "uniform" and point["trial"] is None
    assert point["calib"]["nfe_fraction"] == pytest.approx(even.nfe_fraction)
    assert even.nfe_fraction <= 0.5 + NFE_TOLERANCE
    assert point["calib"]["error"] == pytest.approx(even.error)


def test_a_searched_point_that_beats_uniform_is_kept(synth):
    # ε far above every score with K = 1 and no zones skips every other step (NFE ~0.5) exactly like
    # a uniform schedule, up to which steps; whichever has the lower calib error is
    # chosen, and the choice's origin matches the lower error.
    from calibration.fit import _choose_points

    objective = _replay(synth)
    n = int(load_fit_data(synth).num_steps)
    space = SearchSpace(knots=8, log_lo=-12.0, log_hi=12.0, num_steps=n)
    params = {f"log_eps_{k}": 12.0 for k in range(8)} | {"max_skips": 1, "warmup": 0, "final": 0}
    searched = objective.evaluate(Predictor(), point_from_params(params, space))
    trial = optuna.trial.create_trial(params={}, distributions={}, values=[searched.error, searched.nfe_fraction])
    trial.params.update(params)
    target = searched.nfe_fraction  # both candidates then compute at most the target
    (point,) = _choose_points([trial], space, {"balanced": target}, objective, Predictor(), refine_evals=0)
    even = objective.evaluate(Predictor(), uniform_point(target, n))
    assert even.nfe_fraction <= target
    assert point["calib"]["error"] == pytest.approx(min(searched.error, even.error))
    # a tie (the same mask) goes to uniform: the smaller claim
    assert point["origin"] == ("uniform" if even.error <= searched.error else "search")


def test_forecast_is_searched_only_when_trials_rerun_the_model():
    plain = SearchSpace(knots=8, log_lo=-3.0, log_hi=1.0, num_steps=20)
    both = SearchSpace(knots=8, log_lo=-3.0, log_hi=1.0, num_steps=20, forecasts=("none", "linear"))
    starts_plain = warm_starts(plain, 0.1, None)
    starts_both = warm_starts(both, 0.1, None)
    assert all("forecast" not in s for s in starts_plain)
    # every plain start appears twice, linear first, and the points carry the forecast
    assert len(starts_both) == 2 * len(starts_plain)
    assert [s["forecast"] for s in starts_both[:2]] == ["linear", "none"]
    assert point_from_params(starts_both[0], both).forecast == "linear"
    assert point_from_params(starts_plain[0], plain).forecast == "none"


def test_refine_keeps_the_forecast(synth):
    from dataclasses import replace

    from calibration.fit import _refine

    objective = _replay(synth)
    point = replace(OperatingPoint("p", EpsSchedule.constant(1e-4), max_skips=2), forecast="linear")
    start = objective.evaluate(Predictor(), point)
    refined, _, _ = _refine(objective, Predictor(), point, start.nfe_fraction, start.error, 0.5, evals=4)
    assert refined.forecast == "linear" and refined.max_skips == 2


def test_points_say_how_they_compare_with_uniform_on_validation(caplog):
    # error 0.02 against uniform's 0.01 on the same target: ratio 2, and a warning that names the
    # remedy; 0.005 against 0.01: ratio 0.5, no warning.
    from calibration.fit import _compare_with_uniform

    points = [{"name": "fast", "expected_error": 0.02}, {"name": "quality", "expected_error": 0.005}]
    uniform = {"fast": {"error": 0.01, "runs": 2}, "quality": {"error": 0.01, "runs": 2}}
    with caplog.at_level("WARNING", logger="calibration.fit"):
        _compare_with_uniform(points, uniform, "holdout")
    assert [p["vs_uniform"] for p in points] == [pytest.approx(2.0), pytest.approx(0.5)]
    assert len(caplog.records) == 1 and "'fast'" in caplog.text and "sencache-calibrate collect" in caplog.text
