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


def test_the_candidate_residual_change_term_is_measured_not_shipped(fits):
    _, out = fits
    extra = out["linear"].with_residual_change
    assert extra and "spearman" in extra and "without" in extra


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
