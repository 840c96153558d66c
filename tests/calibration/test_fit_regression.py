"""The predictor regression: non-negative robust fit, held-out quality, peer signals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression

from calibration.fitdata import load_fit_data
from calibration.regression import accumulate_peer_signal, compare_predictors, fit_nonneg_huber, fit_predictor
from tests.calibration.test_fit_store import A, B, C, make_store


def _design(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    u = rng.uniform(0.01, 1.0, n) ** 2  # errors spanning two orders of magnitude, like real ones
    v = rng.uniform(0.0, 0.2, n)
    return u, v, np.column_stack([u, v, np.ones(n)])


def test_exact_data_gives_the_exact_coefficients():
    # y = 2·u + 0.5·v + 0.01 with no noise: every relative residual is 0 at β = (2, 0.5, 0.01),
    # which is feasible (all >= 0), so the non-negative optimum is exactly that β.
    u, v, X = _design()
    y = 2.0 * u + 0.5 * v + 0.01
    assert fit_nonneg_huber(X, y) == pytest.approx([2.0, 0.5, 0.01], rel=1e-6)


def test_outliers_do_not_pull_the_slope():
    # 5% of the points multiplied by 10: a squared loss follows them, Huber barely moves.
    u, v, X = _design(seed=1)
    y = 2.0 * u + 0.5 * v + 0.01
    y_bad = y.copy()
    y_bad[::20] *= 10.0
    robust = fit_nonneg_huber(X, y_bad)
    ols = LinearRegression(positive=True, fit_intercept=False).fit(X, y_bad).coef_
    assert robust[0] == pytest.approx(2.0, rel=0.05)
    assert abs(ols[0] - 2.0) > 5 * abs(robust[0] - 2.0)


def test_coefficients_are_never_negative():
    # y = 3·u − 0.5·v + 1: the true b is negative; the constrained fit sets b = 0 exactly and
    # re-fits a and c for the model without v (not an unconstrained fit clipped afterwards).
    u, v, X = _design(seed=2)
    y = 3.0 * u - 0.5 * v + 1.0
    beta = fit_nonneg_huber(X, y)
    assert beta.min() >= 0.0
    assert beta[1] == 0.0
    assert beta[0] > 0 and beta[2] > 0


def test_fit_predictor_recovers_the_synthetic_store(tmp_path):
    # The store's errors are (A·u + B·v + C)·(1 ± 5%) with one ×8 outlier per run
    # (see test_fit_store), so a, b, c come back within a few percent.
    data = load_fit_data(make_store(tmp_path / "s.duckdb"))
    fit = fit_predictor(data.pairs())
    assert fit.a == pytest.approx(A, rel=0.03)
    assert fit.b == pytest.approx(B, rel=0.15)  # v is small next to u: b is the least determined
    assert fit.c == pytest.approx(C, rel=0.15)
    assert fit.validation == "holdout split"
    assert fit.spearman > 0.95
    assert fit.r2_log > 0.5


def test_without_holdout_runs_quality_is_leave_runs_out(tmp_path):
    data = load_fit_data(make_store(tmp_path / "s.duckdb", runs=4, holdout=0))
    pairs = data.pairs()
    fit = fit_predictor(pairs)
    assert fit.validation == "leave-runs-out, 4 folds over 4 runs"
    assert fit.n_test == len(pairs)  # every pair is predicted once, by a fit that never saw its run


def test_peer_signals_accumulate_like_their_methods():
    steps = pd.DataFrame({"run_id": ["r"] * 4, "step": [0, 1, 2, 3], "s": [9.0, 0.1, 0.2, 0.3], "m": [1.0, 0.9, 0.5, 2.0]})
    pairs = pd.DataFrame({"run_id": ["r", "r"], "step": [0, 1], "lag": [2, 2]})
    # TeaCache-style sum from r+1 to r+k: (0,2) -> 0.1 + 0.2 = 0.3; (1,2) -> 0.2 + 0.3 = 0.5
    assert accumulate_peer_signal(steps, pairs, "s", "sum") == pytest.approx([0.3, 0.5])
    # MagCache: Σ_m |1 − Π ratios|: (0,2) -> |1−0.9| + |1−0.45| = 0.65; (1,2) -> |1−0.5| + |1−1.0| = 0.5
    assert accumulate_peer_signal(steps, pairs, "m", "magcache") == pytest.approx([0.65, 0.5])


def test_comparison_lists_the_score_the_paper_score_and_the_peers(tmp_path):
    data = load_fit_data(make_store(tmp_path / "s.duckdb"))
    pairs = data.pairs()
    rows = compare_predictors(pairs, data.steps, fit_predictor(pairs))
    names = [r.name for r in rows]
    assert names[0].startswith("sencache (fitted")
    assert any("TeaCache" in n for n in names) and any("MagCache" in n for n in names)
    # The synthetic error is a function of the score, not of the noisy TeaCache signal.
    by = {r.name: r for r in rows}
    tea = next(r for n, r in by.items() if "TeaCache" in n)
    assert rows[0].spearman > tea.spearman
