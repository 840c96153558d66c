"""The rerun objective on the tiny random Wan fixture: real cached re-runs through `sencache.apply`.

The store is synthetic (test_fit_store) but carries tiny-wan's fingerprint and call arguments, so
`fit` loads the real pipeline and re-runs the stored prompts under each candidate policy.
"""

from __future__ import annotations

import pytest
import torch

import sencache
from calibration.export import export
from calibration.fit import fit, uniform_point
from calibration.models import load_model
from calibration.objectives import RerunObjective, RunSpec
from calibration.zoo.registry import TINY_CALL_ARGS
from policies import Policy, Predictor, SensitivityTable, config_fingerprint
from tests.calibration.test_fit_search import _replay
from tests.calibration.test_fit_store import make_store

pytestmark = pytest.mark.slow

STEPS = 6
CALL = {k: v for k, v in TINY_CALL_ARGS.items() if k != "num_inference_steps"}


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-wan")


def test_rerun_and_replay_agree_in_direction(tiny, tmp_path):
    # Uniform skipping at 1.0, 0.67 and 0.33 of 6 steps: both objectives must rank them the
    # same way: no error at full compute, more error the fewer steps compute.
    fractions = (1.0, 0.67, 0.34)
    spec = RunSpec("a red circle moving left on a blue background", 0, STEPS, dict(CALL))
    rerun = RerunObjective(tiny.pipe, SensitivityTable.constant(), [spec], "tiny-wan")
    rerun_err = [rerun.evaluate(Predictor(), uniform_point(f, STEPS)).error for f in fractions]
    replay = _replay(make_store(tmp_path / "s.duckdb", num_steps=STEPS))
    replay_err = [replay.evaluate(Predictor(), uniform_point(f, STEPS)).error for f in fractions]
    assert rerun_err[0] == 0.0 and replay_err[0] == 0.0
    assert rerun_err[2] > rerun_err[1] > 0
    assert replay_err[2] > replay_err[1] > 0


def test_rerun_fit_exports_a_policy_the_runtime_reproduces(tiny, tmp_path):
    fp = config_fingerprint(dict(tiny.pipe.transformer.config))
    db = make_store(tmp_path / "tiny.duckdb", runs=1, holdout=1, num_steps=STEPS, fingerprint=fp,
                    model_name="tiny-wan", call={k: CALL[k] for k in ("guidance_scale", "height", "width", "num_frames")})
    result = fit(db, trials=2, seed=0, show_progress=False, plot=False)
    assert result["objective"] == "rerun"  # the default for tiny/toy models
    policy = export(db, tmp_path / "tiny.json")
    assert Policy.load(tmp_path / "tiny.json", model_fingerprint=fp) == policy
    # The expected NFE of each point was measured on the holdout run: applying the exported
    # policy to the same prompt and seed reproduces it exactly.
    prompt = "a red circle moving left number 1"  # the holdout run of make_store(runs=1, holdout=1)
    point = policy.operating_point("balanced")
    handle = sencache.apply(tiny.pipe, policy, operating_point="balanced")
    try:
        tiny.pipe(prompt=[prompt], generator=[torch.Generator().manual_seed(1)], output_type="latent",
                  num_inference_steps=STEPS, **CALL)
        assert float(handle.report().nfe_fraction.mean()) == pytest.approx(point.expected_nfe_fraction)
    finally:
        sencache.remove(tiny.pipe)


def test_replay_search_with_rerun_validation(tiny, tmp_path):
    # Search on stored trajectories (no model), then measure the chosen points by real re-runs of
    # the holdout prompt: the policy states re-run numbers, which the runtime reproduces.
    fp = config_fingerprint(dict(tiny.pipe.transformer.config))
    db = make_store(tmp_path / "tiny.duckdb", runs=1, holdout=1, num_steps=STEPS, fingerprint=fp,
                    model_name="tiny-wan", call={k: CALL[k] for k in ("guidance_scale", "height", "width", "num_frames")})
    result = fit(db, trials=4, objective="replay", validate="rerun", show_progress=False)
    assert (result["objective"], result["validation_objective"]) == ("replay", "rerun")
    # each chosen point is also replayed on the same holdout run, beside its re-run error
    for point in (p for p in result["operating_points"] if p["name"] != "paper"):
        check = point["replay_check"]
        assert check["rerun_error"] == pytest.approx(point["expected_error"])
        if check["rerun_error"] > 0:
            assert check["ratio"] == pytest.approx(check["replay_error"] / check["rerun_error"])
    fast = next(p for p in result["operating_points"] if p["name"] == "fast")
    policy = export(db, tmp_path / "tiny.json")
    handle = sencache.apply(tiny.pipe, policy, operating_point="fast")
    try:
        tiny.pipe(prompt=["a red circle moving left number 1"], generator=[torch.Generator().manual_seed(1)],
                  output_type="latent", num_inference_steps=STEPS, **CALL)
        assert float(handle.report().nfe_fraction.mean()) == pytest.approx(fast["expected_nfe_fraction"])
    finally:
        sencache.remove(tiny.pipe)
