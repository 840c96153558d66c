"""`recheck`: judge a shipped policy's score-driven points by today's twin rule, on a store.

    verdicts, policy = recheck("runs/cache/toy-cogvideox.duckdb", "policies/toy-cogvideox.json")

`fit` ships a point score-driven only when it beats its static twin — including the point's own
most common mask — on the holdout runs by more than `fit --twin-margin` (0.5 dB). A policy made
before that rule (toy-cogvideox's) can carry points that are schedules in effect: the zones and
the skip cap decide every step and the score moves no sample's mask. A refit does not mend that
when the store has changed since (the search lands on other points), so recheck applies the rule
to the points as they are: each score-driven point against its own usual mask on the store's
calibration runs (replayed, as `fit` finds it), both re-run on the holdout runs; where the score
does not win by the margin, the mask ships in its place as a static schedule of the point's reuse
mode, and the policy's provenance says so. The `paper` reference point is not judged (`fit` does
not judge it either).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from calibration.fit import TWIN_MARGIN_DB, _costed, _Objectives, _skip_costs
from calibration.fitdata import load_fit_data
from calibration.shapes import Twin, paired_gain_db
from calibration.static_refine import static_equivalent
from calibration.stepcounts import static_nfe_by_steps
from policies import InputError, OperatingPoint, Policy
from policies.operating import FORECASTS

__all__ = ["REFERENCE_POINT", "Verdict", "recheck"]

logger = logging.getLogger(__name__)

#: The fit's reference point (the paper's setting rescaled): shipped for comparison, never judged.
REFERENCE_POINT = "paper"


@dataclass(frozen=True)
class Verdict:
    """One point's judgement: the dB its score gains over its own usual mask on the holdout runs
    (mean over runs of 20·log10(mask error ÷ point error)) and what ships."""

    name: str
    usual_mask: tuple[int, ...]
    gain_db: float
    gain_db_standard_error: float
    runs: int
    ships_static: bool

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "usual_mask": list(self.usual_mask), "gain_db": self.gain_db,
                "gain_db_standard_error": self.gain_db_standard_error, "runs": self.runs,
                "ships": "static" if self.ships_static else "score"}


def recheck(db: str | Path, policy_path: str | Path, twin_margin_db: float | None = None,
            model: str | None = None, out: str | Path | None = None) -> tuple[list[Verdict], dict[str, Any]]:
    """Judge every score-driven point of the policy at `policy_path` (except `paper`) on the store
    `db`; returns the verdicts and the policy as a dict, each point that lost replaced by its usual
    mask (`static_equivalent` of it, the point's forecast), its compute measured on the holdout
    runs, and writes it to `out` when given (whole or not at all: a temporary file beside it,
    then renamed, so an interrupted recheck never leaves half a policy where `out` was). Raises
    `InputError` when the store is of another model or has no holdout runs."""
    margin = TWIN_MARGIN_DB if twin_margin_db is None else float(twin_margin_db)
    if not margin >= 0:
        raise InputError(f"--twin-margin must be a non-negative number of dB, got {twin_margin_db!r}")
    policy = Policy.load(policy_path)
    data = load_fit_data(db, model)
    if policy.model.fingerprint and data.fingerprint and policy.model.fingerprint != data.fingerprint:
        raise InputError(f"{policy_path} is a policy of model fingerprint {policy.model.fingerprint}, {data.path} a "
                         f"store of {data.fingerprint}: recheck a policy on a store of its own model")
    if not data.run_ids("holdout"):
        raise InputError(f"{data.path} has no holdout runs to judge on; collect more prompts or seeds into it "
                         f"(`sencache-calibrate collect --model {data.model_name} --db {data.path} --seeds 2`)")
    predictors = {m: policy.predictors.get(m, policy.predictor) for m in FORECASTS}
    judged = [p for p in policy.operating_points if not p.static and p.name != REFERENCE_POINT]
    forecasts = tuple(sorted({p.forecast for p in judged} | {"none"}))
    table = policy.sensitivity
    rerun = _Objectives("rerun", data, table, model, calibrate_compounding=False, local_moves=0)
    costs = _skip_costs(rerun, forecasts, data.skip_costs)
    replay_calib = _costed(_Objectives("replay", data, table, model, False, 0).for_split("calib"), costs)
    holdout = _costed(rerun.for_split("holdout"), costs)
    document = json.loads(Path(policy_path).read_text())
    verdicts = []
    for point in judged:
        mask = replay_calib.usual_mask(predictors, point)
        if mask is None:
            logger.warning("%r computes no mask on the calibration runs' replay: left as it is", point.name)
            continue
        own = OperatingPoint(point.name, schedule=static_equivalent(mask, data.num_steps), forecast=point.forecast)
        scored, static = holdout.evaluate(predictors, point), holdout.evaluate(predictors, own)
        gain = paired_gain_db(scored.per_run_error, static.per_run_error)
        verdict = Verdict(point.name, tuple(sorted(int(i) for i in mask)), float(gain.mean_db),
                          float(gain.standard_error_db), len(scored.per_run_error), not gain.mean_db > margin)
        verdicts.append(verdict)
        logger.info("%r vs its own usual mask %s: the score gains %+.2f ± %.2f dB over %d holdout runs: ships %s",
                    point.name, list(verdict.usual_mask), verdict.gain_db, verdict.gain_db_standard_error,
                    verdict.runs, "static" if verdict.ships_static else "score-driven")
        if verdict.ships_static:
            shipped = OperatingPoint.from_dict({
                **own.to_dict(), "expected_nfe_fraction": max(static.nfe_fraction, 1e-6),
                "expected_error": static.error, "expected_nfe_by_steps": static_nfe_by_steps(own)})
            index = next(i for i, p in enumerate(document["operating_points"]) if p["name"] == point.name)
            replaced = document["operating_points"][index]
            document["operating_points"][index] = shipped.to_dict()
            # the point is its own twin now: `bench`'s sencache-static runs the very same schedule
            twin = Twin.paired(replace(shipped, name=f"{point.name}-static"), "the point's own usual mask (recheck)",
                               scored.per_run_error, static.per_run_error)
            twins = document.setdefault("provenance", {}).setdefault("metrics", {}).setdefault("static_twins", {})
            twins[point.name] = {**twin.to_dict(), "replaced": replaced}
    document.setdefault("provenance", {})["recheck"] = {
        "store": str(data.path), "store_digest": data.digest, "twin_margin_db": margin,
        "holdout_runs": len(data.run_ids("holdout")), "points": [v.to_dict() for v in verdicts]}
    Policy.from_dict(document, source=str(policy_path))  # what it writes must load
    if out is not None:
        target = Path(out)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        partial.write_text(json.dumps(document, indent=2) + "\n")
        partial.replace(target)
    return verdicts, document
