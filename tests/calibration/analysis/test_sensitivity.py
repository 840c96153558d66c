"""`calibration.analysis.sensitivity` on a store made by hand: two runs of three steps."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from calibration.analysis import sensitivity as sa


def _tables(prop: bool = True):
    runs = pd.DataFrame({"run_id": ["a", "b"], "num_steps": [3, 3], "split": ["calib", "holdout"],
                         "prompt": ["a red circle", "a blue square"], "seed": [0, 1], "model_name": ["toy", "toy"]})
    steps = pd.DataFrame({"run_id": ["a"] * 3 + ["b"] * 3, "step": [0, 1, 2] * 2,
                          "timestep": [1000.0, 500.0, 0.0] * 2, "dx_norm": [1.0, 2.0, 3.0, 0.5, 0.5, 0.5]})
    sens = pd.DataFrame({"run_id": ["a"] * 3 + ["b"] * 3 + ["a"], "step": [0, 1, 2, 0, 1, 2, 0],
                         "estimator": ["trajectory"] * 6 + ["reference"],
                         "J_x": [1.0, 2.0, 4.0, 3.0, 6.0, 12.0, 99.0], "J_t": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 9.0]})
    errors = pd.DataFrame({"run_id": ["a", "a", "b", "b"], "step": [0, 0, 0, 1], "lag": [1, 2, 1, 1],
                           "dx": [1.0, 2.0, 1.0, 0.0], "dt": [10.0, 20.0, 10.0, 0.0],
                           "residual_error": [0.5, 0.9, 0.7, 0.2]})
    gains = pd.DataFrame({"run_id": ["a", "a", "b", "b"], "step": [0, 2, 0, 2], "gain": [4.0, 0.5, 6.0, 1.5]})
    return {"meta": {"model_fingerprint": "abc"}, "runs": runs, "steps": steps, "sens": sens, "errors": errors,
            "prop": gains if prop else gains.iloc[:0]}


def _data(**kw) -> sa.SensitivityData:
    return sa.join_tables(Path("made.duckdb"), **_tables(**kw))


def test_the_estimator_most_rows_were_made_with_is_taken_and_positions_are_normalised():
    data = _data()
    assert data.estimator == "trajectory"  # six rows against one
    assert len(data.sens) == 6 and 99.0 not in set(data.sens["J_x"])
    # p = step / (N - 1) with N = 3: 0, 0.5, 1
    assert data.sens.sort_values(["run_id", "step"])["p"].tolist() == [0.0, 0.5, 1.0] * 2
    assert "made.duckdb: 2 run(s) of toy (fingerprint abc), estimator 'trajectory', 4 measured" in data.summary()


def test_an_estimator_can_be_chosen_and_an_absent_one_is_refused():
    assert sa.join_tables(Path("s"), **_tables(), estimator="reference").sens["J_x"].tolist() == [99.0]
    with pytest.raises(ValueError, match="no sensitivities of estimator 'paper'"):
        sa.join_tables(Path("s"), **_tables(), estimator="paper")


def test_an_empty_store_says_how_to_fill_it():
    tables = _tables()
    tables["runs"] = tables["runs"].iloc[:0]
    with pytest.raises(ValueError, match="sencache-calibrate collect"):
        sa.join_tables(Path("empty.duckdb"), **tables)


def test_score_pairs_computes_the_paper_score_and_drops_what_a_log_plot_cannot_show():
    data = _data()
    pairs = sa.score_pairs(data.errors, data.sens).sort_values(["run_id", "lag"])
    # run a, step 0 (J_x 1, J_t 0.1): lag 1: 1·1 + 0.1·10 = 2; lag 2: 1·2 + 0.1·20 = 4
    # run b, step 0 (J_x 3, J_t 0.4): 3·1 + 0.4·10 = 7; run b step 1 has dx = dt = 0: score 0, dropped
    assert pairs["score"].tolist() == pytest.approx([2.0, 4.0, 7.0])
    assert len(pairs) == 3


def test_spearman_ranks_and_is_nan_below_three_points():
    assert sa.spearman([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert sa.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(sa.spearman([1, 2], [1, 2]))


def test_per_run_table_numbers():
    table = sa.per_run_table(_data())
    a, b = table.loc["a"], table.loc["b"]
    assert (a["median J_x"], b["median J_x"]) == (2.0, 6.0)  # medians of 1, 2, 4 and 3, 6, 12
    assert (a["mean lag-1 error"], b["mean lag-1 error"]) == (0.5, pytest.approx(0.45))  # b: (0.7 + 0.2) / 2
    assert (a["path length Σ‖Δx‖"], b["path length Σ‖Δx‖"]) == (6.0, 1.5)
    assert a["split"] == "calib" and b["seed"] == 1


def test_plot_sensitivities_draws_a_line_per_run_and_the_median_in_each_panel():
    fig = sa.plot_sensitivities(_data())
    assert isinstance(fig, Figure)
    left, right = fig.axes
    assert len(left.lines) == 3 and len(right.lines) == 3  # two runs + the median
    assert left.get_yscale() == "log"  # every J_x is positive
    assert left.xaxis_inverted()  # denoising runs from high to low timestep
    median = left.lines[-1].get_ydata()
    assert list(np.sort(median)) == [2.0, 4.0, 8.0]  # medians over runs of (1, 3), (2, 6), (4, 12)


def test_plot_score_vs_error_scatters_one_series_per_lag_and_the_diagonal():
    data = _data()
    fig = sa.plot_score_vs_error(sa.score_pairs(data.errors, data.sens))
    (ax,) = fig.axes
    assert len(ax.collections) == 2  # lags 1 and 2
    assert len(ax.lines) == 1  # score = error


def test_plot_per_sample_draws_every_run_in_both_panels_the_holdout_dashed():
    left, right = sa.plot_per_sample(_data()).axes
    assert len(left.lines) == 3  # two runs + the line at 1
    assert [line.get_linestyle() for line in right.lines] == ["-", "--"]  # run a calib, run b holdout


def test_plot_propagation_is_none_without_gains_and_draws_runs_median_and_unity_with_them():
    assert sa.plot_propagation(_data(prop=False)) is None
    (ax,) = sa.plot_propagation(_data()).axes
    assert len(ax.lines) == 4  # two runs, the median, gain 1
    median = ax.lines[2]
    assert list(median.get_xdata()) == [0.0, 1.0] and list(median.get_ydata()) == [5.0, 1.0]
