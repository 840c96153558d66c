"""`recheck`: a policy's score-driven points judged by the twin rule against their own usual masks,
by real re-runs of the tiny random Wan fixture on a synthetic store's holdout runs."""

from __future__ import annotations

import json

import pytest
import torch

import sencache
import calibration.recheck as recheck_module
from calibration.baselines.sencache_static import twin_of
from calibration.export import export
from calibration.fit import fit
from calibration.models import load_model
from calibration.recheck import recheck
from calibration.shapes import PairedGain
from calibration.zoo.registry import TINY_CALL_ARGS
from cli import main
from policies import InputError, Policy, config_fingerprint
from tests.calibration.test_fit_store import make_store

pytestmark = pytest.mark.slow

STEPS = 6
CALL = {k: v for k, v in TINY_CALL_ARGS.items() if k != "num_inference_steps"}
# ε far above every score: the skip cap and the final zone alone decide, the same mask for every sample
CAPPED = {"name": "balanced", "eps": {"positions": [0.0, 1.0], "values": [1e30, 1e30]}, "max_skips": 1,
          "warmup_steps": 0, "final_steps": 1 / STEPS, "forecast": "linear", "expected_nfe_fraction": 0.5,
          "expected_error": 0.01}


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-wan")


@pytest.fixture(scope="module")
def shipped(tiny, tmp_path_factory):
    """A store of tiny-wan (1 calibration, 2 holdout runs) and its policy whose `balanced` is a
    score-driven point in name only (ε above every score, K = 1)."""
    tmp = tmp_path_factory.mktemp("recheck")
    fp = config_fingerprint(dict(tiny.pipe.transformer.config))
    db = make_store(tmp / "tiny.duckdb", runs=1, holdout=2, num_steps=STEPS, fingerprint=fp, model_name="tiny-wan",
                    call={k: CALL[k] for k in ("guidance_scale", "height", "width", "num_frames")})
    fit(db, trials=2, seed=0, show_progress=False, plot=False)
    export(db, tmp / "policy.json")
    document = json.loads((tmp / "policy.json").read_text())
    document["operating_points"] = [CAPPED if p["name"] == "balanced" else p for p in document["operating_points"]]
    (tmp / "policy.json").write_text(json.dumps(document))
    return db, tmp / "policy.json"


def _mask(tiny, policy: Policy, point: str) -> list[bool]:
    handle = sencache.apply(tiny.pipe, policy, operating_point=point)
    try:
        with torch.no_grad():
            tiny.pipe(prompt=["a red circle moving left number 1"], generator=[torch.Generator().manual_seed(1)],
                      output_type="latent", num_inference_steps=STEPS, **CALL)
        return [bool(c) for c in handle.report().computed[0]]
    finally:
        sencache.remove(tiny.pipe)


def test_a_point_the_score_never_moves_ships_as_its_own_mask(tiny, shipped):
    db, path = shipped
    verdicts, document = recheck(db, path)
    judged = {v.name: v for v in verdicts}
    assert "paper" not in judged  # the reference point is never judged
    verdict = judged["balanced"]
    assert verdict.gain_db == 0.0 and verdict.ships_static and verdict.runs == 2
    rechecked = Policy.from_dict(document)
    point = rechecked.operating_point("balanced")
    assert point.static and point.forecast == "linear"
    assert dict(point.expected_nfe_by_steps)[30] == pytest.approx(point.schedule.fraction(30))
    # the same steps as the capped point computed: 0, 2, 4 and the last
    assert _mask(tiny, rechecked, "balanced") == [True, False, True, False, True, True]
    assert _mask(tiny, Policy.load(path), "balanced") == [True, False, True, False, True, True]
    assert document["provenance"]["recheck"]["points"][0]["ships"] == "static"
    # the provenance's twin is the point itself, the score-driven one it replaced beside it, and
    # bench's sencache-static runs that very schedule: +0.00 dB
    stored = document["provenance"]["metrics"]["static_twins"]["balanced"]
    assert "recheck" in stored["origin"] and stored["replaced"] == CAPPED and stored["gain_db"] == 0.0
    assert Policy.from_dict(document).provenance["metrics"]["static_twins"]["balanced"]["point"]["schedule"] == \
        point.schedule.to_dict()
    twin, _ = twin_of(rechecked, "balanced", STEPS)
    assert twin.schedule == point.schedule and twin.forecast == point.forecast
    # the other points are written as they were
    before = {p["name"]: p for p in json.loads(path.read_text())["operating_points"]}
    assert [p for p in document["operating_points"] if p["name"] != "balanced"] == \
        [p for name, p in before.items() if name != "balanced"]


def test_a_point_that_wins_by_the_margin_stays_score_driven(shipped, monkeypatch):
    db, path = shipped
    monkeypatch.setattr(recheck_module, "paired_gain_db", lambda point, twin: PairedGain(1.0, 0.2))
    verdicts, document = recheck(db, path)
    assert not next(v for v in verdicts if v.name == "balanced").ships_static
    assert next(p for p in document["operating_points"] if p["name"] == "balanced") == \
        next(p for p in json.loads(path.read_text())["operating_points"] if p["name"] == "balanced")
    verdicts, _ = recheck(db, path, twin_margin_db=1.5)  # not by more than the margin: static
    assert next(v for v in verdicts if v.name == "balanced").ships_static


def test_a_store_of_another_model_or_without_holdout_runs_is_refused(shipped, tmp_path):
    _, path = shipped
    with pytest.raises(InputError, match="a store of its own model"):
        recheck(make_store(tmp_path / "other.duckdb", runs=1, holdout=1), path)
    fp = Policy.load(path).model.fingerprint
    with pytest.raises(InputError, match="no holdout runs"):
        recheck(make_store(tmp_path / "nohold.duckdb", runs=1, holdout=0, fingerprint=fp, model_name="tiny-wan"), path)


def test_the_cli_writes_the_rechecked_policy(shipped, tmp_path, capsys):
    db, path = shipped
    out = tmp_path / "rechecked.json"
    assert main(["--quiet", "recheck", "--db", str(db), "--policy", str(path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "balanced: the score gains +0.00" in printed and "ships static" in printed
    assert Policy.load(out).operating_point("balanced").static
    assert main(["recheck", "--db", str(db), "--policy", str(path), "--out", str(out), "--twin-margin", "-1"]) == 2
    assert "--twin-margin must be a non-negative number of dB" in capsys.readouterr().err
