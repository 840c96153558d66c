"""`fit` fits one predictor per reuse mode, and judges each against the paper score."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from calibration.fitdata import load_fit_data
from calibration.modefit import ModeFit, below_paper, fit_modes, within_step_spearman
from tests.calibration.test_fit_store import AL, DL, make_store

POLICIES = Path(__file__).resolve().parents[2] / "policies"


@pytest.fixture(scope="module")
def fits(tmp_path_factory):
    db = make_store(tmp_path_factory.mktemp("modes") / "m.duckdb", runs=6, holdout=3)
    data = load_fit_data(db)
    pairs = data.mode_pairs(data.sensitivity_table())
    return pairs, fit_modes(pairs, ("none", "linear"))


def test_each_mode_gets_its_own_coefficients(fits):
    _, out = fits
    assert set(out) == {"none", "linear"}
    plain, linear = out["none"], out["linear"]
    assert plain.a == pytest.approx(2.0, rel=0.15) and plain.d < DL / 5  # no second-order error here
    # the forecast's error is second order in the gap: the dt² term carries it
    assert linear.d == pytest.approx(DL, rel=0.2) and linear.a == pytest.approx(AL, rel=0.25)
    assert linear.predictor().d == linear.d


def test_each_modes_predictor_ranks_held_out_errors_at_least_as_well_as_the_paper_score(fits):
    # Fails when a per-mode predictor's held-out ρ falls below the paper score's (a = b = 1).
    _, out = fits
    for mode, fit in out.items():
        assert fit.spearman is not None and fit.paper["spearman"] is not None
        assert fit.spearman >= fit.paper["spearman"], mode
        assert not fit.below_paper
    assert below_paper(out) == []


def test_below_paper_flags_a_predictor_worse_than_the_paper_score():
    worse = ModeFit("linear", 0, 1, 0, 0, 0.1, None, 0.5, None, 10, 10, "holdout split", paper={"spearman": 0.8})
    better = ModeFit("none", 1, 1, 0, 0, 0.9, None, 0.9, None, 10, 10, "holdout split", paper={"spearman": 0.8})
    assert below_paper({"linear": worse, "none": better}) == ["linear"]
    assert worse.to_dict()["below_paper"] is True


def test_within_step_ranking_sees_what_pooling_hides():
    # Pooled over steps a timestep-only score ranks well; within a step it cannot order samples.
    import pandas as pd

    steps = np.repeat(np.arange(5), 4)
    per_sample = np.tile([1.0, 2.0, 3.0, 4.0], 5)
    error = (steps + 1) * 10 + per_sample
    pairs = pd.DataFrame({"step": steps, "lag": 1, "error": error})
    assert within_step_spearman(pairs, error) == pytest.approx(1.0)
    assert within_step_spearman(pairs, (steps + 1) * 10.0) is None  # ties within every step: no ranking
    assert within_step_spearman(pairs, (steps + 1) * 10 - per_sample) == pytest.approx(-1.0)


def test_the_residual_change_term_is_measured_for_every_mode(fits):
    _, out = fits
    extra = out["linear"].with_residual_change
    assert extra and "spearman" in extra and "without" in extra and "kept" in extra


def _change_pairs(change_carries_error: bool, runs: int = 10, steps: int = 12):
    """Errors of a forecast: the step sets the scale, the sample's own residual change the rest;
    the stored change follows that per-sample part, or is unrelated to it."""
    import pandas as pd

    rng, unrelated = np.random.default_rng(0), np.random.default_rng(1)
    rows = []
    for run in range(runs):
        for step in range(1, steps):
            for lag in (1, 2):
                z, other = rng.uniform(0.5, 2.0), unrelated.uniform(0.5, 2.0)
                v = 0.1 * lag
                change = (z if change_carries_error else other) * lag
                rows.append({"run_id": run, "step": step, "lag": lag, "mode": "linear", "u": 0.3, "v": v,
                             "v2": v * v, "rc": change, "error": 0.05 * v + 0.2 * z * lag,
                             "split": "holdout" if run >= runs - 4 else "calib"})
    return pd.DataFrame(rows)


def test_a_residual_change_that_tracks_the_error_is_kept_and_decides_within_a_step():
    # Fails on a fit that leaves the term out: the other terms are the same for every sample.
    from calibration.modefit import fit_one_mode

    fit = fit_one_mode(_change_pairs(change_carries_error=True), "linear", residual_change=True)
    assert fit.with_residual_change["kept"] is True
    assert fit.e == pytest.approx(0.2, rel=0.1) and fit.predictor().e == fit.e
    assert fit.within_step_spearman > 0.9 and fit.spearman > fit.with_residual_change["without"] + 0.05


def test_a_residual_change_unrelated_to_the_error_is_left_out():
    from calibration.modefit import fit_one_mode

    fit = fit_one_mode(_change_pairs(change_carries_error=False), "linear", residual_change=True)
    assert fit.with_residual_change["kept"] is False and fit.e == 0.0 and fit.predictor().e == 0.0


def test_the_residual_change_term_is_only_measured_unless_the_fit_asks_for_it():
    # the default fit is the one the shipped policies come from: the term must not creep in
    from calibration.modefit import fit_one_mode

    pairs = _change_pairs(change_carries_error=True)
    fit = fit_one_mode(pairs, "linear")
    assert fit.e == 0.0 and fit.with_residual_change["offered"] is False
    assert fit.with_residual_change["spearman"] > fit.with_residual_change["without"] + 0.05
    assert fit_modes(pairs, ("linear",), residual_change=True)["linear"].e > 0


@pytest.mark.parametrize("name", ["toy-wan", "toy-cogvideox", "toy-ltx"])
def test_shipped_per_mode_predictors_are_not_worse_than_the_paper_score(name):
    # Once a policy is fitted per mode, its provenance states each mode's held-out ρ and the paper's.
    metrics = json.loads((POLICIES / f"{name}.json").read_text())["provenance"]["metrics"]
    per_mode = metrics.get("predictors")
    if not per_mode:
        pytest.skip(f"{name} was fitted before per-mode predictors: refit it (see the README)")
    for mode, quality in per_mode.items():
        if quality.get("fallback"):
            continue
        assert quality["spearman"] >= quality["paper"]["spearman"], f"{name}: {mode}"


def _timestep_dominated_pairs(u_ranks_samples: bool, runs: int = 10, steps: int = 12):
    """Errors set by the step (v) times a per-sample factor; u falls along the steps (so a pooled
    non-negative fit gives it no weight) and, within a step, follows the per-sample factor or not."""
    import pandas as pd

    rng, unrelated = np.random.default_rng(0), np.random.default_rng(1)
    rows = []
    for run in range(runs):
        for step in range(steps):
            z = rng.normal()
            other = unrelated.normal()
            v = 0.1 * (step + 1)
            u = (steps - step) * 0.3 + 0.02 * (z if u_ranks_samples else other) + 0.1
            rows.append({"run_id": run, "step": step, "lag": 1, "mode": "none", "u": u, "v": v, "v2": v * v, "rc": np.nan,
                         "error": v * (1.0 + 0.15 * z), "split": "holdout" if run >= runs - 4 else "calib"})
    return pd.DataFrame(rows)


def test_a_mode_whose_pooled_fit_drops_the_per_sample_term_keeps_a_within_step_weight():
    # Fails on a fit that only pools: there a = 0 and the score cannot tell samples apart within a step.
    from calibration.modefit import RHO_SLACK, _held_out, _scores, fit_one_mode

    pairs = _timestep_dominated_pairs(u_ranks_samples=True)
    calib = pairs[pairs["split"] == "calib"].reset_index(drop=True)
    pooled = _held_out(calib.assign(split="calib"), ["u", "v", "v2"])
    X = calib[["u", "v", "v2"]].to_numpy()
    assert pooled[1][0] * X[:, 0].mean() < 0.01 * (X @ pooled[1][:3] + pooled[1][3]).mean()  # a ≈ 0 here
    fit = fit_one_mode(pairs, "none")
    assert fit.a > 10 * pooled[1][0] and fit.per_sample_weight["kept"] is True
    assert fit.within_step_spearman is not None and fit.within_step_spearman > 0.5
    pooled_rho = _scores(pairs, _held_out(pairs, ["u", "v", "v2"])[0])["spearman"]
    assert fit.spearman >= pooled_rho - 3 * RHO_SLACK


def test_no_within_step_weight_where_u_does_not_rank_samples():
    from calibration.modefit import fit_one_mode

    fit = fit_one_mode(_timestep_dominated_pairs(u_ranks_samples=False), "none")
    assert fit.a < 1e-3 and fit.per_sample_weight.get("kept") is not True
