"""`calibration.analysis.bench` on a bench result made by hand."""

from __future__ import annotations

import json

import pytest

from calibration.analysis import bench as ba
from calibration.bench_report import PSNR_CAP


def _bench() -> dict:
    rows = [
        {"method": "none", "knob": None, "nfe_fraction": 1.0, "psnr": PSNR_CAP, "latent_rmse": 0.0, "speedup": 1.0,
         "samples": [{}]},
        {"method": "uniform", "knob": 0.8, "nfe_fraction": 0.8, "psnr": 30.0, "latent_rmse": 0.1, "speedup": 1.2},
        {"method": "uniform", "knob": 0.5, "nfe_fraction": 0.5, "psnr": 20.0, "latent_rmse": 0.3, "speedup": 1.8},
        {"method": "sencache", "knob": "quality", "nfe_fraction": 0.9, "psnr": PSNR_CAP, "latent_rmse": 0.01,
         "speedup": 1.1},
        {"method": "sencache", "knob": "fast", "nfe_fraction": 0.6, "psnr": 32.0, "latent_rmse": 0.05, "speedup": 1.5},
    ]
    matched = {"0.7": {"uniform": {"psnr": 26.7, "spread": 1.0, "reached": True},
                       "sencache": {"psnr": 35.0, "spread": 2.0, "reached": True}},
               "0.4": {"uniform": {"psnr": None, "reached": False, "note": "not reached: the sweep spans NFE 0.50-0.80"},
                       "sencache": {"psnr": None, "reached": False}}}
    return {"format": "sencache-bench", "model": {"name": "toy"}, "device": "cpu", "results": rows, "matched": matched}


def test_load_bench_takes_the_folder_or_the_file_and_refuses_other_json(tmp_path):
    (tmp_path / "bench.json").write_text(json.dumps(_bench()))
    path, bench = ba.load_bench(tmp_path)
    assert path == tmp_path / "bench.json" and len(bench["results"]) == 5
    assert ba.load_bench(path)[0] == path
    (tmp_path / "other.json").write_text(json.dumps({"format": "sencache-policy"}))
    with pytest.raises(ValueError, match="not a SenCache bench result"):
        ba.load_bench(tmp_path / "other.json")
    with pytest.raises(FileNotFoundError, match="sencache-calibrate bench"):
        ba.load_bench(tmp_path / "missing")


def test_results_table_drops_per_sample_detail_and_writes_knobs_as_text():
    results = ba.results_table(_bench())
    assert "samples" not in results
    assert results["knob"].tolist() == ["", "0.8", "0.5", "quality", "fast"]
    assert list(results.columns[:3]) == ["method", "knob", "nfe_fraction"]


def test_the_psnr_axis_stops_3_db_above_the_best_finite_psnr():
    results = ba.results_table(_bench())
    assert ba.psnr_top(results) == 35.0  # 32 + 3; the capped rows and `none` do not count
    assert ba.psnr_top(results[results["psnr"] >= PSNR_CAP]) == PSNR_CAP
    assert list(ba.colors_of(results)) == ["uniform", "sencache"]


def test_matched_table_one_row_per_fraction_and_method_best_first():
    matched = ba.matched_table(_bench())
    assert list(zip(matched["fraction"], matched["method"])) == [
        (0.7, "sencache"), (0.7, "uniform"), (0.4, "uniform"), (0.4, "sencache")]
    assert matched["reached"].tolist() == [True, True, False, False]
    assert matched.loc[2, "note"].startswith("not reached")
    assert ba.matched_table({"results": []}).empty


def test_plot_quality_draws_a_curve_per_method_in_each_panel():
    bench = _bench()
    frames, latents, speed = ba.plot_quality(bench, ba.results_table(bench)).axes
    assert len(latents.lines) == 2 + 2  # uniform, sencache + one dotted line per matched fraction
    # PSNR panel: per method a curve and its capped markers; sencache's capped point is drawn at the top
    sencache = [line for line in frames.lines if line.get_label() == "sencache"][0]
    assert list(sencache.get_ydata()) == [32.0, 35.0]
    assert [t.get_text() for t in frames.texts] == ["fast", "quality"]


def test_plot_matched_marks_the_fractions_a_method_did_not_reach():
    bench = _bench()
    results = ba.results_table(bench)
    assert ba.plot_matched(ba.matched_table({"results": []}), results) is None
    (ax,) = ba.plot_matched(ba.matched_table(bench), results, "toy").axes
    assert sum(t.get_text() == "not\nreached" for t in ax.texts) == 2
    assert [t.get_text() for t in ax.get_xticklabels()] == ["NFE 0.7", "NFE 0.4"]
