"""Replay scores a point with its own reuse mode's errors, compounds them as stated, and says when
its store is too thin to trust."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from calibration.fitdata import load_fit_data
from calibration.replay import ReplayObjective, compound, tail_exponent
from calibration.replay_trust import replay_trust
from policies import OperatingPoint, Predictor, evenly_spaced

PREDICTOR = Predictor(1.0, 1.0, 0.0)
from tests.calibration.test_fit_store import make_store


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return load_fit_data(make_store(tmp_path_factory.mktemp("replay") / "r.duckdb", runs=4, holdout=2))


def _replay(data, cache_errors=None, reuse=None, **kw) -> ReplayObjective:
    cache_errors = data.cache_errors if cache_errors is None else cache_errors
    reuse = data.reuse_errors if reuse is None else reuse
    return ReplayObjective(data.sensitivity_table(), data.steps, cache_errors, reuse_errors=reuse, **kw)


def _even(forecast: str = "none") -> OperatingPoint:
    return OperatingPoint("p", schedule=evenly_spaced(0.5, 12), forecast=forecast)


def test_runs_whose_measured_errors_are_zero_replay_to_zero_error(data):
    zero_cache = data.cache_errors.assign(residual_error=0.0)
    zero_reuse = data.reuse_errors.assign(error=0.0)
    for rule in ("segments", "linear", "quadrature"):
        replay = _replay(data, zero_cache, zero_reuse, compounding=rule)
        for forecast in ("none", "linear"):
            result = replay.evaluate(PREDICTOR, _even(forecast))
            assert result.error == 0.0 and result.nfe_fraction == pytest.approx(0.5)


def test_a_linear_point_is_scored_with_the_linear_errors(data):
    # Fails when replay scores every mode with the plain-reuse errors (as it used to).
    replay = _replay(data)
    plain = replay.evaluate(PREDICTOR, _even("none")).error
    linear = replay.evaluate(PREDICTOR, _even("linear")).error
    assert linear != pytest.approx(plain)
    scaled = _replay(data, reuse=data.reuse_errors.assign(
        error=np.where(data.reuse_errors["mode"] == "linear", 2 * data.reuse_errors["error"], data.reuse_errors["error"])))
    assert scaled.evaluate(PREDICTOR, _even("linear")).error == pytest.approx(2 * linear)
    assert scaled.evaluate(PREDICTOR, _even("none")).error == pytest.approx(plain)


def test_compounding_adds_within_a_reference_and_in_quadrature_across():
    contributions = np.array([[0.0, 1.0, 1.0, 0.0, 2.0]])
    segment = np.array([[0, 0, 0, 3, 3]])  # steps 1, 2 reuse step 0; step 4 reuses step 3
    assert compound(contributions, segment, "segments")[0] == pytest.approx(np.hypot(2.0, 2.0))
    assert compound(contributions, segment, "linear")[0] == pytest.approx(4.0)
    assert compound(contributions, segment, "quadrature")[0] == pytest.approx(np.sqrt(6.0))
    with pytest.raises(ValueError, match="compounding"):
        compound(contributions, segment, "cubic")


def test_a_runs_own_propagation_gain_weighs_its_steps(data):
    run = sorted(data.steps["run_id"].unique())[0]
    flat = _replay(data)
    gains = pd.DataFrame({"run_id": [run, run], "step": [0, 11], "gain": [3.0, 3.0]})
    weighted = _replay(data, run_gains=gains)
    a, b = flat.evaluate(PREDICTOR, _even()), weighted.evaluate(PREDICTOR, _even())
    index = [r for g in flat.groups for r in g.run_ids].index(run)
    assert b.per_run_error[index] == pytest.approx(3 * a.per_run_error[index])
    others = [i for i in range(len(a.per_run_error)) if i != index]
    assert [b.per_run_error[i] for i in others] == pytest.approx([a.per_run_error[i] for i in others])


def test_a_store_without_propagation_rows_warns_with_the_command_that_adds_them(data, tmp_path, caplog):
    from calibration.fit import fit

    covered = replay_trust(data)
    assert covered.runs_with_propagation == 6 and covered.propagation_positions == 12
    assert not any("propagation" in p for p in covered.problems)
    db = make_store(tmp_path / "thin.duckdb", runs=4, holdout=2, propagation=False)
    trust = replay_trust(load_fit_data(db))
    assert trust.runs_with_propagation == 0 and trust.thin
    assert "--propagation" in trust.remedy and "collect" in trust.remedy
    with caplog.at_level(logging.WARNING):
        result = fit(db, trials=2, objective="replay", show_progress=False, plot=False)
    warned = [r.getMessage() for r in caplog.records if "not to be trusted" in r.getMessage()]
    assert warned and "--propagation 12" in warned[0] and "no propagation rows" in warned[0]
    assert result["replay_trust"]["thin"] is True
    assert result["search_space"]["forecasts"] == ["none", "linear"]  # the modes the store measured


def test_a_store_whose_gains_came_from_a_small_perturbation_warns(tmp_path):
    # Fails when trust ignores how G was measured (a δ-based gain missed a real skip 32×).
    db = make_store(tmp_path / "delta.duckdb", runs=4, holdout=2, propagation_direction="random")
    trust = replay_trust(load_fit_data(db))
    assert trust.thin and any("small perturbation" in p and "6 run(s)" in p for p in trust.problems)
    assert "--propagation 12" in trust.remedy


def test_a_store_with_propagation_at_only_some_steps_warns_with_every_step(data):
    # Fails when 6 positions count as enough (the earlier rule): between measured positions a
    # skip takes an interpolated gain, which put toy-cogvideox's single skips at 0.89–1.64×.
    from dataclasses import replace

    every = replay_trust(data)
    assert every.propagation_positions == 12 and not any("interpolated" in p for p in every.problems)
    prop = data.propagation
    sparse = replay_trust(replace(data, propagation=prop[prop["step"].isin([1, 3, 5, 7, 9, 11])]))
    assert sparse.propagation_positions == 6 and sparse.thin
    assert any("at 6 of the 11 steps after the first" in p and "interpolated" in p for p in sparse.problems)
    assert "--propagation 12" in sparse.remedy


def test_a_forecast_point_is_carried_by_its_own_modes_gain(data, tmp_path):
    # Fails when every mode is carried by plain reuse's gain (schema 2): the synthetic linear gain
    # is twice plain reuse's at every step, so the linear point's replayed error doubles.
    own = _replay(data, run_gains=data.propagation, compounding="linear")
    plain_gains = data.propagation[data.propagation["mode"] == "none"]
    borrowed = _replay(data, run_gains=plain_gains, compounding="linear")
    linear = own.evaluate(PREDICTOR, _even("linear")).error
    assert linear == pytest.approx(2.0 * borrowed.evaluate(PREDICTOR, _even("linear")).error, rel=1e-9)
    assert own.evaluate(PREDICTOR, _even()).error == pytest.approx(borrowed.evaluate(PREDICTOR, _even()).error)
    # and a store that lacks a measured mode's gain says so, with the command that measures it
    db = make_store(tmp_path / "plain-gain.duckdb", runs=4, holdout=2, gain_modes=("none",))
    trust = replay_trust(load_fit_data(db))
    assert trust.gain_modes == ("none",) and trust.thin
    assert any("no propagation gain of reuse mode(s) linear" in p for p in trust.problems)
    assert "--propagation 12" in trust.remedy
    assert replay_trust(data).gain_modes == ("linear", "none")


def test_a_static_gap_past_the_stores_largest_lag_still_costs_error(data):
    # Fails when replay counts a skip beyond the measured lags as free (NaN → 0).
    top = int(data.cache_errors["lag"].max())
    only_top = data.cache_errors.assign(residual_error=np.where(data.cache_errors["lag"] == top, 1.0, 0.0))
    replay = _replay(data, only_top, data.reuse_errors.iloc[0:0], compounding="linear")
    long_gap = OperatingPoint("gap", schedule=evenly_spaced(0.1, 12))  # steps 0 and 11: lags 1..10, K = 4
    # lag K costs 1; lags K+1..10 cost lag/K each when extrapolated
    expected = 1.0 + sum(k / top for k in range(top + 1, 11))
    assert replay.evaluate(PREDICTOR, long_gap).error == pytest.approx(expected)


def test_a_gap_past_the_largest_lag_grows_as_the_measured_errors_grow():
    # Fails when the extrapolation is linear whatever the store shows (toy-wan's forecasts grow
    # with exponent 1.4 at the largest lags, and growing them linearly ranked static points low).
    store = load_fit_data(make_store(Path(tempfile.mkdtemp()) / "q.duckdb", runs=2, holdout=0))
    top = int(store.cache_errors["lag"].max())
    quadratic = store.cache_errors.assign(residual_error=store.cache_errors["lag"].astype(float) ** 2)
    replay = _replay(store, quadratic, store.reuse_errors.iloc[0:0], compounding="linear")
    assert replay.tail_exponents["none"] == pytest.approx(2.0)
    long_gap = OperatingPoint("gap", schedule=evenly_spaced(0.1, 12))  # steps 0 and 11: lags 1..10
    # e(K)·(lag/K)² continues k² exactly: the run of skips costs Σ k² over k = 1..10
    assert replay.evaluate(PREDICTOR, long_gap).error == pytest.approx(sum(k**2 for k in range(1, 11)))
    assert top < 10


def test_the_tail_exponent_stays_in_range_and_is_linear_without_two_lags():
    errs = np.ones((1, 3, 3))  # lags 0..2
    errs[:, :, 2] = 100.0  # a 100× jump from lag 1 to 2: noise, not growth
    assert tail_exponent([errs]) == 3.0
    assert tail_exponent([np.ones((1, 3, 2))]) == 1.0  # K = 1: nothing to measure a rate from


def test_replay_reports_the_masks_a_point_computes_and_a_capped_points_twin_is_its_own_mask(data):
    # A score-driven point whose ε lies above every score computes what its skip cap says, the same
    # mask on every run: its static twin must include that mask (at the same compute), so the
    # ablation credits the score with nothing the cap did (before, the twin came from other
    # schedules, and toy-wan's K = 1 `balanced` read +4.4 dB "from the score").
    import optuna

    from calibration.search import SearchSpace
    from calibration.shapes import static_twin
    from calibration.static_refine import static_equivalent
    from policies import EpsSchedule

    replay = _replay(data, run_gains=data.propagation)
    static = _even()
    assert set(replay.masks(PREDICTOR, static)) == {static.schedule.steps(12)}
    capped = OperatingPoint("p", EpsSchedule((0.0, 1.0), (1e9, 1e9)), max_skips=1)
    masks = replay.masks(PREDICTOR, capped)
    assert len(set(masks)) == 1 and replay.usual_mask(PREDICTOR, capped) == masks[0]
    assert sorted(masks[0])[:3] == [0, 2, 4]  # compute, skip one, compute: the cap decides
    assert 11 not in masks[0]  # the cap skips the last step, which a static schedule always computes
    own = OperatingPoint("p", schedule=static_equivalent(masks[0], 12))
    assert sorted(own.schedule.steps(12)) == sorted(masks[0] - {max(masks[0])} | {11})
    space = SearchSpace(knots=12, log_lo=-10.0, log_hi=10.0, num_steps=12)
    measured = replay.evaluate(PREDICTOR, capped)
    twin = static_twin(optuna.create_study(directions=["minimize", "minimize"]), capped, measured.nfe_fraction, space,
                       replay, replay, PREDICTOR, measured, extra=[("the point's own usual mask", own)])
    assert twin.origin == "the point's own usual mask"
    assert twin.point.schedule.fraction(12) == pytest.approx(measured.nfe_fraction)  # the same compute


def test_a_static_twin_never_computes_more_steps_than_its_point(data):
    # Fails when the point's own usual mask may compute more than the point does on average: that
    # mask is closer to full compute for its extra steps, displaced the point and shipped above
    # its target (toy-wan, `fit --residual-change`: `quality` at 0.77 for 0.7).
    import optuna

    from calibration.search import SearchSpace
    from calibration.shapes import static_twin
    from policies import EpsSchedule

    replay = _replay(data, run_gains=data.propagation)
    capped = OperatingPoint("p", EpsSchedule((0.0, 1.0), (1e9, 1e9)), max_skips=1)
    measured = replay.evaluate(PREDICTOR, capped)
    dense = OperatingPoint("p", schedule=evenly_spaced(0.9, 12))
    space = SearchSpace(knots=12, log_lo=-10.0, log_hi=10.0, num_steps=12)
    twin = static_twin(optuna.create_study(directions=["minimize", "minimize"]), capped, measured.nfe_fraction, space,
                       replay, replay, PREDICTOR, measured, extra=[("a denser mask", dense)])
    assert replay.evaluate(PREDICTOR, dense).error < replay.evaluate(PREDICTOR, twin.point).error  # it would win
    assert twin.origin == "uniform"
    assert twin.point.schedule.count(12) <= measured.nfe_fraction * 12 + 0.5


class _Fixed:
    """A stand-in objective that replays every point to `error`."""

    def __init__(self, error: float) -> None:
        self.error = error

    def evaluate(self, predictors, point):
        from calibration.objectives import Evaluation

        return Evaluation(self.error, 0.5, [self.error], [0.5])


@pytest.mark.parametrize("replayed, rerun, agrees", [
    (0.030, 0.020, True),    # 1.5×: the edge of the band
    (0.0289, 0.0178, False),  # 1.63×: toy-cogvideox's re-run-fit `balanced` on its holdout runs
    (0.0373, 0.0528, True),   # 0.71×
    (0.0484, 0.1984, False),  # 0.24×: toy-wan's replay-fit `fast`
    (0.0, 0.0, True),
], ids=["1.5x", "1.63x", "0.71x", "0.24x", "both-zero"])
def test_a_replay_check_warns_with_the_rerun_fit_command_when_replay_and_rerun_part(caplog, replayed, rerun, agrees):
    from calibration.replay_trust import replay_check

    with caplog.at_level(logging.WARNING, logger="calibration.replay_trust"):
        check = replay_check(_Fixed(replayed), None, _even(), rerun, "calib.duckdb")
    assert check.agrees is agrees
    assert check.to_dict()["agrees"] is agrees
    warned = [r.getMessage() for r in caplog.records]
    if agrees:
        assert not warned
    else:
        assert len(warned) == 1 and "'p'" in warned[0]
        assert "sencache-calibrate fit --db calib.duckdb --objective rerun" in warned[0]


def test_a_point_that_weighs_the_residual_change_replays_each_run_by_its_stored_change(data):
    # Fails when replay leaves the change out: with a = b = c = d = 0 every step would score NaN
    # and compute, or every run would decide alike.
    from policies import EpsSchedule

    point = OperatingPoint("change", EpsSchedule.constant(0.05), max_skips=1, forecast="linear")
    only_change = {"none": Predictor(0.0, 0.0, 0.0), "linear": Predictor(0.0, 0.0, 0.0, e=1.0)}
    calm = data.steps.assign(residual_change=np.where(data.steps["step"] == 0, np.nan, 0.01))  # as collect stores it
    replay = ReplayObjective(data.sensitivity_table(), calm, data.cache_errors, reuse_errors=data.reuse_errors)
    masks = replay.masks(only_change, point)
    # step 0 computes (first), step 1 has no change before it; then K = 1 skips every other step
    assert all(sorted(m)[:2] == [0, 1] and len(m) < 12 for m in masks)
    first = sorted(calm["run_id"].unique())[0]
    busy = calm.assign(residual_change=np.where(calm["run_id"] == first, 1.0, calm["residual_change"]))
    masks = ReplayObjective(data.sensitivity_table(), busy, data.cache_errors,
                            reuse_errors=data.reuse_errors).masks(only_change, point)
    by_run = dict(zip(replay.groups[0].run_ids, masks))
    assert by_run[first] == frozenset(range(12))  # its change scores above ε at every step
    assert all(len(m) < 12 for run, m in by_run.items() if run != first)


# --- the compounding calibrated on whole-mask re-runs (issue 17) ----------------------------------


def _static(computed, forecast: str = "none", n: int = 12) -> OperatingPoint:
    from policies import StaticSchedule

    return OperatingPoint("m", schedule=StaticSchedule(tuple(i / (n - 1) for i in sorted(computed))), forecast=forecast)


MASKS = ([0, 2, 4, 6, 8, 10, 11], [0, 1, 4, 7, 11], [0, 3, 6, 9, 11], [0, 1, 2, 6, 11], [0, 5, 6, 7, 8, 11],
         [0, 4, 8, 11], [0, 2, 3, 7, 9, 11])


def _true_errors(replay, runs, mode, beta, q):
    """Whole-mask errors made by a known compounding: (Σ (L^β·run sum)^q)^(1/q)."""
    from calibration.mask_runs import mask_key

    rows = []
    for run in runs:
        for mask in MASKS:
            sums, lengths = replay.mask_segments(run, mode, frozenset(mask))
            rows.append({"run_id": run, "mode": mode, "mask": mask_key(mask),
                         "error": float(((sums * lengths**beta) ** q).sum() ** (1 / q))})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("mode", ["none", "linear"])
def test_calibrated_compounding_recovers_how_a_stores_whole_masks_compound(data, mode):
    # Fails without the calibration (replay's "segments" rule is β = 0, q = 2 whatever the masks
    # show), and when evaluate and the calibration disagree about a mask's runs of skips.
    from calibration.replay import fit_corrections

    replay = _replay(data, run_gains=data.propagation)
    runs = replay.groups[0].run_ids
    masks = _true_errors(replay, runs, mode, beta=1.0, q=3.0)
    correction = fit_corrections(replay, masks)[mode]
    assert correction.length_exponent == pytest.approx(1.0) and correction.norm == pytest.approx(3.0)
    assert correction.masks == len(MASKS) * len(runs)
    calibrated = _replay(data, run_gains=data.propagation, corrections={mode: correction})
    for mask in MASKS[:3]:
        got = calibrated.evaluate(PREDICTOR, _static(mask, mode))
        want = masks[masks["mask"] == ",".join(map(str, mask))]
        assert got.per_run_error == pytest.approx(list(want.set_index("run_id").loc[runs, "error"]), rel=1e-9)
        assert replay.evaluate(PREDICTOR, _static(mask, mode)).error != pytest.approx(got.error, rel=1e-3)


def test_a_single_skip_keeps_its_exact_replay_under_any_calibration(data):
    # The propagation gain makes one skip exact; the masks calibrate only how skips combine.
    from calibration.replay import SegmentCorrection

    plain = _replay(data, run_gains=data.propagation)
    bent = _replay(data, run_gains=data.propagation, corrections={"none": SegmentCorrection(1.7, 4.5, 30)})
    one_skip = _static([i for i in range(12) if i != 5])
    assert bent.evaluate(PREDICTOR, one_skip).per_run_error == pytest.approx(
        plain.evaluate(PREDICTOR, one_skip).per_run_error, rel=1e-12)
    assert bent.evaluate(PREDICTOR, _static(MASKS[1])).error != pytest.approx(
        plain.evaluate(PREDICTOR, _static(MASKS[1])).error, rel=1e-3)


def test_runs_whose_measured_errors_are_zero_replay_to_zero_error_when_calibrated(data):
    from calibration.replay import SegmentCorrection

    zero_cache = data.cache_errors.assign(residual_error=0.0)
    zero_reuse = data.reuse_errors.assign(error=0.0)
    replay = _replay(data, zero_cache, zero_reuse, corrections={m: SegmentCorrection(1.5, 3.0, 10)
                                                               for m in ("none", "linear")})
    for forecast in ("none", "linear"):
        assert replay.evaluate(PREDICTOR, _even(forecast)).error == 0.0


def test_compounding_with_a_correction_weighs_runs_by_length_and_takes_its_norm():
    from calibration.replay import SegmentCorrection

    contributions = np.array([[0.0, 1.0, 1.0, 0.0, 2.0]])
    segment = np.array([[0, 0, 0, 3, 3]])  # a run of two skips (sum 2) and one of one (sum 2)
    skipped = np.array([[False, True, True, False, True]])
    got = compound(contributions, segment, "segments", skipped, SegmentCorrection(1.0, 3.0))
    assert got[0] == pytest.approx((4.0**3 + 2.0**3) ** (1 / 3))  # (2·2¹)³ + (2·1¹)³
    identity = compound(contributions, segment, "segments", skipped, SegmentCorrection())
    assert identity[0] == pytest.approx(compound(contributions, segment, "segments")[0])


def test_a_store_without_whole_mask_reruns_warns_with_the_command_that_adds_them(data, tmp_path):
    # Fails when trust ignores the compounding (a store of propagation rows alone looked covered).
    trust = replay_trust(data)
    assert trust.mask_runs == 0 and trust.thin
    assert any("no whole-mask re-runs" in p for p in trust.problems)
    assert "--mask-runs 12" in trust.remedy and "collect" in trust.remedy
    masked = replace_masks(data, pd.DataFrame({"run_id": [data.runs["run_id"].iloc[0]], "mode": ["none"],
                                               "mask": ["0,11"], "error": [0.1]}))
    assert not any("whole-mask" in p for p in replay_trust(masked).problems)


def replace_masks(data, masks: pd.DataFrame):
    from dataclasses import replace

    return replace(data, mask_errors=masks)


def test_a_replay_fit_calibrates_its_compounding_on_the_stores_masks_and_says_so(tmp_path):
    # Fails when fit ignores the store's whole masks, or when "segments" still calibrates.
    from calibration.fit import fit

    db = make_store(tmp_path / "masked.duckdb", runs=4, holdout=2, masks=6)
    data = load_fit_data(db)
    assert len(data.mask_errors) == 6 * 6 and replay_trust(data).mask_runs == 36
    result = fit(db, trials=2, objective="replay", show_progress=False, plot=False, static_evals=0)
    calibrated = result["replay_compounding"]
    assert calibrated["rule"] == "calibrated"
    assert {m: c["masks"] for m, c in calibrated["modes"].items()} == {"none": 12, "linear": 12}  # calib runs only
    plain = fit(db, trials=2, objective="replay", show_progress=False, plot=False, static_evals=0,
                replay_compounding="segments")
    assert plain["replay_compounding"] == {"rule": "segments", "local_moves": 2, "modes": {}}
    assert plain["study"]["name"] != result["study"]["name"]  # one study never resumes the other
    assert not any("whole-mask" in p for p in result["replay_trust"]["problems"])


def test_a_mask_the_store_re_ran_replays_to_its_measured_error_on_that_run_alone(data):
    # Fails when replay estimates a mask it holds a real re-run of (toy-cogvideox: evenly spaced
    # "linear" at 0.5 measures 0.0166 by re-run, and replay's estimate let a worse point pass it).
    from calibration.mask_runs import mask_key

    plain = _replay(data, run_gains=data.propagation)
    runs = plain.groups[0].run_ids
    point = _even("linear")
    key = mask_key(point.schedule.steps(12))
    measured = pd.DataFrame({"run_id": [runs[0], runs[1]], "mode": ["linear", "none"], "mask": [key, key],
                             "error": [0.123, 0.456]})
    exact = _replay(data, run_gains=data.propagation, measured_masks=measured)
    got, estimate = exact.evaluate(PREDICTOR, point).per_run_error, plain.evaluate(PREDICTOR, point).per_run_error
    assert got[0] == 0.123  # its own run and mode
    assert got[1:] == pytest.approx(estimate[1:])  # another mode's re-run says nothing of this one
    assert exact.evaluate(PREDICTOR, _even("none")).per_run_error[1] == 0.456


def _moved(steps: list[int], moves: int) -> list[int]:
    """`steps` with its first `moves` interior computed steps each moved one step later."""
    out = sorted(steps)
    for j in range(1, 1 + moves):
        assert out[j] + 1 not in out
        out[j] += 1
    return out


def test_a_neighbour_of_a_measured_mask_takes_that_masks_measured_over_estimated_ratio(data):
    # Fails when a one-step neighbour of a re-run mask keeps replay's own estimate: it was then
    # compared with the anchor's measurement, so replay's bias at the anchor decided the walk.
    from calibration.mask_runs import mask_key
    from policies import StaticSchedule

    plain = _replay(data, run_gains=data.propagation)
    run = plain.groups[0].run_ids[0]
    anchor = sorted(_even("linear").schedule.steps(12))

    def point(steps):
        return OperatingPoint("q", schedule=StaticSchedule(tuple(i / 11 for i in steps)), forecast="linear")

    measured = pd.DataFrame({"run_id": [run], "mode": ["linear"], "mask": [mask_key(anchor)], "error": [0.5]})
    anchor_estimate = plain.evaluate(PREDICTOR, point(anchor)).per_run_error[0]
    for moves, scaled in ((1, True), (2, True), (3, False)):
        estimate = plain.evaluate(PREDICTOR, point(_moved(anchor, moves))).per_run_error
        for local_moves in (0, 2):
            got = _replay(data, run_gains=data.propagation, measured_masks=measured,
                          local_moves=local_moves).evaluate(PREDICTOR, point(_moved(anchor, moves))).per_run_error
            want = estimate[0] * 0.5 / anchor_estimate if scaled and local_moves else estimate[0]
            assert got[0] == pytest.approx(want), (moves, local_moves)
            assert got[1:] == pytest.approx(estimate[1:])  # the other runs hold no re-run of it
    assert estimate[0] * 0.5 / anchor_estimate != pytest.approx(estimate[0])  # the scaling is not the identity
    with pytest.raises(ValueError, match="local_moves"):
        _replay(data, measured_masks=measured, local_moves=-1)
