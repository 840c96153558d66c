"""`export`: the fit result and the store's sensitivities become a validated policy file.

    policy = export("calib.duckdb", "policies/my-model.json")

Reads ``<store>.fit.json`` (written by `fit`) and the store itself (the sensitivity table: per
step the median of `J_x`, `J_t` over the calibration runs), builds the `Policy`, validates it
with the loader exactly as `Policy.load` will (a round trip through its JSON object) *before*
writing, and writes it atomically. Refuses a store changed since the fit (its content digest
differs), and a store that was never fitted, naming the command that fixes it.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from calibration.fit import FIT_FORMAT, fit_result_path
from calibration.fitdata import load_fit_data
from policies import InputError, ModelInfo, OperatingPoint, Policy, Predictor, SchedulerInfo

__all__ = ["build_policy", "export", "read_fit_result"]

logger = logging.getLogger(__name__)


def _package_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("sencache")
    except metadata.PackageNotFoundError:
        return "unknown"


def read_fit_result(db: str | Path, fit_path: str | Path | None = None) -> dict[str, Any]:
    """The fit result of store `db` (or at `fit_path`); InputError when there is none."""
    path = Path(fit_path) if fit_path is not None else fit_result_path(db)
    if not path.exists():
        raise InputError(
            f"{path}: no fit result for store {db}; fit first: `sencache-calibrate fit --db {db} --trials 60`"
        )
    try:
        result = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno}); refit with "
                         f"`sencache-calibrate fit --db {db}`") from None
    if not isinstance(result, dict) or result.get("format") != FIT_FORMAT:
        raise InputError(f"{path}: not a SenCache fit result (format {FIT_FORMAT!r} expected); refit with "
                         f"`sencache-calibrate fit --db {db}`")
    return result


_POINT_KEYS = tuple(dict.fromkeys(OperatingPoint.KEYS + OperatingPoint.STATIC_KEYS + OperatingPoint.OPTIONAL_KEYS))


def _predictors(result: dict[str, Any]) -> dict[str, Predictor]:
    """The fit result's predictor per reuse mode (format 2); empty for an older fit result."""
    out = {}
    for mode, pred in (result.get("predictors") or {}).items():
        r2 = pred.get("r2")
        out[mode] = Predictor(pred["a"], pred["b"], pred["c"], None if r2 is None else min(float(r2), 1.0),
                              pred.get("spearman"), d=float(pred.get("d") or 0.0),
                              e=float(pred.get("e") or 0.0))
    return out


def build_policy(result: dict[str, Any], data: Any, source: str = "<export>") -> Policy:
    """The policy of a fit result, with the sensitivity table read from the store's data."""
    pred = result["predictor"]
    r2 = pred.get("r2")
    predictor = Predictor(pred["a"], pred["b"], pred["c"], None if r2 is None else min(float(r2), 1.0), pred.get("spearman"))
    points = [{k: p[k] for k in _POINT_KEYS if k in p} for p in result["operating_points"]]
    metrics = {
        "validation": result.get("validation"),
        "objective": result.get("objective"),
        "validation_objective": result.get("validation_objective", result.get("objective")),
        "predictor": {k: pred.get(k) for k in ("r2", "r2_log", "spearman", "n_test", "validation", "loss")},
        # per reuse mode: held-out ρ, R², within-step ρ across samples, and the paper score's
        "predictors": {m: {k: p.get(k) for k in ("spearman", "r2", "r2_log", "within_step_spearman", "n_test",
                                                 "validation", "paper", "with_residual_change", "below_paper",
                                                 "fallback") if k in p}
                       for m, p in (result.get("predictors") or {}).items()},
        "operating_points": {p["name"]: p.get("validation") for p in result["operating_points"]},
        # "search": the searched ε curve; "uniform": evenly spaced skipping won on the calib runs
        "origins": {p["name"]: p.get("origin", "search") for p in result["operating_points"] if "target_nfe_fraction" in p},
        "references": result.get("references"),
        # the ablation: each chosen point against the best static schedule of the same search and
        # reuse mode at the same compute (paired holdout difference, point − twin; > 0: twin better;
        # gain_db: what the score adds, in dB; it ships score-driven above the fit's twin margin)
        "static_twins": {p["name"]: {k: (p.get("static_twin") or {}).get(k)
                                     for k in ("origin", "paired_difference", "standard_error", "runs", "gain_db",
                                               "gain_db_standard_error", "replaced", "point")}
                         for p in result["operating_points"] if p.get("static_twin")},
        "score_driven": {p["name"]: p.get("score_driven") for p in result["operating_points"] if "score_driven" in p},
        "twin_margin_db": result.get("twin_margin_db"),
        "predictor_comparison": [{k: row.get(k) for k in ("name", "spearman", "r2")} for row in result.get("predictor_comparison", [])],
    }
    provenance = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "package_version": _package_version(),
        "store": str(data.path),
        "store_digest": data.digest,
        "runs": len(result["runs"]["calib"]) + len(result["runs"]["holdout"]),
        "split": {"calib": len(result["runs"]["calib"]), "holdout": len(result["runs"]["holdout"])},
        "metrics": metrics,
        "fit": {"created": result.get("created"), "seed": result.get("seed"), "trials": result.get("trials"),
                "study": result.get("study"), "search": result.get("search", "knots"),
                "search_space": result.get("search_space")},
        "method": "sencache fit: non-negative robust regression + Optuna search of eps(p), K and zones",
    }
    default = result.get("default_operating_point") or points[0]["name"]
    model = result["model"]
    return Policy(
        model=ModelInfo(model["class"], model["fingerprint"], model["name"]),
        scheduler=SchedulerInfo.from_dict(result["scheduler"]) if result.get("scheduler") else data.scheduler(),
        sensitivity=data.sensitivity_table(),
        predictor=None if _predictors(result) else predictor,
        predictors=_predictors(result),
        operating_points=tuple(points),
        default_operating_point=default,
        provenance=provenance,
        source=source,
    )


def export(db: str | Path, out: str | Path, fit_path: str | Path | None = None) -> Policy:
    """Build the policy of store `db` from its fit result, validate it, write it to `out`."""
    result = read_fit_result(db, fit_path)
    data = load_fit_data(db)
    if result.get("store_digest") and data.digest and result["store_digest"] != data.digest:
        raise InputError(
            f"{db}: the store changed since it was fitted ({fit_result_path(db)}); refit it: "
            f"`sencache-calibrate fit --db {db}`"
        )
    if result["model"]["fingerprint"] != data.fingerprint:
        raise InputError(f"{fit_result_path(db)}: fitted for model fingerprint {result['model']['fingerprint']}, "
                         f"but {db} holds {data.fingerprint}; refit: `sencache-calibrate fit --db {db}`")
    out = Path(out)
    policy = build_policy(result, data, source=str(out))
    checked = Policy.from_dict(policy.to_dict(), source=str(out))  # the loader's checks, before writing
    out.parent.mkdir(parents=True, exist_ok=True)
    checked.save(out)
    Policy.load(out)  # and what was written reads back
    logger.info("wrote %s: %s, default %r", out, ", ".join(checked.operating_point_names), checked.default_operating_point)
    return checked
