"""A store collected by `collect` measures reuse mode "taylor", and `fit` fits it (no fallback)."""

from __future__ import annotations

import json

import pytest

from calibration.collect import collect
from calibration.fit import fit, fit_result_path
from store import CalibrationStore

PROMPTS = [f"a {c} {s} moving {d}" for c in ("red", "blue", "green") for s in ("circle", "square")
           for d in ("left", "right")]


@pytest.mark.slow
def test_collected_store_has_taylor_rows_and_fit_uses_them(tmp_path):
    db = tmp_path / "t.duckdb"
    collect("tiny-wan", PROMPTS, seeds=1, steps=4, db=db, k_max=2, progress=False, no_latents=True)
    with CalibrationStore(db, read_only=True) as store:
        modes = set(store.reuse_errors()["mode"])
    assert modes == {"none", "linear", "taylor"}
    fit(db, trials=2, plot=False, show_progress=False)
    result = json.loads(fit_result_path(db).read_text())
    taylor = result["predictors"]["taylor"]
    assert "fallback" not in taylor
    assert taylor["n_test"] > 0 and 0.0 < taylor["spearman"] <= 1.0  # held-out ρ reported
