"""`calibration.analysis.policies` on a shipped policy and a fit result made by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from calibration.analysis import policies as pa
from policies import Policy
from sencache.report import RunReport

SHIPPED = Path(__file__).resolve().parents[3] / "policies" / "toy-wan.json"


def _fit_result(store: str = "/nowhere/calib.duckdb") -> dict:
    eps = {"positions": [0.0, 1.0], "values": [1.0, 3.0]}
    return {
        "format": "sencache-fit", "store": store, "model": {"name": "toy"}, "objective": "replay", "trials": 4,
        "validation": "holdout runs (2)",
        "pareto_front": [{"trial": 1, "error": 0.3, "nfe_fraction": 0.5}, {"trial": 0, "error": 0.1, "nfe_fraction": 0.8}],
        "operating_points": [
            {"name": "quality", "eps": eps, "max_skips": 1, "warmup_steps": 2, "final_steps": 0.1,
             "expected_nfe_fraction": 0.8, "expected_error": 0.1, "target_nfe_fraction": 0.8, "origin": "search",
             "trial": 0, "calib": {"error": 0.1, "nfe_fraction": 0.8}, "validation": {"error": 0.12, "nfe_fraction": 0.75}},
            {"name": "fast", "eps": eps, "max_skips": 3, "warmup_steps": 0, "final_steps": 0,
             "expected_nfe_fraction": 0.5, "expected_error": 0.3, "forecast": "linear", "origin": "uniform"},
        ],
        "references": {"uniform": {"0.8": {"error": 0.2, "nfe_fraction": 0.8}, "0.5": None},
                       "paper": {"validation": {"error": 0.5, "nfe_fraction": 0.6}}},
        "predictor_comparison": [{"name": "teacache", "spearman": 0.7, "r2": 0.4, "n": 10},
                                 {"name": "sencache (fitted)", "spearman": 0.9, "r2": 0.8, "n": 10},
                                 {"name": "broken", "spearman": None, "r2": None, "n": 0}],
    }


def test_load_fit_refuses_a_file_that_is_not_a_fit_result(tmp_path):
    good, bad = tmp_path / "a.fit.json", tmp_path / "b.json"
    good.write_text(json.dumps(_fit_result()))
    bad.write_text(json.dumps({"format": "sencache-policy"}))
    assert pa.load_fit(good)["trials"] == 4
    with pytest.raises(ValueError, match="not a SenCache fit result.*sencache-calibrate fit"):
        pa.load_fit(bad)


def test_points_table_reads_the_fit_result_and_leaves_fit_only_columns_empty_for_a_policy():
    table = pa.points_table(_fit_result())
    assert list(table.index) == ["quality", "fast"]
    assert list(table.columns) == list(pa.POINT_COLUMNS[1:])
    assert table.loc["quality", "target_nfe_fraction"] == 0.8 and table.loc["fast", "origin"] == "uniform"
    policy = Policy.load(SHIPPED)
    from_policy = pa.points_table(None, policy)
    assert list(from_policy.index) == list(policy.operating_point_names)
    assert from_policy["origin"].isna().all()  # a policy's points do not say where they came from
    assert from_policy["expected_nfe_fraction"].tolist() == [p.expected_nfe_fraction for p in policy.operating_points]


def test_points_table_prefers_the_fit_result_when_both_are_given():
    # The notebook passes both; the fit result's points say more (origin, target) than the policy's.
    table = pa.points_table(_fit_result(), Policy.load(SHIPPED))
    assert list(table.index) == ["quality", "fast"]
    assert table["origin"].tolist() == ["search", "uniform"]


def test_operating_points_of_a_fit_result_drop_the_fit_only_keys():
    points = pa.operating_points(_fit_result())
    assert [p.name for p in points] == ["quality", "fast"]
    assert points[1].forecast == "linear" and points[0].forecast == "none"
    policy = Policy.load(SHIPPED)
    assert pa.operating_points(None, policy) == list(policy.operating_points)


def test_a_fit_result_whose_store_is_gone_gives_no_policy(tmp_path):
    assert pa.policy_of_fit(_fit_result(str(tmp_path / "gone.duckdb")), tmp_path / "x.fit.json") is None


def test_plot_pareto_draws_the_front_each_point_and_the_references():
    (ax,) = pa.plot_pareto(_fit_result()).axes
    labels = [line.get_label() for line in ax.lines]
    # front; quality chosen and validated (fast has neither); one uniform reference; the paper point
    assert labels == ["Pareto front (calibration runs)", "quality (chosen)", "quality on holdout",
                      "evenly spaced skipping", "paper setting (uncalibrated)"]
    assert list(ax.lines[0].get_xdata()) == [0.5, 0.8]  # sorted by NFE fraction


def test_plot_pareto_of_a_policy_alone_marks_its_expected_points():
    policy = Policy.load(SHIPPED)
    (ax,) = pa.plot_pareto(None, policy).axes
    assert len(ax.lines) == len(policy.operating_points)
    assert "no Pareto front" in ax.get_title()


def test_predictor_table_drops_signals_without_rho_worst_first_and_the_plot_has_a_bar_each():
    table = pa.predictor_table(_fit_result())
    assert table["name"].tolist() == ["teacache", "sencache (fitted)"]
    assert pa.predictor_table(None).empty and pa.plot_predictors(pa.predictor_table(None)) is None
    (ax,) = pa.plot_predictors(table).axes
    assert len(ax.patches) == 2


def test_plot_thresholds_draws_each_eps_curve_and_its_knots():
    points = pa.operating_points(_fit_result())
    (ax,) = pa.plot_thresholds(points, resolution=5).axes
    assert len(ax.lines) == 4  # a curve and its knots per point
    curve = ax.lines[0]
    # ε is linear from 1 at p = 0 to 3 at p = 1: at p = 0.25 it is 1.5
    assert list(curve.get_ydata()) == pytest.approx([1.0, 1.5, 2.0, 2.5, 3.0])
    assert ax.get_yscale() == "log"


def _report() -> RunReport:
    computed = np.array([[True, False, True, True], [True, True, False, True]])
    scores = np.array([[np.nan, 0.1, 0.9, np.nan], [np.nan, 0.8, 0.2, np.nan]])
    reasons = [["first", "skipped", "score", "final"], ["first", "score", "skipped", "final"]]
    return RunReport(computed, scores, np.array([0.5, 0.5, 0.5, 0.5]), reasons, np.array([1.0, 0.7, 0.4, 0.1]),
                     operating_point="fast")


def test_plot_masks_has_a_panel_per_operating_point_with_the_computed_mask():
    fig = pa.plot_masks({"quality": _report(), "fast": _report()}, ["p one", "p two"], "toy")
    assert len(fig.axes) == 2
    image = fig.axes[0].images[0].get_array()
    assert image.tolist() == [[1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 1.0]]
    assert "computed 75% of steps" in fig.axes[0].get_title()  # 6 of 8 cells


def test_plot_scores_draws_the_threshold_and_each_samples_scores_and_skips():
    (ax,) = pa.plot_scores(_report(), "fast").axes
    assert len(ax.lines) == 5  # ε, then per sample: scores and skipped crosses
    assert list(ax.lines[2].get_xdata()) == [1]  # sample 0 skipped step 1
    assert list(ax.lines[4].get_xdata()) == [2]  # sample 1 skipped step 2
