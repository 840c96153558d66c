"""`export`: the fit result becomes a policy that passes the loader and round-trips."""

from __future__ import annotations

import json

import pytest

from calibration.export import export, read_fit_result
from calibration.fit import fit, fit_result_path
from policies import InputError, Policy, PolicyError
from store.database import CalibrationStore
from tests.calibration.test_fit_store import A, SYNTH_FP, make_store


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    db = make_store(tmp_path_factory.mktemp("export") / "s.duckdb")
    fit(db, trials=6, objective="replay", seed=0, show_progress=False, plot=False)
    return db


def test_export_round_trips_through_policy_load(fitted, tmp_path):
    out = tmp_path / "policy.json"
    policy = export(fitted, out)
    loaded = Policy.load(out, model_fingerprint=SYNTH_FP)
    assert loaded == policy
    assert Policy.from_dict(json.loads(out.read_text())).to_dict() == policy.to_dict()


@pytest.mark.parametrize(
    "field, check",
    [
        ("predictor", lambda p: p.predictor.a == pytest.approx(A, rel=0.05)),
        ("points", lambda p: p.operating_point_names == ("quality", "balanced", "fast", "paper")),
        ("default", lambda p: p.default_operating_point == "balanced"),
        ("measured", lambda p: all(o.expected_nfe_fraction and o.expected_error is not None for o in p.operating_points)),
        ("sensitivity", lambda p: p.sensitivity.estimator == "trajectory" and p.sensitivity.J_x[0] == pytest.approx(2.0)),
        ("provenance", lambda p: p.provenance["runs"] == 6 and p.provenance["split"] == {"calib": 4, "holdout": 2}),
        ("model", lambda p: (p.model.class_name, p.model.name) == ("WanTransformer3DModel", "synthetic")),
    ],
    ids=lambda x: x if isinstance(x, str) else "",
)
def test_exported_policy_fields(fitted, tmp_path, field, check):
    assert check(export(fitted, tmp_path / "p.json"))


def test_a_fitted_forecast_reaches_the_policy(fitted, tmp_path):
    # the search picked "linear" for quality (as the rerun fits of the toys do): the policy must
    # carry it, or the runtime would replay plain reuse at the fitted thresholds
    result = read_fit_result(fitted)
    chosen = ["linear", "none", "taylor", "none"]
    for point, forecast in zip(result["operating_points"], chosen):
        point["forecast"] = forecast
    path = tmp_path / "forecast.fit.json"
    path.write_text(json.dumps(result))
    policy = export(fitted, tmp_path / "p.json", fit_path=path)
    assert [p.forecast for p in policy.operating_points] == chosen
    assert Policy.load(tmp_path / "p.json").operating_point("quality").forecast == "linear"


def test_export_before_fit_names_the_fit_command(tmp_path):
    db = make_store(tmp_path / "unfitted.duckdb", runs=2, holdout=0)
    with pytest.raises(InputError, match="sencache-calibrate fit --db"):
        export(db, tmp_path / "p.json")
    assert not (tmp_path / "p.json").exists()


def test_export_refuses_a_store_changed_since_the_fit(tmp_path):
    db = make_store(tmp_path / "s.duckdb", runs=2, holdout=0)
    fit(db, trials=2, objective="replay", show_progress=False, plot=False)
    make_store(db, runs=3, holdout=0)  # one more run appended (the first two are already stored)
    with pytest.raises(InputError, match="changed since it was fitted.*sencache-calibrate fit"):
        export(db, tmp_path / "p.json")


def test_an_invalid_fit_result_is_refused_before_writing(fitted, tmp_path):
    result = read_fit_result(fitted)
    result["operating_points"][0]["max_skips"] = 0  # K must be >= 1
    bad = tmp_path / "bad.fit.json"
    bad.write_text(json.dumps(result))
    with pytest.raises(PolicyError, match="max_skips"):
        export(fitted, tmp_path / "p.json", fit_path=bad)
    assert not (tmp_path / "p.json").exists()


def test_not_a_fit_result_is_refused(fitted, tmp_path):
    other = tmp_path / "x.json"
    other.write_text("{}")
    with pytest.raises(InputError, match="not a SenCache fit result"):
        export(fitted, tmp_path / "p.json", fit_path=other)


def test_the_default_fit_result_sits_beside_the_store(tmp_path):
    assert fit_result_path(tmp_path / "calib.duckdb") == tmp_path / "calib.fit.json"
    CalibrationStore(tmp_path / "calib.duckdb").close()
